"""rtrecon.train.command: ``rtrecon train`` on one process and on two (accelerate launch, CPU, gloo)."""

import json
import os
import sys

import numpy as np
import pytest
import torch

from rtrecon.cli import main
from rtrecon.contract import children
from rtrecon.models import load_official
from rtrecon.testing import scaled


def test_new_subject_needs_a_single_subject(tmp_path, small_data):
    small_data.save(tmp_path / "d.npz")
    with pytest.raises(SystemExit, match="exactly one subject"):
        main(["train", "--data", str(tmp_path / "d.npz"), "--output", str(tmp_path / "o"), "--init",
              str(tmp_path / "x.pth"), "--new-subject"])


def test_two_cpu_processes_with_accelerate(tmp_path, small_data):
    """The real launcher: two processes, a gloo group, sharded epochs, one checkpoint."""
    small_data.save(tmp_path / "d.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "-m", "rtrecon.cli", "train",
           "--data", str(tmp_path / "d.npz"), "--output", str(tmp_path / "ddp"), "--preset", "tiny",
           "--epochs", "2", "--batch-size", "8", "--no-progress", "--test-data", str(tmp_path / "d.npz")]
    proc = children.run(cmd, capture_output=True, text=True, timeout=scaled(240), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert set(summary["retrieval"]) == {"sub-00", "sub-01"}  # held-out scores, printed once (main process)
    assert load_official(tmp_path / "ddp" / "last.pth").config.n_voxels == (50, 40)
    progress = json.loads((tmp_path / "ddp" / "progress.json").read_text())
    assert progress["history"][-1]["world_size"] == 2
    assert torch.isfinite(torch.tensor(progress["history"][-1]["loss_all_ranks"]))


def test_a_linear_head_is_fitted_saved_and_scored_for_one_subject(tmp_path, make_training_data, capsys):
    from rtrecon.models.linear_head import LinearHead
    from rtrecon.train.data import SubjectData, TrainingData

    full = make_training_data(voxels=(50,), n_trials=200).subjects[0]  # one brain: trained on half its trials, tested on the rest
    targets = make_training_data(voxels=(50,), n_trials=200).targets
    data = TrainingData([SubjectData(full.betas[:100], full.image_ids[:100], "sub-00")], targets)
    held = TrainingData([SubjectData(full.betas[100:], full.image_ids[100:], "sub-00")], targets)
    data.save(tmp_path / "d.npz")
    held.save(tmp_path / "t.npz")
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--head", "linear", "--output", str(tmp_path / "o"),
                 "--test-data", str(tmp_path / "t.npz")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    head = LinearHead.load(tmp_path / "o" / "linear_head.npz")
    assert summary["checkpoint"] == str(tmp_path / "o" / "linear_head.npz") and summary["alpha"] == head.alpha
    retrieval = summary["retrieval"]["sub-00"]
    assert retrieval["fwd_top1"] > 5 * retrieval["chance"]
    # the control: a head fitted to shuffled targets retrieves at chance by the same scoring
    from rtrecon.train.evaluate import head_retrieval_accuracy

    rng = np.random.default_rng(3)
    s = data.subjects[0]
    shuffled = LinearHead().fit(s.betas, data.targets[s.image_ids][rng.permutation(len(s.image_ids))])
    assert head_retrieval_accuracy(shuffled, held.subjects[0], held.targets)["fwd_top1"] < 3 * retrieval["chance"]
    data2 = make_training_data()
    data2.save(tmp_path / "two.npz")
    with pytest.raises(SystemExit, match="--head linear fits one subject, found 2"):
        main(["train", "--data", str(tmp_path / "two.npz"), "--head", "linear", "--output", str(tmp_path / "o2")])
