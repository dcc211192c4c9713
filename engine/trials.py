"""When a trial's beta is ready, and how it is normalised before decoding.

* :func:`ready_frame`: a trial is released once the volume sampled at or after
  ``onset + delay_s`` has arrived. The default delay, 8 s, is chosen from the HRF: nilearn's
  Glover response to a 3 s image (NSD, MindEye) peaks ~6 s after onset, so 8 s gives the fit the
  rise, the peak and a sample of the fall, which is what separates a trial's beta from its
  neighbours' in a 4 s ISI design; waiting longer buys little precision for each extra TR of
  latency. Tune it per design with ``EngineSettings.ready_delay_s``.
* :class:`Welford`: per-voxel running mean and variance (Welford 1962, numerically stable),
  kept over the session's released betas.
* :class:`TrialNormaliser`: z-scores a beta against the session's running statistics (the
  beta itself included, so the first trial has none to compare with and gets zeros) or against
  fixed statistics loaded from a training session, and optionally averages the z-scored betas
  of earlier repeats of the same stimulus (as MindEye averages NSD repeats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ready_frame", "Welford", "TrialBeta", "TrialNormaliser"]


def ready_frame(onset: float, delay_s: float, tr: float, slice_time_ref: float = 0.0) -> int:
    """Index of the first volume sampled at or after ``onset + delay_s``."""
    return max(0, math.ceil((onset + delay_s) / tr - slice_time_ref - 1e-9))


class Welford:
    """Running per-voxel mean and (ddof=1) variance."""

    def __init__(self, n_voxels: int) -> None:
        self.count = 0
        self.mean = np.zeros(n_voxels)
        self._m2 = np.zeros(n_voxels)

    def update(self, x: np.ndarray) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.count
        self._m2 = self._m2 + delta * (x - self.mean)

    @property
    def variance(self) -> np.ndarray:
        if self.count < 2:
            return np.full_like(self.mean, np.nan)
        return self._m2 / (self.count - 1)


@dataclass(frozen=True)
class TrialBeta:
    """A released trial: its raw beta over the ROI, the z-scored (and repeat-averaged) one."""

    run: int
    trial: int
    stimulus: str
    beta: np.ndarray
    z: np.ndarray
    repeats: int
    stamps: dict[str, float] = field(default_factory=dict)


class TrialNormaliser:
    """z-score released betas and average repeats of a stimulus.

    ``stats``: a ``.npz`` with ``mean`` and ``std`` (V,) from a training session; without it the
    session's own running statistics are used.
    """

    def __init__(self, n_voxels: int, *, stats: str | Path | None = None, average_repeats: bool = False) -> None:
        self.n_voxels = n_voxels
        self.running = Welford(n_voxels)
        self.average_repeats = average_repeats
        self._fixed: tuple[np.ndarray, np.ndarray] | None = None
        if stats is not None:
            with np.load(stats) as f:
                if "mean" not in f or "std" not in f:
                    raise ValueError(f"{stats}: needs arrays 'mean' and 'std'")
                mean, std = np.asarray(f["mean"], float), np.asarray(f["std"], float)
            if mean.shape != (n_voxels,) or std.shape != (n_voxels,):
                raise ValueError(f"{stats}: statistics for {mean.shape} voxels, the ROI has {n_voxels}")
            self._fixed = (mean, std)
        self._repeats: dict[str, list[np.ndarray]] = {}

    def _zscore(self, beta: np.ndarray) -> np.ndarray:
        if self._fixed is not None:
            mean, std = self._fixed
        else:
            self.running.update(beta)
            if self.running.count < 2:
                return np.zeros_like(beta)
            mean, std = self.running.mean, np.sqrt(self.running.variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (beta - mean) / std
        return np.where(std > 0, z, 0.0)

    def release(self, run: int, trial: int, stimulus: str, beta: np.ndarray) -> TrialBeta:
        beta = np.asarray(beta, dtype=np.float64)
        if beta.shape != (self.n_voxels,):
            raise ValueError(f"beta has shape {beta.shape}, the ROI has {self.n_voxels} voxels")
        z = self._zscore(beta)
        repeats = 1
        if self.average_repeats and stimulus:
            earlier = self._repeats.setdefault(stimulus, [])
            earlier.append(z)
            repeats = len(earlier)
            z = np.mean(earlier, axis=0)
        return TrialBeta(run, trial, stimulus, beta, z, repeats)
