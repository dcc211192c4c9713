"""rtrecon.train.command: ``rtrecon train`` on one process and on two (accelerate launch, CPU, gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from rtrecon.cli import main
from rtrecon.models import load_official


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
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert set(summary["retrieval"]) == {"sub-00", "sub-01"}  # held-out scores, printed once (main process)
    assert load_official(tmp_path / "ddp" / "last.pth").config.n_voxels == (50, 40)
    progress = json.loads((tmp_path / "ddp" / "progress.json").read_text())
    assert progress["history"][-1]["world_size"] == 2
    assert torch.isfinite(torch.tensor(progress["history"][-1]["loss_all_ranks"]))
