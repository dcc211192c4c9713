"""Every shared series, files shuffled, through the readers: each volume equals dcm2niix's."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from scanner_bridge.assembly import RunStarted, VolumeAssembler, VolumeReady
from scanner_bridge.dicom_file import read_dicom
from scanner_bridge.readers import (
    GEReader,
    PhilipsReader,
    ReaderError,
    SiemensEnhancedReader,
    SiemensInteropReader,
    SiemensMosaicReader,
    reader_for,
)

SERIES = {
    "siemens_mosaic_ep2d_vd13": (SiemensMosaicReader, 6),
    "siemens_mosaic_cmrr_vd13": (SiemensMosaicReader, 6),
    "siemens_mosaic_b17_coronal": (SiemensMosaicReader, 2),
    "siemens_mosaic_b17_sagittal": (SiemensMosaicReader, 2),
    "siemens_mosaic_b17_jpeglossless": (SiemensMosaicReader, 2),
    "siemens_mosaic_rt_e11_pyneal": (SiemensMosaicReader, 3),
    "siemens_enh_xa10_vida": (SiemensEnhancedReader, 18),
    "siemens_enh_xa30_prisma": (SiemensEnhancedReader, 20),
    "siemens_enh_xa60_terrax": (SiemensEnhancedReader, 3),
    "siemens_interop_xa30_prisma": (SiemensInteropReader, 5),
    "ge_mr750_dv26_epi_nih": (GEReader, 10),
    "ge_mr750_dv24_rt_mrdc_pyneal": (GEReader, 3),
    "philips_achieva_epi_magdeburg": (PhilipsReader, 3),
}
# Siemens timing tables differ from volume to volume by one 2.5 ms tick; dcm2niix's sidecar
# holds one volume's, so every volume must be within a tick and one must match exactly.
CLOCK_TICK_S = 0.0025


def _reference(series_dir: Path) -> tuple[nib.Nifti1Image, dict]:
    for folder in ("ref", "ref_local"):
        niftis = sorted((series_dir / folder).glob("*.nii*"))
        if niftis:
            sidecar = niftis[0].with_name(niftis[0].name.split(".nii")[0] + ".json")
            if not sidecar.exists():
                sidecar = sidecar.with_name(sidecar.name + ".gz")
            raw = sidecar.read_bytes()
            meta = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
            return nib.load(niftis[0]), meta
    raise AssertionError(f"no reference NIfTI in {series_dir}")


def _seconds(text: str) -> float:
    hours, minutes, seconds = text.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("name", sorted(SERIES))
def test_series_matches_dcm2niix_reference(dicom_dir: Path, name: str) -> None:
    reader_class, n_volumes = SERIES[name]
    series_dir = dicom_dir / name
    reference, meta = _reference(series_dir)
    ref_data = np.asarray(reference.dataobj)  # scaled by nibabel only where the header scales
    files = sorted(p for p in (series_dir / "dicom").rglob("*") if p.is_file())
    random.Random(name).shuffle(files)  # arrival order must not matter, nor file names

    assembler = VolumeAssembler()
    events = [e for f in files for e in assembler.add_file(f)] + assembler.finish()

    assert isinstance(events[0], RunStarted)
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    volumes = [e.volume for e in events if isinstance(e, VolumeReady)]
    assert len(volumes) == len(events) - 1, [e for e in events if not isinstance(e, (RunStarted, VolumeReady))]
    assert [v.index for v in volumes] == list(range(n_volumes))
    assert reader_for(read_dicom(files[0])) is reader_class

    exact_times = 0
    for volume in volumes:
        expected = ref_data[..., volume.index]
        assert volume.voxels.shape == expected.shape
        assert volume.voxels.flags.c_contiguous  # sent as is, without another copy
        if volume.voxels.dtype.kind == "f":  # Philips FP values: float32 precision
            np.testing.assert_allclose(volume.voxels, expected, rtol=2e-7, atol=0)
        else:
            np.testing.assert_array_equal(volume.voxels, expected)
        np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-3)
        assert volume.tr == pytest.approx(meta["RepetitionTime"], abs=1e-3)
        if "SliceTiming" in meta:
            assert volume.slice_times is not None
            error = np.max(np.abs(np.asarray(volume.slice_times) - meta["SliceTiming"]))
            assert error <= CLOCK_TICK_S + 1e-4, (volume.index, volume.slice_times)
            exact_times += error <= 1e-4
        else:
            assert volume.slice_times is None
        assert len(volume.source_files) == len(files) // n_volumes
    if "SliceTiming" in meta:
        assert exact_times >= 1
    if "AcquisitionTime" in meta and reader_class is not GEReader:
        assert volumes[0].acquisition_time == pytest.approx(_seconds(meta["AcquisitionTime"]), abs=1e-3)
        times = [v.acquisition_time for v in volumes]
        assert times == sorted(times)


def test_unsupported_image_names_what_it_is(dicom_dir: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / "siemens_mosaic_ep2d_vd13" / "dicom" / "IM-0001-0001.dcm", stop_before_pixels=True)
    ds.Manufacturer = "ACME"
    with pytest.raises(ReaderError, match="ACME"):
        reader_for(ds)


def test_mosaic_first_volume_multiband_times_are_folded(dicom_dir: Path) -> None:
    # CMRR MB2 writes single-band times (running past TR) into the first volume: slice k is
    # excited together with slice k + 18, so its time is that of slice k mod 18.
    ds = pydicom.dcmread(dicom_dir / "siemens_mosaic_b17_jpeglossless" / "dicom" / "jpg1.dcm")
    reader = SiemensMosaicReader(ds)
    times = [s.time for s in reader.slices(ds, "jpg1.dcm")]
    assert max(times) < reader.tr
    assert times[:18] == times[18:]
    assert times[:3] == pytest.approx([0.0, 0.1375, 0.2775])


def _edit_csa(path: Path, old: bytes, new: bytes, out: Path) -> Path:
    """A copy of a mosaic whose CSA image header has ``old`` (found once) replaced by ``new``."""
    ds = pydicom.dcmread(path)
    element = ds[0x0029, 0x1010]
    assert element.value.count(old) == 1 and len(old) == len(new)
    element.value = element.value.replace(old, new)
    ds.save_as(out)
    return out


def test_mosaic_slices_follow_every_file_csa_header(dicom_dir: Path, tmp_path: Path) -> None:
    # A run's later files reuse the CSA records of the file before only where their bytes are
    # equal: a file whose slice times or slice normal changed gets its own.
    files = sorted((dicom_dir / "siemens_mosaic_ep2d_vd13" / "dicom").glob("*.dcm"))
    late = _edit_csa(files[1], b"297.50000000", b"298.75000000", tmp_path / "late.dcm")
    tilted = _edit_csa(files[3], b"0.99233194", b"0.89233194", tmp_path / "tilted.dcm")
    reader = SiemensMosaicReader(read_dicom(files[0]))
    seen = {}
    for path in [files[2], late, files[4], tilted, files[5], files[2]]:
        slices = reader.slices(read_dicom(path), path.name)
        alone = SiemensMosaicReader(read_dicom(path)).slices(read_dicom(path), path.name)  # parsed whole
        assert [s.time for s in slices] == [s.time for s in alone]
        np.testing.assert_array_equal([s.position for s in slices], [s.position for s in alone])
        seen[path.name] = slices
    assert seen["late.dcm"][4].time == pytest.approx(0.29875)
    assert seen[files[4].name][4].time == pytest.approx(0.2975, abs=1e-6)
    step = seen["tilted.dcm"][1].position - seen["tilted.dcm"][0].position
    assert not np.allclose(step, seen[files[4].name][1].position - seen[files[4].name][0].position)


def test_ge_slice_times_come_from_the_protocol_data_block(dicom_dir: Path) -> None:
    ds = pydicom.dcmread(dicom_dir / "ge_mr750_dv26_epi_nih" / "dicom" / "axial_epi_fmri_interleaved_i_to_s-00001.dcm")
    reader = GEReader(ds)
    # SLICEORDER 1 (interleaved), 15 slices, TR 5 s: locations 1, 3, 5, ... first, 1/3 s apart.
    assert reader.files_per_volume == 15
    assert reader.slices(ds, "x")[0].time == 0.0
    ds.InstanceNumber = 2
    assert reader.slot(ds) == 1
    assert reader.slices(ds, "x")[0].time == pytest.approx(8 * 5.0 / 15)
