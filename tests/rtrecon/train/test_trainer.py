"""rtrecon.train.trainer: the MindEye2 recipe on small random arrays (single process)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rtrecon.models import MindEye2, MindEye2Config, load_official
from rtrecon.models.convnext import ConvNeXtTeacher
from rtrecon.train.data import TrainingData
from rtrecon.train.evaluate import retrieval_accuracy
from rtrecon.train.trainer import TrainConfig, param_groups, train

FAST = dict(batch_size=16, lr=3e-3, progress=False)


def test_pretraining_learns_and_checkpoints(tmp_path, small_data):
    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny(n_voxels=small_data.n_voxels))
    before = retrieval_accuracy(model, small_data.subjects[0], small_data.targets, 0, n=60, loops=3)
    history = train(model, small_data, TrainConfig(epochs=6, **{**FAST, "lr": 1e-2}), tmp_path)
    after = retrieval_accuracy(model, small_data.subjects[0], small_data.targets, 0, n=60, loops=3)
    assert [h["contrastive"] for h in history] == ["BiMixCo"] + ["SoftCLIP"] * 5  # first 33 %: BiMixCo
    assert {"prior", "clip", "loss"} <= set(history[0])
    assert history[-1]["loss"] < history[0]["loss"] and history[-1]["clip"] < 0.5 * history[0]["clip"]
    assert after["fwd_top1"] + after["bwd_top1"] > before["fwd_top1"] + before["bwd_top1"] + 0.25
    saved = load_official(tmp_path / "last.pth")  # the official layout, strict
    x = torch.from_numpy(small_data.subjects[1].betas[:2])
    torch.testing.assert_close(saved.encode(x, 1).clip_voxels, model.encode(x, 1).clip_voxels)
    assert json.loads((tmp_path / "progress.json").read_text())["epoch"] == 6


def test_resume_continues_from_the_saved_epoch(tmp_path, small_data):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=3, **FAST)
    model = MindEye2(MindEye2Config.tiny(n_voxels=small_data.n_voxels))
    train(model, small_data, cfg, tmp_path)
    progress = json.loads((tmp_path / "progress.json").read_text())
    progress["epoch"], progress["history"] = 2, progress["history"][:2]  # pretend the run stopped after epoch 2
    (tmp_path / "progress.json").write_text(json.dumps(progress))
    fresh = MindEye2(MindEye2Config.tiny(n_voxels=small_data.n_voxels))
    history = train(fresh, small_data, cfg, tmp_path, resume=True)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    # the resumed model started from the saved state, not from its own random weights
    assert not torch.allclose(fresh.backbone.backbone_linear.weight, MindEye2(fresh.config).backbone.backbone_linear.weight)


def test_finetune_a_new_subject_from_a_pretrained_checkpoint(tmp_path, small_data, make_training_data):
    torch.manual_seed(0)
    pre = MindEye2(MindEye2Config.tiny(n_voxels=small_data.n_voxels))
    train(pre, small_data, TrainConfig(epochs=2, **FAST), tmp_path / "pre")
    new = make_training_data(voxels=(30,), seed=5, names=["sub-new"])
    model = load_official(tmp_path / "pre" / "last.pth", new_subject_voxels=30)
    shared_before = model.backbone.backbone_linear.weight.detach().clone()
    history = train(model, new, TrainConfig(epochs=2, **FAST), tmp_path / "ft")
    assert len(history) == 2 and model.config.n_voxels == (30,)
    assert not torch.equal(model.backbone.backbone_linear.weight, shared_before)  # whole model fine-tuned


def test_weight_decay_groups_and_shape_checks(small_data, tmp_path):
    model = MindEye2(MindEye2Config.tiny(n_voxels=small_data.n_voxels))
    decay, no_decay = param_groups(model, 0.01)
    assert any(p is model.ridge.linears[0].bias for p in decay["params"])  # adapters all decayed, as upstream
    assert any(p is model.backbone.clip_proj[0].weight for p in no_decay["params"])
    assert all(p.requires_grad for p in decay["params"] + no_decay["params"])
    with pytest.raises(ValueError, match="voxels"):
        train(MindEye2(MindEye2Config.tiny(n_voxels=(7, 8))), small_data, TrainConfig(epochs=1, **FAST), tmp_path)


def test_blurry_tokens_train_against_the_convnext_teacher(tmp_path, small_data):
    """The official weight: loss = blur_scale (0.5) x 0.1 x soft contrastive (other terms off)."""
    torch.manual_seed(0)
    grid = torch.from_numpy(small_data.targets).reshape(-1, 1, 8, 8).expand(-1, 3, -1, -1)
    images = torch.sigmoid(F.interpolate(grid, size=(32, 32), mode="nearest")).numpy()
    subject = small_data.subjects[0].subset(np.arange(96) < 16)  # few steps: the blurry decoder is slow on CPU
    data = TrainingData([subject], small_data.targets, images=images)
    model = MindEye2(MindEye2Config.tiny(n_voxels=data.n_voxels, blurry=True).replace(use_prior=False))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    cfg = TrainConfig(epochs=2, clip_scale=0.0, use_prior=False, **{**FAST, "batch_size": 8})
    history = train(model, data, cfg, tmp_path / "run", teacher=ConvNeXtTeacher.tiny(0))
    for h in history:
        assert h["loss"] == pytest.approx(0.5 * 0.1 * h["blurry_cont"], rel=1e-5)
        assert h["blurry_cont"] > 0 and "blurry" not in h  # no VAE latents: no L1 term
    after = model.backbone.state_dict()
    assert not torch.equal(after["b_maps_projector.6.weight"], before["b_maps_projector.6.weight"])
    assert not torch.equal(after["blin1.weight"], before["blin1.weight"])
    # the upsampler only serves the latent L1, absent here, so it gets no update
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("bupsampler."))
    with pytest.raises(ValueError, match="TrainingData.images is missing"):
        train(model, TrainingData(data.subjects, data.targets), cfg, tmp_path / "x", teacher=ConvNeXtTeacher.tiny(0))
    with pytest.raises(ValueError, match="blurry=False"):
        train(MindEye2(MindEye2Config.tiny(n_voxels=data.n_voxels)), data, cfg, tmp_path / "y", teacher=ConvNeXtTeacher.tiny(0))


def test_a_run_of_two_steps_trains(tmp_path, small_data):
    # OneCycleLR alone divides by zero on a 2-step schedule; the trainer must still run it.
    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny(n_voxels=small_data.n_voxels))
    before = model.backbone.backbone_linear.weight.detach().clone()
    history = train(model, small_data, TrainConfig(epochs=2, batch_size=96, lr=1e-3, progress=False), tmp_path)
    assert [h["epoch"] for h in history] == [1, 2]
    assert not torch.equal(model.backbone.backbone_linear.weight, before)
