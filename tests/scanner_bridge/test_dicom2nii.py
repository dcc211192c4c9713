"""``rtrecon dicom2nii`` on real series: NIfTI and sidecar as dcm2niix's reference."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.cli import main
from scanner_bridge.dicom2nii import NoVolumesError, dicom_series_to_nifti


def _link_files(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def test_cli_writes_the_reference_nifti_and_sidecar(dicom_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = dicom_dir / "ge_mr750_dv26_epi_nih"
    out = tmp_path / "out" / "bold.nii.gz"
    assert main(["dicom2nii", str(series / "dicom"), str(out)]) == 0
    assert capsys.readouterr().out.split() == [str(out)]

    written = nib.load(out)
    reference = nib.load(series / "ref" / "DCM2NIIX_regression_test_4.nii")
    assert written.shape == reference.shape == (64, 64, 15, 10)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(reference.dataobj))
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-3)
    assert written.header.get_zooms()[3] == pytest.approx(5.0)
    assert written.header["sform_code"] == 1

    sidecar = json.loads((tmp_path / "out" / "bold.json").read_text())
    expected = json.loads((series / "ref" / "DCM2NIIX_regression_test_4.json").read_text())
    assert sidecar["RepetitionTime"] == pytest.approx(expected["RepetitionTime"])
    np.testing.assert_allclose(sidecar["SliceTiming"], expected["SliceTiming"], atol=1e-4)
    assert sidecar["Manufacturer"] == "GE MEDICAL SYSTEMS"
    assert sidecar["EchoTime"] == pytest.approx(expected["EchoTime"])
    text = json.dumps(sidecar)
    for identifying in ("PatientName", "PatientID", "InstitutionName", "AcquisitionDateTime"):
        assert identifying not in text


def test_philips_float_values_and_no_slice_timing(dicom_dir: Path, tmp_path: Path) -> None:
    series = dicom_dir / "philips_achieva_epi_magdeburg"
    [path] = dicom_series_to_nifti(series / "dicom", tmp_path / "philips.nii")
    reference = nib.load(series / "ref" / "EPI_asc_CLEAR_201.nii")
    np.testing.assert_allclose(nib.load(path).get_fdata(), reference.get_fdata(), rtol=2e-7)
    assert "SliceTiming" not in json.loads((tmp_path / "philips.json").read_text())


def test_several_runs_get_one_file_each(dicom_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "session"
    _link_files(sorted((dicom_dir / "siemens_mosaic_rt_e11_pyneal" / "dicom").iterdir()), folder / "a")
    _link_files(sorted((dicom_dir / "siemens_enh_xa60_terrax" / "dicom").iterdir()), folder / "b")
    paths = dicom_series_to_nifti(folder, tmp_path / "sub-01_bold.nii.gz")
    assert [p.name for p in paths] == ["sub-01_bold_run-1.nii.gz", "sub-01_bold_run-2.nii.gz"]
    assert [nib.load(p).shape for p in paths] == [(64, 64, 18, 3), (64, 64, 10, 3)]
    assert (tmp_path / "sub-01_bold_run-2.json").exists()


def test_bad_files_are_logged_and_a_missing_volume_is_listed(dicom_dir: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    files = sorted((dicom_dir / "siemens_mosaic_ep2d_vd13" / "dicom").iterdir())
    folder = _link_files([f for f in files if f.name != "IM-0001-0003.dcm"], tmp_path / "gap")
    cut = folder / "IM-0001-0003.dcm"  # volume 2, cut short by a crashed copy
    cut.write_bytes(files[2].read_bytes()[:200_000])
    (folder / "notes.txt").write_text("run 1: subject moved during volume 3\n" * 5)
    with caplog.at_level("WARNING", logger="scanner_bridge.dicom2nii"):
        [path] = dicom_series_to_nifti(folder, tmp_path / "gap.nii.gz", allow_missing=True)
    # The gap is kept (issue 20: volumes after it used to shift by one TR).
    data = np.asanyarray(nib.load(path).dataobj)
    assert data.shape[3] == 6 and not data[..., 2].any() and data[..., 3].any()
    reference = np.asanyarray(nib.load(files[0].parents[1] / "ref" / "2_ep2d_Asc.nii").dataobj)
    np.testing.assert_array_equal(data[..., 3:], reference[..., 3:])
    assert json.loads((tmp_path / "gap.json").read_text())["MissingVolumes"] == [2]
    logged = caplog.text
    assert f"skipped {cut}: incomplete: pixel data has" in logged
    assert f"skipped {folder / 'notes.txt'}: not a DICOM file" in logged
    assert "volume 2 missing" in logged


def test_empty_or_non_dicom_folders_give_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["dicom2nii", str(empty), str(tmp_path / "x.nii.gz")]) == 1
    assert f"{empty}: the folder holds no files" in capsys.readouterr().err

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "protocol.txt").write_text("EPI, TR 2 s\n" * 50)
    with pytest.raises(NoVolumesError, match=r"no fMRI volume .* 1 files .*protocol\.txt: not a DICOM file"):
        dicom_series_to_nifti(notes, tmp_path / "x.nii.gz")
    with pytest.raises(NoVolumesError, match="not a folder"):
        dicom_series_to_nifti(tmp_path / "absent", tmp_path / "x.nii.gz")
    assert not (tmp_path / "x.nii.gz").exists()


SERIES_DIRS = [
    "siemens_mosaic_ep2d_vd13", "siemens_mosaic_cmrr_vd13", "siemens_mosaic_b17_coronal", "siemens_mosaic_b17_sagittal",
    "siemens_mosaic_b17_jpeglossless", "siemens_mosaic_rt_e11_pyneal", "siemens_enh_xa10_vida", "siemens_enh_xa30_prisma",
    "siemens_enh_xa60_terrax", "siemens_interop_xa30_prisma", "ge_mr750_dv26_epi_nih", "ge_mr750_dv24_rt_mrdc_pyneal",
    "philips_achieva_epi_magdeburg",
]


@pytest.mark.parametrize("name", SERIES_DIRS)
def test_every_shared_series_converts_to_its_reference(dicom_dir: Path, tmp_path: Path, name: str) -> None:
    [path] = dicom_series_to_nifti(dicom_dir / name / "dicom", tmp_path / "bold.nii.gz")
    reference_path = min((dicom_dir / name).glob("ref*/*.nii*"))
    reference = nib.load(reference_path)
    written = nib.load(path)
    n_volumes = written.shape[3]
    # The interoperability export holds 5 of its reference's 20 volumes.
    expected = np.asarray(reference.dataobj)[..., :n_volumes]
    assert written.shape == expected.shape
    if written.get_data_dtype().kind == "f":  # Philips floating-point values
        np.testing.assert_allclose(np.asarray(written.dataobj), expected, rtol=2e-7)
    else:
        np.testing.assert_array_equal(np.asarray(written.dataobj), expected)
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-3)
    sidecar = json.loads((tmp_path / "bold.json").read_text())
    [reference_sidecar] = reference_path.parent.glob(reference_path.name.split(".nii")[0] + ".json*")
    raw = reference_sidecar.read_bytes()
    expected_sidecar = json.loads(gzip.decompress(raw) if reference_sidecar.suffix == ".gz" else raw)
    assert sidecar["RepetitionTime"] == pytest.approx(expected_sidecar["RepetitionTime"], abs=1e-3)


def test_a_missing_or_corrupt_volume_is_an_error_unless_allowed(dicom_dir: Path, tmp_path: Path, capsys) -> None:
    # Issue 20, failure 9: a corrupt volume was dropped with exit status 0.
    files = sorted((dicom_dir / "siemens_mosaic_ep2d_vd13" / "dicom").iterdir())
    folder = _link_files([f for f in files if f.name not in ("IM-0001-0003.dcm", "IM-0001-0006.dcm")], tmp_path / "bad")
    (folder / "IM-0001-0003.dcm").write_bytes(files[2].read_bytes()[:3000])  # a middle volume, corrupt
    (folder / "IM-0001-0006.dcm").write_bytes(files[5].read_bytes()[:3000])  # the last one: no gap shows it
    assert main(["dicom2nii", str(folder), str(tmp_path / "out.nii.gz")]) == 1
    err = capsys.readouterr().err
    assert "run 1 volume(s) 2" in err and "2 corrupt image file(s)" in err and "--allow-missing" in err
    assert not (tmp_path / "out.nii.gz").exists()
    assert main(["dicom2nii", str(folder), str(tmp_path / "out.nii.gz"), "--allow-missing"]) == 0
    assert nib.load(tmp_path / "out.nii.gz").shape[3] == 5
    # Control: the complete folder converts with status 0.
    assert main(["dicom2nii", str(_link_files(files, tmp_path / "ok")), str(tmp_path / "ok.nii.gz")]) == 0
