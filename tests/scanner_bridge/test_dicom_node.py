"""DicomNode: a C-STORE storage SCP fed by pynetdicom's own client with the real series."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from rtrecon.testing import scaled
from scanner_bridge.assembly import FileRejected, RunStarted, VolumeReady
from scanner_bridge.dicom_node import DicomNode

EP2D = "siemens_mosaic_ep2d_vd13"
JPEG = "siemens_mosaic_b17_jpeglossless"


def _send(port: int, files: list[Path], *, calling: str = "SCANNER", called: str = "RTRECON") -> list[int]:
    """Send every file with one association, as a scanner's DICOM send does; the statuses."""
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return []
    try:
        assert assoc.send_c_echo().Status == 0x0000
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


def _consume(node: DicomNode) -> tuple[list, threading.Thread]:
    events: list = []
    thread = threading.Thread(target=lambda: events.extend(node))
    thread.start()
    return events, thread


@pytest.mark.parametrize("series", [EP2D, JPEG])
def test_a_series_sent_by_c_store_becomes_the_reference_volumes(series: str, dicom_dir: Path) -> None:
    files = sorted((dicom_dir / series / "dicom").iterdir(), reverse=True)  # sent last volume first
    ref = np.asanyarray(next(iter(nib.load(p) for p in (dicom_dir / series / "ref").glob("*.nii"))).dataobj)
    node = DicomNode("RTRECON", "127.0.0.1", 0)
    events, thread = _consume(node)
    statuses = _send(node.port, files)
    node.close()
    thread.join(timeout=scaled(30))

    assert statuses == [0x0000] * len(files)
    assert node.received == len(files)
    assert [type(e) for e in events[:1]] == [RunStarted]
    volumes = [e.volume for e in events if isinstance(e, VolumeReady)]
    assert [v.index for v in volumes] == list(range(ref.shape[3]))  # in acquisition order
    for v in volumes:
        np.testing.assert_array_equal(v.voxels, ref[..., v.index])
    assert not [e for e in events if isinstance(e, FileRejected)]


def test_resent_images_are_ignored_and_non_images_rejected(dicom_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = sorted((dicom_dir / EP2D / "dicom").iterdir())[:2]
    node = DicomNode("RTRECON", "127.0.0.1", 0, idle_exit_s=None)
    events, thread = _consume(node)
    assert _send(node.port, files) == [0, 0]
    assert _send(node.port, files[:1]) == [0]  # the scanner retries a store: no second volume
    # The next volume's image without its pixel data (a scanner sending a broken object).
    ds = pydicom.dcmread(files[0])
    del ds.PixelData
    ds.AcquisitionNumber = 3
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    with caplog.at_level(logging.WARNING, logger="scanner_bridge.dicom_node"):
        assert _send(node.port, [broken]) == [0]
        node.close()
        thread.join(timeout=scaled(30))
    assert [e.volume.index for e in events if isinstance(e, VolumeReady)] == [0, 1]
    (rejected,) = [e for e in events if isinstance(e, FileRejected)]
    assert "SCANNER" in rejected.origin and ds.SOPInstanceUID in rejected.origin
    assert any("rejected" in r.getMessage() and ds.SOPInstanceUID in r.getMessage() for r in caplog.records)


def test_only_the_configured_ae_titles_may_store(dicom_dir: Path) -> None:
    files = sorted((dicom_dir / EP2D / "dicom").iterdir())[:1]
    node = DicomNode("RTRECON", "127.0.0.1", 0, allowed_callers=["CONSOLE"])
    events, thread = _consume(node)
    refused_caller = _send(node.port, files, calling="INTRUDER")
    refused_called = _send(node.port, files, calling="CONSOLE", called="OTHERNODE")
    accepted = _send(node.port, files, calling="CONSOLE")
    node.close()
    thread.join(timeout=scaled(30))
    assert (refused_caller, refused_called, accepted) == ([], [], [0])
    assert [e.volume.index for e in events if isinstance(e, VolumeReady)] == [0]


def test_a_stored_object_is_on_disk_before_the_ack_and_read_again_after_a_restart(dicom_dir: Path, tmp_path: Path) -> None:
    files = sorted((dicom_dir / EP2D / "dicom").iterdir())
    store = tmp_path / "store"
    node = DicomNode("RTRECON", "127.0.0.1", 0, store_dir=store)
    events, thread = _consume(node)
    statuses = _send(node.port, files[:3])
    stored_at_ack = sorted(p.name for p in store.glob("*.dcm"))
    # The bridge dies before its consumer saw anything more: a fresh node on the same store.
    node.close()
    thread.join(timeout=scaled(30))
    assert statuses == [0x0000] * 3
    assert len(stored_at_ack) == 3
    # A store cut short by the crash (never acknowledged) is dropped on restart; the scanner resends it.
    torn = store / f".{stored_at_ack[0]}.4242.tmp"
    torn.write_bytes((store / stored_at_ack[0]).read_bytes()[:200])

    restarted = DicomNode("RTRECON", "127.0.0.1", 0, store_dir=store, idle_exit_s=scaled(0.5))
    again = [e for e in restarted if isinstance(e, VolumeReady)]
    assert [e.volume.index for e in again] == [0, 1, 2] and not torn.exists()
    ref = np.asanyarray(nib.load(next((dicom_dir / EP2D / "ref").glob("*.nii"))).dataobj)
    for event in again:
        np.testing.assert_array_equal(event.volume.voxels, ref[..., event.volume.index])
