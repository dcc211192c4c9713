"""Trial readiness, Welford statistics, z-scoring and repeat averaging."""

from __future__ import annotations

import numpy as np
import pytest

from engine.trials import TrialNormaliser, Welford, ready_frame


def test_ready_frame_is_the_first_volume_at_or_after_the_delay():
    assert ready_frame(10.0, 8.0, 2.0) == 9  # 18 s is volume 9's start
    assert ready_frame(10.5, 8.0, 2.0) == 10
    assert ready_frame(10.0, 8.0, 2.0, slice_time_ref=0.5) == 9  # sampled at 19 s
    assert ready_frame(0.0, 0.0, 1.5) == 0


def test_welford_equals_numpy():
    x = np.random.default_rng(0).normal(3, 2, (40, 7))
    w = Welford(7)
    for row in x:
        w.update(row)
    np.testing.assert_allclose(w.mean, x.mean(0))
    np.testing.assert_allclose(w.variance, x.var(0, ddof=1))


def test_session_zscore_and_repeat_average():
    rng = np.random.default_rng(1)
    betas = rng.normal(0, 1, (6, 5))
    norm = TrialNormaliser(5, average_repeats=True)
    first = norm.release(1, 0, "a.png", betas[0])
    assert np.all(first.z == 0) and first.repeats == 1  # nothing to compare with yet
    out = [norm.release(1, i, f"s{i}", betas[i]) for i in range(1, 5)]
    expected = (betas[4] - betas[:5].mean(0)) / betas[:5].std(0, ddof=1)
    np.testing.assert_allclose(out[-1].z, expected)
    again = norm.release(1, 5, "s4", betas[5])
    z5 = (betas[5] - betas.mean(0)) / betas.std(0, ddof=1)
    np.testing.assert_allclose(again.z, (out[-1].z + z5) / 2)
    assert again.repeats == 2


def test_training_statistics(tmp_path):
    np.savez(tmp_path / "stats.npz", mean=np.ones(3), std=np.array([2.0, 0.0, 1.0]))
    norm = TrialNormaliser(3, stats=tmp_path / "stats.npz")
    np.testing.assert_allclose(norm.release(1, 0, "", np.array([3.0, 5.0, 0.0])).z, [1.0, 0.0, -1.0])
    with pytest.raises(ValueError, match="ROI has 4"):
        TrialNormaliser(4, stats=tmp_path / "stats.npz")
    with pytest.raises(ValueError, match="ROI has 3"):
        norm.release(1, 1, "", np.zeros(4))
