"""rtrecon.train.compare: shared-subject (pretrained + fine-tuned) vs subject-only retrieval."""

import json
from dataclasses import replace

import pytest
import torch

from rtrecon.cli import main
from rtrecon.data.synthetic import PRESETS, generate
from rtrecon.models import load_official
from rtrecon.train.compare import ComparisonRecipe, compare_on_data


def test_command_on_a_synthetic_world_with_more_shared_images(tmp_path, capsys):
    preset = replace(PRESETS["small"], name="tiny", grid=(16, 19, 16), voxel_mm=6.75, roi_voxels=300, image_size=32,
                     noise=replace(PRESETS["small"].noise, motion=False))
    root = generate(tmp_path / "world", n_subjects=3, n_sessions=2, n_runs=1, size=preset, seed=2, progress=False,
                    shared_images=24)
    out = tmp_path / "cmp"
    args = ["train-compare", "--root", str(root), "--output", str(out), "--hidden-dim", "32", "--blocks", "1",
            "--pretrain-epochs", "2", "--finetune-epochs", "2", "--batch-size", "16", "--n", "20", "--loops", "2",
            "--no-progress"]
    torch.manual_seed(0)
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result == json.loads((out / "comparison.json").read_text())
    assert result["pretrain_subjects"] == [2, 3] and result["heldout"] == 1 and result["finetune_sessions"] == [1]
    assert result["trials"]["test_images"] == 24 and result["trials"]["test_trials"] == 72  # each seen 3 times
    assert result["chance"] == 1 / 20
    for name in ("shared_subject", "subject_only"):
        assert 0 <= result[name]["fwd_top1"] <= 1 and 0 <= result[name]["bwd_top1"] <= 1 and result[name]["n"] == 20
    # the fine-tuned model is the pretrained backbone with the new subject's adapter; the other starts from scratch
    pre, ft, alone = (load_official(out / d / "last.pth") for d in ("pretrain", "finetune", "subject_only"))
    assert len(pre.config.n_voxels) == 2 and ft.config.n_voxels == alone.config.n_voxels != pre.config.n_voxels[:1]
    w = [m.backbone.backbone_linear.weight for m in (pre, ft, alone)]
    assert (w[1] - w[0]).abs().mean() < 0.5 * (w[2] - w[0]).abs().mean()
    with pytest.raises(SystemExit, match="24 shared test images, fewer than the 300"):
        main([*args[:-5], "--no-progress"])
    with pytest.raises(SystemExit, match="must not be among the pretraining subjects"):
        main([*args, "--pretrain", "1", "2"])


def test_data_checks(tmp_path, make_training_data):
    data = make_training_data(voxels=(50, 40, 30), n_trials=40, seed=1)
    own, test = data.select([2]), data.select([2])
    with pytest.raises(ValueError, match="fewer than the 300"):
        compare_on_data(data.select([0, 1]), own, test, tmp_path, ComparisonRecipe())
    with pytest.raises(ValueError, match="must hold one subject"):
        compare_on_data(data.select([0]), data.select([1, 2]), test, tmp_path, ComparisonRecipe(n=10))
    with pytest.raises(ValueError, match="40 voxels, its test data 30"):
        compare_on_data(data.select([0]), data.select([1]), test, tmp_path, ComparisonRecipe(n=10))
