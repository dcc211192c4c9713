"""NiftiReplaySource: a 4D NIfTI streamed at its TR through the VolumeSource interface."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scanner_bridge.assembly import RunStarted, VolumeReady
from scanner_bridge.replay import NiftiReplaySource, ReplayError


@pytest.fixture(scope="module")
def ep2d_ref(dicom_dir: Path) -> Path:
    return dicom_dir / "siemens_mosaic_ep2d_vd13" / "ref" / "2_ep2d_Asc.nii"


def _tiny_series(path: Path, n: int, tr_ms: float) -> np.ndarray:
    data = np.arange(4 * 5 * 3 * n, dtype=np.int16).reshape(4, 5, 3, n)
    img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "msec")
    img.header.set_zooms((2.0, 2.0, 3.0, tr_ms))
    nib.save(img, path)
    return data


def test_replays_every_volume_with_the_sidecar_timing(ep2d_ref: Path) -> None:
    sidecar = json.loads(ep2d_ref.with_suffix(".json").read_text())
    reference = nib.load(ep2d_ref)
    events = list(NiftiReplaySource(ep2d_ref, fast=True, run=3))

    assert isinstance(events[0], RunStarted) and events[0].run == 3
    volumes = [e.volume for e in events[1:]]
    assert all(isinstance(e, VolumeReady) and e.run == 3 for e in events[1:])
    assert [v.index for v in volumes] == list(range(reference.shape[3]))
    for v in volumes:
        assert v.voxels.dtype == np.int16  # no scaling in the header: stored values, stored dtype
        np.testing.assert_array_equal(v.voxels, np.asanyarray(reference.dataobj[..., v.index]))
        np.testing.assert_allclose(v.affine, reference.affine)
        assert v.tr == pytest.approx(sidecar["RepetitionTime"])
        assert v.slice_times == pytest.approx(tuple(sidecar["SliceTiming"]))
        assert v.acquisition_time is None


def test_header_tr_in_milliseconds_paces_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "bold.nii.gz"
    data = _tiny_series(path, n=3, tr_ms=150.0)
    source = NiftiReplaySource(path)
    assert source.tr == pytest.approx(0.15) and source.slice_times is None

    arrivals = []
    start = time.monotonic()
    for event in source:
        if isinstance(event, VolumeReady):
            arrivals.append(time.monotonic() - start)
            np.testing.assert_array_equal(event.volume.voxels, data[..., event.volume.index])
    # Volume i is due i*TR after the start; sleeping never ends early, so these are lower bounds.
    assert len(arrivals) == 3
    assert arrivals[1] >= 0.15 and arrivals[2] >= 0.30


def test_speed_and_range_and_tr_override(tmp_path: Path) -> None:
    path = tmp_path / "bold.nii"
    _tiny_series(path, n=6, tr_ms=1000.0)
    source = NiftiReplaySource(path, speed=1e6, tr=2.5, start=2, stop=5)
    indices = [e.volume.index for e in source if isinstance(e, VolumeReady)]
    assert indices == [2, 3, 4] and source.tr == 2.5


def test_close_from_another_thread_ends_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "bold.nii"
    _tiny_series(path, n=50, tr_ms=60_000.0)  # a minute per volume: only close() can end it
    source = NiftiReplaySource(path)
    got = []
    with source:
        for event in source:
            if isinstance(event, VolumeReady):
                got.append(event.volume.index)
                threading.Timer(0.05, source.close).start()
    assert got == [0]


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    three_d = tmp_path / "anat.nii"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), three_d)
    with pytest.raises(ReplayError, match=r"anat\.nii: a 3D image"):
        NiftiReplaySource(three_d)
    with pytest.raises(ReplayError, match="nothere.nii.gz: no such file"):
        NiftiReplaySource(tmp_path / "nothere.nii.gz")
    text = tmp_path / "notes.nii"
    text.write_text("not an image")
    with pytest.raises(ReplayError, match=r"notes\.nii: not a NIfTI image"):
        NiftiReplaySource(text)
    with pytest.raises(ReplayError, match="speed must be positive"):
        NiftiReplaySource(three_d, speed=0)
