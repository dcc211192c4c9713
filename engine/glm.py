"""Per-trial GLM betas (LSA and LSS) over ROI voxels, exact for the volumes acquired so far.

:class:`IncrementalGLM` stores each volume's ROI signal and confounds as it arrives (O(V) per
volume: one row copied into a buffer that doubles when the run outgrows it). A release solves
the least-squares problem of the design of the volumes so far (:class:`engine.design.RunDesign`:
nilearn's drift for the current number of volumes, trial regressors from ``compute_regressor``
on the current frame times, the motion confounds), without ever forming ``XᵀX``: only the rows
of ``pinv(X)`` for the betas wanted are computed, from the SVD of the small (n × q) design, and
multiplied with the stored (n × V) signal. That is ``np.linalg.pinv(X) @ Y`` to rounding (the
normal equations square the condition number), with nilearn's rank cut-off (``scipy.linalg.pinv``), so rank decisions early in a run
match nilearn's OLS, and it costs O(n q² + n V) per release.

* **LSA**: one design, one column (set) per trial whose regressor is non-zero so far (a trial
  still all-zero gets no beta, exactly as a pseudo-inverse gives it zero weight and leaves the
  others unchanged).
* **LSS** (Mumford et al. 2012): for trial ``j``, the design ``[c_j, c_others, nuisance]`` with
  ``c_others`` nilearn's regressor of every other active trial as one condition.

A trial's regressor is computed by nilearn once and extended with zeros once its response has
ended, while nilearn's oversampled grid keeps its start and step (as it does with
``slice_time_ref=0`` and no missing volume; otherwise every column is recomputed at each volume,
~1.3 ms per trial at 300 volumes). Measured with V = 15000 ROI voxels, 6 confounds, a trial every 4 s, TR 2 s (2 shared
cores): ``add_volume`` 0.05 ms at n = 30 and 0.07 ms at n = 300; a release (``active_trials``
and one ``lss``, after a new volume) 1-5 ms at n = 30 (15 trials) and 5-13 ms at n = 300
(150 trials); ``lsa`` of one trial 0.4 ms and 12 ms.

:meth:`IncrementalGLM.final` gives the run's LSA and LSS betas and t maps, OLS or nilearn's AR(1)
(``[engine.glm] noise_model``).

Releases and final betas equal a from-scratch nilearn ``FirstLevelModel(signal_scaling=False)``
fit on the same volumes, events and confounds, and every release equals ``np.linalg.lstsq`` on
the same rows (tests/engine/test_glm.py).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from nilearn.glm.contrasts import compute_contrast
from nilearn.glm.first_level import run_glm

from engine.design import RunDesign

__all__ = ["IncrementalGLM", "RunBetas", "pinv_rows"]


def pinv_rows(design: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
    """Rows ``wanted`` of ``pinv(design)``, with ``scipy.linalg.pinv``'s default rank cut-off."""
    u, s, vt = np.linalg.svd(design, full_matrices=False)
    keep = s > max(design.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    return (vt[:, wanted][keep].T / s[keep]) @ u[:, keep].T


@dataclass(frozen=True)
class RunBetas:
    """A run's end-of-run trial estimates over the ROI, one row per trial (in ``trials`` order).

    ``lsa``/``lss`` are the (T, V) betas of each trial's main column, ``lsa_t``/``lss_t`` their t
    values (nilearn's ``compute_contrast`` t statistic), ``noise_model`` "ols" or "ar1".
    """

    trials: list[Hashable]
    lsa: np.ndarray
    lss: np.ndarray
    lsa_t: np.ndarray
    lss_t: np.ndarray
    noise_model: str


class IncrementalGLM:
    """OLS over ``n_voxels`` signals, grown one volume or trial at a time.

    Parameters
    ----------
    design : RunDesign
        The run's TR and design options (its ``n_planned`` sizes the buffers).
    n_voxels : int
        ROI voxels per volume.
    confound_names : sequence of str
        Names of the per-volume confounds passed to :meth:`add_volume` (none: no confounds).

    Trials are identified by any hashable id.
    """

    def __init__(self, design: RunDesign, n_voxels: int, confound_names: Sequence[str] = ()) -> None:
        self.design = design
        self.n_voxels = int(n_voxels)
        self.confound_names = list(confound_names)
        self._trials: dict[Hashable, tuple[float, float]] = {}
        capacity = max(design.n_planned, 2)
        self._confounds = np.zeros((capacity, len(self.confound_names)))
        self._y = np.zeros((capacity, self.n_voxels))
        self._frames = np.zeros(capacity, dtype=np.int64)
        self.n_rows = 0
        # Per trial: (rows it was computed for, where it fell on nilearn's grid then, its columns).
        self._columns: dict[Hashable, tuple[int, tuple[float, float, int, int], np.ndarray]] = {}
        self._grid_cache: tuple[int, np.ndarray] | None = None
        self._nuisance: tuple[np.ndarray, list[str]] | None = None

    # -- layout --------------------------------------------------------------------------------
    @property
    def trial_ids(self) -> list[Hashable]:
        return list(self._trials)

    def trial_timing(self, trial_id: Hashable) -> tuple[float, float]:
        """Onset and duration (s) of trial ``trial_id``."""
        return self._trials[trial_id]

    @property
    def frames(self) -> np.ndarray:
        """The volume index of each row so far (a missing volume leaves a gap)."""
        return self._frames[: self.n_rows].copy()

    @property
    def signal(self) -> np.ndarray:
        """The stored (n_rows, V) ROI signal (a view: do not modify)."""
        return self._y[: self.n_rows]

    def trial_columns(self, trial_id: Hashable) -> np.ndarray:
        """Trial ``trial_id``'s (n_rows, n_basis) regressors on the volumes so far.

        Computed by nilearn, and kept as volumes arrive while that stays exact: a single-column
        regressor whose response has ended (its last value is exactly 0 after non-zero ones) is 0
        on every later volume, as long as nilearn's oversampled grid keeps its start and step and
        the event starts and stops on the same grid samples (:meth:`RunDesign.oversampled_times`;
        an event on a grid point can move by one sample when the grid's rounding changes). Any
        other column is recomputed on the current frames.
        """
        n = self.n_rows
        cached = self._columns.get(trial_id)
        if cached is not None and cached[0] == n:
            return cached[2]
        onset, duration = self._trials[trial_id]
        key = self._grid_key(onset, duration)
        if cached is not None and self.design.n_basis == 1 and _same_grid(cached[1], key):
            cols = cached[2]
            if cols[-1, 0] == 0 and np.any(cols != 0):
                cols = np.vstack([cols, np.zeros((n - len(cols), 1))])
                self._columns[trial_id] = (n, key, cols)
                return cols
        cols = self.design.trial_columns(onset, duration, self._frames[:n])
        self._columns[trial_id] = (n, key, cols)
        return cols

    def _grid_key(self, onset: float, duration: float) -> tuple[float, float, int, int]:
        if self._grid_cache is None or self._grid_cache[0] != self.n_rows:
            self._grid_cache = (self.n_rows, self.design.oversampled_times(self._frames[: self.n_rows]))
        times = self._grid_cache[1]
        start, stop = np.searchsorted(times, [onset, onset + duration])
        return float(times[0]), float(times[1] - times[0]), int(start), int(stop)

    def nuisance(self, without: Collection[str] = ()) -> tuple[np.ndarray, list[str]]:
        """The (n_rows, c) confounds and drift columns of the volumes so far, and their names;
        ``without``: confounds left out."""
        if self._nuisance is None:
            drift, names = self.design.drift(self._frames[: self.n_rows])
            self._nuisance = np.hstack([self._confounds[: self.n_rows], drift]), self.confound_names + names
        if not without:
            return self._nuisance
        keep = [i for i, name in enumerate(self._nuisance[1]) if name not in without]
        return self._nuisance[0][:, keep], [self._nuisance[1][i] for i in keep]

    def column_names(self) -> list[str]:
        """Design column names: ``trial-<id><basis suffix>``, the confounds, then the drift."""
        names = [f"trial-{t}{s}" for t in self._trials for s in self.design.basis_suffixes]
        return names + self.nuisance()[1]

    def design_matrix(self) -> pd.DataFrame:
        """The design of the rows so far (every trial, active or not), indexed by frame time."""
        parts = [self.trial_columns(t) for t in self._trials] + [self.nuisance()[0]]
        return pd.DataFrame(
            np.hstack(parts), columns=self.column_names(), index=self.design.frame_times(self.frames)
        )

    def column_cache(self) -> dict[Hashable, tuple[int, tuple[float, float, int, int], np.ndarray]]:
        """The trial columns computed so far, as :meth:`trial_columns` keeps them: trial -> (rows they
        were computed for, where the trial fell on nilearn's grid then, the columns). A column kept
        and extended differs from one recomputed later by rounding (~1e-12 of a beta), so a restarted
        engine that must continue bit for bit restores them (:meth:`restore_column_cache`)."""
        return dict(self._columns)

    def restore_column_cache(self, cache: dict[Hashable, tuple[int, tuple[float, float, int, int], np.ndarray]]) -> None:
        """Continue with the columns of a :meth:`column_cache` taken when this GLM had the same rows."""
        self._columns = dict(cache)

    def refresh(self) -> None:
        """Recompute every design column from the stored rows at the next solve (the same numbers
        whatever order rows and trials arrived in, as for a run's final betas)."""
        self._columns.clear()
        self._nuisance = None

    # -- growth --------------------------------------------------------------------------------
    def add_trial(self, trial_id: Hashable, onset: float, duration: float) -> None:
        """Add a trial; its regressor is computed when a solve needs it."""
        if trial_id in self._trials:
            raise ValueError(f"trial {trial_id!r} is already in the design")
        self._trials[trial_id] = (float(onset), float(duration))

    def add_volume(self, y: np.ndarray, confounds: Sequence[float] = (), frame: int | None = None) -> None:
        """Append volume ``frame``'s ROI signal ``y`` (V,) and confound values.

        ``frame`` defaults to the next volume after the last one added; frames must increase
        (a skipped frame is a volume that never arrived).
        """
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n_voxels,):
            raise ValueError(f"expected {self.n_voxels} ROI values, got shape {y.shape}")
        confounds = np.asarray(confounds, dtype=np.float64)
        if confounds.shape != (len(self.confound_names),):
            raise ValueError(f"expected {len(self.confound_names)} confounds, got {confounds.shape}")
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(confounds))):
            raise ValueError("volume or confounds contain NaN or infinite values")
        last = int(self._frames[self.n_rows - 1]) if self.n_rows else -1
        frame = last + 1 if frame is None else int(frame)
        if frame <= last:
            raise ValueError(f"volume {frame} arrived after volume {last}: frames must increase")
        if self.n_rows == len(self._frames):
            # Geometric growth: copying is amortised O(V) per volume, and nothing is recomputed.
            self._y = np.vstack([self._y, np.zeros_like(self._y)])
            self._confounds = np.vstack([self._confounds, np.zeros_like(self._confounds)])
            self._frames = np.r_[self._frames, np.zeros_like(self._frames)]
        i = self.n_rows
        self._frames[i] = frame
        self._y[i] = y
        self._confounds[i] = confounds
        self.n_rows += 1
        self._nuisance = None

    # -- solutions -----------------------------------------------------------------------------
    def active_trials(self) -> list[Hashable]:
        """Trials whose regressor is non-zero on some volume so far (the others have no beta yet)."""
        if self.n_rows < 2:
            return []
        # nilearn's regressors are causal: an event that starts more than one TR after the last
        # volume is zero on every volume so far, and its columns need not be computed.
        horizon = self.design.frame_times([self._frames[self.n_rows - 1]])[0] + self.design.tr
        return [
            t for t, (onset, _) in self._trials.items()
            if onset <= horizon and np.any(self.trial_columns(t) != 0)
        ]

    def _check_active(self, trial_ids: Sequence[Hashable], active: Sequence[Hashable]) -> None:
        missing = [t for t in trial_ids if t not in active]
        if missing:
            raise KeyError(f"trial(s) {missing} have no non-zero regressor yet")

    def lsa_design(self, active: Sequence[Hashable], without: Collection[str] = ()) -> np.ndarray:
        """The (n_rows, q) LSA design of trials ``active``: their columns, confounds (but ``without``), drift."""
        return np.hstack([self.trial_columns(t) for t in active] + [self.nuisance(without)[0]])

    def lss_design(self, trial_id: Hashable, active: Sequence[Hashable], without: Collection[str] = ()) -> np.ndarray:
        """The LSS design of ``trial_id``: its columns, the other active trials as one condition, nuisance
        (but the confounds ``without``)."""
        others = [self._trials[t] for t in active if t != trial_id]
        parts = [self.trial_columns(trial_id)]
        if others and self.design.n_basis == 1:
            # nilearn's regressor is linear in the events: the sum of their columns.
            parts.append(sum(self.trial_columns(t) for t in active if t != trial_id))
        elif others:
            # Derivative columns are orthogonalised per condition: nilearn's regressor of the set.
            onsets, durations = zip(*others)
            parts.append(self.design.condition_columns(onsets, durations, self._frames[: self.n_rows]))
        return np.hstack(parts + [self.nuisance(without)[0]])

    def lsa(self, trial_ids: Sequence[Hashable] | None = None, without: Collection[str] = ()) -> dict[Hashable, np.ndarray]:
        """LSA betas (V,) of the main basis column of each trial (default: every active trial);
        ``without``: confounds left out of the design."""
        active = self.active_trials()
        wanted_ids = active if trial_ids is None else list(trial_ids)
        self._check_active(wanted_ids, active)
        k = self.design.n_basis
        rows = pinv_rows(self.lsa_design(active, without), [active.index(t) * k for t in wanted_ids])
        return dict(zip(wanted_ids, rows @ self.signal))

    def lss(self, trial_id: Hashable, without: Collection[str] = ()) -> np.ndarray:
        """LSS beta (V,) of ``trial_id``: that trial against all other trials plus nuisance (but the
        confounds ``without``)."""
        active = self.active_trials()
        self._check_active([trial_id], active)
        return (pinv_rows(self.lss_design(trial_id, active, without), [0]) @ self.signal)[0]

    def final(
        self, noise_model: Literal["ols", "ar1"] = "ols", trial_ids: Sequence[Hashable] | None = None
    ) -> RunBetas:
        """LSA and LSS betas and t maps of ``trial_ids`` (default: every active trial) on the whole run.

        The betas and t values of ``FirstLevelModel(noise_model=noise_model, signal_scaling=False)``
        on the design of the volumes so far. OLS is computed here from the SVD of each design
        (LSS residuals from the residual after the nuisance columns, so a trial costs O(n V));
        AR(1) is nilearn's ``run_glm`` (its per-voxel coefficient binned as nilearn does) and
        ``compute_contrast``, refitted once per trial for LSS. Measured at 300 volumes × 15000
        voxels with 150 trials (2 shared cores): OLS ~2 s, AR(1) ~210 s (~1.4 s per trial).
        """
        if noise_model not in ("ols", "ar1"):
            raise ValueError(f"noise_model must be 'ols' or 'ar1', got {noise_model!r}")
        active = self.active_trials()
        wanted_ids = active if trial_ids is None else list(trial_ids)
        self._check_active(wanted_ids, active)
        k = self.design.n_basis
        x, y = self.lsa_design(active), self.signal
        columns = [active.index(t) * k for t in wanted_ids]
        if noise_model == "ols":
            lsa, lsa_t = _ols_fit(x, y, columns)
            lss_fits = _ols_lss(self, wanted_ids, active)
        else:
            lsa, lsa_t = _nilearn_fit(x, y, columns, noise_model)
            lss_fits = [_nilearn_fit(self.lss_design(t, active), y, [0], noise_model) for t in wanted_ids]
        empty = np.zeros((0, self.n_voxels))
        return RunBetas(
            trials=wanted_ids,
            lsa=lsa,
            lss=np.vstack([b for b, _ in lss_fits]) if lss_fits else empty,
            lsa_t=lsa_t,
            lss_t=np.vstack([t for _, t in lss_fits]) if lss_fits else empty,
            noise_model=noise_model,
        )


def _range_basis(x: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of ``x``, with ``scipy.linalg.pinv``'s rank cut-off."""
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    return u[:, s > max(x.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)]


def _ols_fit(design: np.ndarray, y: np.ndarray, columns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """OLS betas and t values (len(columns), V), as nilearn's OLSModel and compute_contrast give them."""
    rows = pinv_rows(design, columns)
    basis = _range_basis(design)
    residual = y - basis @ (basis.T @ y)
    # nilearn divides by n minus the number of columns, whatever the rank.
    dispersion = np.sum(residual**2, axis=0) / (design.shape[0] - design.shape[1])
    betas = rows @ y
    return betas, betas / np.sqrt(np.sum(rows**2, axis=1)[:, None] * dispersion[None, :])


def _ols_lss(glm: IncrementalGLM, trial_ids: Sequence[Hashable], active: Sequence[Hashable]) -> list[tuple[np.ndarray, np.ndarray]]:
    """OLS LSS betas and t values: each design's residual is the residual after the nuisance
    columns minus its projection on the trial's two columns made orthogonal to them."""
    y = glm.signal
    nuisance = glm.nuisance()[0]
    basis = _range_basis(nuisance)
    residual = y - basis @ (basis.T @ y)
    rss = np.sum(residual**2, axis=0)
    fits = []
    for t in trial_ids:
        design = glm.lss_design(t, active)
        own = design[:, : design.shape[1] - nuisance.shape[1]]
        extra = _range_basis(own - basis @ (basis.T @ own))
        dispersion = (rss - np.sum((extra.T @ residual) ** 2, axis=0)) / (design.shape[0] - design.shape[1])
        row = pinv_rows(design, [0])
        beta = row @ y
        fits.append((beta, beta / np.sqrt(np.sum(row**2) * dispersion[None, :])))
    return fits


def _same_grid(a: tuple[float, float, int, int], b: tuple[float, float, int, int]) -> bool:
    return a[0] == b[0] and abs(a[1] - b[1]) <= 1e-12 * abs(b[1]) and a[2:] == b[2:]


def _nilearn_fit(design: np.ndarray, y: np.ndarray, columns: Sequence[int], noise_model: str) -> tuple[np.ndarray, np.ndarray]:
    """Betas and t values (len(columns), V) of single-column contrasts, by nilearn's GLM."""
    labels, results = run_glm(y, design, noise_model=noise_model)
    betas = np.zeros((len(columns), y.shape[1]))
    tmaps = np.zeros_like(betas)
    for i, column in enumerate(columns):
        con = np.zeros(design.shape[1])
        con[column] = 1.0
        contrast = compute_contrast(labels, results, con, stat_type="t")
        betas[i] = contrast.effect_size()
        tmaps[i] = contrast.stat()
    return betas, tmaps
