"""Siemens classic mosaics (syngo VB/VD/VE, e.g. ``ep2d_bold`` and CMRR, incl. real-time export).

One file is one volume: the slices are tiled into one big image. The CSA image header (read
with ``nibabel.nicom.csareader``) says how many tiles hold slices (``NumberOfImagesInMosaic``:
the grid can have empty tiles), which way the slices go (``SliceNormalVector``) and when each
was acquired (``MosaicRefAcqTimes``, ms; see ``_slice_times`` for the CMRR multiband
first-volume bug). ImagePositionPatient is that of the whole mosaic image, as if it were one
slice; the first tile's position is shifted by half the mosaic minus half a tile, in both
directions (as dcm2niix and nibabel do). The volume index is AcquisitionNumber - 1.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
from pydicom.dataset import Dataset

from scanner_bridge.dicom_file import pixel_array
from scanner_bridge.readers.base import ReaderError, SeriesReader, Slice, rescaled

with warnings.catch_warnings():
    # nibabel.nicom warns on import that its DICOM *wrappers* are experimental; only its CSA
    # header parser is used here.
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader

__all__ = ["SiemensMosaicReader"]

_COMMENT_MB = re.compile(r"\bMB(\d+)")
_PROTOCOL_MB = re.compile(r"sSliceAcceleration\.lMultiBandFactor\s*=\s*(\d+)")


class SiemensMosaicReader(SeriesReader):
    format_name = "Siemens mosaic"
    keeps_stack_order = True

    @classmethod
    def accepts(cls, ds: Dataset) -> bool:
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        return "SIEMENS" in str(ds.get("Manufacturer", "")).upper() and "MOSAIC" in image_type

    def _files_per_volume(self, ds: Dataset) -> int:
        return 1

    def volume_index(self, ds: Dataset) -> int:
        return int(ds.AcquisitionNumber) - 1

    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        csa = _csa(ds)
        n = _csa_int(csa, "NumberOfImagesInMosaic")
        normal = np.asarray(_csa_vector(csa, "SliceNormalVector", 3))
        times_ms = _csa_optional(csa, "MosaicRefAcqTimes")
        first_tile = _csa_optional(csa, "ProtocolSliceNumber")
        tiles = math.ceil(math.sqrt(n))
        mosaic_rows, mosaic_cols = int(ds.Rows), int(ds.Columns)
        if mosaic_rows % tiles or mosaic_cols % tiles:
            raise ReaderError(f"mosaic {mosaic_rows}x{mosaic_cols} does not split into {tiles}x{tiles} tiles")
        rows, cols = mosaic_rows // tiles, mosaic_cols // tiles
        pixels = pixel_array(ds, origin)
        tiled = pixels.reshape(tiles, rows, tiles, cols).transpose(0, 2, 1, 3).reshape(tiles * tiles, rows, cols)[:n]
        tiled = rescaled(tiled, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        geometry = self.reference_geometry
        row_spacing, col_spacing = geometry.pixel_spacing
        corner = np.asarray([float(v) for v in ds.ImagePositionPatient])
        first = (corner
                 + geometry.row_cosine * col_spacing * (mosaic_cols - cols) / 2.0
                 + geometry.column_cosine * row_spacing * (mosaic_rows - rows) / 2.0)
        step = normal / np.linalg.norm(normal) * geometry.slice_spacing
        times = self._slice_times(ds, csa_times=times_ms, n=n)
        out = [Slice(pixels=tiled[k], position=first + k * step, time=times[k]) for k in range(n)]
        if first_tile and int(first_tile[0]) > 0:
            # Stored reversed (CSA ProtocolSliceNumber of tile 1 is not the first slice):
            # dcm2niix flips such mosaics back.
            out.reverse()
        return out

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


def _csa(ds: Dataset) -> dict:
    try:
        csa = csareader.get_csa_header(ds, "image")
    except csareader.CSAReadError as exc:
        raise ReaderError(f"unreadable Siemens CSA image header: {exc}") from exc
    if csa is None:
        raise ReaderError("Siemens mosaic without a CSA image header (0029,1010)")
    return csa


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
