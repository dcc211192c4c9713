"""Early trial estimates that use the session's earlier runs, as GLMsingle does offline.

A release 8 s after onset fits a trial on the few volumes of its rising response, so its beta is
noisy and depends on the HRF's shape more than an end-of-run beta does. The session's earlier
runs (or a training session) are there before the live run starts; two things learned from them
make early betas better, each optional (docs/early_estimates.md gives the measured gain):

* :class:`NoisePool` (GLMdenoise, Kay et al. 2013): voxels the task does not drive (low R² on the
  earlier runs) carry the noise shared across the brain. The spatial principal components of
  their residuals on earlier runs give weights; each new volume's noise regressors are its pool
  voxels projected on them, so a volume's values are fixed the moment it arrives, and they enter
  the live GLM as extra confounds (:class:`engine.glm.IncrementalGLM` ``confound_names``).
* :class:`HRFChoice`: a per-voxel HRF chosen from a small library (Glover's HRF shifted in time,
  nilearn's ``glover_hrf``) by the R² of a one-condition fit on the earlier runs; a release
  then fits each group of voxels that share an HRF with that HRF's regressors.

Both work on the stored ROI signal of a run (``IncrementalGLM.signal``), so they cost
O(n q² + n V) per release like the plain fit (the HRF choice once per HRF in use). A per-voxel
fractional ridge on the release was measured too and did not help (docs/early_estimates.md).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from nilearn.glm.first_level import compute_regressor
from nilearn.glm.first_level.hemodynamic_models import glover_hrf

from engine.design import RunDesign
from engine.glm import IncrementalGLM, pinv_rows

__all__ = ["EarlyRun", "HRFChoice", "NoisePool", "hrf_library"]

#: Time shifts (s) of Glover's HRF in the default library: peaks from ~4 s to ~7.5 s.
DEFAULT_SHIFTS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5)


@dataclass(frozen=True)
class EarlyRun:
    """An earlier run: its (n, V) ROI signal, its TR, its trials' onsets and durations (s), and the
    volume index of each signal row (default ``0 .. n-1``; a run with missing volumes skips them)."""

    signal: np.ndarray
    tr: float
    onsets: Sequence[float]
    durations: Sequence[float]
    frames: np.ndarray | None = None


def hrf_library(shifts: Sequence[float] = DEFAULT_SHIFTS) -> list[Callable[..., np.ndarray]]:
    """nilearn HRF callables: Glover's HRF delayed by each shift (s)."""

    def shifted(shift: float) -> Callable[..., np.ndarray]:
        def hrf(tr: float, oversampling: int = 50, time_length: float = 32.0, onset: float = 0.0) -> np.ndarray:
            return glover_hrf(tr, oversampling, time_length, onset + shift)

        return hrf

    return [shifted(float(s)) for s in shifts]


def _condition(design: RunDesign, hrf: Callable | str, onsets, durations, frames) -> np.ndarray:
    condition = np.vstack([np.asarray(onsets, float), np.asarray(durations, float), np.ones(len(onsets))])
    columns, _ = compute_regressor(
        condition, hrf, design.frame_times(frames),
        oversampling=design.settings.oversampling, min_onset=design.settings.min_onset,
    )
    return np.asarray(columns[:, :1], dtype=np.float64)


def _r2(design: np.ndarray, y: np.ndarray, n_drift: int) -> np.ndarray:
    """Per-voxel R² of ``y`` on ``design`` beyond its drift (its last ``n_drift`` columns)."""
    full = np.sum(_residual(design, y) ** 2, 0)
    drift = np.sum(_residual(design[:, -n_drift:], y) ** 2, 0)
    return 1 - full / np.maximum(drift, 1e-12)


def _residual(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    return y - design @ (np.linalg.pinv(design) @ y)


def _task_design(run: EarlyRun, design: RunDesign, hrf: Callable | str, per_trial: bool) -> np.ndarray:
    frames = np.arange(len(run.signal)) if run.frames is None else np.asarray(run.frames)
    drift, _ = design.drift(frames)
    if per_trial:
        cols = [_condition(design, hrf, [o], [d], frames) for o, d in zip(run.onsets, run.durations)]
    else:
        cols = [_condition(design, hrf, run.onsets, run.durations, frames)]
    return np.hstack(cols + [drift])


class NoisePool:
    """GLMdenoise-style noise regressors learned from earlier runs.

    Parameters
    ----------
    n_components : int
        Noise regressors per volume (GLMdenoise picks it by cross-validation; 3-6 is typical).
    pool_r2 : float
        Voxels whose task R² (all trials as one condition, Glover HRF, mean over the earlier runs)
        is below this form the pool.
    """

    def __init__(self, n_components: int = 4, pool_r2: float = 0.05) -> None:
        self.n_components = int(n_components)
        self.pool_r2 = float(pool_r2)
        self.pool: np.ndarray | None = None
        self.weights: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return [f"noise_pc{i}" for i in range(self.n_components)]

    def fit(self, runs: Sequence[EarlyRun], settings=None) -> NoisePool:
        """Choose the pool and its spatial components from the earlier ``runs``."""
        residuals, r2 = [], []
        for run in runs:
            design = RunDesign(run.tr, settings=settings)
            x = _task_design(run, design, design.settings.hrf_model, per_trial=False)
            r2.append(_r2(x, run.signal, x.shape[1] - 1))
            residuals.append(_residual(x, run.signal))
        pool = np.flatnonzero(np.mean(r2, axis=0) < self.pool_r2)
        if pool.size < self.n_components:
            raise ValueError(f"only {pool.size} voxels have task R² < {self.pool_r2}: too few for a noise pool")
        # The pool's residuals after task and drift, over every run, each voxel scaled to unit variance.
        res = np.vstack([r[:, pool] for r in residuals])
        scale = res.std(0) + 1e-12
        _, _, vt = np.linalg.svd(res / scale, full_matrices=False)
        self.pool, self.weights = pool, vt[: self.n_components].T / scale[:, None]
        return self

    def regressors(self, volume: np.ndarray) -> np.ndarray:
        """The noise regressors of one volume's ROI signal (V,): fixed when it arrives."""
        if self.pool is None or self.weights is None:
            raise RuntimeError("NoisePool.fit must run before regressors")
        return np.asarray(volume, np.float64)[self.pool] @ self.weights


class HRFChoice:
    """A per-voxel HRF from ``library``, chosen on earlier runs by a one-condition fit's R².

    Parameters
    ----------
    library : list of nilearn HRF callables
        The candidates (default :func:`hrf_library`).
    """

    def __init__(self, library: Sequence[Callable[..., np.ndarray]] | None = None) -> None:
        self.library = list(library) if library is not None else hrf_library()
        self.choice: np.ndarray | None = None

    def fit(self, runs: Sequence[EarlyRun], settings=None) -> HRFChoice:
        """Pick, per voxel, the library HRF with the best summed R² over ``runs``."""
        scores = np.zeros((len(self.library), runs[0].signal.shape[1]))
        for run in runs:
            design = RunDesign(run.tr, settings=settings)
            for k, hrf in enumerate(self.library):
                x = _task_design(run, design, hrf, per_trial=False)
                scores[k] += _r2(x, run.signal, x.shape[1] - 1)
        self.choice = np.argmax(scores, axis=0)
        return self

    def lss(self, glm: IncrementalGLM, trial_id: Hashable, without: Collection[str] = ()) -> np.ndarray:
        """LSS beta (V,) of ``trial_id`` with each voxel's chosen HRF, on the volumes so far (the
        confounds ``without`` left out)."""
        if self.choice is None:
            raise RuntimeError("HRFChoice.fit must run before lss")
        active = glm.active_trials()
        if trial_id not in active:
            raise KeyError(f"trial {trial_id!r} has no non-zero regressor yet")
        frames = glm.frames
        onset, duration = glm.trial_timing(trial_id)
        others = [glm.trial_timing(t) for t in active if t != trial_id]
        nuisance = glm.nuisance(without)[0]
        beta = np.zeros(glm.n_voxels)
        for k in np.unique(self.choice):
            voxels = self.choice == k
            parts = [_condition(glm.design, self.library[k], [onset], [duration], frames)]
            if others:
                parts.append(_condition(glm.design, self.library[k], *zip(*others), frames))
            x = np.hstack(parts + [nuisance])
            beta[voxels] = (pinv_rows(x, [0]) @ glm.signal[:, voxels])[0]
        return beta

