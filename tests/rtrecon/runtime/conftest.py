"""Runtime tests run tiny models: one intra-op thread each for torch (ONNX Runtime sessions are
created per test module)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny models: one torch thread (tests/conftest.py says why)."""
