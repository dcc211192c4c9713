"""rtrecon.models.mindeye: the assembled model, its state-dict layout and encode()."""

import pytest
import torch

from rtrecon.models import MindEye2, MindEye2Config


def config_from_manifest(cfg: dict) -> MindEye2Config:
    return MindEye2Config(
        n_voxels=tuple(cfg["num_voxels_list"]), hidden_dim=cfg["hidden_dim"], n_blocks=cfg["n_blocks"],
        clip_tokens=cfg["clip_seq_dim"], clip_dim=cfg["clip_emb_dim"], blurry=cfg["blurry_recon"],
        prior_depth=cfg["prior_depth"], prior_dim_head=cfg["prior_dim_head"], prior_heads=cfg["prior_heads"],
        prior_timesteps=cfg["prior_timesteps"],
    )


@pytest.mark.parametrize("name, preset", [("h1024_nolow", MindEye2Config.realtime), ("h4096_blurry", MindEye2Config.final)])
def test_state_dict_is_exactly_the_official_manifest(manifest, name, preset):
    cfg, entries = manifest(name)
    config = config_from_manifest(cfg)
    assert config == preset()
    with torch.device("meta"):
        model = MindEye2(config)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == entries  # same keys, shapes and order


def test_parameter_count_of_the_realtime_model():
    with torch.device("meta"):
        model = MindEye2(MindEye2Config.realtime((8627,)))
    # 722,060,568 printed by the real-time MindEye notebook for h=1024 and 8,627 voxels
    assert sum(p.numel() for p in model.parameters()) == 722_060_568


@pytest.mark.parametrize("name", ["tiny_fixture", "tiny_fixture_rot"])
def test_encode_reproduces_the_official_outputs(official, name):
    fx = official(name)
    with torch.no_grad():
        out = fx.model.encode(fx.inputs["voxels"], 0)
    for key in ("backbone", "clip_voxels", "clip_voxels_norm"):
        torch.testing.assert_close(getattr(out, key), fx.outputs[key], atol=1e-5, rtol=0, msg=key)
    assert out.blurry_latent is None


def test_multi_subject_encode_and_add_subject():
    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny(n_voxels=(50, 30))).eval()
    assert model(torch.randn(2, 30), 1).backbone.shape == (2, 4, 16)
    idx = model.add_subject(12)
    assert idx == 2 and model.config.n_voxels == (50, 30, 12)
    assert model.encode(torch.randn(1, 12), idx).clip_voxels_norm.norm(dim=-1).item() == pytest.approx(1.0)


def test_prior_is_optional():
    model = MindEye2(MindEye2Config.tiny().replace(use_prior=False))
    assert not any(k.startswith("diffusion_prior") for k in model.state_dict())
    with pytest.raises(RuntimeError, match="without a diffusion prior"):
        model.prior
