"""A short live session for the console's tests: a real engine process, the real console process,
volumes and events sent over the real links, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from rtrecon.contract import children
from rtrecon.contract.wire import EventMessage, RunEndMessage, ShownMessage, VolumeMessage
from rtrecon.testing import scaled

ROOT = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

SESSION = "sub-01_ses-01"
TR, N_VOLS, SHAPE = 1.0, 40, (20, 22, 14)
AFFINE = np.diag([3.0, 3.0, 3.5, 1.0])
AFFINE[:3, 3] = [-30.0, -33.0, -24.0]
ONSETS = (2.0, 8.0, 14.0, 20.0)
#: a 3 mm jerk (FD ~3 mm twice: moving there and back)
SPIKE = 12


@lru_cache(maxsize=1)
def phantom() -> np.ndarray:
    """A head-like series with small drift and one sudden 3 mm shift at volume ``SPIKE``."""
    rng = np.random.default_rng(3)
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    r = np.sqrt((((grid.T - centre) / (np.array(SHAPE) * 0.4)) ** 2).sum(-1)).T
    anatomy = ndimage.gaussian_filter(1000 * (r < 1) * (1 + 1.5 * ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.2)), 0.8)
    volumes = []
    for i in range(N_VOLS):
        shift_mm = np.array([0.02 * i, 0.0, 0.0]) + (np.array([3.0, 0.0, 0.0]) if i == SPIKE else 0.0)
        moved = ndimage.shift(anatomy, shift_mm / np.diag(AFFINE)[:3], order=3, mode="nearest")
        volumes.append((moved + rng.normal(0, 4, SHAPE) * (anatomy > 0)).astype(np.float32))
    return np.stack(volumes)


def volume(i: int) -> VolumeMessage:
    return VolumeMessage(session=SESSION, run=1, index=i, tr=TR, voxels=phantom()[i], affine=AFFINE,
                         stamps={"sent": time.time()})


def event(trial: int) -> EventMessage:
    return EventMessage(session=SESSION, run=1, trial=trial, onset=ONSETS[trial], duration=3.0,
                        trial_type="image", stimulus=f"nsd:{100 + trial}")


def write_config(folder: Path, extra: str = "") -> Path:
    """A session config with its links on IPC endpoints in ``folder`` and the defaults otherwise."""
    ipc = f"ipc://{folder}"
    config = folder / "session.toml"
    config.write_text(
        f'[session]\nsubject = "01"\nsession = "01"\ntask = "perception"\noutput_dir = "out"\n'
        f'[network]\nvolumes = "{ipc}/v"\nevents = "{ipc}/e"\nresults = "{ipc}/r"\nstatus = "{ipc}/s"\noperator = "{ipc}/o"\n'
        f"heartbeat_s = {scaled(0.5)}\n"
        f"[engine]\nplanned_volumes = {N_VOLS}\nrealign_samples = 2000\n" + extra
    )
    return config


def start_console(config: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """``rtrecon console`` as its own process; returns it and the address it printed."""
    proc = children.start([sys.executable, "-m", "rtrecon.cli", "console", "--config", str(config), "--port", "0",
                           "--log-level", "WARNING", *args],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"console up: (\S+)", line)
    if match is None:
        children.kill(proc)
        raise AssertionError(f"the console did not start: {line}{proc.stderr.read()[-2000:]}")
    return proc, match[1]


def stop(proc: subprocess.Popen) -> str:
    """Stop a process (SIGTERM, its clean stop; SIGKILL to its group after a grace) and return its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=scaled(20))
    except subprocess.TimeoutExpired:
        children.kill(proc)
        _, err = proc.communicate()
    return err or ""


class LiveSession:
    """The engine process, and the links a bridge and a stimulus PC would open to it, driven on a
    thread of their own (as those programs do: the links must be polled while the test waits)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = write_config(folder)
        self.engine = self.start_engine()
        self.sent = 0
        self.pending = 0
        self._outbox: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._links, daemon=True)
        self._thread.start()
        self._ready.wait(scaled(10))

    def start_engine(self) -> subprocess.Popen:
        return children.start([sys.executable, "-m", "rtrecon.cli", "engine", "--config", str(self.config),
                               "--log-level", "WARNING"], cwd=ROOT, stderr=subprocess.PIPE, text=True)

    def _links(self) -> None:
        from rtrecon.contract.transport import ReliableReceiver, ReliableSender, result_key, trial_key, volume_key

        ipc = f"ipc://{self.folder}"
        with (
            ReliableSender(f"{ipc}/v", SESSION, self.folder / "spool_v", key=volume_key, heartbeat_s=scaled(0.5),
                           max_in_flight=8) as volumes,  # a bridge's [bridge] max_lead
            ReliableSender(f"{ipc}/e", SESSION, self.folder / "spool_e", key=trial_key, heartbeat_s=scaled(0.5),
                           name="stimulus") as events,
            ReliableReceiver(f"{ipc}/r", SESSION, key=result_key, heartbeat_s=scaled(0.5), name="stimulus") as results,
        ):
            self._ready.set()
            while not self._stop.is_set():
                while not self._outbox.empty():
                    message = self._outbox.get()
                    (events if isinstance(message, EventMessage) else volumes).send(message)
                volumes.poll(0.01)
                events.poll(0.0)
                result = results.recv(timeout_s=0.0)
                if result is not None:  # the stimulus PC takes and acknowledges each result, then shows it
                    results.ack(result)
                    results.notify(ShownMessage(session=SESSION, run=result.run, trial=result.trial,
                                                release=result.release, sequence=result.sequence,
                                                shown=ONSETS[result.trial] + result.release_s + 0.5,
                                                shown_wall=time.time(), received_to_shown_s=0.016))
                self.pending = volumes.pending + events.pending + self._outbox.qsize()

    def send(self, stop_at: int, pace_s: float = 0.05) -> None:
        """Send volumes up to ``stop_at`` (excluded), each trial's event once its onset has passed."""
        for i in range(self.sent, stop_at):
            for trial, onset in enumerate(ONSETS):
                if (i - 1) * TR < onset <= i * TR:
                    self._outbox.put(event(trial))
            self._outbox.put(volume(i))
            self.pending += 1
            time.sleep(pace_s)
        self.sent = stop_at

    def wait_acked(self, timeout_s: float = 90.0) -> None:
        """Wait until the engine has acknowledged everything sent."""
        deadline = time.monotonic() + scaled(timeout_s)
        while (self.pending or not self._outbox.empty()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.pending:
            raise AssertionError(f"the engine did not acknowledge everything within {timeout_s:g} s")

    def end(self) -> None:
        self._outbox.put(RunEndMessage(session=SESSION, run=1, n_volumes=self.sent))
        self.pending += 1
        self.wait_acked()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(scaled(10))
        stop(self.engine)


@pytest.fixture(scope="session")
def harness():
    """This module: the live session's helpers, for the test modules (conftest is not importable)."""
    return sys.modules[__name__]


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium under Playwright (skipped where either is missing)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/bootstrap installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
