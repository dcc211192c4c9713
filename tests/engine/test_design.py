"""The run design equals nilearn's make_first_level_design_matrix built from the same events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from nilearn.glm.first_level import make_first_level_design_matrix

from engine.design import DesignSettings, RunDesign


@pytest.mark.parametrize("hrf_model", ["glover", "spm + derivative + dispersion"])
def test_trial_columns_equal_nilearn(hrf_model):
    settings = DesignSettings(hrf_model=hrf_model, high_pass=1 / 128)
    design = RunDesign(tr=1.6, n_planned=90, settings=settings)
    onsets = [4.0, 19.3, 40.7, 77.0, 101.2]
    events = pd.DataFrame({"onset": onsets, "duration": 3.0, "trial_type": [f"t{i}" for i in range(5)]})
    expected = make_first_level_design_matrix(
        design.frame_times, events, hrf_model=hrf_model, drift_model="cosine", high_pass=1 / 128
    )
    for i, onset in enumerate(onsets):
        cols = design.trial_columns(onset, 3.0)
        for j, suffix in enumerate(design.basis_suffixes):
            np.testing.assert_allclose(cols[:, j], expected[f"t{i}{suffix}"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(design.drift, expected[design.drift_names], rtol=1e-12, atol=1e-12)


def test_main_columns_add_up_to_one_condition():
    """Why LSS's "other trials" column is a sum of LSA columns: nilearn's regressor is linear in events."""
    design = RunDesign(tr=2.0, n_planned=80)
    onsets = [6.0, 31.1, 50.5, 99.9]
    events = pd.DataFrame({"onset": onsets, "duration": 4.0, "trial_type": "other"})
    expected = make_first_level_design_matrix(design.frame_times, events, drift_model=None)["other"]
    summed = sum(design.trial_columns(o, 4.0)[:, 0] for o in onsets)
    np.testing.assert_allclose(summed, expected, rtol=1e-10, atol=1e-12)


def test_slice_time_ref_shifts_frames():
    design = RunDesign(tr=2.0, n_planned=10, settings=DesignSettings(slice_time_ref=0.5))
    np.testing.assert_allclose(design.frame_times, 1.0 + 2.0 * np.arange(10))


def test_regressor_is_zero_before_onset():
    design = RunDesign(tr=2.0, n_planned=60)
    cols = design.trial_columns(30.0, 3.0)
    assert np.all(cols[design.frame_times <= 30.0] == 0)
    assert cols[design.frame_times > 30.0].max() > 0


def test_extended_keeps_settings():
    design = RunDesign(tr=2.0, n_planned=40, settings=DesignSettings(hrf_model="spm"))
    longer = design.extended(80)
    assert longer.n_planned == 80 and longer.settings.hrf_model == "spm"


def test_rejects_bad_plans():
    with pytest.raises(ValueError, match="TR"):
        RunDesign(tr=0.0, n_planned=10)
    with pytest.raises(ValueError, match="at least 2"):
        RunDesign(tr=2.0, n_planned=1)
    with pytest.raises(ValueError):
        DesignSettings(hrf_model="boxcar")
