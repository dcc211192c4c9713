"""Child processes that never outlive the process that started them.

Every process rtrecon starts (the demo's engine, bridge, stimulus program and Xvfb, the bridge
demo's children, the tests' subprocesses) goes through :func:`start` or :func:`run`:

- the child gets a parent-death guard (:func:`die_with_parent`): on Linux the kernel sends it
  SIGTERM when its parent dies, even by SIGKILL, so a killed demo or test leaves no engine or Xvfb
  running (``prctl(PR_SET_PDEATHSIG)``; a no-op on other systems);
- it runs in its own session (its own process group), so that stopping it (:func:`stop`) reaches
  whatever it started in turn, on timeout and on error as on a clean stop;
- the children still running when this process exits normally are stopped with their groups
  (:func:`running` lists them, e.g. for a test to check it left none behind).

The guard is tied to the *thread* that starts the child: the kernel signals the child when that
thread ends. Start children from the thread that outlives them (the main thread, or the thread
that also stops them).
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["die_with_parent", "kill", "run", "running", "start", "stop"]

_POSIX = os.name == "posix"

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Any:
    # Resolved once here, in the parent: the child runs between fork and exec, where loading a
    # library could deadlock on a lock another thread of the parent held at the fork.
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()
_started: list[subprocess.Popen] = []
_lock = threading.Lock()


def die_with_parent(parent_pid: int | None = None, signum: int = signal.SIGTERM) -> None:
    """Ask the kernel to send ``signum`` to this process when its parent dies (a ``preexec_fn``).

    Runs in the child, between fork and exec. ``parent_pid`` (the parent's pid, taken before the
    fork) closes the race where the parent dies before the request is made: the child then stops
    itself at once. A no-op where ``prctl`` does not exist (macOS).
    """
    if _prctl is None:
        return
    _prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)


def start(argv: Sequence[str | os.PathLike[str]], **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(argv, **popen_kwargs)`` in its own session, guarded by :func:`die_with_parent`.

    On Windows (no sessions, no ``preexec_fn``: a stimulus PC) it is a plain ``Popen``, still
    listed by :func:`running` and stopped at exit.
    """
    if "preexec_fn" in popen_kwargs or "start_new_session" in popen_kwargs:
        raise TypeError("start() sets preexec_fn and start_new_session itself")
    if _POSIX:
        popen_kwargs.update(start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid()))
    popen = subprocess.Popen(list(argv), **popen_kwargs)
    with _lock:
        _started.append(popen)
    return popen


def running() -> list[subprocess.Popen]:
    """The children :func:`start` started in this process that are still running."""
    with _lock:
        _started[:] = [popen for popen in _started if popen.poll() is None]
        return list(_started)


@atexit.register
def _stop_all() -> None:
    for popen in running():
        stop(popen, grace_s=1.0)


def _signal_group(popen: subprocess.Popen, signum: int | None) -> None:
    """Send ``signum`` (None: kill) to ``popen``'s process group."""
    if not _POSIX:  # no process groups here: the child alone
        if popen.poll() is None:
            popen.kill() if signum is None else popen.send_signal(signum)
        return
    try:
        os.killpg(popen.pid, signal.SIGKILL if signum is None else signum)  # start() made the child its group's leader
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone (a zombie leader alone answers EPERM on some systems)


def stop(popen: subprocess.Popen, grace_s: float = 5.0, signum: int = signal.SIGTERM) -> int:
    """Send ``signum`` to ``popen``'s process group, kill the group after ``grace_s``; its exit status.

    Whatever the child started in its group is killed too, even when the child itself has
    already exited.
    """
    if popen.poll() is None:
        _signal_group(popen, signum)
        try:
            popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(popen, None)
    return popen.wait()


def kill(popen: subprocess.Popen) -> int:
    """Kill ``popen``'s process group at once (SIGKILL); its exit status."""
    _signal_group(popen, None)
    return stop(popen, grace_s=0.0)


def run(argv: Sequence[str | os.PathLike[str]], *, timeout: float | None = None, input: str | bytes | None = None,
        check: bool = False, capture_output: bool = False, **popen_kwargs: Any) -> subprocess.CompletedProcess:
    """:func:`subprocess.run` through :func:`start`: on timeout or any error its whole group is killed.

    (``subprocess.run`` kills only the child, so a grandchild holding the output pipes would keep
    it waiting, and would run on.)
    """
    if capture_output:
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.PIPE)
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    popen = start(argv, **popen_kwargs)
    try:
        stdout, stderr = popen.communicate(input, timeout=timeout)
    except BaseException:
        kill(popen)
        popen.communicate()
        raise
    finally:
        _signal_group(popen, None)  # what the child left behind in its group
    done = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    if check:
        done.check_returncode()
    return done
