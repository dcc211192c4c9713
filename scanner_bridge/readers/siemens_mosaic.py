"""Siemens classic mosaics (syngo VB/VD/VE, e.g. ``ep2d_bold`` and CMRR, incl. real-time export).

One file is one volume: the slices are tiled into one big image. The CSA image header (read
with ``nibabel.nicom.csareader``) says how many tiles hold slices (``NumberOfImagesInMosaic``:
the grid can have empty tiles), which way the slices go (``SliceNormalVector``) and when each
was acquired (``MosaicRefAcqTimes``, ms; see ``_slice_times`` for the CMRR multiband
first-volume bug). ImagePositionPatient is that of the whole mosaic image, as if it were one
slice; the first tile's position is shifted by half the mosaic minus half a tile, in both
directions (as dcm2niix and nibabel do). The volume index is AcquisitionNumber - 1.

nibabel parses a run's first CSA header whole; in later files only the records of the tags the
slices need whose bytes changed are parsed (:class:`_CsaRecords`): the rest of a header, tens
of tags, is the same from file to file and costs more to parse than the rest of the file.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from scanner_bridge.dicom_file import pixel_array
from scanner_bridge.readers.base import ReaderError, SeriesReader, Slice, private_value, rescaled

with warnings.catch_warnings():
    # nibabel.nicom warns on import that its DICOM *wrappers* are experimental; only its CSA
    # header parser is used here.
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader

__all__ = ["SiemensMosaicReader"]

_COMMENT_MB = re.compile(r"\bMB(\d+)")
_PROTOCOL_MB = re.compile(r"sSliceAcceleration\.lMultiBandFactor\s*=\s*(\d+)")
_CSA_CREATOR = "SIEMENS CSA HEADER"
# The CSA image header tags the slices are made from.
_CSA_NEEDED = ("NumberOfImagesInMosaic", "SliceNormalVector", "MosaicRefAcqTimes", "ProtocolSliceNumber")


@dataclass(frozen=True)
class _MosaicCsa:
    """What a mosaic's slices need from its CSA image header."""

    n_images: int
    normal: np.ndarray
    times_ms: list | None
    first_tile: list | None

    @classmethod
    def from_csa(cls, csa: dict) -> _MosaicCsa:
        return cls(
            n_images=_csa_int(csa, "NumberOfImagesInMosaic"),
            normal=np.asarray(_csa_vector(csa, "SliceNormalVector", 3)),
            times_ms=_csa_optional(csa, "MosaicRefAcqTimes"),
            first_tile=_csa_optional(csa, "ProtocolSliceNumber"),
        )


@dataclass(frozen=True)
class _CsaRecords:
    """The records of the needed tags in the last CSA2 header read, and what nibabel made of them.

    A CSA2 header is a sequence of tag records, each starting with its name (64 bytes,
    NUL-terminated) and parsed from its own bytes alone. A tag's *window* runs from its name to
    the name of the tag that followed it in the first header of the run (or to the end), so it
    holds the whole record provided both names occur once in the header (a name found a second
    time, inside some value, makes it ambiguous). :meth:`follow` reads another header of the run:
    records whose bytes are unchanged keep their values, a changed one (the slice times jitter in
    their last digit from volume to volume) is parsed alone by nibabel.
    """

    bounds: tuple[tuple[bytes, bytes | None], ...]
    windows: tuple[bytes | None, ...]
    tags: Mapping[str, dict]
    fields: _MosaicCsa

    @classmethod
    def of(cls, raw: bytes, csa: dict) -> _CsaRecords | None:
        """The records of ``raw``, which nibabel parsed as ``csa`` (None when they cannot be located)."""
        fields = _MosaicCsa.from_csa(csa)
        if raw[:4] != b"SV10":
            return None  # CSA1 records are sized from the header's first tag: parse it whole
        names = list(csa["tags"])
        bounds = []
        for name in _CSA_NEEDED:
            following = None
            if name in csa["tags"]:
                position = names.index(name) + 1
                following = _csa_marker(names[position]) if position < len(names) else None
            bounds.append((_csa_marker(name), following))
        windows = _windows(raw, bounds)
        if windows is None or any(w is None for w, name in zip(windows, _CSA_NEEDED) if name in csa["tags"]):
            return None  # ambiguous, or a name without its NUL (64 characters): not locatable
        tags = {name: csa["tags"][name] for name in _CSA_NEEDED if name in csa["tags"]}
        return cls(tuple(bounds), windows, tags, fields)

    def follow(self, raw: bytes) -> _CsaRecords | None:
        """The records of ``raw``, another header of the run; None when it must be parsed whole
        (not CSA2, a needed tag not locatable, come or gone, or its record unreadable)."""
        windows = _windows(raw, self.bounds) if raw[:4] == b"SV10" else None
        if windows is None:
            return None
        if windows == self.windows:
            return self
        tags = dict(self.tags)
        for name, old, new in zip(_CSA_NEEDED, self.windows, windows):
            if new == old:
                continue
            if new is None or old is None:
                return None
            try:
                parsed = csareader.read(raw[:8] + struct.pack("<2I", 1, 77) + new)["tags"]
            except (csareader.CSAReadError, struct.error):
                return None
            if list(parsed) != [name]:
                return None
            tags[name] = parsed[name]
        return _CsaRecords(self.bounds, windows, tags, _MosaicCsa.from_csa({"tags": tags}))


class SiemensMosaicReader(SeriesReader):
    format_name = "Siemens mosaic"
    keeps_stack_order = True

    @classmethod
    def accepts(cls, ds: Dataset) -> bool:
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        return "SIEMENS" in str(ds.get("Manufacturer", "")).upper() and "MOSAIC" in image_type

    def __init__(self, first: Dataset) -> None:
        super().__init__(first)
        self._csa_records: _CsaRecords | None = None

    def _files_per_volume(self, ds: Dataset) -> int:
        return 1

    def volume_index(self, ds: Dataset) -> int:
        return int(ds.AcquisitionNumber) - 1

    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        csa = self._csa_fields(ds)
        n, normal, times_ms, first_tile = csa.n_images, csa.normal, csa.times_ms, csa.first_tile
        tiles = math.ceil(math.sqrt(n))
        mosaic_rows, mosaic_cols = int(ds.Rows), int(ds.Columns)
        if mosaic_rows % tiles or mosaic_cols % tiles:
            raise ReaderError(f"mosaic {mosaic_rows}x{mosaic_cols} does not split into {tiles}x{tiles} tiles")
        rows, cols = mosaic_rows // tiles, mosaic_cols // tiles
        pixels = rescaled(pixel_array(ds, origin), float(ds.get("RescaleSlope", 1) or 1),
                          float(ds.get("RescaleIntercept", 0) or 0))
        # Tiles are views into the mosaic: build_volume copies each pixel once, into the volume.
        grid = pixels.reshape(tiles, rows, tiles, cols)
        geometry = self.reference_geometry
        row_spacing, col_spacing = geometry.pixel_spacing
        corner = np.asarray([float(v) for v in ds.ImagePositionPatient])
        first = (corner
                 + geometry.row_cosine * col_spacing * (mosaic_cols - cols) / 2.0
                 + geometry.column_cosine * row_spacing * (mosaic_rows - rows) / 2.0)
        step = normal / np.linalg.norm(normal) * geometry.slice_spacing
        times = self._slice_times(ds, csa_times=times_ms, n=n)
        positions = first + np.arange(n)[:, np.newaxis] * step
        out = [Slice(pixels=grid[k // tiles, :, k % tiles], position=positions[k], time=times[k]) for k in range(n)]
        if first_tile and int(first_tile[0]) > 0:
            # Stored reversed (CSA ProtocolSliceNumber of tile 1 is not the first slice):
            # dcm2niix flips such mosaics back.
            out.reverse()
        return out

    def _csa_fields(self, ds: Dataset) -> _MosaicCsa:
        raw = private_value(ds, 0x0029, _CSA_CREATOR, 0x10)
        if not isinstance(raw, bytes):
            raise ReaderError("Siemens mosaic without a CSA image header (0029,1010)")
        records = self._csa_records.follow(raw) if self._csa_records is not None else None
        if records is None:
            try:
                csa = csareader.read(raw)
            except (csareader.CSAReadError, struct.error) as exc:
                raise ReaderError(f"unreadable Siemens CSA image header: {exc}") from exc
            records = _CsaRecords.of(raw, csa)
            if records is None:
                return _MosaicCsa.from_csa(csa)
        self._csa_records = records
        return records.fields

    def _slice_times(self, ds: Dataset, csa_times: list | None, n: int) -> list[float | None]:
        if not csa_times or len(csa_times) < n:
            return [None] * n
        times = [float(t) / 1000.0 for t in csa_times[:n]]
        if max(times) < self.tr:
            return times
        # CMRR multiband (and early product SMS) write single-band times into the first
        # volume of a run (eauerbach/CMRR-MB#29), which run past TR. Their first n/MB entries
        # are right, and slice k is excited with slice k mod n/MB.
        factor = _multiband_factor(ds)
        if factor > 1 and n % factor == 0:
            folded = [times[k % (n // factor)] for k in range(n)]
            if max(folded) < self.tr:
                return folded
        return [None] * n


def _multiband_factor(ds: Dataset) -> int:
    """MB factor from CMRR's ImageComments ("Unaliased MB2/PE2") or the Phoenix protocol."""
    match = _COMMENT_MB.search(str(ds.get("ImageComments", "")))
    if match:
        return int(match.group(1))
    try:
        series = csareader.get_csa_header(ds, "series")
    except csareader.CSAReadError:
        return 1
    protocol = _csa_optional(series, "MrPhoenixProtocol") if series else None
    match = _PROTOCOL_MB.search(str(protocol[0])) if protocol else None
    return int(match.group(1)) if match else 1


def _csa_marker(name: str) -> bytes:
    return name.encode("latin-1") + b"\0"


def _windows(raw: bytes, bounds: Sequence[tuple[bytes, bytes | None]]) -> tuple[bytes | None, ...] | None:
    """Each tag's window in ``raw`` (see :class:`_CsaRecords`; None: the tag is absent), or None
    if a window is ambiguous."""
    windows: list[bytes | None] = []
    for marker, following in bounds:
        start = raw.find(marker)
        if start < 0:
            windows.append(None)
            continue
        if raw.count(marker) != 1:
            return None
        if following is None:
            windows.append(raw[start:])
            continue
        end = raw.find(following, start + len(marker))
        if end < 0 or raw.count(following) != 1:
            return None
        windows.append(raw[start:end])
    return tuple(windows)


def _csa_optional(csa: dict, name: str) -> list | None:
    tag = csa["tags"].get(name)
    if not tag or tag["n_items"] == 0:
        return None
    return tag["items"]


def _csa_int(csa: dict, name: str) -> int:
    items = _csa_optional(csa, name)
    if not items:
        raise ReaderError(f"Siemens mosaic without CSA {name}")
    return int(items[0])


def _csa_vector(csa: dict, name: str, length: int) -> list[float]:
    items = _csa_optional(csa, name)
    if not items or len(items) < length:
        raise ReaderError(f"Siemens mosaic without CSA {name}")
    return [float(v) for v in items[:length]]
