"""The bridge as operators run it: `rtrecon bridge watch` and `rtrecon bridge listen` as separate
processes over ZeroMQ, fed by the scanner simulator; then both killed (SIGKILL) mid-run and
restarted: nothing lost, nothing duplicated."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.contract import children
from rtrecon.testing import scaled
from scanner_bridge.simulator import Faults, ScannerSimulator, series_volumes

EP2D = "siemens_mosaic_ep2d_vd13"
CMRR = "siemens_mosaic_cmrr_vd13"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Process:
    """An ``rtrecon`` subprocess whose stdout lines are collected as they come."""

    def __init__(self, *args: str, log: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log = log
        self._stderr = open(log, "ab")
        self.proc = children.start(
            [sys.executable, "-m", "rtrecon.cli", *args], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        self.lines: list[str] = []
        self._new: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + scaled(timeout)
        while not predicate(self.records()):
            if self.proc.poll() is not None and self._new.empty():
                raise AssertionError(f"process ended ({self.proc.returncode}):\n" + self.log.read_text())
            try:
                self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("timed out; output so far:\n" + "\n".join(self.lines)) from None

    def finish(self, timeout: float = 60.0) -> int:
        code = self.proc.wait(scaled(timeout))
        self._reader.join(scaled(timeout))
        self._stderr.close()
        return code

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.finish()


def _indices(records: list[dict]) -> list[int]:
    return [r["index"] for r in records if r.get("kind") == "volume"]


@pytest.fixture(scope="module")
def ep2d(dicom_dir: Path) -> list[list[Path]]:
    return series_volumes(dicom_dir / EP2D / "dicom")


@pytest.fixture(scope="module")
def ep2d_ref(dicom_dir: Path) -> np.ndarray:
    return np.asanyarray(nib.load(dicom_dir / EP2D / "ref" / "2_ep2d_Asc.nii").dataobj)


def test_a_faulty_scan_with_receiver_and_sender_killed_mid_run_arrives_exactly_once(
    tmp_path: Path, dicom_dir: Path, ep2d, ep2d_ref
) -> None:
    export, out, spool = tmp_path / "export", tmp_path / "received", tmp_path / "spool"
    export.mkdir()
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    listen_args = ("bridge", "listen", endpoint, "--out", str(out), "--json", "--runs", "2")
    watch_args = ("bridge", "watch", str(export), "--to", endpoint, "--spool", str(spool), "--missing-timeout", "30")
    foreign = series_volumes(dicom_dir / CMRR / "dicom")[0]

    def scan(first: int, last: int, faults: Faults = Faults()) -> None:
        """Volumes first..last-1 at TR pace; fault positions count from ``first``."""
        ScannerSimulator(ep2d[first:last], export, tr=3.2, speed=32, faults=faults, foreign=foreign).run()

    listeners = [_Process(*listen_args, log=tmp_path / "listen.log")]
    senders = [_Process(*watch_args, log=tmp_path / "bridge.log")]
    senders[0].wait_for(lambda _: any(line.startswith("bridge: session") for line in senders[0].lines))
    scan(0, 2, Faults(corrupt_after=0, partial={1}))  # a corrupt file, then half a file, a pause, the rest
    listeners[0].wait_for(lambda r: 1 in _indices(r))
    listeners[0].kill()  # the receiver dies mid-run

    # Written while nobody receives (the bridge spools): volume 3 before 2, 2 twice, a foreign series.
    scan(2, 4, Faults(swap={0}, duplicate={0}, foreign_after=1))
    listeners.append(_Process(*listen_args, log=tmp_path / "listen.log"))
    listeners[1].wait_for(lambda r: 3 in _indices(r))
    senders[0].kill()  # now the sender dies mid-run

    scan(4, 5)  # written while no bridge runs: the restarted one finds it in the folder
    senders.append(_Process(*watch_args, log=tmp_path / "bridge.log"))
    scan(5, 6)
    listeners[1].wait_for(lambda r: 5 in _indices(r))
    senders[1].proc.send_signal(signal.SIGTERM)  # the session ends: the runs are closed
    assert senders[1].finish() == 0
    assert listeners[1].finish() == 0

    records = [r for p in listeners for r in p.records()]
    delivered = [(r["run"], r["index"]) for r in records if r.get("kind") == "volume"]
    assert len(delivered) == len(set(delivered)), f"delivered twice: {delivered}"
    assert {i for run, i in delivered if run == 1} <= set(range(6)) and [i for run, i in delivered if run == 2] == [0]
    # Nothing lost: the receiver's store holds the whole run, equal to the reference.
    np.testing.assert_array_equal(np.asanyarray(nib.load(out / "run-01_bold.nii.gz").dataobj), ep2d_ref)
    assert json.loads((out / "run-01_bold.json").read_text())["MissingVolumes"] == []
    assert [(r["run"], r["n_volumes"]) for r in records if r.get("kind") == "run_end"] == [(1, 6), (2, 1)]
    assert "already sent before a restart" in "\n".join(senders[1].lines)
    log = (tmp_path / "bridge.log").read_text()
    assert f"rejected {export / 'corrupt_0001.dcm'}: holds no image" in log
    assert "rejected" not in log.replace(f"rejected {export / 'corrupt_0001.dcm'}", "")  # nothing else
