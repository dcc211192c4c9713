"""Release schedule, Welford statistics, z-scoring and repeat averaging."""

from __future__ import annotations

import numpy as np
import pytest

from engine.trials import ReleaseSchedule, TrialNormaliser, Welford, ready_frame


def test_ready_frame_is_the_first_volume_at_or_after_the_delay():
    assert ready_frame(10.0, 8.0, 2.0) == 9  # 18 s is volume 9's start
    assert ready_frame(10.5, 8.0, 2.0) == 10
    assert ready_frame(10.0, 8.0, 2.0, slice_time_ref=0.5) == 9  # sampled at 19 s
    assert ready_frame(0.0, 0.0, 1.5) == 0


def test_release_schedule():
    schedule = ReleaseSchedule([8.0, 16.0], tr=2.0)
    assert schedule.final == 2 and schedule.frames(10.0) == [9, 13]
    assert schedule.due(10.0, last_frame=8, done=-1) is None
    assert schedule.due(10.0, last_frame=9, done=-1) == 0
    assert schedule.due(10.0, last_frame=12, done=0) is None
    assert schedule.due(10.0, last_frame=13, done=0) == 1
    assert schedule.due(10.0, last_frame=13, done=1) is None
    # an event that came late catches up oldest first, one release per volume: the first is never skipped
    assert schedule.due(10.0, last_frame=20, done=-1) == 0
    assert schedule.due(10.0, last_frame=21, done=0) == 1
    assert ReleaseSchedule([], tr=2.0).due(0.0, 100, -1) is None and ReleaseSchedule([], tr=2.0).final == 0


def test_each_release_is_zscored_against_its_own_release_statistics():
    rng = np.random.default_rng(2)
    early, late = rng.normal(0, 3, (4, 5)), rng.normal(0, 1, (4, 5))
    norm = TrialNormaliser(5)
    for i in range(4):
        norm.release(1, i, "", early[i], release=0)
        last = norm.release(1, i, "", late[i], release=1)
    np.testing.assert_allclose(last.z, (late[3] - late.mean(0)) / late.std(0, ddof=1))
    assert last.release == 1 and norm.running[0].count == norm.running[1].count == 4


def test_a_newer_release_replaces_the_trials_own_repeat(tmp_path):
    rng = np.random.default_rng(3)
    betas = rng.normal(0, 1, (4, 5))
    np.savez(tmp_path / "stats.npz", mean=np.zeros(5), std=np.ones(5))  # z = beta, to follow the averages
    norm = TrialNormaliser(5, stats=tmp_path / "stats.npz", average_repeats=True)
    assert norm.release(1, 0, "a", betas[0]).repeats == 1
    again = norm.release(1, 0, "a", betas[1], release=1)  # trial 0 refined: not a repeat of itself
    assert again.repeats == 1 and np.allclose(again.z, betas[1])
    other = norm.release(1, 1, "a", betas[2])  # another trial of the same image: averaged with trial 0's newest
    assert other.repeats == 2 and np.allclose(other.z, (betas[1] + betas[2]) / 2)


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
