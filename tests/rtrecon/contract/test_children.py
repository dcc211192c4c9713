"""Child processes: killed with their parent (even by SIGKILL), and stopped as a whole group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtrecon.contract import children
from rtrecon.testing import scaled

ROOT = Path(__file__).resolve().parents[3]

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by whoever adopted it, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + scaled(seconds)
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _alive(pid)


def _read_pids(path: Path, n: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + scaled(seconds)
    while time.monotonic() < deadline:
        if path.exists() and len(words := path.read_text().split()) == n and path.read_text().endswith("\n"):
            return [int(w) for w in words]
        time.sleep(0.02)
    raise AssertionError(f"{path} did not get {n} pids")


# A parent that starts two sleepers: one through children.start, one (the control) with plain Popen.
PARENT = """
import subprocess, sys, time
from rtrecon.contract import children
sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
guarded = children.start(sleep)
plain = subprocess.Popen(sleep, start_new_session=True)
with open(sys.argv[1], "w") as f:
    f.write(f"{guarded.pid} {plain.pid}\\n")
time.sleep(120)
"""


@linux_only
def test_a_child_dies_with_its_sigkilled_parent_and_an_unguarded_one_does_not(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    parent = children.start([sys.executable, "-c", PARENT, str(pids)], cwd=ROOT)
    try:
        guarded, plain = _read_pids(pids, 2, 30)
        assert _alive(guarded) and _alive(plain)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone_within(guarded, 10)
        assert _alive(plain)  # control: without the guard, a child outlives its killed parent
    finally:
        children.kill(parent)
        if pids.exists():
            os.kill(int(pids.read_text().split()[1]), signal.SIGKILL)


# A child that starts a grandchild in its own process group, then outlives any timeout.
WITH_GRANDCHILD = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[1], "w") as f:
    f.write(f"{grandchild.pid}\\n")
time.sleep(120)
"""


def test_a_timeout_kills_the_child_and_its_grandchild(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        children.run([sys.executable, "-c", WITH_GRANDCHILD, str(pid_file)], capture_output=True, timeout=scaled(3))
    assert time.monotonic() - started < scaled(60)  # the grandchild holding the output pipes did not keep run() waiting
    (grandchild,) = _read_pids(pid_file, 1, 5)
    assert _gone_within(grandchild, 10)


def test_stop_ends_the_whole_group_even_after_the_child_exited(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    code = WITH_GRANDCHILD.replace("time.sleep(120)\n", "")  # the child exits at once, its grandchild runs on
    child = children.start([sys.executable, "-c", code, str(pid_file)])
    (grandchild,) = _read_pids(pid_file, 1, 30)
    child.wait(scaled(30))
    assert _alive(grandchild)
    assert children.stop(child) == 0
    assert _gone_within(grandchild, 10)


def test_start_refuses_to_drop_its_guard() -> None:
    with pytest.raises(TypeError, match="preexec_fn"):
        children.start([sys.executable, "-c", "pass"], preexec_fn=lambda: None)
