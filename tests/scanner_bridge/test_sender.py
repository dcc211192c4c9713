"""BridgeSender: source events → wire messages → the reliable transport, over a real socket."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.contract.transport import ReliableReceiver, ReliableSender
from rtrecon.contract.wire import Message, RunEndMessage, VolumeMessage, VolumeMissingMessage, encode
from rtrecon.testing import scaled
from scanner_bridge.assembly import FileRejected, RunStarted, VolumeMissing, VolumeReady
from scanner_bridge.replay import NiftiReplaySource
from scanner_bridge.sender import BridgeSender, volume_message, written_time
from scanner_bridge.sources import SourceEvent, VolumeSource
from scanner_bridge.volume import AcquiredVolume

SESSION = "sub-01_ses-01"


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class _Receiver:
    """A ReliableReceiver in its own thread that keeps what it gets until ``runs`` runs ended."""

    def __init__(self, endpoint: str, runs: int = 1, delay_s: float = 0.0) -> None:
        self.messages: list[Message] = []
        self._delay_s = delay_s  # before each acknowledgement: an engine slower than the source
        self._stop = threading.Event()
        self._runs = runs
        self._rx = ReliableReceiver(endpoint.replace("127.0.0.1", "*"), SESSION, heartbeat_s=scaled(0.2))
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self) -> None:
        with self._rx as rx:
            while not self._stop.is_set():
                message = rx.recv(timeout_s=0.05)
                if message is not None:
                    self.messages.append(message)
                    self._stop.wait(self._delay_s)
                    rx.ack(message)
            rx.recv(timeout_s=0.2)  # let the last acks leave

    def stop(self) -> list[Message]:
        self._stop.set()
        self._thread.join()
        return self.messages


class _Scripted(VolumeSource):
    def __init__(self, events: list[SourceEvent]) -> None:
        self.events = events
        self.closed = False

    def __iter__(self) -> Iterator[SourceEvent]:
        yield from self.events

    def close(self) -> None:
        self.closed = True


def _volume(index: int, files: tuple[Path, ...] = ()) -> AcquiredVolume:
    return AcquiredVolume(
        series="1.3.12.2.1107.5.2.43.67060.SECRET-SERIES-UID",
        index=index,
        voxels=np.full((4, 5, 3), index, dtype=np.int16),
        affine=np.diag([3.0, 3.0, 3.6, 1.0]),
        tr=2.0,
        slice_times=(0.0, 1.0, 0.5),
        acquisition_time=32486.8,
        source_files=files,
    )


def test_volume_message_carries_voxels_geometry_and_timing_only(tmp_path: Path) -> None:
    path = tmp_path / "PATIENT_DOE_JOHN.dcm"
    path.write_bytes(b"x")
    volume = _volume(3, (path,))
    message = volume_message(SESSION, 2, volume, {"read": 1.0})
    assert (message.run, message.index, message.tr, message.slice_times, message.acquisition_time) == (2, 3, 2.0, [0.0, 1.0, 0.5], 32486.8)
    np.testing.assert_array_equal(message.voxels, volume.voxels)
    np.testing.assert_array_equal(message.affine, volume.affine)
    wire = b"".join(encode(message))
    assert b"SECRET-SERIES-UID" not in wire and b"PATIENT_DOE_JOHN" not in wire
    assert written_time(volume) == pytest.approx(path.stat().st_mtime)
    assert written_time(_volume(0, ("C-STORE from SCANNER@10.0.0.1: 1.2.3",))) is None  # type: ignore[arg-type]


def test_replayed_run_arrives_whole_in_order_and_acknowledged(tmp_path: Path, dicom_dir: Path) -> None:
    ref = dicom_dir / "siemens_mosaic_ep2d_vd13" / "ref" / "2_ep2d_Asc.nii"
    endpoint = _endpoint()
    receiver = _Receiver(endpoint)
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=scaled(0.2)) as link:
        report = BridgeSender(link, drain_timeout_s=scaled(20)).run(NiftiReplaySource(ref, fast=True))
    messages = receiver.stop()

    assert report.volumes == 6 and report.run_ends == 1 and report.all_acknowledged
    volumes = [m for m in messages if isinstance(m, VolumeMessage)]
    assert [(m.run, m.index) for m in volumes] == [(1, i) for i in range(6)]
    data = np.asanyarray(nib.load(ref).dataobj)
    for m in volumes:
        np.testing.assert_array_equal(m.voxels, data[..., m.index])
        assert m.session == SESSION and m.tr == pytest.approx(3.2) and len(m.slice_times) == 36
        assert m.stamps["written"] <= m.stamps["read"] <= m.stamps["sent"]
    assert messages[-1] == RunEndMessage(session=SESSION, run=1, n_volumes=6)


def test_missing_and_rejected_and_a_restart_that_duplicates_nothing(tmp_path: Path) -> None:
    events: list[SourceEvent] = [
        RunStarted(1, "series-a", "bold"),
        VolumeReady(1, _volume(0)),
        FileRejected("/export/garbage.dcm", "not a DICOM file"),
        VolumeMissing(1, 1, "series-a", "no file of this volume arrived"),
        VolumeReady(1, _volume(2)),
        RunStarted(2, "series-b", "bold"),
        VolumeReady(2, _volume(0)),
    ]
    endpoint = _endpoint()
    receiver = _Receiver(endpoint)
    source = _Scripted(events)
    seen: list[tuple[SourceEvent, Message | None]] = []
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=scaled(0.2)) as link:
        report = BridgeSender(link, on_event=lambda e, m: seen.append((e, m))).run(source)
    assert source.closed and len(seen) == len(events)
    assert (report.volumes, report.missing, report.rejected, report.run_ends) == (3, 1, 1, 2)
    assert report.runs == {1: 3, 2: 1} and report.all_acknowledged

    # A restarted bridge reads the same export again: everything is already spooled and acked.
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=scaled(0.2)) as link:
        again = BridgeSender(link).run(_Scripted(events))
    messages = receiver.stop()
    assert (again.volumes, again.already_spooled, again.run_ends) == (0, 6, 0) and again.all_acknowledged

    got = [(type(m).__name__, m.run, getattr(m, "index", getattr(m, "n_volumes", None))) for m in messages]
    assert got == [
        ("VolumeMessage", 1, 0), ("VolumeMissingMessage", 1, 1), ("VolumeMessage", 1, 2),
        ("VolumeMessage", 2, 0), ("RunEndMessage", 1, 3), ("RunEndMessage", 2, 1),
    ]
    missing = next(m for m in messages if isinstance(m, VolumeMissingMessage))
    assert missing.reason == "no file of this volume arrived"


def test_a_failing_source_is_reported_in_the_callers_thread(tmp_path: Path) -> None:
    class Broken(_Scripted):
        def __iter__(self) -> Iterator[SourceEvent]:
            yield RunStarted(1, "s", "bold")
            raise OSError("export share went away")

    with ReliableSender(_endpoint(), SESSION, tmp_path / "spool", heartbeat_s=scaled(0.2)) as link:
        with pytest.raises(OSError, match="export share went away"):
            BridgeSender(link).run(Broken([]))


def test_impossible_volumes_go_out_as_missing_with_the_reason(tmp_path: Path) -> None:
    # Issue 20, failure 3: a NaN TR on a run's first volume used to reach the engine's sidecar.
    import dataclasses

    events: list[SourceEvent] = [
        VolumeReady(1, dataclasses.replace(_volume(0), tr=float("nan"))),
        VolumeReady(1, dataclasses.replace(_volume(1), affine=np.full((4, 4), np.nan))),
        VolumeReady(1, _volume(2)),
    ]
    endpoint = _endpoint()
    receiver = _Receiver(endpoint)
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=scaled(0.2)) as link:
        report = BridgeSender(link).run(_Scripted(events))
    messages = receiver.stop()
    assert (report.volumes, report.missing) == (1, 2) and report.all_acknowledged
    kinds = [(type(m).__name__, getattr(m, "index", None)) for m in messages if not isinstance(m, RunEndMessage)]
    assert kinds == [("VolumeMissingMessage", 0), ("VolumeMissingMessage", 1), ("VolumeMessage", 2)]
    assert "volume.tr" in messages[0].reason and "volume.affine" in messages[1].reason


@pytest.mark.parametrize("listening", [False, True])
def test_the_bridge_warns_when_nothing_acknowledges_within_a_few_trs(tmp_path: Path, caplog, listening: bool) -> None:
    # Issue 20, failure 9: the bridge printed "sent" for every volume with nothing listening.
    import dataclasses
    import logging

    caplog.set_level(logging.WARNING, logger="scanner_bridge.sender")
    events: list[SourceEvent] = [VolumeReady(1, dataclasses.replace(_volume(i), tr=0.1)) for i in range(3)]
    endpoint = _endpoint()
    receiver = _Receiver(endpoint) if listening else None  # control: a receiver acknowledges in time
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=scaled(0.2)) as link:
        report = BridgeSender(link, drain_timeout_s=scaled(3.0) if listening else 2.0, ack_warn_trs=10).run(_Scripted(events))
    if receiver is not None:
        receiver.stop()
    warnings = [r.getMessage() for r in caplog.records if "nothing acknowledged" in r.getMessage()]
    assert report.all_acknowledged == listening
    assert (report.ack_warnings, len(warnings)) == ((0, 0) if listening else (1, 1))
    if not listening:
        assert endpoint in warnings[0] and "4 item(s) waiting" in warnings[0]


def test_the_bridge_waits_for_a_slow_receiver_as_long_as_it_acknowledges(tmp_path: Path) -> None:
    # A replay faster than the engine: the last acknowledgement comes long after the drain timeout
    # would have passed, but none is more than the timeout after the one before it.
    events: list[SourceEvent] = [VolumeReady(1, _volume(i)) for i in range(8)]
    endpoint = _endpoint()
    receiver = _Receiver(endpoint, delay_s=0.4)
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=0.2) as link:
        report = BridgeSender(link, drain_timeout_s=1.5).run(_Scripted(events))
    messages = receiver.stop()
    assert report.all_acknowledged and [m.index for m in messages if isinstance(m, VolumeMessage)] == list(range(8))
