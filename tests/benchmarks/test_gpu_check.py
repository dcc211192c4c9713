"""benchmarks/gpu_check.sh: the prepared full-size GPU check, run here at tiny sizes.

The full-size run needs one large GPU (and minutes): its test is skipped without CUDA. The tiny
run goes through the same code on a CPU and must end with the one JSON line; without CUDA the
full-size run must refuse in one line with a non-zero status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtrecon.contract import children
from rtrecon.testing import scaled

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return children.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=scaled(timeout), env=env, cwd=REPO)


def test_tiny_run_measures_every_stage_and_ends_with_the_json_line():
    done = _run("--tiny", "--repeats", "1", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["benchmark"] == "gpu_check" and record["machine"]
    results = record["results"]
    assert results["size"] == "tiny"
    for key in ("betas_to_tokens_prior_ms", "image_4_steps_ms", "image_38_steps_ms", "fp16_token_cosine", "peak_gpu_mb"):
        assert results[key] is not None, key
    me, un = results["mindeye2"], results["unclip"]
    assert "error" not in me and "error" not in un and "error" not in results["unclip_channels_last"]
    assert me["fp32_total_ms"] > 0 and me["fp16_total_ms"] > 0 and me["prior_steps"] == 9
    assert me["backbone_token_cosine"] > 0.99 and me["retrieval_cosine"] > 0.99  # bfloat16 autocast on a CPU
    assert un["finite"] and un["image_shape"] == [1, 3, 64, 64]
    assert un["image_38_steps_ms"] > un["image_4_steps_ms"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_full_size_run_refuses_in_one_line_without_cuda():
    done = _run(timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "sees no CUDA GPU" in lines[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the full-size check needs a CUDA GPU")
def test_full_size_run_on_cuda():
    done = _run(timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])["results"]
    assert results["size"] == "full" and results["mindeye2"]["hidden_dim"] == 4096
    assert results["fp16_token_cosine"] > 0.99
