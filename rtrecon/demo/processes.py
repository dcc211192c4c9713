"""Start a session's processes, watch them, and stop them: the demo's small supervisor.

:class:`ProcessGroup` starts each process (``python -m rtrecon.cli ...``, ``python -m MODULE``, or
another program such as ``Xvfb``) through :mod:`rtrecon.contract.children` (its own process group,
and a parent-death guard: a killed demo leaves nothing running) with its output in
``logs/<name>.log``, tells which have exited and with what status, and stops the rest with SIGTERM
to each group (the processes' own clean stop), then SIGKILL after a grace period.
:func:`free_endpoints` picks unused localhost TCP ports for the session's links.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rtrecon.contract import children

__all__ = ["ProcessGroup", "ProcessFailed", "free_endpoints"]


class ProcessFailed(RuntimeError):
    """A supervised process exited with an error; the message names it and ends with its log's tail."""


def free_endpoints(n: int) -> list[str]:
    """``n`` ``tcp://127.0.0.1:PORT`` endpoints on ports free right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class _Child:
    name: str
    popen: subprocess.Popen
    log: Path
    handle: IO[bytes]


class ProcessGroup:
    """Processes of one session; a context manager that stops whatever is still running on exit."""

    def __init__(self, log_dir: str | Path, env: dict[str, str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # One thread each: the processes share the machine's cores with each other.
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1", **(env or {})}
        self.children: dict[str, _Child] = {}

    def start(self, name: str, args: list[str]) -> Path:
        """Start ``python ARGS`` as ``name``; returns its log file."""
        return self.start_program(name, [sys.executable, *args])

    def start_program(self, name: str, argv: list[str]) -> Path:
        """Start the command ``argv`` (e.g. ``Xvfb``) as ``name``; returns its log file."""
        if name in self.children:
            raise ValueError(f"a process named {name!r} was already started")
        log = self.log_dir / f"{name}.log"
        handle = open(log, "ab")
        popen = children.start(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env)
        self.children[name] = _Child(name, popen, log, handle)
        return log

    def returncode(self, name: str) -> int | None:
        """``name``'s exit status, None while it runs."""
        return self.children[name].popen.poll()

    def tail(self, name: str, lines: int = 15) -> str:
        text = self.children[name].log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def check(self, *names: str) -> None:
        """Raise :class:`ProcessFailed` if one of ``names`` (default: all) exited with an error."""
        for name in names or tuple(self.children):
            code = self.returncode(name)
            if code not in (None, 0):
                raise ProcessFailed(f"{name} exited with status {code} (log {self.children[name].log}):\n{self.tail(name)}")

    def wait(self, name: str, timeout_s: float, *, poll: Callable[[], None] | None = None, also_check: tuple[str, ...] = ()) -> int:
        """Wait for ``name`` to exit (``poll()`` is called every 0.2 s, e.g. to update progress)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.returncode(name)
            if code is not None:
                return code
            self.check(*also_check)
            if poll is not None:
                poll()
            time.sleep(0.2)
        raise ProcessFailed(f"{name} did not finish within {timeout_s:g} s (log {self.children[name].log}):\n{self.tail(name)}")

    def stop(self, name: str, grace_s: float = 20.0) -> int:
        """SIGTERM ``name``'s process group (its clean stop), SIGKILL after ``grace_s``; its exit status."""
        child = self.children[name]
        try:
            return children.stop(child.popen, grace_s)
        finally:
            child.handle.close()

    def close(self) -> None:
        """Stop every process, the last started first (a display outlives the program drawing on it)."""
        for name in reversed(list(self.children)):
            self.stop(name, grace_s=5.0)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
