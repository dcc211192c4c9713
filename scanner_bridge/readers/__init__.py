"""DICOM readers, one module per vendor/format, all with the :class:`SeriesReader` interface.

:func:`reader_for` picks the reader class of a dataset; the assembler makes one instance per run.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from scanner_bridge.readers.base import ReaderError, SeriesReader, Slice, SliceGeometry, build_volume
from scanner_bridge.readers.ge import GEReader
from scanner_bridge.readers.philips import PhilipsReader
from scanner_bridge.readers.siemens_enhanced import SiemensEnhancedReader
from scanner_bridge.readers.siemens_interop import SiemensInteropReader
from scanner_bridge.readers.siemens_mosaic import SiemensMosaicReader

__all__ = [
    "READERS",
    "GEReader",
    "PhilipsReader",
    "ReaderError",
    "SeriesReader",
    "SiemensEnhancedReader",
    "SiemensInteropReader",
    "SiemensMosaicReader",
    "Slice",
    "SliceGeometry",
    "build_volume",
    "reader_for",
]

READERS: tuple[type[SeriesReader], ...] = (
    SiemensMosaicReader,
    SiemensEnhancedReader,
    SiemensInteropReader,
    GEReader,
    PhilipsReader,
)


def reader_for(ds: Dataset) -> type[SeriesReader]:
    """The reader class for ``ds``; :class:`ReaderError` naming what it is when none reads it."""
    for reader in READERS:
        if reader.accepts(ds):
            return reader
    raise ReaderError(
        f"unsupported image: manufacturer {str(ds.get('Manufacturer', '')).strip() or 'unknown'!r}, "
        f"SOP class {ds.get('SOPClassUID', 'unknown')}, image type {'/'.join(map(str, ds.get('ImageType', [])))}"
        " (readers: " + ", ".join(r.format_name for r in READERS) + ")"
    )
