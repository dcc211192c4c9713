"""rtrecon.models.prior: the DALL-E-2-style prior network, against the official fixtures."""

import pytest
import torch

from rtrecon.models import MindEye2Config
from rtrecon.models.prior import GainLayerNorm, PriorNetwork, RelPosBias

NAMES = ["tiny_fixture", "tiny_fixture_rot", "tiny_fixture_blurry"]


@pytest.mark.parametrize("name", NAMES)
def test_network_call_and_intermediates(official, name):
    fx = official(name)
    net = fx.model.prior.net
    seen = {}
    hooks = [
        net.causal_transformer.register_forward_pre_hook(lambda m, a: seen.__setitem__("prior_tokens_in", a[0])),
        net.causal_transformer.register_forward_hook(lambda m, a, o: seen.__setitem__("prior_transformer_out", o)),
        net.to_time_embeds.register_forward_hook(lambda m, a, o: seen.__setitem__("prior_time_embed", o[:, None])),
        net.causal_transformer.layers[0][0].register_forward_hook(
            lambda m, a, o: seen.__setitem__("prior_layer0_attn_out", o)
        ),
    ]
    with torch.no_grad():
        out = net(fx.inputs["noisy_image_embed"], fx.inputs["net_timesteps"], fx.outputs["backbone"])
    for h in hooks:
        h.remove()
    torch.testing.assert_close(out, fx.outputs["prior_net_out"], atol=1e-5, rtol=0)
    assert len(seen) == 4
    for key, got in seen.items():
        torch.testing.assert_close(got, fx.intermediates[key], atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_classifier_free_guidance(official, name):
    fx = official(name)
    with torch.no_grad():
        out = fx.model.prior.net.forward_with_cond_scale(
            fx.inputs["noisy_image_embed"], fx.inputs["net_timesteps"], fx.outputs["backbone"], fx.meta["cfg_scale"]
        )
    torch.testing.assert_close(out, fx.outputs["prior_net_out_cfg"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["tiny_fixture", "tiny_fixture_rot"])
def test_relative_position_bias_with_null_key(official, name):
    fx = official(name)
    bias = fx.intermediates["prior_attn_bias"]
    heads, n, n_keys = bias.shape
    got = fx.model.prior.net.causal_transformer.rel_pos_bias(n, n_keys, torch.device("cpu"))
    torch.testing.assert_close(got, bias, atol=0, rtol=0)


def test_bucket_rule_exact_then_log_then_clamped():
    rpb = RelPosBias(heads=1)
    dist = torch.tensor([0, 5, 15, 16, 40, 127, 128, 1000])
    assert rpb.bucket(-dist).tolist() == [0, 5, 15, 16, 23, 31, 31, 31]
    assert rpb.bucket(dist).tolist() == [0] * 8  # keys after the query all share bucket 0


def test_gain_layernorm_eps_and_stable_mode():
    x = torch.tensor([[1.0, 2.0, 3.0, -6.0]])
    ln = GainLayerNorm(4, stable=True)
    y = x / 3.0  # divides by the signed max (3), not the absolute max (6)
    ref = (y - y.mean()) / torch.sqrt(y.var(unbiased=False) + 1e-5)
    torch.testing.assert_close(ln(x), ref)
    half = GainLayerNorm(4)(x.to(torch.bfloat16)).float()
    ref_half = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-3)
    torch.testing.assert_close(half, ref_half, atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_follows_float32(dtype):
    torch.manual_seed(0)
    net = PriorNetwork(MindEye2Config.tiny()).eval()
    x, brain = torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    t = torch.tensor([3, 7])
    with torch.no_grad():
        ref = net(x, t, brain)
        low = net.to(dtype)(x.to(dtype), t, brain.to(dtype))
    assert low.dtype == dtype
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_conditioning_dropout_uses_null_embeddings():
    torch.manual_seed(0)
    net = PriorNetwork(MindEye2Config.tiny()).eval()
    x, t = torch.randn(2, 4, 16), torch.tensor([1, 2])
    with torch.no_grad():
        dropped_a = net(x, t, torch.randn(2, 4, 16), brain_cond_drop_prob=1.0)
        dropped_b = net(x, t, torch.randn(2, 4, 16), brain_cond_drop_prob=1.0)
        kept = net(x, t, torch.randn(2, 4, 16))
    torch.testing.assert_close(dropped_a, dropped_b)  # the brain tokens no longer matter
    assert not torch.allclose(dropped_a, kept)
