"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# An accidental model-hub download must fail at once instead of hanging on the closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared data folder beside the checkout (never write there)."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def dicom_dir(shared_dir: Path) -> Path:
    """The 13 real scanner-written DICOM series (see its README for the traps in each)."""
    return shared_dir / "data" / "dicom"


@pytest.fixture
def torch_one_thread():
    """Run a test on one torch intra-op thread, restoring the setting after.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the threads
    mostly wait on each other (measured 20x slower). Folders of tiny-model tests request it with
    an autouse fixture of their own.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
