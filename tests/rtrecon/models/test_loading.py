"""rtrecon.models.loading: architecture inference, strict loading, new subjects, dtypes."""

import pytest
import torch

from rtrecon.models import MindEye2, MindEye2Config, infer_config, load_official, save_checkpoint
from rtrecon.models.loading import read_state_dict


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return MindEye2(MindEye2Config.tiny(n_voxels=(50, 30, 40))).eval()


def _same_outputs(a: MindEye2, b: MindEye2, subject: int = 0, n_vox: int = 50) -> None:
    x = torch.randn(2, n_vox)
    with torch.no_grad():
        torch.testing.assert_close(a.encode(x, subject).clip_voxels, b.encode(x, subject).clip_voxels)
        t = torch.tensor([1, 8])
        e = a.encode(x, subject).backbone
        torch.testing.assert_close(a.prior(e, t, e), b.prior(e, t, e))


@pytest.mark.parametrize("name", ["h1024_nolow", "h4096_blurry"])
def test_infers_the_official_architectures_without_memory(manifest, name):
    cfg, entries = manifest(name)
    sd = {k: torch.empty(shape, device="meta") for k, shape in entries}
    config = infer_config(sd)
    assert config == (MindEye2Config.realtime() if name == "h1024_nolow" else MindEye2Config.final())
    model = load_official(sd)  # meta in, meta out: the strict load runs without allocating 9 GB
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == entries


def test_infers_multi_subject_checkpoints(tiny):
    config = infer_config(tiny.state_dict())
    assert config == tiny.config and config.n_voxels == (50, 30, 40)


def test_official_last_pth_layout(tmp_path, tiny):
    path = tmp_path / "last.pth"
    torch.save({"epoch": 3, "model_state_dict": tiny.state_dict(), "optimizer_state_dict": {}, "lrs": [1e-4]}, path)
    loaded = load_official(path)
    assert not loaded.training
    _same_outputs(tiny, loaded)


def test_plain_safetensors_in_memory_and_prefixed(tmp_path, tiny):
    torch.save(tiny.state_dict(), tmp_path / "plain.pt")
    _same_outputs(tiny, load_official(tmp_path / "plain.pt"))
    save_checkpoint(tiny, tmp_path / "m.safetensors")
    _same_outputs(tiny, load_official(tmp_path / "m.safetensors"))
    _same_outputs(tiny, load_official({f"module.{k}": v for k, v in tiny.state_dict().items()}))
    save_checkpoint(tiny, tmp_path / "ck.pth", epoch=1)
    assert torch.load(tmp_path / "ck.pth", weights_only=True)["config"]["n_voxels"] == [50, 30, 40]


def test_new_subject_follows_the_official_fine_tuning_path(tiny):
    sd = tiny.state_dict()
    model = load_official(sd, new_subject_voxels=20)
    assert model.config.n_voxels == (20,)
    # upstream drops only ridge.linears.0.weight: the first pretrained bias is carried over
    torch.testing.assert_close(model.ridge.linears[0].bias, sd["ridge.linears.0.bias"])
    assert model.ridge.linears[0].weight.shape == (32, 20) and model.ridge.linears[0].weight.abs().sum() > 0
    torch.testing.assert_close(model.backbone.backbone_linear.weight, sd["backbone.backbone_linear.weight"])
    kept = load_official(sd, new_subject_voxels=20, keep_pretrained_subjects=True)
    assert kept.config.n_voxels == (50, 30, 40, 20)
    _same_outputs(tiny, kept, subject=1, n_vox=30)
    assert kept.encode(torch.randn(1, 20), 3).backbone.shape == (1, 4, 16)


def test_strict_loading_names_the_file(tmp_path, tiny):
    sd = tiny.state_dict()
    del sd["backbone.clip_proj.5.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match=r"(?s)broken\.pth.*clip_proj\.5\.weight"):
        load_official(tmp_path / "broken.pth")
    sd = tiny.state_dict()
    sd["backbone.extra.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        load_official(sd)


def test_bad_sources_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_official(tmp_path / "nothing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match=r"list\.pth.*state dict"):
        read_state_dict(tmp_path / "list.pth")
    with pytest.raises(KeyError, match="ridge.linears"):
        infer_config({"foo": torch.zeros(1)})


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_loading_keeps_schedule_and_rotary_in_float32(tiny, dtype):
    model = load_official(tiny.state_dict(), dtype=dtype)
    assert model.backbone.backbone_linear.weight.dtype == dtype
    assert model.prior.noise_scheduler.betas.dtype == torch.float32
    assert model.prior.net.causal_transformer.layers[1][0].rotary_emb.freqs.dtype == torch.float32
    x = torch.randn(2, 50)
    with torch.no_grad():
        ref = tiny.encode(x, 0).clip_voxels_norm
        low = model.encode(x.to(dtype), 0).clip_voxels_norm.float()
        assert torch.nn.functional.cosine_similarity(ref, low).min() > 0.99
        sample = model.prior.sample(model.encode(x.to(dtype), 0).backbone, steps=4)
    assert sample.dtype == dtype and torch.isfinite(sample).all()
