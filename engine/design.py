"""A run's design for the volumes acquired so far, built with nilearn's own HRF and drift functions.

Volume ``i`` of a run starts at ``i * tr`` and is sampled at ``(i + slice_time_ref) * tr``, as in
nilearn's ``FirstLevelModel``. :class:`RunDesign` gives, for any set of volumes (``frames``, the
indices of the volumes that arrived; a missing volume is a gap), the columns nilearn's
``make_first_level_design_matrix`` builds on exactly those frame times:

* the drift (cosine or polynomial, plus a constant) from ``make_first_level_design_matrix``
  itself, so a 40-volume run gets the basis of a 40-volume run, never a truncated longer one;
* a trial's (or a set of trials') columns from :func:`nilearn.glm.first_level.compute_regressor`.

Both depend on how many frames there are (the cosine basis on the run's length, nilearn's
oversampled time grid on the first and last frame time, derivative columns are orthogonalised
over every frame), so they are recomputed when a volume arrives rather than cut from a longer
plan: cutting a 300-volume plan to 130 volumes gives a design of condition number ~1e12 (its
low cosines are nearly collinear with the constant), and with ``slice_time_ref=0.5`` regressors
that differ from nilearn's by 1 % at 40 volumes.

The design of volumes ``frames`` equals ``make_first_level_design_matrix(frame_times[frames],
events, ...)`` with the same options, in the column order trials, confounds, drift
(tests/engine/test_design.py). ``n_planned`` is only a capacity hint for the GLM's buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from nilearn.glm.first_level import compute_regressor, make_first_level_design_matrix

from rtrecon.contract.config import HRF_MODELS, GLMSection

__all__ = ["DesignSettings", "RunDesign", "HRF_MODELS", "DEFAULT_CAPACITY"]

#: The design options are the session config's ``[engine.glm]`` table (nilearn's names and defaults).
DesignSettings = GLMSection

#: Volumes preallocated when no capacity hint is given (a buffer doubles when a run outgrows it).
DEFAULT_CAPACITY = 256


class RunDesign:
    """Frame times, drift and trial regressors of a run of TR ``tr``.

    Parameters
    ----------
    tr : float
        Repetition time in seconds.
    n_planned : int or None
        Expected number of volumes: a capacity hint for preallocation, never part of the design.
    settings : DesignSettings, optional
        HRF, drift and sampling options (the session config's ``[engine.glm]``).
    """

    def __init__(self, tr: float, n_planned: int | None = None, settings: DesignSettings | None = None) -> None:
        if tr <= 0:
            raise ValueError(f"TR must be positive, got {tr}")
        if n_planned is not None and n_planned < 1:
            raise ValueError(f"the capacity hint must be at least 1 volume, got {n_planned}")
        self.tr = float(tr)
        self.n_planned = int(n_planned) if n_planned is not None else DEFAULT_CAPACITY
        self.settings = settings or DesignSettings()
        self.basis_suffixes = self._basis_suffixes()

    def _basis_suffixes(self) -> list[str]:
        _, names = compute_regressor(
            np.array([[0.0], [1.0], [1.0]]), self.settings.hrf_model, self.frame_times(np.arange(3)), con_id=""
        )
        return list(names)

    @property
    def n_basis(self) -> int:
        """Columns per trial (1, or 2-3 with temporal and dispersion derivatives)."""
        return len(self.basis_suffixes)

    def frame_times(self, frames: Sequence[int] | np.ndarray) -> np.ndarray:
        """Sampling times (s) of volumes ``frames``."""
        return (np.asarray(frames, dtype=np.float64) + self.settings.slice_time_ref) * self.tr

    def _frames(self, frames: Sequence[int] | np.ndarray | None) -> np.ndarray:
        frames = np.arange(self.n_planned) if frames is None else np.asarray(frames)
        if frames.size < 2:
            raise ValueError(f"a design needs at least 2 volumes, got {frames.size}")
        return frames

    def drift(self, frames: Sequence[int] | np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Drift and constant columns on volumes ``frames``, and their names, as nilearn builds them."""
        drift = make_first_level_design_matrix(
            self.frame_times(self._frames(frames)),
            events=None,
            drift_model=self.settings.drift_model,
            high_pass=self.settings.high_pass,
            drift_order=self.settings.drift_order,
        )
        return drift.to_numpy(dtype=np.float64), [str(c) for c in drift.columns]

    def condition_columns(
        self, onsets: Sequence[float], durations: Sequence[float], frames: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """The (n_frames, n_basis) regressors of one condition made of these events (amplitude 1).

        ``frames`` defaults to the first ``n_planned`` volumes.
        """
        condition = np.vstack([np.asarray(onsets, float), np.asarray(durations, float), np.ones(len(onsets))])
        columns, _ = compute_regressor(
            condition,
            self.settings.hrf_model,
            self.frame_times(self._frames(frames)),
            oversampling=self.settings.oversampling,
            min_onset=self.settings.min_onset,
        )
        return np.asarray(columns, dtype=np.float64)

    def oversampled_times(self, frames: Sequence[int] | np.ndarray) -> np.ndarray:
        """The oversampled time grid (s) that ``compute_regressor`` convolves on for volumes
        ``frames``, built as nilearn's ``_sample_condition`` builds it.

        A single-column regressor depends on the frames only through this grid (its start and
        step, and the grid samples where each event starts and stops): computed on two sets of
        frames where these agree, it agrees on their common frames. With ``slice_time_ref=0`` and
        no missing volume the start and step stay the same for the whole run.
        """
        times = self.frame_times(self._frames(frames))
        n, low, high = times.size, times.min(), times.max()
        start = low + self.settings.min_onset
        stop = high * (1 + 1.0 / (n - 1))
        count = (n - 1) / (high - low) * (stop - start) * self.settings.oversampling + 1
        return np.linspace(start, stop, np.rint(count).astype(int))

    def trial_columns(
        self, onset: float, duration: float, frames: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """The (n_frames, n_basis) regressors of one event on volumes ``frames``, as nilearn computes them."""
        return self.condition_columns([onset], [duration], frames)
