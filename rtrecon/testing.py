"""One setting for every wall-clock wait of the test suite: ``RTRECON_TEST_TIME_SCALE``.

The suite's timeouts, wait deadlines and link heartbeats are written for an ordinary machine and
multiplied by this factor (default 1.0): on a loaded CI runner or a shared 2-core machine, run
``RTRECON_TEST_TIME_SCALE=3 pytest`` instead of editing numbers. ``tests/conftest.py`` scales
pytest-timeout's per-test limits by the same factor. Nothing here changes what a test asserts,
only how long it may wait for it.
"""

from __future__ import annotations

import functools
import math
import os

__all__ = ["TIME_SCALE_ENV", "scaled", "time_scale"]

TIME_SCALE_ENV = "RTRECON_TEST_TIME_SCALE"


@functools.cache
def time_scale() -> float:
    """The factor from ``$RTRECON_TEST_TIME_SCALE`` (1.0 when unset); a bad value is refused in one line."""
    text = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not text:
        return 1.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{TIME_SCALE_ENV}={text!r}: must be a positive number (e.g. 2 on a loaded machine)")
    return value


def scaled(seconds: float) -> float:
    """``seconds`` of wall-clock waiting, scaled by :func:`time_scale`."""
    return seconds * time_scale()
