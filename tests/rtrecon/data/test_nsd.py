"""Tests for rtrecon.data.nsd (the NSD layout reader), on a synthetic dataset in NSD's layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from rtrecon.data.nsd import SPACES, NSDDataset, NSDLayoutError


@pytest.fixture()
def broken_root(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "copy"))


def test_synthetic_dataset_passes_every_check(synthetic_root: Path) -> None:
    nsd = NSDDataset(synthetic_root)
    notes = nsd.check(read_volumes=True)
    assert nsd.subjects() == [1, 2]
    assert nsd.sessions(1) == [1, 2] and nsd.runs(1, 2) == [1, 2]
    assert len(notes) == 2 and "nsdgeneral voxels" in notes[0]


def test_run_shapes_dtypes_timing_and_events(synthetic_root: Path) -> None:
    nsd = NSDDataset(synthetic_root)
    run = nsd.load_run(1, 1, 2)
    roi = nsd.roi(1)
    assert run.tr == pytest.approx(1.333171) == pytest.approx(float(run.image.header.get_zooms()[3]), abs=1e-4)
    assert run.image.shape == (*roi.shape, 226)
    assert run.image.get_data_dtype() == np.int16
    assert run.design.shape == (225,) and run.motion.shape == (226, 6)
    # Even run: 62 stimulus trials, onsets every 3 rows (4 s), never in the 3 opening blank trials.
    ev = run.events
    assert len(ev) == 62 and (ev.duration == 3.0).all()
    rows = np.flatnonzero(run.design)
    assert (rows % 3 == 0).all() and rows.min() >= 9
    np.testing.assert_allclose(ev.onset, rows * run.tr)
    assert (ev.image_id.to_numpy() == run.design[rows]).all()
    vol = next(run.iter_volumes())
    assert vol.shape == roi.shape and vol.dtype == np.float32 and vol[roi > 0].mean() > 100
    assert set(np.unique(roi)) <= {-1, 0, 1}


def test_trials_repeats_shared_images_and_stimuli(synthetic_root: Path) -> None:
    nsd = NSDDataset(synthetic_root)
    trials = nsd.trials(1)
    design = nsd.expdesign
    assert len(trials) == design.masterordering.size == int(design.stimpattern.sum())
    shared = set(nsd.shared_ids.tolist())
    counts: dict[int, int] = {}
    for t in trials:
        assert t.repeat == counts.get(t.image_id, 0)  # repeat index counts earlier showings
        counts[t.image_id] = counts.get(t.image_id, 0) + 1
        assert t.shared == (t.image_id in shared)
    assert max(counts.values()) == 3
    assert all(counts[i] == 3 for i in shared)  # shared images: 3 times each
    # Both subjects see the shared images; their other images differ.
    other = {t.image_id for t in nsd.trials(2)}
    assert shared <= other and not ({t.image_id for t in trials} - shared) & (other - shared)
    ids = [trials[5].image_id, trials[0].image_id, trials[5].image_id]
    imgs = nsd.images(ids)
    assert imgs.dtype == np.uint8 and imgs.shape[0] == 3 and imgs.shape[3] == 3
    np.testing.assert_array_equal(imgs[0], imgs[2])
    with h5py.File(nsd.stimuli_path) as f:
        np.testing.assert_array_equal(imgs[1], f["imgBrick"][trials[0].image_id - 1])
    with pytest.raises(ValueError, match="1-based"):
        nsd.images([0])


def test_betas_are_int16_over_300_in_chronological_trial_order(synthetic_root: Path) -> None:
    nsd = NSDDataset(synthetic_root)
    mask = nsd.roi_mask(1)
    betas = nsd.betas(1, 2, mask=mask)
    n_trials = sum(int(nsd.expdesign.stimpattern[1, r].sum()) for r in range(2))
    assert betas.shape == (n_trials, int(mask.sum())) and betas.dtype == np.float32
    with h5py.File(nsd.betas_path(1, 2)) as f:
        raw = f["betas"]
        assert raw.dtype == np.int16 and raw.shape == (n_trials, *mask.shape[::-1])  # (n, Z, Y, X)
        x, y, z = np.argwhere(mask)[0]  # the first ROI voxel in C order of (X, Y, Z)
        np.testing.assert_allclose(betas[:, 0], raw[:, z, y, x] / 300.0)
    full = nsd.betas(1, 2)
    assert full.shape == (n_trials, *mask.shape)
    assert 0.2 < np.mean(betas) < 5.0  # % signal change, not ×300


def test_design_that_disagrees_with_expdesign_is_reported(broken_root: Path) -> None:
    nsd = NSDDataset(broken_root)
    path = nsd.design_path(2, 1, 1)
    rows = np.loadtxt(path, dtype=int)
    first = np.flatnonzero(rows)[0]
    rows[first] += 1
    np.savetxt(path, rows, fmt="%d")
    with pytest.raises(NSDLayoutError, match=r"design_session01_run01.tsv: differs from nsd_expdesign.mat at rows \[%d\]" % first):
        nsd.check(2)
    nsd.check(1)  # the other subject is untouched


def test_design_with_wrong_row_count_is_reported_by_check_and_load(broken_root: Path) -> None:
    nsd = NSDDataset(broken_root)
    path = nsd.design_path(1, 1, 1)
    np.savetxt(path, np.loadtxt(path, dtype=int)[:-1], fmt="%d")
    with pytest.raises(NSDLayoutError, match="224 rows, expected 225"):
        nsd.check(1)
    with pytest.raises(NSDLayoutError, match=r"design_session01_run01.tsv: has 224 rows"):
        nsd.load_run(1, 1, 1)


def test_timeseries_with_wrong_tr_and_volume_count_is_reported(broken_root: Path) -> None:
    nsd = NSDDataset(broken_root)
    path = nsd.timeseries_path(1, 2, 1)
    img = nib.load(path)
    data = np.asarray(img.dataobj)[..., :200]
    bad = nib.Nifti1Image(data, img.affine)
    bad.header.set_xyzt_units("mm", "sec")
    bad.header.set_zooms(img.header.get_zooms()[:3] + (2.0,))
    nib.save(bad, path)
    with pytest.raises(NSDLayoutError) as err:
        nsd.check(1)
    text = str(err.value)
    assert "timeseries_session02_run01.nii.gz: 200 volumes, expected 226" in text
    assert "header TR 2.0 s, expected 1.333171 s" in text
    assert "design_session02_run01.tsv: 225 rows, expected 199 (one fewer than the volumes)" in text


def test_missing_and_malformed_files_name_the_path(broken_root: Path) -> None:
    nsd = NSDDataset(broken_root)
    nsd.roi_path(1).unlink()
    with pytest.raises(NSDLayoutError, match=r"nsdgeneral.nii.gz: missing \(expected a 3-D NIfTI image\)"):
        nsd.roi_mask(1)
    nsd.motion_path(1, 1, 1).write_text("1\t2\n3\t4\n")
    with pytest.raises(NSDLayoutError, match=r"motion_session01_run01.tsv: expected 6 columns"):
        nsd.load_run(1, 1, 1)
    with h5py.File(nsd.stimuli_path, "w") as f:
        f.create_dataset("images", data=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(NSDLayoutError, match=r"nsd_stimuli.hdf5: no 'imgBrick' dataset"):
        nsd.images([1])
    scipy.io.savemat(nsd.expdesign_path, {"masterordering": np.ones((1, 3))})
    with pytest.raises(NSDLayoutError, match=r"nsd_expdesign.mat: missing keys \['subjectim', 'sharedix', 'stimpattern'\]"):
        nsd.trials(1)
    with pytest.raises(NSDLayoutError, match="betas_session09.hdf5: missing"):
        nsd.betas(1, 9)
    with pytest.raises(NSDLayoutError, match="not a directory"):
        NSDDataset(broken_root / "nope")


def test_spaces_table_matches_nsd() -> None:
    assert SPACES["func1pt8mm"] == {"tr": 1.333171, "volumes": 226, "rows_per_trial": 3}
    assert SPACES["func1mm"]["tr"] == 0.999878 and SPACES["func1mm"]["volumes"] == 301
    assert SPACES["func1mm"]["tr"] * 4 / 3 == pytest.approx(SPACES["func1pt8mm"]["tr"], abs=1e-6)


def test_sessions_with_resting_state_map_file_runs_to_experiment_runs(tmp_path: Path) -> None:
    nsd = NSDDataset(tmp_path)
    folder = nsd.timeseries_path(1, 21, 1).parent
    folder.mkdir(parents=True)
    for run in range(1, 15):  # rest, NSD runs 1-12, rest
        nsd.timeseries_path(1, 21, run).touch()
    for run in range(1, 13):
        nsd.timeseries_path(1, 1, run).touch()
    assert nsd.sessions(1) == [1, 21] and nsd.runs(1, 21) == list(range(1, 15))
    assert [nsd.experiment_run(1, 21, r) for r in (1, 2, 13, 14)] == [None, 1, 12, None]
    assert [nsd.experiment_run(1, 1, r) for r in (1, 12)] == [1, 12]
