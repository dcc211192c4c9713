"""Tests for rtrecon.data.timeseries (NSD design, signal model and head motion)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.fft import dct

from rtrecon.data import timeseries as ts


def test_stimpattern_follows_nsd_trial_structure() -> None:
    pattern = ts.make_stimpattern(3, 4, np.random.default_rng(0))
    assert pattern.shape == (3, 4, 75)
    for session in pattern:
        for r, run in enumerate(session, start=1):
            assert run[:3].sum() == 0 and run[-4:].sum() == 0
            assert run.sum() == (62 if r % 2 == 0 else 63)
            middle = run[3:71]
            blanks = np.flatnonzero(middle == 0)
            assert len(blanks) == (6 if r % 2 == 0 else 5)
            if r % 2:  # stretches of 9-14 stimulus trials between the 5 blanks
                stretches = np.diff(np.concatenate([[-1], blanks, [68]])) - 1
                assert stretches.min() >= 9 and stretches.max() <= 14


def test_masterordering_shows_shared_images_three_times_and_others_one_to_three() -> None:
    order = ts.make_masterordering(250, 130, 20, np.random.default_rng(1))
    assert order.size == 250 and order.min() == 1 and order.max() == 130
    counts = np.bincount(order, minlength=131)[1:]
    assert (counts[:20] == 3).all() and counts[20:].min() >= 1 and counts[20:].max() <= 3
    with pytest.raises(ValueError, match="cannot show"):
        ts.make_masterordering(100, 20, 10, np.random.default_rng(0))


def test_hrf_library_and_trial_regressors_peak_where_expected() -> None:
    dt = 0.1
    hrfs = ts.hrf_library(20, dt)
    peaks = hrfs.argmax(1) * dt
    assert hrfs.max(1) == pytest.approx(1.0) and 4.0 < peaks.min() < peaks.max() < 7.5
    assert (hrfs.min(1) < 0).all()  # undershoot
    tr = 1.333171
    regs = ts.trial_regressors(np.array([20.0, 60.0]), 100, tr, hrfs[[0, -1]], dt)
    assert regs.shape == (2, 100, 2)
    assert (regs[:, : int(20 / tr), 0] == 0).all()  # nothing before the onset
    peak_times = regs[:, :, 1].argmax(1) * tr - 60.0
    assert 4.5 < peak_times[0] < peak_times[1] < 11.0  # later-peaking HRF peaks later


def test_correlated_noise_is_unit_variance_ar1_and_spatially_smooth() -> None:
    brain = np.zeros((12, 12, 12), bool)
    brain[2:10, 2:10, 2:10] = True
    noise = ts.correlated_noise(brain, 400, np.random.default_rng(2), ar=0.5, spatial_sigma=1.0, global_fraction=0.0)
    assert noise.shape == (400, brain.sum()) and noise.std() == pytest.approx(1.0, abs=0.05)
    lag1 = np.mean([np.corrcoef(noise[1:, v], noise[:-1, v])[0, 1] for v in range(0, noise.shape[1], 17)])
    assert lag1 == pytest.approx(0.5, abs=0.08)
    vol = np.zeros(brain.shape)
    vol[brain] = noise[0]
    neighbours = np.corrcoef(vol[3:9, 3:9, 3:9].ravel(), vol[4:10, 3:9, 3:9].ravel())[0, 1]
    assert neighbours > 0.3


def test_drift_is_slow() -> None:
    d = ts.drift(50, 226, 1.333, np.random.default_rng(3), amplitude=1.0)
    power = (dct(d - d.mean(0), axis=0, norm="ortho") ** 2).sum(1)
    assert power[:6].sum() > 0.97 * power.sum()  # periods of 100 s and longer


def test_move_volumes_matches_scipy_resampling_and_integer_shifts() -> None:
    rng = np.random.default_rng(4)
    shape = (14, 16, 12)
    vol = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    params = np.array([[0.0] * 6, [1.3, -0.7, 0.5, 0.03, -0.02, 0.04]])
    moved = ts.move_volumes(np.stack([vol, vol]), affine, params)
    np.testing.assert_allclose(moved[0], vol, atol=1e-5)
    m = np.linalg.inv(affine) @ np.linalg.inv(ts.motion_matrix(params[1])) @ affine
    reference = ndimage.affine_transform(vol, m[:3, :3], m[:3, 3], order=1, mode="constant")
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(moved[1][inner], reference[inner], atol=1e-4)
    # +2 mm along world x with a -2 mm x voxel size: the content moves one voxel down the x index.
    shifted = ts.move_volumes(vol[None], affine, np.array([[2.0, 0, 0, 0, 0, 0]]))[0]
    np.testing.assert_allclose(shifted[:-1], vol[1:], atol=1e-5)


def test_motion_has_slow_drift_and_jerks_and_starts_at_the_given_pose() -> None:
    start = np.array([0.5, 0, 0, 0, 0, 0.01])
    motion = ts.make_motion(226, np.random.default_rng(5), start=start)
    assert motion.shape == (226, 6)
    np.testing.assert_allclose(motion[0], start, atol=1e-12)
    assert 0.05 < np.abs(motion[:, :3] - start[:3]).max() < 5.0
    assert np.abs(motion[:, 3:]).max() < 0.1  # radians, not degrees
