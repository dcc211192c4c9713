"""No DICOM header crosses the wire: patient and institution tags filled with markers never show
up in any byte sent (captured between the bridge and the receiver), spooled or stored."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import zmq

from rtrecon.contract.transport import ReliableReceiver, ReliableSender
from rtrecon.contract.wire import RunEndMessage, VolumeMessage
from rtrecon.testing import scaled
from scanner_bridge.commands.bridge import VolumeStore
from scanner_bridge.sender import BridgeSender
from scanner_bridge.watcher import FolderWatcher

SESSION = "sub-01_ses-01"
EP2D = "siemens_mosaic_ep2d_vd13"

MARKERS = {
    "PatientName": "ZZMARKER^PATIENTNAME",
    "PatientID": "ZZMARKER-PATIENTID",
    "PatientBirthDate": "18870923",
    "PatientAddress": "ZZMARKER PATIENT ADDRESS",
    "PatientTelephoneNumbers": "ZZMARKER-PHONE-555",
    "OtherPatientIDs": "ZZMARKER-OTHERID",
    "PatientComments": "ZZMARKER PATIENT COMMENTS",
    "InstitutionName": "ZZMARKER INSTITUTION",
    "InstitutionAddress": "ZZMARKER INSTITUTION ADDRESS",
    "InstitutionalDepartmentName": "ZZMARKER DEPARTMENT",
    "ReferringPhysicianName": "ZZMARKER^REFERRER",
    "PerformingPhysicianName": "ZZMARKER^PERFORMER",
    "OperatorsName": "ZZMARKER^OPERATOR",
    "StudyDescription": "ZZMARKER STUDY DESCRIPTION",
    "SeriesDescription": "ZZMARKER SERIES DESCRIPTION",
    "AccessionNumber": "ZZMARKERACC1",
    "StudyID": "ZZMARKERSID",
    "StationName": "ZZMARKERSTATION",
    "DeviceSerialNumber": "ZZMARKER-SERIAL",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Tap:
    """A man in the middle: forwards every frame between bridge and receiver and keeps a copy."""

    def __init__(self, front: str, back: str) -> None:
        self.frames: list[bytes] = []
        self._stop = threading.Event()
        self._ctx = zmq.Context()
        self._front = self._ctx.socket(zmq.ROUTER)
        self._front.bind(front)
        self._back = self._ctx.socket(zmq.DEALER)
        self._back.connect(back)
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        poller.register(self._back, zmq.POLLIN)
        identity = None
        while not self._stop.is_set():
            ready = dict(poller.poll(50))
            if self._front in ready:
                identity, *frames = self._front.recv_multipart()
                self.frames.extend(frames)
                self._back.send_multipart(frames)
            if self._back in ready:
                frames = self._back.recv_multipart()
                self.frames.extend(frames)
                if identity is not None:
                    self._front.send_multipart([identity, *frames])

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._front.close(linger=0)
        self._back.close(linger=0)
        self._ctx.term()


def _marked_series(src: Path, dest: Path, n: int) -> list[pydicom.Dataset]:
    dest.mkdir(parents=True)
    datasets = []
    for path in sorted(src.iterdir())[:n]:
        ds = pydicom.dcmread(path)
        for keyword, marker in MARKERS.items():
            setattr(ds, keyword, marker)
        ds.save_as(dest / path.name)
        datasets.append(ds)
    return datasets


def _every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_no_patient_or_institution_data_is_sent_spooled_or_stored(tmp_path: Path, dicom_dir: Path) -> None:
    export, spool, out = tmp_path / "export", tmp_path / "spool", tmp_path / "received"
    datasets = _marked_series(dicom_dir / EP2D / "dicom", export, 3)
    # The markers really are in what the scanner wrote.
    exported = _every_byte(export)
    assert all(marker.encode() in exported for marker in MARKERS.values())
    identifiers = {str(ds.get(k)) for ds in datasets for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")}

    front, back = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    store = VolumeStore(out)
    received: list = []
    done = threading.Event()

    def receive() -> None:
        with ReliableReceiver(back, SESSION, store.persisted(), heartbeat_s=scaled(0.2)) as rx:
            while not done.is_set():
                message = rx.recv(timeout_s=0.05)
                if message is not None:
                    store.write(message)
                    rx.ack(message)
                    received.append(message)
            rx.recv(timeout_s=0.2)

    receiver = threading.Thread(target=receive)
    receiver.start()
    tap = _Tap(front, back)
    try:
        with ReliableSender(front, SESSION, spool, heartbeat_s=scaled(0.2)) as link:
            report = BridgeSender(link, drain_timeout_s=scaled(20)).run(FolderWatcher(export, idle_exit_s=scaled(0.3)))
    finally:
        done.set()
        receiver.join()
        tap.close()

    # The data did flow: the volumes are the reference's, every one acknowledged.
    assert report.all_acknowledged and report.volumes == 3
    ref = np.asanyarray(nib.load(dicom_dir / EP2D / "ref" / "2_ep2d_Asc.nii").dataobj)
    volumes = [m for m in received if isinstance(m, VolumeMessage)]
    assert [m.index for m in volumes] == [0, 1, 2] and isinstance(received[-1], RunEndMessage)
    for m in volumes:
        np.testing.assert_array_equal(m.voxels, ref[..., m.index])
    stored = np.asanyarray(nib.load(out / "run-01_bold.nii.gz").dataobj)
    np.testing.assert_array_equal(stored, ref[..., :3])

    sent = b"".join(tap.frames)
    spooled = _every_byte(spool)
    written = _every_byte(out)
    assert len(sent) > 3 * ref[..., 0].nbytes and len(spooled) > 3 * ref[..., 0].nbytes
    for place, data in (("sent", sent), ("spooled", spooled), ("stored", written)):
        for keyword, marker in MARKERS.items():
            assert marker.encode() not in data, f"{keyword} {place}"
            assert marker.encode("utf-16-le") not in data, f"{keyword} {place} (UTF-16)"
        for uid in identifiers:
            assert uid.encode() not in data, f"UID {uid} {place}"
        assert b"DICM" not in data and export.name.encode() + b"/" not in data, place

