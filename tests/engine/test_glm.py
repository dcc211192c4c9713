"""The GLM's releases equal least squares on the same rows, and its betas equal nilearn's FirstLevelModel.

Every comparison uses the default design settings (no ``planned_volumes``): the reference design
is nilearn's ``make_first_level_design_matrix`` on the frame times of the volumes present.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import FirstLevelModel, make_first_level_design_matrix

from engine.design import DEFAULT_CAPACITY, DesignSettings, RunDesign
from engine.glm import IncrementalGLM, pinv_rows
from engine.motion import PARAMETER_NAMES

BOLD = "data/bold/siemens_prisma_e11_pydecnef_run1"
DICOM_SERIES = "data/dicom/siemens_enh_xa30_prisma/ref_local/7_func-bold_task-fa_run-1"
BOUND = 1e-6


def _relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _roi(data: np.ndarray, step: int) -> np.ndarray:
    """(n, V) signal of every ``step``-th voxel of the brighter 30 % of the volume."""
    mean = data.mean(axis=-1)
    return data[mean > np.percentile(mean, 70)].T[:, ::step].astype(np.float64)


@pytest.fixture(scope="module")
def shared_run(shared_dir: Path) -> tuple[np.ndarray, pd.DataFrame, float]:
    """The shared 130-volume real run (ROI signal) and its events."""
    img = nib.load(shared_dir / BOLD / "ref_local/5_PERCEPTION.nii.gz")
    events = pd.read_csv(shared_dir / BOLD / "design_local/events.tsv", sep="\t")
    return _roi(np.asarray(img.dataobj), 8), events[["onset", "duration"]], float(img.header.get_zooms()[3])


@pytest.fixture(scope="module")
def dicom_series(shared_dir: Path) -> tuple[np.ndarray, pd.DataFrame, float]:
    """A real 20-volume Siemens XA30 series (dcm2niix of its DICOMs), with three events."""
    img = nib.load(shared_dir / f"{DICOM_SERIES}.nii.gz")
    tr = json.loads((shared_dir / f"{DICOM_SERIES}.json").read_text())["RepetitionTime"]
    return _roi(np.asarray(img.dataobj), 4), pd.DataFrame({"onset": [1.0, 6.5, 12.0], "duration": 2.0}), tr


def _stream(y, events, tr, settings=None, confounds=None, frames=None, on_volume=None) -> IncrementalGLM:
    """Feed a run as the engine does: each event when its onset has passed, then each volume."""
    names = list(PARAMETER_NAMES) if confounds is not None else []
    glm = IncrementalGLM(RunDesign(tr, settings=settings), y.shape[1], confound_names=names)
    frames = np.arange(len(y)) if frames is None else frames
    for row, frame in enumerate(frames):
        for trial, event in events.iterrows():
            if event.onset <= frame * tr and trial not in glm.trial_ids:
                glm.add_trial(trial, event.onset, event.duration)
        glm.add_volume(y[row], confounds[row] if confounds is not None else (), frame=int(frame))
        if on_volume is not None:
            on_volume(glm, row + 1)
    return glm


def _nilearn_design(glm: IncrementalGLM, events: pd.DataFrame, labels: list[str], confounds=None) -> pd.DataFrame:
    """nilearn's design on the frame times present, for ``events`` labelled ``labels``."""
    settings = glm.design.settings
    return make_first_level_design_matrix(
        glm.design.frame_times(glm.frames),
        events.assign(trial_type=labels),
        hrf_model=settings.hrf_model,
        drift_model=settings.drift_model,
        high_pass=settings.high_pass,
        add_regs=None if confounds is None else confounds[: glm.n_rows],
        add_reg_names=None if confounds is None else list(PARAMETER_NAMES),
    )


def _first_level(y: np.ndarray, design: pd.DataFrame, tr: float, noise_model: str) -> FirstLevelModel:
    n, v = y.shape
    img = nib.Nifti1Image(y.T.reshape(v, 1, 1, n), np.eye(4))
    mask = nib.Nifti1Image(np.ones((v, 1, 1), np.int8), np.eye(4))
    model = FirstLevelModel(t_r=tr, noise_model=noise_model, signal_scaling=False, mask_img=mask)
    return model.fit(img, design_matrices=design)


def _contrast(model: FirstLevelModel, design: pd.DataFrame, column: str, output: str) -> np.ndarray:
    con = (design.columns == column).astype(float)
    return np.asarray(model.compute_contrast(con, stat_type="t", output_type=output).dataobj).ravel()


def _lstsq(design: pd.DataFrame, y: np.ndarray, columns: list[str]) -> tuple[np.ndarray, float]:
    """lstsq betas, and how far ``pinv(X) @ Y`` is from them on ``columns`` (the precision the design allows)."""
    x = design.to_numpy()
    theirs = np.linalg.lstsq(x, y, rcond=None)[0]
    other = np.linalg.pinv(x) @ y
    rows = [design.columns.get_loc(c) for c in columns]
    return theirs, max(_relative_error(other[j], theirs[j]) for j in rows)


def _assert_release_is_lstsq(glm: IncrementalGLM, events: pd.DataFrame, confounds=None) -> list[float]:
    """LSA of every active trial and LSS of the newest one a TR old equal lstsq on nilearn's design of the same rows.

    To 1e-6 relative, or to 10 times the disagreement between lstsq and pinv themselves where that
    is larger: a trial that started a fraction of a second before the last volume has a column of
    ~1e-12 and makes the design's condition number ~1e12, where no two solvers agree to 1e-6.
    """
    active = glm.active_trials()
    if not active:
        return []
    y = glm.signal
    acts = events.loc[active]
    design = _nilearn_design(glm, acts, [f"t{t}" for t in active], confounds)
    theirs, spread = _lstsq(design, y, [f"t{t}" for t in active])
    lsa = glm.lsa()
    errors = [_relative_error(lsa[t], theirs[design.columns.get_loc(f"t{t}")]) for t in active]
    assert max(errors) < max(BOUND, 10 * spread)
    # The newest trial at least a TR old: a beta released earlier is that of a column ~1e-12,
    # which the last bits of its regressor decide.
    horizon = glm.design.frame_times(glm.frames)[-1] - glm.design.tr
    released = [t for t in active if events.onset[t] <= horizon]
    if not released:
        return errors
    target = released[-1]
    labels = ["target" if t == target else "other" for t in active]
    design = _nilearn_design(glm, acts, labels, confounds)
    theirs, spread = _lstsq(design, y, ["target"])
    errors.append(_relative_error(glm.lss(target), theirs[design.columns.get_loc("target")]))
    assert errors[-1] < max(BOUND, 10 * spread)
    return errors


def _assert_final_is_first_level(glm: IncrementalGLM, y, events, tr, noise_model, confounds=None, lss_trials=3):
    final = glm.final(noise_model)
    active = glm.active_trials()
    assert final.trials == active and final.noise_model == noise_model
    design = _nilearn_design(glm, events.loc[active], [f"t{t}" for t in active], confounds)
    model = _first_level(y, design, tr, noise_model)
    for i, t in enumerate(active):
        assert _relative_error(final.lsa[i], _contrast(model, design, f"t{t}", "effect_size")) < BOUND
        assert _relative_error(final.lsa_t[i], _contrast(model, design, f"t{t}", "stat")) < BOUND
    for i, t in list(enumerate(active))[-lss_trials:]:
        labels = ["target" if s == t else "other" for s in active]
        design = _nilearn_design(glm, events.loc[active], labels, confounds)
        model = _first_level(y, design, tr, noise_model)
        assert _relative_error(final.lss[i], _contrast(model, design, "target", "effect_size")) < BOUND
        assert _relative_error(final.lss_t[i], _contrast(model, design, "target", "stat")) < BOUND
        if noise_model == "ols":
            assert _relative_error(glm.lss(t), final.lss[i]) < BOUND


def test_every_release_of_the_shared_run_is_lstsq(shared_run):
    y, events, tr = shared_run
    errors: list[float] = []
    glm = _stream(y, events, tr, on_volume=lambda g, n: errors.extend(_assert_release_is_lstsq(g, events)))
    assert glm.n_rows == 130 and len(glm.active_trials()) == 11
    # From the first trial's first non-zero volume on: 11 trials, every volume.
    assert len(errors) > 11 * 60


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_shared_run_final_betas_equal_first_level_model(shared_run, noise_model):
    y, events, tr = shared_run
    glm = _stream(y, events, tr)
    _assert_final_is_first_level(glm, y, events, tr, noise_model, lss_trials=11)


@pytest.mark.parametrize("noise_model", ["ols", "ar1"])
def test_real_dicom_series_equals_first_level_model(dicom_series, noise_model):
    y, events, tr = dicom_series
    errors: list[float] = []
    glm = _stream(y, events, tr, on_volume=lambda g, n: errors.extend(_assert_release_is_lstsq(g, events)))
    assert glm.n_rows == 20 and errors
    _assert_final_is_first_level(glm, y, events, tr, noise_model)


def _synthetic(n: int, seed: int = 0, tr: float = 2.0, v: int = 40):
    rng = np.random.default_rng(seed)
    design = RunDesign(tr)
    frames = np.arange(n)
    onsets = np.arange(6.0, n * tr - 4, 9.7)
    events = pd.DataFrame({"onset": onsets, "duration": 3.0})
    signal = sum(rng.normal(1, 0.5, v)[None] * design.trial_columns(o, 3.0, frames)[:, :1] for o in onsets)
    motion = np.cumsum(rng.normal(0, [0.05, 0.05, 0.05, 5e-4, 5e-4, 5e-4], (n, 6)), axis=0)
    drift = np.cos(np.linspace(0, 3, n))[:, None] * rng.normal(0, 3, v)
    y = 1000 + 5 * signal + drift + motion @ rng.normal(0, 2, (6, v)) + rng.normal(0, 1, (n, v))
    return y, events, motion


@pytest.mark.parametrize(
    ("n", "gap", "settings"),
    [(40, None, None), (130, 61, None), (400, 200, None), (130, None, DesignSettings(slice_time_ref=0.5))],
)
def test_synthetic_runs_of_any_length(n, gap, settings):
    """Runs shorter and longer than the default capacity, a missing volume, mid-TR sampling."""
    y, events, motion = _synthetic(n, seed=n)
    keep = np.array([f for f in range(n) if f != gap])
    # Every 9 rows up to 130 volumes; on the 400-volume run every 50 (a check costs O(rows x trials)
    # in nilearn and in the GLM, whose columns a gap makes it recompute), and always the rows on
    # either side of the gap and of the buffer's growth past its default capacity, and the last.
    step = 9 if n <= 130 else 50
    edges = {len(keep)} | ({gap, gap + 1} if gap else set()) | {DEFAULT_CAPACITY, DEFAULT_CAPACITY + 1}
    checked = []

    def check(glm, rows):
        if rows % step == 0 or rows in edges:
            checked.append(_assert_release_is_lstsq(glm, events, motion[keep]))

    glm = _stream(y[keep], events, 2.0, settings=settings, confounds=motion[keep], frames=keep, on_volume=check)
    np.testing.assert_array_equal(glm.frames, keep)
    assert len(checked) > 3
    # AR(1) is nilearn's own run_glm on the design the OLS comparison checks: the shorter runs
    # cover it (gap included); at 400 volumes it would add 2.3 s to the 2.8 s of everything else.
    for noise_model in ("ols", "ar1") if n <= 130 else ("ols",):
        _assert_final_is_first_level(glm, y[keep], events, 2.0, noise_model, confounds=motion[keep], lss_trials=2)


def test_derivative_basis_equals_first_level_model():
    y, events, motion = _synthetic(110, seed=2)
    settings = DesignSettings(hrf_model="glover + derivative")
    glm = _stream(y, events, 2.0, settings=settings, confounds=motion)
    _assert_release_is_lstsq(glm, events, motion)
    _assert_final_is_first_level(glm, y, events, 2.0, "ols", confounds=motion)


def test_truncated_plan_and_normal_equations_are_far_from_nilearn(shared_run):
    """Controls: the old design (300-volume drift cut to the run), and the normal equations on it."""
    y, events, tr = shared_run
    glm = _stream(y, events, tr)
    active = glm.active_trials()
    x = glm.lsa_design(active)
    exact = pinv_rows(x, [0]) @ y
    long_drift, _ = glm.design.drift(np.arange(300))
    truncated = np.hstack([x[:, : len(active)], long_drift[:130]])
    assert _relative_error(pinv_rows(truncated, [0]) @ y, exact[0]) > 1e3 * BOUND
    # On that design (condition number ~1e12) the normal equations are far from least squares.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normal = np.linalg.solve(truncated.T @ truncated, truncated.T @ y)[0]
    assert np.linalg.cond(truncated) > 1e10
    assert _relative_error(normal, np.linalg.lstsq(truncated, y, rcond=None)[0][0]) > 1e3 * BOUND


def test_growth_past_capacity_keeps_every_row():
    y, events, motion = _synthetic(70, seed=3)
    small = IncrementalGLM(RunDesign(2.0, n_planned=1), y.shape[1], PARAMETER_NAMES)
    large = IncrementalGLM(RunDesign(2.0, n_planned=500), y.shape[1], PARAMETER_NAMES)
    for glm in (small, large):
        for trial, event in events.iterrows():
            glm.add_trial(trial, event.onset, event.duration)
        for row in range(70):
            glm.add_volume(y[row], motion[row])
    np.testing.assert_array_equal(small.signal, y)
    np.testing.assert_array_equal(small.frames, np.arange(70))
    for t, beta in small.lsa().items():
        np.testing.assert_array_equal(beta, large.lsa()[t])


def test_refresh_recomputes_the_same_betas():
    y, events, motion = _synthetic(90, seed=4)
    glm = _stream(y, events, 2.0, confounds=motion, on_volume=lambda g, n: g.active_trials())
    before = glm.lss(3)
    glm.refresh()
    assert _relative_error(glm.lss(3), before) < 1e-12


def test_bad_rows_and_unknown_trials_are_refused():
    y, _, _ = _synthetic(10)
    glm = IncrementalGLM(RunDesign(2.0), y.shape[1])
    with pytest.raises(ValueError, match="ROI values"):
        glm.add_volume(np.zeros(y.shape[1] + 1))
    with pytest.raises(ValueError, match="NaN"):
        glm.add_volume(np.full(y.shape[1], np.nan))
    glm.add_trial("a", 100.0, 3.0)
    with pytest.raises(ValueError, match="already"):
        glm.add_trial("a", 100.0, 3.0)
    glm.add_volume(y[0])
    assert glm.active_trials() == []
    glm.add_volume(y[1])
    with pytest.raises(KeyError, match="no non-zero regressor"):
        glm.lsa(["a"])
    with pytest.raises(ValueError, match="frames must increase"):
        glm.add_volume(y[2], frame=0)
    with pytest.raises(ValueError, match="noise_model"):
        glm.final("ar2")
    assert glm.n_rows == 2
