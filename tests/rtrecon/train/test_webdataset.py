"""rtrecon.train.webdataset: MindEye2's wds tars + betas HDF5, built here in the official layout."""

import io
import json
import tarfile

import h5py
import numpy as np
import pytest

from rtrecon.train.webdataset import clip_targets, from_webdataset, read_behav, tar_paths

TRIALS_PER_SESSION = 6  # 750 in NSD; the global trial index is (session - 1) * 750 + trial


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _write_tar(path, samples):
    """One shard as webdataset's TarWriter lays it out: ``{key}.{entry}`` members, sample by sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for key, entries in samples:
            for entry, arr in entries.items():
                data = _npy(arr)
                info = tarfile.TarInfo(f"{key}.{entry}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def _behav(subject, session, trial, coco, shared=0):
    row = np.full((1, 17), -1.0)
    row[0, :6] = [coco, subject, session, 1, trial, (session - 1) * TRIALS_PER_SESSION + trial]
    row[0, 16] = shared
    return row


def build_root(root, subjects=(1, 2), sessions=2, voxels=(7, 5), seed=0):
    """Tars per session + new_test, betas_all_subj0X_fp32_renorm.hdf5, coco_images_224_float16.hdf5."""
    rng = np.random.default_rng(seed)
    n_images = 12
    with h5py.File(root / "coco_images_224_float16.hdf5", "w") as f:
        f["images"] = rng.random((n_images, 3, 32, 32)).astype(np.float16)
    truth = {}
    for subject, nv in zip(subjects, voxels):
        betas = rng.standard_normal((sessions * TRIALS_PER_SESSION, nv)).astype(np.float32)
        with h5py.File(root / f"betas_all_subj{subject:02d}_fp32_renorm.hdf5", "w") as f:
            f["betas"] = betas
        test_trials, rows = [], {}
        for session in range(1, sessions + 1):
            samples = []
            for trial in range(TRIALS_PER_SESSION):
                coco = int(rng.integers(2, n_images))
                if trial == 0:  # the shared image (73k index 1), shown once per session: test set
                    test_trials.append(_behav(subject, session, trial, 1, shared=1))
                    continue
                b = _behav(subject, session, trial, coco)
                rows.setdefault(session, []).append(b[0])
                samples.append((f"sample{len(samples):09d}", {
                    "behav.npy": b, "past_behav.npy": np.full((15, 17), -1.0),
                    "future_behav.npy": np.full((15, 17), -1.0), "olds_behav.npy": np.full((3, 17), -1.0)}))
            _write_tar(root / "wds" / f"subj{subject:02d}" / "train" / f"{session - 1}.tar", samples)
        _write_tar(root / "wds" / f"subj{subject:02d}" / "new_test" / "0.tar",
                   [(f"sample{i:09d}", {"behav.npy": b, "past_behav.npy": np.full((15, 17), -1.0),
                                        "future_behav.npy": np.full((15, 17), -1.0),
                                        "olds_behav.npy": np.full((3, 17), -1.0)}) for i, b in enumerate(test_trials)])
        truth[subject] = (betas, rows)
    return truth


def test_reads_the_official_layout(tmp_path):
    truth = build_root(tmp_path)
    targets = np.arange(12 * 2 * 3, dtype=np.float32).reshape(12, 2, 3)  # row = 73k index
    data = from_webdataset(tmp_path, [1, 2], targets=targets)
    assert [s.name for s in data.subjects] == ["subj01", "subj02"] and data.n_voxels == (7, 5)
    for subject, sd in zip([1, 2], data.subjects):
        betas, rows = truth[subject]
        behav = np.concatenate([np.stack(rows[s]) for s in (1, 2)])
        np.testing.assert_array_equal(sd.betas, betas[behav[:, 5].astype(int)])
        # each trial's target row holds the tokens of the 73k image it showed
        np.testing.assert_array_equal(data.targets[sd.image_ids], targets[behav[:, 0].astype(int)])
    one_hour = from_webdataset(tmp_path, [2], sessions=[1], targets=targets).subjects[0]
    assert one_hour.betas.shape == (TRIALS_PER_SESSION - 1, 5)
    np.testing.assert_array_equal(one_hour.betas, truth[2][0][1:TRIALS_PER_SESSION])
    test = from_webdataset(tmp_path, [1], split="new_test", targets=targets)
    assert test.targets.shape[0] == 1 and test.subjects[0].image_ids.tolist() == [0, 0]
    np.testing.assert_array_equal(test.subjects[0].betas, truth[1][0][[0, TRIALS_PER_SESSION]])


def test_clip_targets_are_embedded_once_and_cached(tmp_path):
    from rtrecon.embedders.openclip import OpenClipImageEmbedder

    build_root(tmp_path)
    emb = OpenClipImageEmbedder.tiny(seed=0)
    cache = tmp_path / "tokens.npz"
    data = from_webdataset(tmp_path, [1], sessions=[1], embedder=emb, targets_cache=cache)
    with h5py.File(tmp_path / "coco_images_224_float16.hdf5") as f:
        used = np.unique(read_behav(tmp_path / "wds/subj01/train/0.tar")[:, 0].astype(int))
        expected = emb.embed(np.asarray(f["images"][used], np.float32)).numpy()
    np.testing.assert_allclose(data.targets, expected, atol=1e-5)
    with np.load(cache) as z:
        assert sorted(z["ids"].tolist()) == used.tolist()
    # a second call over the same images needs no embedder; more images do
    again = from_webdataset(tmp_path, [1], sessions=[1], targets_cache=cache)
    np.testing.assert_array_equal(again.targets, data.targets)
    with pytest.raises(ValueError, match="need an embedder"):
        clip_targets(tmp_path / "coco_images_224_float16.hdf5", np.arange(12), None, cache)


def test_bad_input_names_the_file(tmp_path):
    build_root(tmp_path)
    targets = np.zeros((12, 2, 3), np.float32)
    with pytest.raises(FileNotFoundError, match=r"subj01/train/5\.tar"):
        tar_paths(tmp_path, 1, sessions=[6])
    with pytest.raises(FileNotFoundError, match="subj03/train: no session tars"):
        from_webdataset(tmp_path, [3], targets=targets)
    (tmp_path / "wds/subj01/train/0.tar").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match=r"0\.tar: not a readable tar"):
        from_webdataset(tmp_path, [1], targets=targets)
    _write_tar(tmp_path / "wds/subj01/train/0.tar", [("s0", {"behav.npy": np.zeros((2, 3))})])
    with pytest.raises(ValueError, match=r"0\.tar: s0\.behav\.npy has shape \(2, 3\)"):
        from_webdataset(tmp_path, [1], targets=targets)
    _write_tar(tmp_path / "wds/subj01/train/0.tar", [("s0", {"behav.npy": _behav(1, 9, 0, 2)})])
    with pytest.raises(ValueError, match=r"betas_all_subj01_fp32_renorm\.hdf5: trial index 48 outside its 12 rows"):
        from_webdataset(tmp_path, [1], sessions=[1], targets=targets)


def test_rtrecon_train_on_webdataset(tmp_path, capsys):
    from rtrecon.cli import main

    build_root(tmp_path, voxels=(7, 5))
    np.save(tmp_path / "tokens.npy", np.random.default_rng(1).standard_normal((12, 4, 16)).astype(np.float32))
    out = tmp_path / "run"
    assert main(["train", "--wds", str(tmp_path), "--wds-subjects", "1", "2", "--targets", str(tmp_path / "tokens.npy"),
                 "--output", str(out), "--preset", "tiny", "--epochs", "2", "--batch-size", "2", "--no-progress",
                 "--wds-test"]) == 0
    from rtrecon.models import load_official

    assert load_official(out / "last.pth").config.n_voxels == (7, 5)
    assert json.loads((out / "progress.json").read_text())["history"]
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["retrieval"]) == {"subj01", "subj02"}  # scored on the new_test tars
    with pytest.raises(SystemExit, match="--wds-subjects"):
        main(["train", "--wds", str(tmp_path), "--output", str(out)])
