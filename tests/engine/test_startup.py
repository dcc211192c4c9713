"""The engine refuses to start, one line per problem, when its config names what is not there."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from engine.startup import startup_problems
from rtrecon.cli import main
from rtrecon.contract.keys import init_keys


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "session.toml"
    path.write_text(f'[session]\noutput_dir = "out"\n{body}')
    return path


def test_missing_roi_mask_and_keys_folder_are_one_line_each_before_any_data(tmp_path: Path, capsys) -> None:
    # Issue 20, failure 9: the engine started without its ROI mask, then logged 199 tracebacks.
    config = _config(tmp_path, '[security]\nkeys_dir = "nokeys"\n[engine]\nroi_mask = "masks/roi.nii.gz"\n')
    assert main(["engine", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert any("engine.roi_mask" in line and "roi.nii.gz" in line for line in lines)
    assert any("security.keys_dir" in line and "nokeys" in line for line in lines)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii*"))


def test_keys_without_the_engines_own_secret_are_refused(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", ["bridge", "stimulus"])
    problems = startup_problems(_config(tmp_path, '[security]\nkeys_dir = "keys"\n'))
    assert len(problems) == 1 and "no secret key for role 'engine'" in problems[0]


def test_a_complete_config_has_no_problem(tmp_path: Path) -> None:
    # Control: the same config with the mask and keys in place.
    (tmp_path / "masks").mkdir()
    mask = np.zeros((4, 4, 3), np.uint8)
    mask[1:3, 1:3, 1] = 1
    nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / "masks" / "roi.nii.gz")
    init_keys(tmp_path / "keys")
    config = _config(tmp_path, '[security]\nkeys_dir = "keys"\n[engine]\nroi_mask = "masks/roi.nii.gz"\n')
    assert startup_problems(config) == []
    assert startup_problems(tmp_path / "absent.toml") == [f"{tmp_path / 'absent.toml'}: no such config file"]


def test_a_bad_training_session_folder_is_refused(tmp_path: Path) -> None:
    missing = startup_problems(_config(tmp_path, '[engine.early]\nnoise_pool = true\ntraining_session = "training"\n'))
    assert len(missing) == 1 and "engine.early.training_session" in missing[0] and "does not exist" in missing[0]
    (tmp_path / "training" / "func").mkdir(parents=True)
    empty = startup_problems(_config(tmp_path, '[engine.early]\nnoise_pool = true\ntraining_session = "training"\n'))
    assert len(empty) == 1 and "has no *_bold.nii[.gz] run with its *_events.tsv" in empty[0]
    # Control: a run with its events is accepted.
    func = tmp_path / "training" / "func"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 5), np.float32), np.eye(4)), func / "sub-01_ses-01_task-x_run-1_bold.nii.gz")
    (func / "sub-01_ses-01_task-x_run-1_events.tsv").write_text("onset\tduration\n2.0\t3.0\n")
    assert startup_problems(_config(tmp_path, '[engine.early]\nnoise_pool = true\ntraining_session = "training"\n')) == []
