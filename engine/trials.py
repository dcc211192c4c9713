"""When a trial's betas are released, and how each release is normalised before decoding.

* :class:`ReleaseSchedule`: a trial is released several times, each release refining the last:
  once the volume sampled at or after ``onset + d`` has arrived, for each delay ``d`` of
  ``EngineSettings.releases_s`` (:func:`ready_frame`), and once more at run end (the final
  release, index ``len(releases_s)``). A trial whose event arrives late, after several of its
  delays have passed (a stimulus link that reconnects, a replay faster than the events), catches
  up one release per volume, oldest first, so that every trial gets its first release (what the
  participant is shown first); a trial still pending at run end gets only its final release. The default delays,
  8 s and 16 s, are chosen from the HRF: nilearn's Glover response to a 3 s image (NSD, MindEye)
  peaks ~6 s after onset, so 8 s gives the fit the rise, the peak and a sample of the fall, which
  is what separates a trial's beta from its neighbours' in a 4 s ISI design; by 16 s the
  response has returned to baseline and the neighbours' overlap is fully observed.
* :class:`Welford`: per-voxel running mean and variance (Welford 1962, numerically stable).
* :class:`TrialNormaliser`: z-scores a beta against the session's running statistics of the same
  release index (betas released at the same delay have the same noise; the beta itself is
  included, so the first trial of each release has none to compare with and gets zeros) or
  against fixed statistics loaded from a training session, and optionally averages the z-scored
  betas of earlier trials of the same stimulus (as MindEye averages NSD repeats), taking each
  such trial's newest release.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ready_frame", "ReleaseSchedule", "Welford", "TrialBeta", "TrialNormaliser"]


def ready_frame(onset: float, delay_s: float, tr: float, slice_time_ref: float = 0.0) -> int:
    """Index of the first volume sampled at or after ``onset + delay_s``."""
    return max(0, math.ceil((onset + delay_s) / tr - slice_time_ref - 1e-9))


class ReleaseSchedule:
    """The releases of a run's trials: one per delay of ``delays_s`` (seconds after onset), then a
    final one at run end (index :attr:`final`)."""

    def __init__(self, delays_s: Sequence[float], tr: float, slice_time_ref: float = 0.0) -> None:
        self.delays_s = [float(d) for d in delays_s]
        self.tr = float(tr)
        self.slice_time_ref = float(slice_time_ref)

    @property
    def final(self) -> int:
        """Index of the end-of-run release (the last of every trial's schedule)."""
        return len(self.delays_s)

    def frames(self, onset: float) -> list[int]:
        """The volume after which each scheduled release of a trial at ``onset`` is due."""
        return [ready_frame(onset, d, self.tr, self.slice_time_ref) for d in self.delays_s]

    def due(self, onset: float, last_frame: int, done: int) -> int | None:
        """The oldest release due once volume ``last_frame`` has arrived, after release ``done``
        (-1: none yet); None when no new one is due."""
        due = [r for r, frame in enumerate(self.frames(onset)) if r > done and frame <= last_frame]
        return due[0] if due else None


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
    """A release of a trial: its raw beta over the ROI, the z-scored (and repeat-averaged) one.

    ``release``, ``release_s``, ``final`` and ``sequence`` are those of its
    :class:`~rtrecon.contract.wire.TrialResultMessage`; ``pairmate`` the stimulus id of the trial's
    pairmate (empty: none), which its decoding scores the CPD against.
    """

    run: int
    trial: int
    stimulus: str
    beta: np.ndarray
    z: np.ndarray
    repeats: int
    stamps: dict[str, float] = field(default_factory=dict)
    release: int = 0
    release_s: float = 0.0
    final: bool = False
    sequence: int = 0
    pairmate: str = ""


class TrialNormaliser:
    """z-score released betas and average repeats of a stimulus.

    ``stats``: a ``.npz`` with ``mean`` and ``std`` (V,) from a training session; without it the
    session's own running statistics are used, one set per release index.
    """

    def __init__(self, n_voxels: int, *, stats: str | Path | None = None, average_repeats: bool = False) -> None:
        self.n_voxels = n_voxels
        self.running: dict[int, Welford] = {}
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
        # stimulus -> (run, trial) -> the z of that trial's newest release
        self._repeats: dict[str, dict[tuple[int, int], np.ndarray]] = {}

    def _zscore(self, beta: np.ndarray, release: int) -> np.ndarray:
        if self._fixed is not None:
            mean, std = self._fixed
        else:
            running = self.running.setdefault(release, Welford(self.n_voxels))
            running.update(beta)
            if running.count < 2:
                return np.zeros_like(beta)
            mean, std = running.mean, np.sqrt(running.variance)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (beta - mean) / std
        return np.where(std > 0, z, 0.0)

    def release(self, run: int, trial: int, stimulus: str, beta: np.ndarray, *, release: int = 0) -> TrialBeta:
        """Release ``release`` of a trial: its beta z-scored (and averaged with its stimulus's other trials)."""
        beta = np.asarray(beta, dtype=np.float64)
        if beta.shape != (self.n_voxels,):
            raise ValueError(f"beta has shape {beta.shape}, the ROI has {self.n_voxels} voxels")
        z = self._zscore(beta, release)
        repeats = 1
        if self.average_repeats and stimulus:
            latest = self._repeats.setdefault(stimulus, {})
            latest[(run, trial)] = z
            repeats = len(latest)
            z = np.mean(list(latest.values()), axis=0)
        return TrialBeta(run, trial, stimulus, beta, z, repeats, release=release)

    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """What :meth:`restore` needs to continue exactly where this normaliser is: (JSON-able
        description, arrays): each release's running count, mean and sum of squares, and the
        repeats' z-scored betas."""
        meta = {"running": {str(r): w.count for r, w in self.running.items()},
                "repeats": [[stimulus, run, trial] for stimulus, trials in self._repeats.items() for run, trial in trials]}
        arrays = {}
        for r, w in self.running.items():
            arrays[f"mean_{r}"], arrays[f"m2_{r}"] = w.mean, w._m2
        for i, (stimulus, run, trial) in enumerate(meta["repeats"]):
            arrays[f"repeat_{i}"] = self._repeats[stimulus][(run, trial)]
        return meta, arrays

    def restore(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Continue from a :meth:`state` (bit for bit: the arrays are the ones saved)."""
        self.running = {}
        for r, count in meta["running"].items():
            w = self.running[int(r)] = Welford(self.n_voxels)
            w.count, w.mean, w._m2 = int(count), np.asarray(arrays[f"mean_{r}"]), np.asarray(arrays[f"m2_{r}"])
        self._repeats = {}
        for i, (stimulus, run, trial) in enumerate(meta["repeats"]):
            self._repeats.setdefault(stimulus, {})[(int(run), int(trial))] = np.asarray(arrays[f"repeat_{i}"])
