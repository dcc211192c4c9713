"""rtrecon.models.blurry: the low-level branch (diffusers VAE decoder + feature projector)."""

import torch

from rtrecon.models.blurry import blurry_forward


def test_reproduces_the_official_blurry_branch(official):
    fx = official("tiny_fixture_blurry")
    bb = fx.model.backbone
    hidden = fx.intermediates["backbone_mixer_out"]
    seen = {}
    hooks = [
        bb.blin1.register_forward_hook(lambda m, i, o: seen.__setitem__("blurry_blin1_out", o)),
        bb.bnorm.register_forward_hook(lambda m, i, o: seen.__setitem__("blurry_bnorm_out", o)),
        bb.bupsampler.conv_in.register_forward_hook(lambda m, i, o: seen.__setitem__("blurry_dec_conv_in_out", o)),
        bb.bupsampler.mid_block.register_forward_hook(lambda m, i, o: seen.__setitem__("blurry_dec_mid_out", o)),
        bb.bupsampler.up_blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("blurry_dec_up0_out", o)),
    ]
    with torch.no_grad():
        latent, aux = blurry_forward(bb, hidden)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(latent, fx.outputs["blurry_latent"], atol=1e-4, rtol=0)
    torch.testing.assert_close(aux, fx.outputs["blurry_aux"], atol=1e-5, rtol=0)
    for name, got in seen.items():
        torch.testing.assert_close(got, fx.intermediates[name], atol=1e-4, rtol=0, msg=name)
    assert len(seen) == 5


def test_encode_returns_the_blurry_outputs(official):
    fx = official("tiny_fixture_blurry")
    with torch.no_grad():
        out = fx.model.encode(fx.inputs["voxels"], 0)
    assert out.blurry_latent.shape == (2, 4, 28, 28) and out.blurry_aux.shape == (2, 49, 512)
    torch.testing.assert_close(out.blurry_latent, fx.outputs["blurry_latent"], atol=1e-4, rtol=0)
