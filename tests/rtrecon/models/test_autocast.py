"""The official mixed precision (float32 weights under autocast) on the official fixtures.

MindEye2's inference runs the float32 model under ``torch.autocast(float16)`` on CUDA. On a CPU
the same flow runs with bfloat16 (:class:`rtrecon.runtime.device.Placement`, ``bf16-autocast``):
these tests check the dtype flow the official code has, that the result stays close to the
float32 reference outputs with the same retrieval ranks, and that storing the ``Linear`` weights
in half once (:func:`~rtrecon.runtime.device.precast_for_autocast`) changes no bit.
"""

from __future__ import annotations

import copy

import pytest
import torch

from rtrecon.models.loading import cast_model
from rtrecon.models.schedulers import replay_source
from rtrecon.runtime.device import Placement, precast_for_autocast

BF16 = Placement(torch.device("cpu"), "bf16-autocast")


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny models: one torch thread."""


def _recorded_noise(fx):
    return replay_source([fx.intermediates["ddim_init_noise"], *fx.intermediates["ddim_step_noise"]])


def _layer_norm_inputs(prior):
    """Record the dtype entering the first layer's pre-norm and its post-attention norm."""
    seen: dict[str, torch.dtype] = {}
    attn = prior.net.causal_transformer.layers[0][0]

    def record(key):
        def hook(module, args):
            seen.setdefault(key, args[0].dtype)  # returns None: the input is left as it is
        return hook

    hooks = [attn.norm.register_forward_pre_hook(record("pre_norm")),
             attn.to_out[1].register_forward_pre_hook(record("post_attn_norm"))]
    return seen, hooks


def test_autocast_keeps_the_residual_stream_and_chain_float32_as_the_official_run():
    """Under autocast only matrix products are half: dalle2's LayerNorm sees float32 (eps 1e-5) on
    the residual stream and half (eps 1e-3) after a projection; the chain's noise is float32.
    cast_model, the control, makes every tensor half."""
    from rtrecon.models import MindEye2, MindEye2Config

    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny()).eval()
    voxels = torch.randn(2, 50)
    seen, hooks = _layer_norm_inputs(model.prior)
    with torch.no_grad(), BF16.autocast():
        out = model.encode(voxels)
        tokens = model.prior.sample(out.backbone, steps=5, generator=torch.Generator().manual_seed(0))
    assert out.backbone.dtype == torch.bfloat16  # a Linear output, as upstream under autocast
    assert seen == {"pre_norm": torch.float32, "post_attn_norm": torch.bfloat16}
    assert tokens.dtype == torch.bfloat16  # the last x0 prediction is project_out's half output, as upstream
    for h in hooks:
        h.remove()

    half = cast_model(copy.deepcopy(model), torch.bfloat16)
    seen, hooks = _layer_norm_inputs(half.prior)
    with torch.no_grad():
        half.prior.sample(half.encode(voxels.bfloat16()).backbone, steps=5, generator=torch.Generator().manual_seed(0))
    assert seen == {"pre_norm": torch.bfloat16, "post_attn_norm": torch.bfloat16}
    for h in hooks:
        h.remove()


NAMES = ["tiny_fixture", "tiny_fixture_rot", "tiny_fixture_blurry"]


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_is_close_to_the_float32_reference_and_ranks_the_same(official, name):
    fx = official(name)
    model = fx.model
    torch.manual_seed(5)
    n_vox = fx.inputs["voxels"].shape[-1]
    # the fixture's inputs plus more patterns, so that retrieval ranks over a real gallery
    voxels = torch.cat([fx.inputs["voxels"][:, 0], torch.randn(24, n_vox)])
    with torch.no_grad():
        reference = model.encode(voxels).clip_voxels_norm
        with BF16.autocast():
            mixed = model.encode(voxels).clip_voxels_norm.float()
    b = fx.inputs["voxels"].shape[0]
    torch.testing.assert_close(reference[:b], fx.outputs["clip_voxels_norm"], atol=1e-5, rtol=0)
    cosine = (reference * mixed).sum(-1)
    assert cosine.min() > 0.99, cosine.min()
    # brain -> image retrieval over a gallery of the float32 embeddings of other images: each
    # query's correct image has the same rank (first) and the same best match as in float32.
    # (Below the first, near-ties of these random tiny embeddings, 0.982 vs 0.981, may swap in bfloat16.)
    def rank_of_correct(queries):
        scores = queries @ reference.T
        return (scores > scores.diagonal()[:, None]).sum(-1)

    assert torch.equal(rank_of_correct(mixed), rank_of_correct(reference))
    assert torch.equal((mixed @ reference.T).argmax(-1), torch.arange(len(voxels)))
    # every prior network call of the recorded DDIM chain, from the recorded x_t: within 8 % (5.1 % at most measured)
    # (bfloat16 keeps 8 bits; most of the difference is the official eps rule, see the next test)
    with torch.no_grad(), BF16.autocast():
        for x, t, expected in zip(fx.intermediates["ddim_step_x"], fx.intermediates["ddim_step_t"],
                                  fx.intermediates["ddim_step_pred_x0"]):
            got = model.prior(x, t, fx.outputs["backbone"]).float()
            assert (got - expected).norm() / expected.norm() < 0.08


def _with_fp16_eps_after_attention(prior):
    """The float32 prior with dalle2's half-input eps (1e-3) in the post-attention norms."""
    prior = copy.deepcopy(prior)
    for attn, _ in prior.net.causal_transformer.layers:
        norm = attn.to_out[1]

        def forward(x, g=norm.g):
            var = torch.var(x, dim=-1, unbiased=False, keepdim=True)
            return (x - x.mean(-1, keepdim=True)) * (var + 1e-3).rsqrt() * g

        norm.forward = forward
    return prior


@pytest.mark.parametrize("name", NAMES)
def test_fp16_autocast_is_float32_with_the_official_eps_rule(official, name):
    """fp16 autocast (CPUs run it too) differs from float32 mostly by where dalle2's LayerNorm
    switches eps: with the post-attention norms at 1e-3 float32 agrees to 0.5 %, while plain
    float32 (the control, eps 1e-5 everywhere) is 0.7-2.2 % away on these fixtures."""
    fx = official(name)
    fp16 = Placement(torch.device("cpu"), "fp16-autocast")
    eps_rule = _with_fp16_eps_after_attention(fx.model.prior)
    x, t, backbone = fx.intermediates["ddim_step_x"][0], fx.intermediates["ddim_step_t"][0], fx.outputs["backbone"]
    with torch.no_grad():
        with fp16.autocast():
            mixed = fx.model.prior(x, t, backbone).float()
        plain, official_rule = fx.model.prior(x, t, backbone), eps_rule(x, t, backbone)
    assert (mixed - official_rule).norm() / official_rule.norm() < 0.005
    assert (mixed - plain).norm() / plain.norm() > 0.005


def test_precast_weights_change_no_bit_under_autocast_and_need_it(official):
    fx = official("tiny_fixture_blurry")
    voxels, backbone = fx.inputs["voxels"], fx.outputs["backbone"]
    steps = fx.meta["ddim_timesteps"]
    precast = precast_for_autocast(copy.deepcopy(fx.model), torch.bfloat16)
    assert precast.backbone.backbone_linear.weight.dtype == torch.bfloat16
    assert precast.backbone.mixer_blocks1[0][0].weight.dtype == torch.float32  # norms stay float32
    assert precast.prior.net.learned_query.dtype == torch.float32  # free parameters too
    with torch.no_grad(), BF16.autocast():
        a, b = fx.model.encode(voxels), precast.encode(voxels)
        ta = fx.model.prior.sample(backbone, steps=steps, noise=_recorded_noise(fx))
        tb = precast.prior.sample(backbone, steps=steps, noise=_recorded_noise(fx))
    for x, y in [(a.clip_voxels, b.clip_voxels), (a.backbone, b.backbone), (a.blurry_latent, b.blurry_latent), (ta, tb)]:
        assert torch.equal(x, y)
    with torch.no_grad(), pytest.raises(RuntimeError, match="dtype"):  # outside autocast the half weights clash
        precast.encode(voxels)
