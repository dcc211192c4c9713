"""Fixtures for the stimulus tests: a private Xvfb display, a shared PsychoPy window, test images."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rtrecon.contract import children
from rtrecon.testing import scaled


@pytest.fixture(scope="session")
def xvfb() -> Iterator[str]:
    """A private X display at 24-bit depth (at 16 bits PsychoPy's window hangs); sets DISPLAY."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb xauth libgl1-mesa-dri libglu1-mesa xdotool)")
    read, write = os.pipe()
    proc = children.start(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()
    if not number:
        children.stop(proc, grace_s=0.0)
        pytest.fail("Xvfb did not start")
    previous = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{number}"
    yield os.environ["DISPLAY"]
    children.stop(proc, grace_s=scaled(10))
    if previous is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = previous


WINDOW_SIZE = (160, 120)


@pytest.fixture(scope="session")
def win(xvfb: str) -> Iterator[Any]:
    """One small PsychoPy window shared by the tests (opening one costs most of a second)."""
    from stimulus.screen import open_window
    from rtrecon.contract.config import WindowSection

    window = open_window(WindowSection(size=WINDOW_SIZE))
    yield window
    window.close()


def _grab(window: Any) -> np.ndarray:
    window.getMovieFrame(buffer="back")
    return np.asarray(window.movieFrames.pop())


def _make_image(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Path:
    Image.fromarray(np.full((size[1], size[0], 3), rgb, np.uint8)).save(path)
    return path


@pytest.fixture
def grab() -> Callable[[Any], np.ndarray]:
    """grab(window): the back buffer as (height, width, 3) uint8; call after drawing, before the flip."""
    return _grab


@pytest.fixture
def make_image() -> Callable[..., Path]:
    """make_image(path, rgb, size=(16, 16)): write a solid-colour PNG and return its path."""
    return _make_image
