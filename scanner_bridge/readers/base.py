"""What every reader shares: the reader interface, and dcm2niix's conventions, written once.

A reader knows how one vendor/format splits a run into files, volumes and slices. The
assembler (``scanner_bridge.assembly``) makes one reader per run from the run's first file
and asks it, for each file: which run (:meth:`SeriesReader.run_key`), which volume
(:meth:`~SeriesReader.volume_index`), which place in that volume (:meth:`~SeriesReader.slot`),
whether the file fits the run (:meth:`~SeriesReader.mismatch`), and the file's 2D slices
(:meth:`~SeriesReader.slices`). How many files make one volume comes from the headers
(:attr:`~SeriesReader.files_per_volume`), never from counting what has arrived.

Files of one run repeat the run's constant elements byte for byte, and pydicom converts an
element's value only when it is read, which costs more than the rest of a file's checks. So
:meth:`SeriesReader.mismatch` first compares the undecoded bytes of the elements it checks
(:attr:`SeriesReader.run_constant_tags`, see :func:`header_stamp`) with those of the last file
that passed; only a file that differs is decoded and checked in full (and rejected with its
reason if it does not fit).

Geometry and voxel order follow dcm2niix, so that a volume equals the NIfTI dcm2niix writes:

* the NIfTI x axis runs along DICOM columns, y along rows, and the rows are flipped, as
  dcm2niix does by default (so y grows towards anterior in a standard axial);
* slices of a slice-per-file series or of an enhanced multi-frame file are ordered by their
  position along the slice normal ``row_cosine x column_cosine``, ascending (dcm2niix flips the
  stack when the last slice lies behind the first);
* a Siemens mosaic keeps its tile order, whichever way its CSA slice normal points (dcm2niix
  keeps "ascending still ascending" and lets the affine carry a negative determinant), except
  that a mosaic whose CSA ``ProtocolSliceNumber`` of the first tile is not 0 is stored
  reversed, which dcm2niix undoes;
* the affine maps voxel indices to RAS+ mm (DICOM is LPS: x and y change sign); its third
  column is the step between consecutive slice centres.

Slice times are seconds from the first slice of the volume, in the NIfTI slice order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from scanner_bridge.dicom_file import pixel_array
from scanner_bridge.volume import AcquiredVolume

__all__ = [
    "ReaderError",
    "Slice",
    "SliceGeometry",
    "SeriesReader",
    "build_volume",
    "dicom_time_seconds",
    "dicom_datetime_seconds",
    "geometry_from",
    "header_stamp",
    "private_value",
    "rescaled",
    "single_slice",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ReaderError(ValueError):
    """A file of a supported format whose headers lack or contradict what its reader needs;
    the message is the reason (the assembler adds the file's name)."""


@dataclass(frozen=True)
class SliceGeometry:
    """In-plane geometry shared by every slice of a run (DICOM conventions, LPS mm).

    ``row_cosine`` is the direction of increasing column index (first triplet of
    ImageOrientationPatient), ``column_cosine`` that of increasing row index.
    ``pixel_spacing`` is DICOM's (between rows, between columns). ``slice_spacing`` is used
    only for a single-slice volume, whose stack gives no step.
    """

    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_spacing: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)

    def differs_from(self, other: SliceGeometry) -> str | None:
        """Why ``other`` cannot share a volume with this geometry, or None."""
        # Tolerance as dcm2niix's: GE rounds orientation differently from slice to slice.
        if not (np.allclose(self.row_cosine, other.row_cosine, atol=1e-4)
                and np.allclose(self.column_cosine, other.column_cosine, atol=1e-4)):
            return "image orientation differs from its run"
        if not np.allclose(self.pixel_spacing, other.pixel_spacing, atol=1e-4):
            return f"pixel spacing {other.pixel_spacing} differs from its run's {self.pixel_spacing}"
        return None


@dataclass(frozen=True)
class Slice:
    """One 2D slice: pixels (rows, columns) with their scaling applied, the position of its
    first pixel (ImagePositionPatient, LPS mm) and its acquisition time (seconds on any clock
    shared by the volume's slices, or None)."""

    pixels: np.ndarray
    position: np.ndarray
    time: float | None


class SeriesReader(ABC):
    """Reads the files of one run of one vendor/format; one instance per run.

    Subclasses set :attr:`format_name` and :attr:`keeps_stack_order`, implement
    :meth:`accepts`, :meth:`volume_index`, :meth:`slices` and :meth:`_files_per_volume`,
    and may override :meth:`run_key`, :meth:`slot`, :meth:`geometry` (one whose geometry is
    not in the top-level elements of :attr:`run_constant_tags` sets it to None).
    """

    format_name: ClassVar[str]
    # True when slices() already returns a volume's slices in dcm2niix's order (mosaics).
    keeps_stack_order: ClassVar[bool] = False
    #: The elements :meth:`mismatch` reads (matrix, echo, and the top-level geometry of
    #: :meth:`geometry`); None where they are not all top-level (enhanced files), which turns
    #: the byte comparison off.
    run_constant_tags: ClassVar[tuple[int, ...] | None] = tuple(Tag(k) for k in (
        "Rows", "Columns", "EchoNumbers", "ImageOrientationPatient", "PixelSpacing",
        "SpacingBetweenSlices", "SliceThickness",
    ))

    def __init__(self, first: Dataset) -> None:
        # Taken before the reads below decode these elements: the run's next files are stamped
        # undecoded too.
        first_stamp = header_stamp(first, self.run_constant_tags) if self.run_constant_tags else None
        self.files_per_volume: int = self._files_per_volume(first)
        self.tr: float = self.repetition_time(first)
        self.description: str = _description(first)
        self.rows: int = int(first.Rows)
        self.columns: int = int(first.Columns)
        self.reference_geometry: SliceGeometry = self.geometry(first)
        self.echo = str(first.get("EchoNumbers", ""))
        self._fitting_stamp: tuple[object, ...] | None = None
        if first_stamp is not None and self._check_fit(first) is None:
            self._fitting_stamp = first_stamp

    @classmethod
    @abstractmethod
    def accepts(cls, ds: Dataset) -> bool:
        """Whether this reader reads ``ds``'s format."""

    @classmethod
    def run_key(cls, ds: Dataset) -> str:
        """A key shared by every file of one run and by no file of another run."""
        return str(ds.SeriesInstanceUID)

    @abstractmethod
    def _files_per_volume(self, ds: Dataset) -> int:
        """How many files make one volume, from the headers."""

    @abstractmethod
    def volume_index(self, ds: Dataset) -> int:
        """0-based position of the file's volume in the run."""

    def slot(self, ds: Dataset) -> int:
        """0-based place of the file within its volume (0 when one file is one volume)."""
        return 0

    @abstractmethod
    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        """Decode the file's slices (pixel scaling applied)."""

    def geometry(self, ds: Dataset) -> SliceGeometry:
        """The file's in-plane geometry (top-level tags; enhanced files override)."""
        return geometry_from(ds, ds)

    def repetition_time(self, ds: Dataset) -> float:
        """TR in seconds."""
        return float(ds.RepetitionTime) / 1000.0

    def acquisition_time(self, ds: Dataset) -> float | None:
        """Start of the file's acquisition in seconds since midnight, when the header has it."""
        return dicom_time_seconds(ds.get("AcquisitionTime"))

    def acquisition_fields(self, ds: Dataset) -> dict[str, float | str]:
        """Non-identifying acquisition parameters for a BIDS sidecar (no names, dates, places)."""
        fields: dict[str, float | str] = {"Manufacturer": str(ds.get("Manufacturer", "")).strip()}
        for keyword, bids in (("ManufacturerModelName", "ManufacturersModelName"),
                              ("MagneticFieldStrength", "MagneticFieldStrength"),
                              ("EchoTime", "EchoTime"), ("FlipAngle", "FlipAngle")):
            value = _find(ds, keyword)
            if value is None and keyword == "EchoTime":
                value = _find(ds, "EffectiveEchoTime")  # enhanced MR: per-frame MR Echo item
            if value in (None, ""):
                continue
            if keyword == "EchoTime":
                fields[bids] = float(value) / 1000.0
            elif keyword in ("MagneticFieldStrength", "FlipAngle"):
                fields[bids] = float(value)
            else:
                fields[bids] = str(value)
        fields["SeriesDescription"] = self.description
        return fields

    def mismatch(self, ds: Dataset) -> str | None:
        """Why ``ds`` does not fit this run (matrix, echo, orientation, spacing), or None.

        A file whose :attr:`run_constant_tags` hold the same bytes as the last file that fitted
        fits too; any other is checked in full.
        """
        if self.run_constant_tags is None:
            return self._check_fit(ds)
        stamp = header_stamp(ds, self.run_constant_tags)
        if stamp == self._fitting_stamp:
            return None
        reason = self._check_fit(ds)
        if reason is None:
            self._fitting_stamp = stamp
        return reason

    def _check_fit(self, ds: Dataset) -> str | None:
        if int(ds.Rows) != self.rows or int(ds.Columns) != self.columns:
            return f"matrix {ds.Rows}x{ds.Columns} differs from its run's {self.rows}x{self.columns}"
        if str(ds.get("EchoNumbers", "")) != self.echo:
            # Echoes of one run would fill the same places: multi-echo runs are not assembled.
            return f"echo {ds.get('EchoNumbers')} differs from its run's echo {self.echo or 'unset'} (multi-echo is not read)"
        return self.reference_geometry.differs_from(self.geometry(ds))


def header_stamp(ds: Dataset, tags: Sequence[int]) -> tuple[object, ...]:
    """What ``tags`` hold in ``ds``, cheaply: the undecoded bytes (with their VR and encoding)
    of elements pydicom has not converted yet, the value of those it has, None when absent.
    Datasets with equal stamps hold equal values in these elements (for text other than CS and
    UI, list SpecificCharacterSet among ``tags``: the same bytes decode by it)."""
    stamp: list[object] = []
    for tag in tags:
        element = ds.get_item(tag)
        if element is None:
            stamp.append(None)
        elif isinstance(element, RawDataElement):
            stamp.append(("raw", element.VR, element.is_implicit_VR, element.is_little_endian, element.value))
        else:
            stamp.append(("value", element.VR, element.value))
    return tuple(stamp)


def geometry_from(orientation_ds: Dataset, measures_ds: Dataset) -> SliceGeometry:
    """Geometry from ImageOrientationPatient and PixelSpacing/SpacingBetweenSlices items."""
    iop = np.asarray([float(v) for v in orientation_ds.ImageOrientationPatient])
    spacing = tuple(float(v) for v in measures_ds.PixelSpacing)
    between = measures_ds.get("SpacingBetweenSlices") or measures_ds.get("SliceThickness") or 1.0
    return SliceGeometry(row_cosine=iop[:3], column_cosine=iop[3:],
                         pixel_spacing=(spacing[0], spacing[1]), slice_spacing=float(between))


def build_volume(
    *,
    series: str,
    index: int,
    slices: Sequence[Slice],
    geometry: SliceGeometry,
    keep_order: bool,
    tr: float,
    acquisition_time: float | None,
    source_files: Sequence[Path],
) -> AcquiredVolume:
    """Stack a volume's slices the way dcm2niix does (see the module docstring).

    Raises :class:`ReaderError` when two slices share a position (a wrong grouping).
    """
    if not slices:
        raise ValueError("a volume needs at least one slice")
    normal = geometry.normal
    ordered = list(slices)
    if not keep_order:
        ordered.sort(key=lambda s: float(np.dot(s.position, normal)))
    if not keep_order and len(ordered) > 1:
        depths = np.diff([float(np.dot(s.position, normal)) for s in ordered])
        if np.min(depths) < 1e-3:
            raise ReaderError("two slices of the volume lie at the same position")
    n, (rows, _) = len(ordered), ordered[0].pixels.shape
    if n > 1:
        step = (ordered[-1].position - ordered[0].position) / (n - 1)
        if not keep_order:
            # dcm2niix's step is along the normal: drop the in-plane jitter of rounded positions.
            step = normal * float(np.dot(step, normal))
    else:
        step = normal * geometry.slice_spacing
    row_spacing, column_spacing = geometry.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = geometry.row_cosine * column_spacing
    lps[:3, 1] = geometry.column_cosine * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = ordered[0].position
    # Flip the rows: voxel y = rows-1-row, so the origin moves to the last row.
    lps[:3, 3] = lps[:3, 3] + lps[:3, 1] * (rows - 1)
    lps[:3, 1] = -lps[:3, 1]
    affine = _LPS_TO_RAS @ lps
    # (x, y, z) = (column, flipped row, slice), written slice by slice into a C-ordered volume:
    # one copy of each pixel, half the cost of stacking (z, row, column) and then transposing.
    planes = [s.pixels[::-1].T for s in ordered]
    voxels = np.empty((*planes[0].shape, n), dtype=np.result_type(*(p.dtype for p in planes)))
    np.stack(planes, axis=-1, out=voxels)
    times = [s.time for s in ordered if s.time is not None]
    slice_times = None
    if len(times) == len(ordered):
        start = min(times)
        slice_times = tuple(round(t - start, 6) for t in times)
    return AcquiredVolume(series=series, index=index, voxels=voxels, affine=affine, tr=tr,
                          slice_times=slice_times, acquisition_time=acquisition_time,
                          source_files=tuple(source_files))


def single_slice(ds: Dataset, origin: str, *, time: float | None,
                 slope: float | None = None, intercept: float | None = None) -> Slice:
    """The one slice of a slice-per-file image; scaling from Rescale Slope/Intercept unless given."""
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ReaderError(f"expected one slice per file, found {ds.NumberOfFrames} frames")
    if "ImagePositionPatient" not in ds:
        raise ReaderError("slice without ImagePositionPatient")
    if slope is None:
        slope = float(ds.get("RescaleSlope", 1) or 1)
    if intercept is None:
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    pixels = rescaled(pixel_array(ds, origin), slope, intercept)
    position = np.asarray([float(v) for v in ds.ImagePositionPatient])
    return Slice(pixels=pixels, position=position, time=time)


def private_value(ds: Dataset, group: int, creator: str, offset: int) -> object:
    """A private element's value by its creator and offset, or None when absent."""
    # Looks the creator up slot by slot: pydicom's private_block slices the whole group,
    # which costs milliseconds on headers with large private groups.
    for slot in range(0x10, 0x100):
        tag = (group << 16) | slot
        if tag not in ds:
            continue
        if str(ds[tag].value).strip() == creator:
            element = ds.get((group << 16) | (slot << 8) | offset)
            return None if element is None else element.value
    return None


def rescaled(pixels: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values unchanged when the scaling is the identity, else float32 (as dcm2niix)."""
    if slope == 1.0 and intercept == 0.0:
        return pixels
    return (pixels.astype(np.float64) * slope + intercept).astype(np.float32)


def dicom_time_seconds(value: object) -> float | None:
    """DICOM TM (``HHMMSS.ffffff``) as seconds since midnight, None when empty/invalid."""
    text = str(value or "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def dicom_datetime_seconds(value: object) -> float | None:
    """The time part of a DICOM DT (``YYYYMMDDHHMMSS.ffffff``) as seconds since midnight."""
    text = str(value or "").strip()
    if len(text) < 10:
        return None
    return dicom_time_seconds(text[8:])


def _description(ds: Dataset) -> str:
    for keyword in ("SeriesDescription", "ProtocolName"):
        text = str(ds.get(keyword, "") or "").strip()
        if text:
            return text
    return f"series {ds.get('SeriesNumber', '?')}"


def _find(ds: Dataset, keyword: str) -> object:
    """A top-level value, else the first one in the enhanced shared or first per-frame groups."""
    if keyword in ds:
        return ds.get(keyword)
    groups_items = [*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])[:1]]
    for groups in groups_items:
        for element in groups:
            if element.VR == "SQ":
                for item in element.value:
                    if keyword in item:
                        return item.get(keyword)
    return None
