"""read_dicom on real files, cut and corrupted copies of them."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from scanner_bridge.dicom_file import (
    DicomFileError,
    IncompleteDicomError,
    InvalidDicomError,
    pixel_array,
    read_dicom,
)

MOSAIC = Path("siemens_mosaic_ep2d_vd13/dicom/IM-0001-0001.dcm")
JPEG = Path("siemens_mosaic_b17_jpeglossless/dicom/jpg1.dcm")
INTEROP_DIR = Path("siemens_interop_xa30_prisma/dicom/7001_func-bold_task-fa_run-1")


def _copy(tmp_path: Path, raw: bytes, name: str = "copy.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def test_reads_a_plain_file_completely(dicom_dir: Path) -> None:
    ds = read_dicom(dicom_dir / MOSAIC)
    assert ds.Rows == 384 and len(ds.PixelData) == 384 * 384 * 2


def test_reads_gzip_by_magic_bytes_not_name(dicom_dir: Path, tmp_path: Path) -> None:
    source = sorted((dicom_dir / INTEROP_DIR).iterdir())[0]
    assert read_dicom(source).SeriesNumber == 7001
    renamed = _copy(tmp_path, source.read_bytes(), "no_extension")
    assert read_dicom(renamed).SOPInstanceUID == read_dicom(source).SOPInstanceUID
    # and a plain file named .gz is read as the plain file it is
    plain = _copy(tmp_path, (dicom_dir / MOSAIC).read_bytes(), "plain.dcm.gz")
    assert read_dicom(plain).Rows == 384


def test_decodes_jpeg_lossless(dicom_dir: Path) -> None:
    ds = read_dicom(dicom_dir / JPEG)
    pixels = pixel_array(ds, "jpg1.dcm")
    assert pixels.shape == (516, 516) and pixels.dtype == np.uint16 and pixels.max() > 0


@pytest.mark.parametrize("keep", [0, 100, 131, 600, 5000, -300_000, -100, -1])
def test_a_file_cut_anywhere_is_incomplete(dicom_dir: Path, tmp_path: Path, keep: int) -> None:
    raw = (dicom_dir / MOSAIC).read_bytes()
    path = _copy(tmp_path, raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    with pytest.raises(IncompleteDicomError) as caught:
        read_dicom(path)
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {caught.value.reason}"


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # pydicom's, expected here
@pytest.mark.parametrize("missing", [1, 8, 50_000])
def test_cut_jpeg_pixel_data_is_incomplete(dicom_dir: Path, tmp_path: Path, missing: int) -> None:
    raw = (dicom_dir / JPEG).read_bytes()
    with pytest.raises(IncompleteDicomError, match="delimiter|pixel"):
        read_dicom(_copy(tmp_path, raw[:-missing]))


def test_a_cut_gzip_stream_is_incomplete(dicom_dir: Path, tmp_path: Path) -> None:
    raw = sorted((dicom_dir / INTEROP_DIR).iterdir())[0].read_bytes()
    with pytest.raises(IncompleteDicomError, match="gzip"):
        read_dicom(_copy(tmp_path, raw[: len(raw) // 2], "cut.dcm.gz"))


def test_garbage_and_text_are_invalid(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    garbage = _copy(tmp_path, rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "garbage.dcm")
    with pytest.raises(InvalidDicomError, match="not a DICOM file"):
        read_dicom(garbage)
    with pytest.raises(InvalidDicomError, match="not a DICOM file"):
        read_dicom(_copy(tmp_path, b"scanner notes\n" * 20, "notes.txt"))
    with pytest.raises(InvalidDicomError, match="corrupt gzip"):
        read_dicom(_copy(tmp_path, b"\x1f\x8b\x08\x00" + b"\xff" * 200, "bad.dcm.gz"))
    with pytest.raises(InvalidDicomError, match="cannot read"):
        read_dicom(tmp_path / "vanished.dcm")


def test_dicom_without_an_image_is_invalid(tmp_path: Path) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    path = tmp_path / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidDicomError, match="holds no image"):
        read_dicom(path)


def test_undecodable_pixel_data_is_invalid(dicom_dir: Path) -> None:
    ds = read_dicom(dicom_dir / MOSAIC)
    ds.PixelData = b"\x00" * 10
    with pytest.raises(InvalidDicomError, match="cannot be decoded") as caught:
        pixel_array(ds, "peer 10.0.0.1")
    assert isinstance(caught.value, DicomFileError)
