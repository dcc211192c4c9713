"""Reading one DICOM file as a scanner writes it, and telling "not finished yet" from "broken".

A scanner export folder is read while the scanner is still writing it, so a file can be seen
half-written. :func:`read_dicom` parses a file (plain, or gzip-compressed as the Siemens XA
interoperability export writes it, detected by its magic bytes, not its name) and checks that
it is complete: the whole header parses and the pixel data is as long as Rows x Columns x
bytes per pixel x frames (for compressed transfer syntaxes, that the encapsulated pixel data
ends with its sequence delimiter). It raises

* :class:`IncompleteDicomError` when the file looks like the beginning of a DICOM file (too
  short, cut inside an element, pixel data shorter than the image): the caller retries later;
* :class:`InvalidDicomError` when it can never become a readable image (no ``DICM`` prefix,
  corrupt gzip stream, no image in it): the caller rejects it.

Both carry ``.path`` and ``.reason``. :func:`pixel_array` decodes the pixel data (JPEG-lossless
through pydicom's pylibjpeg plugin) and turns decoder failures into :class:`InvalidDicomError`.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError

__all__ = [
    "DicomFileError",
    "IncompleteDicomError",
    "InvalidDicomError",
    "parse_dicom_bytes",
    "pixel_array",
    "read_dicom",
]

_GZIP_MAGIC = b"\x1f\x8b"
_PREAMBLE_END = 132  # 128-byte preamble + "DICM"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
# Image storage classes a scanner writes: one of these without PixelData is cut short, whereas
# other classes (reports, raw data, DICOMDIR) legitimately have none and are not images.
_IMAGE_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
})


class DicomFileError(Exception):
    """A DICOM file that cannot be used (yet); ``str(e)`` is ``"{path}: {reason}"``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class IncompleteDicomError(DicomFileError):
    """The file looks like a DICOM file still being written: read it again later."""


class InvalidDicomError(DicomFileError):
    """The file is not DICOM, is corrupt, or holds no image this bridge reads: final."""


def read_dicom(path: Path) -> Dataset:
    """Read and completeness-check one DICOM file (plain or gzip-compressed).

    Raises :class:`IncompleteDicomError` or :class:`InvalidDicomError` (see the module
    docstring); a file that vanished or cannot be opened is an :class:`InvalidDicomError`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidDicomError(path, f"cannot read file: {exc.strerror or exc}") from exc
    return parse_dicom_bytes(raw, path)


def parse_dicom_bytes(raw: bytes, origin: Path | str) -> Dataset:
    """Parse the bytes of one DICOM file (as :func:`read_dicom`); ``origin`` names it in errors."""
    if raw[:2] == _GZIP_MAGIC:
        raw = _gunzip(raw, origin)
    if len(raw) < _PREAMBLE_END:
        raise IncompleteDicomError(origin, f"only {len(raw)} bytes, shorter than a DICOM preamble")
    if raw[128:132] != b"DICM":
        raise InvalidDicomError(origin, "not a DICOM file (no 'DICM' prefix after the 128-byte preamble)")
    try:
        ds = pydicom.dcmread(io.BytesIO(raw))
    except (EOFError, struct.error, PydicomInvalidDicomError, OverflowError) as exc:
        # Cut inside an element or the file meta: the rest has not been written yet.
        raise IncompleteDicomError(origin, f"DICOM header ends early ({exc})") from exc
    except Exception as exc:  # pydicom raises many types on malformed data
        raise InvalidDicomError(origin, f"DICOM header does not parse: {exc}") from exc
    # A cut inside encapsulated pixel data parses without error but leaves PixelData out;
    # _check_complete catches that along with short native pixel data.
    _check_complete(ds, raw, origin)
    return ds


def pixel_array(ds: Dataset, origin: Path | str) -> np.ndarray:
    """Decode the pixel data (native or compressed) of a dataset read by :func:`read_dicom`:
    (rows, columns), or (frames, rows, columns) for multi-frame images."""
    native = _native_pixels(ds)
    if native is not None:
        return native
    try:
        return ds.pixel_array
    except Exception as exc:  # the decoders (pylibjpeg, numpy handler) raise assorted types
        raise InvalidDicomError(origin, f"pixel data cannot be decoded: {exc}") from exc


def _native_pixels(ds: Dataset) -> np.ndarray | None:
    """Uncompressed little-endian grey pixels as a view on the bytes, or None for anything else.

    pydicom's general pixel pipeline costs milliseconds per call, which is most of the time
    spent on a 64x64 slice file; this is the layout scanners write for MR.
    """
    syntax = ds.file_meta.get("TransferSyntaxUID")
    bits = int(ds.get("BitsAllocated", 0) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if (syntax not in _NATIVE_LITTLE_ENDIAN or bits not in (8, 16, 32)
            or int(ds.get("SamplesPerPixel", 1) or 1) != 1
            # signed values narrower than their container need pydicom's sign extension
            or (signed and int(ds.get("BitsStored", bits) or bits) != bits)):
        return None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns = int(ds.Rows), int(ds.Columns)
    count = frames * rows * columns
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    if len(ds.PixelData) < count * dtype.itemsize:
        return None  # let pydicom report the shortfall
    pixels = np.frombuffer(ds.PixelData, dtype=dtype, count=count)
    return pixels.reshape((frames, rows, columns) if frames > 1 else (rows, columns))


def _gunzip(raw: bytes, origin: Path | str) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise IncompleteDicomError(origin, "gzip stream ends early") from exc
    except (OSError, zlib.error) as exc:
        raise InvalidDicomError(origin, f"corrupt gzip stream: {exc}") from exc


def _check_complete(ds: Dataset, raw: bytes, origin: Path | str) -> None:
    if "PixelData" not in ds:
        sop_class = str(ds.file_meta.get("MediaStorageSOPClassUID") or ds.get("SOPClassUID", ""))
        if sop_class in _IMAGE_SOP_CLASSES or "Rows" in ds:
            raise IncompleteDicomError(origin, "image file ends before its pixel data")
        raise InvalidDicomError(origin, f"holds no image (SOP class {sop_class or 'unknown'})")
    for tag in ("Rows", "Columns", "BitsAllocated"):
        if tag not in ds:
            raise InvalidDicomError(origin, f"image without {tag}")
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        # pydicom keeps the fragments but not the delimiter: check the delimiter is on disk.
        if _SEQUENCE_DELIMITER not in raw[-4096:]:
            raise IncompleteDicomError(origin, "encapsulated pixel data ends before its sequence delimiter")
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    expected = int(ds.Rows) * int(ds.Columns) * samples * frames * int(ds.BitsAllocated) // 8
    actual = len(ds.PixelData)
    if actual < expected:
        raise IncompleteDicomError(origin, f"pixel data has {actual} of {expected} bytes")
