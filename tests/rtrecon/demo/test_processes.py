"""The demo's process supervisor."""

from __future__ import annotations

import pytest

from rtrecon.demo.processes import ProcessFailed, ProcessGroup, free_endpoints
from rtrecon.testing import scaled


def test_free_endpoints_are_distinct_localhost_ports():
    endpoints = free_endpoints(4)
    assert len(set(endpoints)) == 4 and all(e.startswith("tcp://127.0.0.1:") for e in endpoints)


def test_a_failed_process_is_reported_with_its_log(tmp_path):
    with ProcessGroup(tmp_path) as group:
        group.start("bad", ["-c", "import sys; print('something broke'); sys.exit(3)"])
        assert group.wait("bad", scaled(30)) == 3
        with pytest.raises(ProcessFailed, match=r"(?s)bad exited with status 3.*something broke"):
            group.check()
        with pytest.raises(ValueError, match="already started"):
            group.start("bad", ["-c", "pass"])


def test_stop_ends_a_running_process_and_wait_times_out(tmp_path):
    with ProcessGroup(tmp_path) as group:
        group.start("sleeper", ["-c", "import time; print('up', flush=True); time.sleep(60)"])
        with pytest.raises(ProcessFailed, match="did not finish within 0.5 s"):
            group.wait("sleeper", 0.5)
        assert group.returncode("sleeper") is None
        assert group.stop("sleeper") != 0
        assert group.returncode("sleeper") is not None


def test_other_programs_and_the_stopping_order(tmp_path):
    import sys

    # each prints when it is told to stop (SIGTERM), on the clock every process shares
    waiter = ("import signal, sys, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print(time.monotonic(), flush=True), sys.exit(0)))\n"
              "print('up', flush=True)\ntime.sleep(60)")
    with ProcessGroup(tmp_path) as group:
        group.start_program("display", [sys.executable, "-c", waiter])  # a program (Xvfb): started first ...
        group.start("client", ["-c", waiter])
        for name in ("display", "client"):
            while "up" not in (tmp_path / f"{name}.log").read_text():
                assert group.returncode(name) is None
    stopped = {name: float((tmp_path / f"{name}.log").read_text().split()[-1]) for name in ("display", "client")}
    assert stopped["client"] < stopped["display"]  # ... stopped last, after what draws on it
