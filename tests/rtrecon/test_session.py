"""``rtrecon session init|check``: the template is the defaults; check finds every bad path, by key."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from rtrecon.cli import main
from rtrecon.contract.config import SessionConfig, load_config
from rtrecon.contract.keys import init_keys
from rtrecon.session import check_config, write_template

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _nifti(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def _session_files(root: Path) -> None:
    """Real files of every kind a session config names, all valid."""
    mask = np.zeros((6, 7, 5), dtype=np.uint8)
    mask[2:4, 2:5, 1:4] = 1  # 18 voxels
    _nifti(root / "masks" / "roi.nii.gz", mask)
    _nifti(root / "ref" / "boldref.nii.gz", np.random.default_rng(0).random((6, 7, 5)).astype(np.float32))
    np.savez(root / "zscore.npz", mean=np.zeros(18), std=np.ones(18))
    (root / "ckpt").mkdir()
    save_file({"backbone.weight": np.ones((4, 3), dtype=np.float32)}, str(root / "ckpt" / "model.safetensors"))
    np.savez(root / "gallery.npz", embeddings=np.ones((10, 8), dtype=np.float32), ids=np.arange(10))
    for sub in ("unet", "vae"):
        (root / "unclip" / sub).mkdir(parents=True)
    (root / "unclip" / "unclip.json").write_text(json.dumps({"image_size": 64}))
    (root / "trials" / "images").mkdir(parents=True)
    for name in ("a", "b"):
        Image.new("RGB", (8, 8), "red").save(root / "trials" / "images" / f"{name}.png")
    (root / "trials" / "run-01.tsv").write_text(
        "stim_file\tstim_id\tfeedback\nimages/a.png\t1\t1\nimages/b.png\t2\t0\n", encoding="utf-8"
    )
    (root / "export").mkdir()
    init_keys(root / "keys")


GOOD = """
[session]
output_dir = "out"
[bridge]
watch_dir = "export"
[security]
keys_dir = "keys"
[engine]
roi_mask = "masks/roi.nii.gz"
reference = "ref/boldref.nii.gz"
zscore_stats = "zscore.npz"
[decoder]
checkpoint = "ckpt/model.safetensors"
gallery = "gallery.npz"
[reconstruction]
unclip = "unclip"
[stimulus]
trial_lists = ["trials/run-01.tsv"]
"""


@pytest.fixture()
def session_dir(tmp_path: Path) -> Path:
    _session_files(tmp_path)
    (tmp_path / "session.toml").write_text(GOOD, encoding="utf-8")
    return tmp_path


def test_template_loads_back_to_the_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cfg" / "session.toml"
    assert main(["session", "init", str(path)]) == 0
    text = path.read_text(encoding="utf-8")
    (tmp_path / "cfg" / "empty.toml").write_text("", encoding="utf-8")
    assert load_config(path) == load_config(tmp_path / "cfg" / "empty.toml")
    # every section is in the template, and every key line carries a comment
    for section in SessionConfig.model_fields:
        assert f"[{section}]" in text
    keys = [line for line in text.splitlines() if "=" in line and not line.startswith("[")]
    assert all("  # " in line for line in keys)
    assert "# roi_mask = " in text and 'hrf_model = "glover"' in text
    # a second init refuses to overwrite, --force does
    assert main(["session", "init", str(path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["session", "init", str(path), "--force"]) == 0


def test_good_config_passes(session_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(session_dir / "session.toml")
    problems, checked = check_config(config)
    assert problems == []
    assert checked == 11  # output, watch, spool, keys, mask, reference, stats, checkpoint, gallery, unclip, trials
    assert main(["session", "check", str(session_dir / "session.toml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_bad_config_reports_every_problem_with_key_and_path(session_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = session_dir
    _nifti(root / "masks" / "roi4d.nii.gz", np.ones((6, 7, 5, 3), dtype=np.uint8))
    _nifti(root / "masks" / "empty.nii.gz", np.zeros((6, 7, 5), dtype=np.uint8))
    np.savez(root / "zscore_wrong.npz", mean=np.zeros(5), std=np.ones(5))
    (root / "ckpt" / "model.pth").write_bytes(b"not a checkpoint")
    (root / "gallery.csv").write_text("1,2\n")
    (root / "unclip" / "vae").rmdir()
    (root / "trials" / "run-02.tsv").write_text(
        "stim_file\tstim_id\nimages/a.png\t1\nimages/missing.png\t2\nimages/b.png\n", encoding="utf-8"
    )
    (root / "out").write_text("a file where the output folder should be")
    bad = (
        GOOD.replace('"masks/roi.nii.gz"', '"masks/roi4d.nii.gz"')
        .replace('"ref/boldref.nii.gz"', '"ref/nothing.nii.gz"')
        .replace('"ckpt/model.safetensors"', '"ckpt/model.pth"')
        .replace('"gallery.npz"', '"gallery.csv"')
        .replace('["trials/run-01.tsv"]', '["trials/run-01.tsv", "trials/run-02.tsv"]')
        .replace('"export"', '"no_export"')
        + '[network]\nvolumes = "tcp://127.0.0.1:6000"\nresults = "tcp://127.0.0.1:6000"\n'
    )
    path = root / "bad.toml"
    path.write_text(bad, encoding="utf-8")
    assert main(["session", "check", str(path)]) == 1
    err = capsys.readouterr().err
    expected = {
        "session.output_dir": (root / "out", "is not a folder"),
        "bridge.watch_dir": (root / "no_export", "does not exist"),
        "engine.roi_mask": (root / "masks" / "roi4d.nii.gz", "is not 3-D (shape (6, 7, 5, 3))"),
        "engine.reference": (root / "ref" / "nothing.nii.gz", "does not exist"),
        "decoder.checkpoint": (root / "ckpt" / "model.pth", "neither a safetensors file nor a torch.save"),
        "decoder.gallery": (root / "gallery.csv", "unknown gallery format '.csv'"),
        "reconstruction.unclip": (root / "unclip", "missing vae"),
        "stimulus.trial_lists[1]": (root / "trials" / "run-02.tsv", "line 3: stim_file images/missing.png does not exist"),
    }
    for key, (where, reason) in expected.items():
        lines = [line for line in err.splitlines() if line.startswith(f"error: {key}: {where}: ")]
        assert lines and reason in lines[0], (key, err)
    assert f"error: stimulus.trial_lists[1]: {root / 'trials' / 'run-02.tsv'}: line 4: 1 fields, the header has 2" in err
    assert "stimulus.trial_lists[0]" not in err  # the good list is not blamed
    assert "error: network.results: tcp://127.0.0.1:6000: is also network.volumes" in err

    # with a valid but empty mask, the stats are checked against nothing; with a good mask, against its 18 voxels
    config = load_config(path)
    engine = config.engine.model_copy(update={"roi_mask": root / "masks" / "empty.nii.gz"})
    problems, _ = check_config(config.model_copy(update={"engine": engine}), role="engine")
    assert any(p.key == "engine.roi_mask" and "empty mask" in p.reason for p in problems)
    engine = config.engine.model_copy(
        update={"roi_mask": root / "masks" / "roi.nii.gz", "zscore_stats": root / "zscore_wrong.npz"}
    )
    problems, _ = check_config(config.model_copy(update={"engine": engine}), role="engine")
    assert [str(p) for p in problems if p.key == "engine.zscore_stats"] == [
        f"engine.zscore_stats: {root / 'zscore_wrong.npz'}: has statistics for 5 voxels, the ROI mask has 18"
    ]


def test_role_limits_the_paths_checked(session_dir: Path) -> None:
    config = load_config(session_dir / "session.toml")
    broken = config.model_copy(
        update={"decoder": config.decoder.model_copy(update={"checkpoint": session_dir / "absent.pth"})}
    )
    keys = lambda role: {p.key for p in check_config(broken, role)[0]}  # noqa: E731
    assert keys("engine") == {"decoder.checkpoint"}
    assert keys("bridge") == set() and keys("stimulus") == set()
    with pytest.raises(ValueError, match="unknown role"):
        check_config(broken, "scanner")


def test_invalid_values_are_reported_before_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "session.toml"
    path.write_text('[engine.glm]\nhrf_model = "gamma"\n', encoding="utf-8")
    assert main(["session", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert str(path) in err and "engine.glm.hrf_model" in err


def test_write_template_makes_parent_folders(tmp_path: Path) -> None:
    path = write_template(tmp_path / "a" / "b" / "session.toml")
    assert load_config(path).session.subject == "01"


def test_a_linear_head_is_checked_against_the_roi(session_dir: Path) -> None:
    from rtrecon.models.linear_head import LinearHead

    rng = np.random.default_rng(0)
    LinearHead().fit(rng.standard_normal((20, 18)), rng.standard_normal((20, 8))).save(session_dir / "head18.npz")
    LinearHead().fit(rng.standard_normal((20, 12)), rng.standard_normal((20, 8))).save(session_dir / "head12.npz")
    np.savez(session_dir / "nothead.npz", weights=np.ones((18, 8)))
    linear = GOOD.replace('checkpoint = "ckpt/model.safetensors"\n', 'head = "linear"\nlinear_head = "HEAD"\n').replace(
        'unclip = "unclip"\n', "")
    reasons = {}
    for name in ("head18", "head12", "nothead", "absent"):
        (session_dir / f"{name}.toml").write_text(linear.replace("HEAD", f"{name}.npz"), encoding="utf-8")
        problems, _ = check_config(load_config(session_dir / f"{name}.toml"), role="engine")
        reasons[name] = [p.reason for p in problems if p.key == "decoder.linear_head"]
    assert reasons["head18"] == []
    assert reasons["head12"] == ["takes 12 voxels, the ROI (engine.roi_mask) has 18"]
    assert reasons["nothead"] and "not a linear head file (no mean" in reasons["nothead"][0]
    assert reasons["absent"] == ["does not exist"]
