"""The incremental GLM's LSA and LSS betas equal a from-scratch nilearn FirstLevelModel fit."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix

from engine.design import DesignSettings, RunDesign
from engine.glm import IncrementalGLM
from engine.motion import PARAMETER_NAMES

TR, N, V = 2.0, 110, 60
ONSETS = np.arange(6.0, 200.0, 11.3)


def _run(seed: int = 0):
    rng = np.random.default_rng(seed)
    motion = np.cumsum(rng.normal(0, [0.05, 0.05, 0.05, 5e-4, 5e-4, 5e-4], (N, 6)), axis=0)
    design = RunDesign(TR, N, DesignSettings(high_pass=1 / 128))
    signal = sum(rng.normal(1, 0.5, V)[None] * design.trial_columns(o, 3.0)[:, :1] for o in ONSETS)
    data = 1000 + 5 * signal + motion @ rng.normal(0, 2, (6, V)) + rng.normal(0, 1, (N, V))
    return design, data, motion


def _nilearn_betas(data: np.ndarray, design: pd.DataFrame) -> pd.DataFrame:
    """Betas of a from-scratch FirstLevelModel fit (one row per design column)."""
    n = len(design)
    img = nib.Nifti1Image(data[:n].T.reshape(V, 1, 1, n).astype(np.float64), np.eye(4))
    mask = nib.Nifti1Image(np.ones((V, 1, 1), np.int8), np.eye(4))
    model = FirstLevelModel(t_r=TR, noise_model="ols", signal_scaling=False, mask_img=mask, minimize_memory=False)
    model.fit(img, design_matrices=design)
    # One OLS fit for every voxel: nilearn keeps it under the single label of results_.
    (result,) = model.results_[0].values()
    return pd.DataFrame(result.theta, index=design.columns)


def _reference_design(design: RunDesign, events: pd.DataFrame, motion: np.ndarray | None, n: int) -> pd.DataFrame:
    full = make_first_level_design_matrix(
        design.frame_times,
        events,
        hrf_model=design.settings.hrf_model,
        drift_model="cosine",
        high_pass=design.settings.high_pass,
        add_regs=motion,
        add_reg_names=list(PARAMETER_NAMES) if motion is not None else None,
    )
    return full.iloc[:n]


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> float:
    error = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    assert error < 1e-6
    return error


@pytest.mark.parametrize("with_motion", [True, False])
def test_lsa_and_lss_match_nilearn_through_the_run(with_motion):
    design, data, motion = _run()
    names = list(PARAMETER_NAMES) if with_motion else []
    glm = IncrementalGLM(design, V, confound_names=names)
    arrived = 0
    for n in range(1, N + 1):
        # Events arrive when their onset has passed, as from the stimulus PC.
        while arrived < len(ONSETS) and ONSETS[arrived] <= (n - 1) * TR:
            glm.add_trial(arrived, ONSETS[arrived], 3.0)
            arrived += 1
        glm.add_volume(data[n - 1], motion[n - 1] if with_motion else ())
        if n not in (45, 80, N):
            continue
        active = glm.active_trials()
        events = pd.DataFrame({"onset": ONSETS[:arrived], "duration": 3.0, "trial_type": [f"t{i}" for i in range(arrived)]})
        reference = _reference_design(design, events, motion if with_motion else None, n)
        # Our design is nilearn's (same columns, up to order), and so are the LSA betas.
        ours_design = glm.design_matrix()
        np.testing.assert_allclose(
            ours_design[[f"trial-{t}" for t in range(arrived)]].to_numpy(),
            reference[[f"t{t}" for t in range(arrived)]].to_numpy(), rtol=1e-10, atol=1e-12,
        )
        theirs = _nilearn_betas(data, reference)
        lsa = glm.lsa()
        for t in active:
            _assert_close(lsa[t], theirs.loc[f"t{t}"].to_numpy())
        # LSS: one nilearn fit per trial, the others relabelled "other".
        for t in active[-3:]:
            labels = ["target" if i == t else "other" for i in range(arrived)]
            lss_events = events.assign(trial_type=labels)
            theirs = _nilearn_betas(data, _reference_design(design, lss_events, motion if with_motion else None, n))
            _assert_close(glm.lss(t), theirs.loc["target"].to_numpy())


def test_late_event_gap_and_overrun_are_exact():
    """A late event, a volume that never came and a run longer than planned still match nilearn."""
    design, data, motion = _run(1)
    short = RunDesign(TR, 60, design.settings)
    glm = IncrementalGLM(short, V, confound_names=PARAMETER_NAMES)
    kept = np.array([n for n in range(N) if n != 30])
    for n in kept:
        glm.add_volume(data[n], motion[n], frame=n)
    for i, onset in enumerate(ONSETS[:12]):
        glm.add_trial(i, onset, 3.0)
    assert glm.design.n_planned == 120
    events = pd.DataFrame({"onset": ONSETS[:12], "duration": 3.0, "trial_type": [f"t{i}" for i in range(12)]})
    reference = _reference_design(glm.design, events, np.vstack([motion, np.zeros((10, 6))]), N).iloc[kept]
    np.testing.assert_array_equal(glm.frames, kept)
    theirs = _nilearn_betas(data[kept], reference)
    for t, beta in glm.lsa().items():
        _assert_close(beta, theirs.loc[f"t{t}"].to_numpy())


def test_derivative_basis_lsa_matches_nilearn():
    design, data, motion = _run(2)
    design = RunDesign(TR, N, DesignSettings(hrf_model="glover + derivative", high_pass=1 / 128))
    glm = IncrementalGLM(design, V)
    for i, onset in enumerate(ONSETS[:10]):
        glm.add_trial(i, onset, 3.0)
    for n in range(N):
        glm.add_volume(data[n])
    events = pd.DataFrame({"onset": ONSETS[:10], "duration": 3.0, "trial_type": [f"t{i}" for i in range(10)]})
    theirs = _nilearn_betas(data, _reference_design(design, events, None, N))
    for t, beta in glm.lsa().items():
        _assert_close(beta, theirs.loc[f"t{t}"].to_numpy())


def test_bad_rows_and_unknown_trials_are_refused():
    design, data, _ = _run()
    glm = IncrementalGLM(design, V)
    with pytest.raises(ValueError, match="ROI values"):
        glm.add_volume(np.zeros(V + 1))
    with pytest.raises(ValueError, match="NaN"):
        glm.add_volume(np.full(V, np.nan))
    glm.add_trial("a", 100.0, 3.0)
    with pytest.raises(ValueError, match="already"):
        glm.add_trial("a", 100.0, 3.0)
    glm.add_volume(data[0])
    with pytest.raises(KeyError, match="no non-zero regressor"):
        glm.lsa(["a"])
    with pytest.raises(ValueError, match="frames must increase"):
        glm.add_volume(data[1], frame=0)
    assert glm.n_rows == 1
