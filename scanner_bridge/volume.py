"""The scanner side's unit of data: one volume assembled from DICOM, before it goes on the wire."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["AcquiredVolume"]


@dataclass(frozen=True)
class AcquiredVolume:
    """One volume as a reader assembled it.

    ``voxels`` is (x, y, z) in the voxel order dcm2niix writes, holding the values dcm2niix's
    NIfTI holds once its scaling is applied (stored integers where there is no scaling, float32
    where there is). ``affine`` maps voxel indices to RAS+ millimetres. ``series`` is a local key
    telling volumes of one run from another's; it and ``source_files`` never leave the scanner
    side. ``index`` is the 0-based position in the run, taken from the acquisition or temporal
    position number, never from file names.
    """

    series: str
    index: int
    voxels: np.ndarray
    affine: np.ndarray
    tr: float
    slice_times: tuple[float, ...] | None
    acquisition_time: float | None
    source_files: tuple[Path, ...]
