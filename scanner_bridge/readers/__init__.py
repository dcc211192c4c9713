"""DICOM readers, one module per vendor/format, all with the :class:`SeriesReader` interface.

:func:`reader_for` picks the reader class of a dataset; the assembler makes one instance per run.
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from scanner_bridge.readers.base import ReaderError, SeriesReader, Slice, SliceGeometry, build_volume, header_stamp
from scanner_bridge.readers.ge import GEReader
from scanner_bridge.readers.philips import PhilipsReader
from scanner_bridge.readers.siemens_enhanced import SiemensEnhancedReader
from scanner_bridge.readers.siemens_interop import SiemensInteropReader
from scanner_bridge.readers.siemens_mosaic import SiemensMosaicReader

__all__ = [
    "FORMAT_TAGS",
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
    "header_stamp",
    "reader_for",
]

#: The only elements a reader's ``accepts`` may read, and the character set their text is
#: decoded with: files alike in these have the same reader (the assembler reuses the last
#: file's when their bytes are the same).
FORMAT_TAGS: tuple[int, ...] = tuple(Tag(k) for k in ("SOPClassUID", "Manufacturer", "ImageType", "SpecificCharacterSet"))

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
