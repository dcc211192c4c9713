"""rtrecon.train.data: the in-memory training interface and per-rank batching."""

import numpy as np
import pytest

from rtrecon.train.data import SubjectData, TrainingData, epoch_batches


def test_round_trip_and_select(tmp_path, small_data):
    path = small_data.save(tmp_path / "d.npz")
    again = TrainingData.load(path)
    assert again.n_voxels == (50, 40) and [s.name for s in again.subjects] == ["sub-00", "sub-01"]
    np.testing.assert_array_equal(again.subjects[1].betas, small_data.subjects[1].betas)
    assert again.select(["sub-01"]).n_voxels == (40,)
    assert again.images is None and again.blurry_latents is None


def test_stimuli_travel_with_the_data(tmp_path, small_data):
    images = np.random.default_rng(0).integers(0, 256, (60, 3, 8, 8), dtype=np.uint8)
    data = TrainingData(small_data.subjects, small_data.targets, images=images)
    again = TrainingData.load(data.save(tmp_path / "d.npz")).select([1])
    assert again.images.dtype == np.uint8
    np.testing.assert_array_equal(again.images, images)
    with pytest.raises(ValueError, match=r"images must be \(60, 3, H, W\)"):
        TrainingData(small_data.subjects, small_data.targets, images=images[:5])


def test_validation_names_the_problem(tmp_path):
    with pytest.raises(ValueError, match="image ids outside 0..2"):
        TrainingData([SubjectData(np.zeros((2, 3)), [0, 3], "s")], np.zeros((3, 4, 16)))
    with pytest.raises(ValueError, match="2 trials of betas"):
        SubjectData(np.zeros((2, 3)), [0], "s")
    with pytest.raises(ValueError, match="tokens, dim"):
        TrainingData([SubjectData(np.zeros((1, 3)), [0])], np.zeros((3, 4)))
    (tmp_path / "bad.npz").write_bytes(b"")
    np.savez(tmp_path / "bad.npz", x=np.zeros(1))
    with pytest.raises(ValueError, match=r"bad\.npz: not an rtrecon training file"):
        TrainingData.load(tmp_path / "bad.npz")


def test_epoch_batches_are_reproducible_and_disjoint_across_ranks():
    a = epoch_batches((40, 30), 4, epoch=2, seed=1, rank=0, world_size=2)
    b = epoch_batches((40, 30), 4, epoch=2, seed=1, rank=1, world_size=2)
    assert len(a) == len(b) == 3  # 15 trials of the smaller subject per rank // 4
    assert all(len(step) == 2 and len(step[0]) == 4 for step in a)
    for s in range(2):
        seen_a = np.concatenate([step[s] for step in a])
        seen_b = np.concatenate([step[s] for step in b])
        assert not set(seen_a) & set(seen_b)
    again = epoch_batches((40, 30), 4, epoch=2, seed=1, rank=0, world_size=2)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, again))
    other = epoch_batches((40, 30), 4, epoch=3, seed=1, rank=0, world_size=2)
    assert not np.array_equal(a[0][0], other[0][0])
    with pytest.raises(ValueError, match="larger than the smallest subject"):
        epoch_batches((3,), 4, 0)


class _FakeNSD:
    """The four NSDDataset calls ``from_nsd`` makes, on arrays."""

    def __init__(self, betas_by_session, trials):
        self._betas, self._trials = betas_by_session, trials

    def roi_mask(self, subject, name):
        return None

    def trials(self, subject):
        return self._trials

    def sessions(self, subject):
        return sorted(self._betas)

    def betas(self, subject, session, mask):
        return self._betas[session]

    def betas_path(self, subject, session):
        return f"betas_session{session:02d}.hdf5"


def test_from_nsd_zscores_per_session_and_splits_shared():
    from types import SimpleNamespace

    from rtrecon.train.data import from_nsd

    rng = np.random.default_rng(0)
    betas = {1: rng.normal(5, 2, (4, 3)).astype(np.float32), 2: rng.normal(-1, 3, (2, 3)).astype(np.float32)}
    trials = [SimpleNamespace(session=s, image_id=i, shared=sh)
              for s, i, sh in [(1, 1, True), (1, 2, False), (1, 3, False), (1, 1, True), (2, 4, False), (2, 1, True)]]
    ds = _FakeNSD(betas, trials)
    targets = np.zeros((4, 2, 2), np.float32)
    all_ = from_nsd(ds, targets, [1])
    sub = all_.subjects[0]
    assert sub.name == "subj01" and sub.image_ids.tolist() == [0, 1, 2, 0, 3, 0]  # 1-based 73k ids -> rows
    np.testing.assert_allclose(sub.betas[:4].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(sub.betas[:4].std(0), 1, atol=1e-3)
    assert from_nsd(ds, targets, [1], shared="only").subjects[0].image_ids.tolist() == [0, 0, 0]
    assert from_nsd(ds, targets, [1], sessions=[1], shared="exclude").subjects[0].image_ids.tolist() == [1, 2]
    ds._betas[2] = ds._betas[2][:1]
    with pytest.raises(ValueError, match=r"betas_session02\.hdf5: 1 trials of betas, the design lists 2"):
        from_nsd(ds, targets, [1])
