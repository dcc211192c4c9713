"""Siemens XA enhanced multi-frame MR (Enhanced MR Image Storage): one file per volume.

Each frame is one slice. There is no top-level ImageOrientationPatient or PixelSpacing: the
geometry lives in the Shared and Per-frame Functional Groups (Plane Orientation, Plane
Position, Pixel Measures, Pixel Value Transformation). The volume index is the frames'
TemporalPositionIndex - 1 (AcquisitionNumber - 1 when absent), never the file name (XA names
such as ``6_10.dcm`` sort before ``6_2.dcm``).

Slice times: the per-frame Siemens private item (0021,11FE) holds each slice's time after the
start of the run in (0021,1104), seconds, which keeps the precision of the sequence's timing
table. XA10-XA61 write single-band times there for the first volume of a multiband run (the
header bug dcm2niix works around); the Frame Acquisition DateTimes are right for every volume
but rounded to the clock's tick. So (0021,1104) is used when it agrees with the frame
datetimes to within 20 ms for every slice, and the frame datetimes otherwise.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from scanner_bridge.dicom_file import pixel_array
from scanner_bridge.readers.base import (
    ReaderError,
    SeriesReader,
    Slice,
    SliceGeometry,
    dicom_datetime_seconds,
    geometry_from,
    rescaled,
)

__all__ = ["SiemensEnhancedReader"]

ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
_SIEMENS_SDI = "SIEMENS MR SDI 02"
# Largest disagreement between the two slice-time sources that is only the datetimes' rounding.
_TIME_AGREEMENT_S = 0.02


class SiemensEnhancedReader(SeriesReader):
    format_name = "Siemens enhanced multi-frame"
    # The geometry is in the functional groups, not in top-level elements.
    run_constant_tags = None

    @classmethod
    def accepts(cls, ds: Dataset) -> bool:
        return (str(ds.get("SOPClassUID", "")) == ENHANCED_MR_STORAGE
                and "SIEMENS" in str(ds.get("Manufacturer", "")).upper())

    def _files_per_volume(self, ds: Dataset) -> int:
        return 1

    def volume_index(self, ds: Dataset) -> int:
        content = _functional_item(ds, 0, "FrameContentSequence")
        if content is not None and "TemporalPositionIndex" in content:
            return int(content.TemporalPositionIndex) - 1
        return int(ds.AcquisitionNumber) - 1

    def geometry(self, ds: Dataset) -> SliceGeometry:
        orientation = _functional_item(ds, 0, "PlaneOrientationSequence")
        measures = _functional_item(ds, 0, "PixelMeasuresSequence")
        if orientation is None or measures is None:
            raise ReaderError("enhanced MR file without plane orientation or pixel measures")
        return geometry_from(orientation, measures)

    def repetition_time(self, ds: Dataset) -> float:
        timing = _functional_item(ds, 0, "MRTimingAndRelatedParametersSequence")
        if timing is not None and "RepetitionTime" in timing:
            return float(timing.RepetitionTime) / 1000.0
        return super().repetition_time(ds)

    def acquisition_time(self, ds: Dataset) -> float | None:
        return dicom_datetime_seconds(ds.get("AcquisitionDateTime"))

    def mismatch(self, ds: Dataset) -> str | None:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        temporal = {
            int(item.FrameContentSequence[0].get("TemporalPositionIndex", 0) or 0)
            for item in ds.get("PerFrameFunctionalGroupsSequence", [])
            if "FrameContentSequence" in item
        }
        if len(temporal) > 1:
            return f"enhanced file holds {len(temporal)} temporal positions; one volume per file is expected"
        if len(ds.get("PerFrameFunctionalGroupsSequence", [])) != frames:
            return f"enhanced file has {frames} frames but a different number of per-frame groups"
        return super().mismatch(ds)

    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        pixels = pixel_array(ds, origin)
        if frames == 1:
            pixels = pixels[np.newaxis]
        positions, private_times, clock_times, scaled = [], [], [], []
        for k in range(frames):
            plane = _functional_item(ds, k, "PlanePositionSequence")
            if plane is None:
                raise ReaderError(f"frame {k + 1} has no plane position")
            positions.append(np.asarray([float(v) for v in plane.ImagePositionPatient]))
            transform = _functional_item(ds, k, "PixelValueTransformationSequence")
            slope = float(transform.get("RescaleSlope", 1) or 1) if transform is not None else 1.0
            intercept = float(transform.get("RescaleIntercept", 0) or 0) if transform is not None else 0.0
            scaled.append(rescaled(pixels[k], slope, intercept))
            content = _functional_item(ds, k, "FrameContentSequence")
            clock_times.append(dicom_datetime_seconds(content.get("FrameAcquisitionDateTime")) if content is not None else None)
            private_times.append(_private_slice_time(ds.PerFrameFunctionalGroupsSequence[k]))
        times = _choose_times(private_times, clock_times)
        return [Slice(pixels=scaled[k], position=positions[k], time=times[k]) for k in range(frames)]


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of ``sequence`` for ``frame``: per-frame if present, else shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame) and sequence in per_frame[frame]:
        return per_frame[frame][sequence][0]
    for shared in ds.get("SharedFunctionalGroupsSequence", []):
        if sequence in shared:
            return shared[sequence][0]
    return None


def _private_slice_time(frame_groups: Dataset) -> float | None:
    item = _private_element(frame_groups, 0xFE)
    value = _private_element(item.value[0], 0x04) if item is not None and item.value else None
    try:
        return float(value.value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _private_element(ds: Dataset, offset: int) -> DataElement | None:
    """Element ``offset`` of the SIEMENS MR SDI 02 block of group 0021, or None."""
    # Siemens reserves block 0x11 for this creator: look there before scanning all blocks
    # (pydicom's private_block scans, which costs more than the rest of the frame).
    creator = ds.get((0x0021, 0x0011))
    if creator is not None and creator.value == _SIEMENS_SDI:
        return ds.get((0x0021, 0x1100 | offset))
    try:
        return ds.private_block(0x0021, _SIEMENS_SDI)[offset]
    except KeyError:
        return None


def _choose_times(private: list[float | None], clock: list[float | None]) -> list[float | None]:
    """(0021,1104) when it agrees with the frame datetimes (see the module docstring)."""
    private_ok = None not in private
    clock_ok = None not in clock
    if private_ok and clock_ok:
        p = np.asarray(private, dtype=float)
        c = np.asarray(clock, dtype=float)
        agree = np.max(np.abs((p - p.min()) - (c - c.min()))) <= _TIME_AGREEMENT_S
        return private if agree else clock
    if private_ok:
        return private
    if clock_ok:
        return clock
    return [None] * len(private)
