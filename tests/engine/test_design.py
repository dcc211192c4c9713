"""The design of the volumes so far equals nilearn's make_first_level_design_matrix on their frame times."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix

from engine.design import DEFAULT_CAPACITY, DesignSettings, RunDesign


def _nilearn(frame_times, events, settings: DesignSettings) -> pd.DataFrame:
    return make_first_level_design_matrix(
        frame_times, events, hrf_model=settings.hrf_model, drift_model=settings.drift_model,
        high_pass=settings.high_pass, drift_order=settings.drift_order,
    )


@pytest.mark.parametrize("hrf_model", ["glover", "spm + derivative + dispersion"])
@pytest.mark.parametrize("n", [16, 40, 130])
def test_columns_equal_nilearn_for_the_frames_so_far(hrf_model, n):
    settings = DesignSettings(hrf_model=hrf_model)
    design = RunDesign(tr=1.6, settings=settings)
    frames = np.arange(n)
    # Only events inside the run: nilearn "regularizes" a design with all-zero columns.
    onsets = [o for o in [4.0, 19.3, 40.7, 77.0, 101.2] if o < design.frame_times(frames)[-1]]
    events = pd.DataFrame({"onset": onsets, "duration": 3.0, "trial_type": [f"t{i}" for i in range(len(onsets))]})
    expected = _nilearn(design.frame_times(frames), events, settings)
    for i, onset in enumerate(onsets):
        cols = design.trial_columns(onset, 3.0, frames)
        for j, suffix in enumerate(design.basis_suffixes):
            np.testing.assert_allclose(cols[:, j], expected[f"t{i}{suffix}"], rtol=1e-10, atol=1e-12)
    drift, names = design.drift(frames)
    np.testing.assert_allclose(drift, expected[names], rtol=1e-12, atol=1e-12)
    assert names[-1] == "constant"


def test_missing_volume_gives_nilearns_design_of_the_rows_present():
    settings = DesignSettings(slice_time_ref=0.5)
    design = RunDesign(tr=2.0, settings=settings)
    frames = np.delete(np.arange(90), [30, 31])
    events = pd.DataFrame({"onset": [10.0, 70.0], "duration": 3.0, "trial_type": ["a", "b"]})
    expected = _nilearn(design.frame_times(frames), events, settings)
    drift, names = design.drift(frames)
    np.testing.assert_allclose(drift, expected[names], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(design.trial_columns(70.0, 3.0, frames)[:, 0], expected["b"], rtol=1e-10, atol=1e-12)


def test_truncated_longer_plan_is_not_the_run_length_design():
    """Control: the old design (a 300-volume basis cut to 130 rows) is far from nilearn's."""
    design = RunDesign(tr=2.0)
    short, names = design.drift(np.arange(130))
    truncated = _nilearn(design.frame_times(np.arange(300)), None, design.settings).to_numpy()[:130]
    assert short.shape[1] == 6 and truncated.shape[1] == 13
    assert np.linalg.cond(truncated) > 1e10 > 1e2 > np.linalg.cond(short)


def test_main_columns_add_up_to_one_condition():
    """Why LSS's "other trials" column is a sum of LSA columns: nilearn's regressor is linear in events."""
    design = RunDesign(tr=2.0)
    frames = np.arange(80)
    onsets = [6.0, 31.1, 50.5, 99.9]
    expected = design.condition_columns(onsets, [4.0] * 4, frames)[:, 0]
    summed = sum(design.trial_columns(o, 4.0, frames)[:, 0] for o in onsets)
    np.testing.assert_allclose(summed, expected, rtol=1e-10, atol=1e-12)


def test_oversampled_times_are_nilearns_grid():
    """The grid the GLM caches columns on: events on it give the same regressors as nilearn's."""
    design = RunDesign(tr=1.5)
    for n in (20, 21, 200):
        frames = np.arange(n)
        times = design.oversampled_times(frames)
        assert times[0] == design.settings.min_onset
        np.testing.assert_allclose(np.diff(times), 1.5 / design.settings.oversampling, rtol=1e-9)
        # A boxcar starting on a grid sample: the regressor starts rising right after it.
        onset = float(times[len(times) // 3])
        cols = design.trial_columns(onset, 3.0, frames)[:, 0]
        assert np.all(cols[design.frame_times(frames) <= onset] == 0)


def test_slice_time_ref_shifts_frames():
    design = RunDesign(tr=2.0, settings=DesignSettings(slice_time_ref=0.5))
    np.testing.assert_allclose(design.frame_times(np.arange(10)), 1.0 + 2.0 * np.arange(10))


def test_regressor_is_zero_before_onset():
    design = RunDesign(tr=2.0)
    frames = np.arange(60)
    cols = design.trial_columns(30.0, 3.0, frames)
    assert np.all(cols[design.frame_times(frames) <= 30.0] == 0)
    assert cols[design.frame_times(frames) > 30.0].max() > 0


def test_capacity_is_a_hint_only():
    assert RunDesign(tr=2.0).n_planned == DEFAULT_CAPACITY
    a, b = RunDesign(2.0, 40), RunDesign(2.0, 400)
    np.testing.assert_array_equal(a.drift(np.arange(100))[0], b.drift(np.arange(100))[0])


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="TR"):
        RunDesign(tr=0.0)
    with pytest.raises(ValueError, match="at least 1"):
        RunDesign(tr=2.0, n_planned=0)
    with pytest.raises(ValueError, match="at least 2 volumes"):
        RunDesign(tr=2.0).drift([0])
    with pytest.raises(ValueError):
        DesignSettings(hrf_model="boxcar")
    with pytest.raises(ValueError):
        DesignSettings(noise_model="ar2")
