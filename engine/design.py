"""A run's design, built column by column with nilearn's own HRF and drift functions.

:class:`RunDesign` holds what is known before the first volume arrives: the frame times of the
run as planned (``n_planned`` volumes of ``tr`` seconds; volume ``i`` starts at ``i * tr`` and is
sampled at ``(i + slice_time_ref) * tr``, as in nilearn's ``FirstLevelModel``) and the drift
columns (nilearn's cosine or polynomial drift plus a constant). A trial's columns are computed
the moment its event arrives with :func:`nilearn.glm.first_level.compute_regressor`, over the
whole planned run, so a row of the design never changes once it has been used: this is what lets
:mod:`engine.glm` keep sufficient statistics. The planned length matters (the drift basis and
nilearn's oversampled time grid depend on it); when a run outlives its plan,
:meth:`RunDesign.extended` gives the design of a longer plan and the GLM is rebuilt once.

Truncated to ``n`` rows, the design equals ``make_first_level_design_matrix`` on the planned
frame times with the same events, confounds and options, in the column order trials, confounds,
drift (the tests check this).
"""

from __future__ import annotations

import numpy as np
from nilearn.glm.first_level import compute_regressor, make_first_level_design_matrix

from rtrecon.config import HRF_MODELS, GLMSection

__all__ = ["DesignSettings", "RunDesign", "HRF_MODELS"]

#: The design options are the session config's ``[engine.glm]`` table (nilearn's names and defaults).
DesignSettings = GLMSection


class RunDesign:
    """Frame times, drift and trial regressors of one run planned to last ``n_planned`` volumes."""

    def __init__(self, tr: float, n_planned: int, settings: DesignSettings | None = None) -> None:
        if tr <= 0:
            raise ValueError(f"TR must be positive, got {tr}")
        if n_planned < 2:
            raise ValueError(f"a run must be planned with at least 2 volumes, got {n_planned}")
        self.tr = float(tr)
        self.n_planned = int(n_planned)
        self.settings = settings or DesignSettings()
        self.frame_times = (np.arange(self.n_planned) + self.settings.slice_time_ref) * self.tr
        drift = make_first_level_design_matrix(
            self.frame_times,
            events=None,
            drift_model=self.settings.drift_model,
            high_pass=self.settings.high_pass,
            drift_order=self.settings.drift_order,
        )
        self.drift = drift.to_numpy(dtype=np.float64)
        self.drift_names = [str(c) for c in drift.columns]
        self.basis_suffixes = self._basis_suffixes()

    def _basis_suffixes(self) -> list[str]:
        _, names = compute_regressor(
            np.array([[0.0], [1.0], [1.0]]), self.settings.hrf_model, self.frame_times, con_id=""
        )
        return list(names)

    @property
    def n_basis(self) -> int:
        """Columns per trial (1, or 2-3 with temporal and dispersion derivatives)."""
        return len(self.basis_suffixes)

    def trial_columns(self, onset: float, duration: float, amplitude: float = 1.0) -> np.ndarray:
        """The (n_planned, n_basis) regressors of one event, as nilearn computes them."""
        condition = np.array([[float(onset)], [float(duration)], [float(amplitude)]])
        columns, _ = compute_regressor(
            condition,
            self.settings.hrf_model,
            self.frame_times,
            oversampling=self.settings.oversampling,
            min_onset=self.settings.min_onset,
        )
        return np.asarray(columns, dtype=np.float64)

    def extended(self, n_planned: int) -> RunDesign:
        """The same design planned for ``n_planned`` volumes."""
        return RunDesign(self.tr, n_planned, self.settings)
