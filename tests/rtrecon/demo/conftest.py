"""One shortened demo, run once for the whole folder: its session is what the module tests read."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from rtrecon.contract import children
from rtrecon.testing import scaled

#: The shortened demo: 2 subjects × 2 sessions × 1 run, a few epochs, the replay at 80× the TR pace, in the
#: typical world (the golden session's, whose cache it shares; test_decoding.py measures the decoder in the
#: demo's default high-SNR world against its noise ceiling).
DEMO_ARGS = ["--subjects", "2", "--sessions", "2", "--runs", "1", "--speed", "80", "--epochs", "1", "1", "--hidden-dim", "64",
             "--world", "typical"]


@dataclass(frozen=True)
class DemoRun:
    returncode: int
    stdout: str
    stderr: str
    cache: Path
    out: Path
    display: str
    #: the demo's arguments besides --out and --cache
    args: tuple[str, ...]

    @property
    def headline(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def session_dir(self) -> Path:
        (folder,) = [p for p in self.out.iterdir() if p.is_dir()]
        return folder

    @property
    def dataset(self) -> Path:
        (folder,) = [p for p in (self.cache / "synthetic").iterdir() if p.is_dir() and p.suffix != ".partial"]
        return folder


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``rtrecon demo`` as a user runs it (its own process), shortened."""
    base = tmp_path_factory.mktemp("demo")
    cache, out = base / "cache", base / "out"
    cmd = [sys.executable, "-m", "rtrecon.cli", "demo", "--out", str(out), "--cache", str(cache), *DEMO_ARGS]
    done = children.run(cmd, capture_output=True, text=True, timeout=scaled(600))  # a guard: 2 busy cores can triple it
    run = DemoRun(done.returncode, done.stdout, done.stderr, cache, out, os.environ.get("DISPLAY", ""), tuple(DEMO_ARGS))
    if done.returncode != 0:
        pytest.fail(f"the demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return run
