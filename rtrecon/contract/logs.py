"""One log format for every process of a session (engine, bridge, stimulus program, console).

The four processes run on four machines and their logs are read side by side after a session:
each line carries the wall time to the millisecond, the process, the level and the logger::

    2026-12-07T20:15:47.120 engine ERROR engine.server: volume 4 of run 1 is unusable (...)

This module is part of the contract between the processes: it imports only the standard library.
"""

from __future__ import annotations

import logging
from typing import TextIO

__all__ = ["LOG_FORMAT", "configure_logging"]

#: ``{process}`` is filled in by :func:`configure_logging`
LOG_FORMAT = "%(asctime)s.%(msecs)03d {process} %(levelname)s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def configure_logging(process: str, level: int | str = logging.INFO, *, stream: TextIO | None = None,
                      force: bool = False) -> None:
    """Send the root logger's records to ``stream`` (default stderr) in the session's one format.

    ``force``: replace handlers already installed (a library that configured logging on import).
    """
    fmt = LOG_FORMAT.format(process=process.replace("%", "%%"))
    logging.basicConfig(level=level, format=fmt, datefmt=_DATE_FORMAT, stream=stream, force=force)
