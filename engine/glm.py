"""Incremental OLS GLM over ROI voxels, with per-trial betas (LSA and LSS) from the same statistics.

:class:`IncrementalGLM` keeps ``XᵀX`` and ``XᵀY`` for the rows seen so far. A new volume adds its
row (trial regressors at that frame, the motion confounds, drift and constant from
:class:`engine.design.RunDesign`); since a trial regressor is zero outside ``onset ..
onset + duration + 32 s``, only the non-zero entries of the row touch ``XᵀY``, so a volume costs
the same at the end of a run as at its start. A new trial adds columns: their products with the
past rows are computed from the stored design rows and, for ``XᵀY``, only from the past frames
where the column is non-zero (none when the event arrives before its onset).

Betas solve the normal equations of the columns active so far (trials whose regressor is still
all-zero are left out, exactly as a pseudo-inverse would give them zero weight and leave the
others unchanged), by Cholesky after scaling each column to unit norm; when the design is not
of full rank (the first volumes of a run have fewer rows than columns) they are the
minimum-norm solution ``(XᵀX)⁺XᵀY = X⁺Y``, as nilearn's pseudo-inverse gives.

* **LSA**: one design, one column (set) per trial.
* **LSS** (Mumford et al. 2012): for trial ``j``, the design ``[c_j, Σ_{i≠j} c_i, nuisance]``. Its
  columns are linear combinations of the LSA columns, so its normal equations follow from the
  same ``XᵀX`` and ``XᵀY`` at O(p·V) per trial.

Both equal a from-scratch nilearn ``FirstLevelModel(noise_model="ols", signal_scaling=False)``
fit on the same data, design and confounds (tests/engine/test_glm.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
from scipy import linalg

from engine.design import RunDesign

__all__ = ["IncrementalGLM"]


class IncrementalGLM:
    """OLS over ``n_voxels`` signals with the design of ``design``, grown one row or trial at a time.

    ``confound_names`` name the per-volume confounds passed to :meth:`add_volume` (none: no
    confounds). Trials are identified by any hashable id.
    """

    def __init__(self, design: RunDesign, n_voxels: int, confound_names: Sequence[str] = ()) -> None:
        self.design = design
        self.n_voxels = int(n_voxels)
        self.confound_names = list(confound_names)
        self._trials: dict[Hashable, tuple[float, float, np.ndarray]] = {}
        self._confounds = np.zeros((design.n_planned, len(self.confound_names)))
        self._y = np.zeros((design.n_planned, self.n_voxels))
        self._frames = np.zeros(design.n_planned, dtype=np.int64)
        self.n_rows = 0
        self._reset_statistics()

    # -- layout --------------------------------------------------------------------------------
    @property
    def trial_ids(self) -> list[Hashable]:
        return list(self._trials)

    @property
    def n_columns(self) -> int:
        return len(self._trials) * self.design.n_basis + len(self.confound_names) + len(self.design.drift_names)

    def _trial_slice(self, position: int) -> slice:
        k = self.design.n_basis
        return slice(position * k, (position + 1) * k)

    def _nuisance_slice(self) -> slice:
        return slice(len(self._trials) * self.design.n_basis, self.n_columns)

    def column_names(self) -> list[str]:
        """Design column names: ``trial-<id><basis suffix>``, the confounds, then the drift."""
        names = [f"trial-{t}{s}" for t in self._trials for s in self.design.basis_suffixes]
        return names + self.confound_names + self.design.drift_names

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Design rows ``start:stop`` (in arrival order) with every current column."""
        frames = self._frames[start:stop]
        parts = [cols[frames] for _, _, cols in self._trials.values()]
        parts += [self._confounds[start:stop], self.design.drift[frames]]
        return np.hstack(parts)

    @property
    def frames(self) -> np.ndarray:
        """The volume index of each row so far (a missing volume leaves a gap)."""
        return self._frames[: self.n_rows].copy()

    def design_matrix(self) -> pd.DataFrame:
        """The design of the rows so far, indexed by frame time."""
        return pd.DataFrame(
            self._rows(0, self.n_rows), columns=self.column_names(), index=self.design.frame_times[self.frames]
        )

    def refresh(self) -> None:
        """Recompute ``XᵀX`` and ``XᵀY`` from the stored rows: the same numbers whatever order
        rows and trials arrived in (used for a run's final betas)."""
        self._reset_statistics()

    def _reset_statistics(self) -> None:
        rows = self._rows(0, self.n_rows)
        self._xtx = rows.T @ rows
        self._xty = rows.T @ self._y[: self.n_rows]

    # -- growth --------------------------------------------------------------------------------
    def _grow_plan(self) -> None:
        """The run outlived its plan: double it and recompute the statistics once."""
        new = self.design.extended(2 * self.design.n_planned)
        self.design = new
        self._confounds = np.vstack([self._confounds, np.zeros_like(self._confounds)])
        self._y = np.vstack([self._y, np.zeros_like(self._y)])
        self._frames = np.r_[self._frames, np.zeros_like(self._frames)]
        self._trials = {t: (on, du, new.trial_columns(on, du)) for t, (on, du, _) in self._trials.items()}
        self._reset_statistics()

    def add_trial(self, trial_id: Hashable, onset: float, duration: float) -> None:
        """Add a trial's regressor column(s); its products with past rows come from stored rows."""
        if trial_id in self._trials:
            raise ValueError(f"trial {trial_id!r} is already in the design")
        cols = self.design.trial_columns(onset, duration)
        past = self._rows(0, self.n_rows)
        new_past = cols[self.frames]
        cross = past.T @ new_past
        self_block = new_past.T @ new_past
        k = cols.shape[1]
        position = len(self._trials) * self.design.n_basis
        # Trial columns come first: insert the new block after the existing trial columns.
        xtx = np.insert(self._xtx, [position] * k, cross.T, axis=0)
        col_block = np.vstack([cross[:position], self_block, cross[position:]])
        self._xtx = np.insert(xtx, [position] * k, col_block, axis=1)
        frames = np.flatnonzero(np.any(new_past != 0, axis=1))
        xty_new = new_past[frames].T @ self._y[frames]
        self._xty = np.insert(self._xty, [position] * k, xty_new, axis=0)
        self._trials[trial_id] = (float(onset), float(duration), cols)

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
        while frame >= self.design.n_planned:
            self._grow_plan()
        i = self.n_rows
        self._frames[i] = frame
        self._y[i] = y
        self._confounds[i] = confounds
        row = self._rows(i, i + 1)[0]
        self._xtx += np.outer(row, row)
        nz = np.flatnonzero(row)
        self._xty[nz] += row[nz, None] * y[None, :]
        self.n_rows += 1

    # -- solutions -----------------------------------------------------------------------------
    def active_trials(self) -> list[Hashable]:
        """Trials whose regressor is non-zero on some volume so far (the others have no beta yet)."""
        frames = self.frames
        return [t for t, (_, _, cols) in self._trials.items() if np.any(cols[frames] != 0)]

    @staticmethod
    def _solve_rows(gram: np.ndarray, rhs: np.ndarray, wanted: Sequence[int]) -> np.ndarray:
        """Rows ``wanted`` of ``gram⁻¹ rhs`` for a symmetric positive definite ``gram``."""
        scale = np.sqrt(np.diag(gram))
        if np.all(scale > 0):
            unit = gram / np.outer(scale, scale)
            if np.linalg.cond(unit) < 1e10:
                inv = linalg.cho_solve(linalg.cho_factor(unit), np.eye(len(gram)))
                return (inv[wanted] / scale[wanted, None] / scale[None, :]) @ rhs
        # Fewer rows than columns (early in a run) or collinear columns: (XᵀX)⁺Xᵀ = X⁺, the
        # minimum-norm solution that nilearn's pinv gives too.
        return np.linalg.pinv(gram, rcond=1e-13, hermitian=True)[wanted] @ rhs

    def _active_columns(self) -> tuple[list[Hashable], np.ndarray]:
        active = self.active_trials()
        positions = {t: p for p, t in enumerate(self._trials)}
        cols = [np.arange(self.n_columns)[self._trial_slice(positions[t])] for t in active]
        nuisance = np.arange(self.n_columns)[self._nuisance_slice()]
        return active, np.concatenate(cols + [nuisance])

    def lsa(self, trial_ids: Sequence[Hashable] | None = None) -> dict[Hashable, np.ndarray]:
        """LSA betas (V,) of the main basis column of each trial (default: every active trial)."""
        active, columns = self._active_columns()
        wanted_ids = active if trial_ids is None else list(trial_ids)
        missing = [t for t in wanted_ids if t not in active]
        if missing:
            raise KeyError(f"trial(s) {missing} have no non-zero regressor yet")
        k = self.design.n_basis
        wanted = [active.index(t) * k for t in wanted_ids]
        gram = self._xtx[np.ix_(columns, columns)]
        betas = self._solve_rows(gram, self._xty[columns], wanted)
        return dict(zip(wanted_ids, betas))

    def lss(self, trial_id: Hashable) -> np.ndarray:
        """LSS beta (V,) of ``trial_id``: that trial against all other trials plus nuisance."""
        active = self.active_trials()
        if trial_id not in active:
            raise KeyError(f"trial {trial_id!r} has no non-zero regressor yet")
        k = self.design.n_basis
        n_trial_cols = len(self._trials) * k
        positions = {t: p for p, t in enumerate(self._trials)}
        target = np.arange(n_trial_cols)[self._trial_slice(positions[trial_id])]
        # Combination matrix (p, q): target columns, their sum over other trials, nuisance.
        combo = np.zeros((self.n_columns, 2 * k))
        combo[target, np.arange(k)] = 1.0
        for t in self._trials:
            if t != trial_id:
                cols = np.arange(n_trial_cols)[self._trial_slice(positions[t])]
                combo[cols, k + np.arange(k)] = 1.0
        nuisance = np.arange(self.n_columns)[self._nuisance_slice()]
        nuis = np.zeros((self.n_columns, len(nuisance)))
        nuis[nuisance, np.arange(len(nuisance))] = 1.0
        combo = np.hstack([combo, nuis])
        gram = combo.T @ self._xtx @ combo
        keep = np.flatnonzero(np.diag(gram) > 0)  # no other trial active yet: drop its column
        gram = gram[np.ix_(keep, keep)]
        rhs = np.vstack(
            [
                self._xty[target],
                self._xty[:n_trial_cols].reshape(len(self._trials), k, -1).sum(axis=0) - self._xty[target],
                self._xty[nuisance],
            ]
        )[keep]
        return self._solve_rows(gram, rhs, [0])[0]
