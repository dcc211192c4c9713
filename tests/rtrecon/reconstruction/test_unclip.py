"""rtrecon.reconstruction.unclip: UnclipReconstructor on the tiny configuration, every option."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rtrecon.reconstruction.config import TINY
from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor, load_config


@pytest.fixture(scope="module")
def reconstructor() -> UnclipReconstructor:
    return UnclipReconstructor.tiny(seed=0)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randn(2, TINY.num_tokens, TINY.context_dim, generator=torch.Generator().manual_seed(1))


def test_official_setting_runs_38_cfg_steps_and_maps_output(reconstructor, tokens):
    calls = []
    hook = reconstructor.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        images = reconstructor(tokens[:1])
    finally:
        hook.remove()
    assert images.shape == (1, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert calls == [2] * 38  # 38 steps, CFG batches [uncond, cond]
    fast = SamplingOptions.fast(steps=2)
    assert torch.equal(reconstructor(tokens, fast), reconstructor(tokens, fast))  # seeded


def test_cfg_off_is_one_pass_per_step_and_changes_the_image(reconstructor, tokens):
    calls = []
    hook = reconstructor.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        plain = reconstructor(tokens, SamplingOptions.fast(steps=4, guidance_scale=1.0))
    finally:
        hook.remove()
    assert calls == [2] * 4
    guided = reconstructor(tokens, SamplingOptions.fast(steps=4))
    assert not torch.allclose(plain, guided)


@pytest.mark.parametrize("scheduler", ["euler_karras", "dpmpp_karras"])
def test_few_step_schedulers_at_two_sizes(reconstructor, tokens, scheduler):
    for size in (32, 64):
        images = reconstructor(tokens[:1], SamplingOptions.fast(steps=4, scheduler=scheduler, image_size=size, guidance_scale=1.0))
        assert images.shape == (1, 3, size, size) and torch.isfinite(images).all()


def test_conditioning_matters(reconstructor, tokens):
    a = reconstructor(tokens[:1], SamplingOptions.fast(steps=4))
    b = reconstructor(tokens[1:], SamplingOptions.fast(steps=4))
    zero_uncond = reconstructor(tokens[:1], SamplingOptions.fast(steps=4, uncond="zero"))
    assert not torch.allclose(a, b) and not torch.allclose(a, zero_uncond)


def test_options_tiny_autoencoder_output_mapping_and_noise(reconstructor, tokens):
    base = SamplingOptions.fast(steps=4, guidance_scale=1.0)
    latents = reconstructor.sample_latents(tokens[:1], base)
    tiny = reconstructor(tokens[:1], base, tiny_autoencoder=True)
    assert torch.allclose(tiny, (reconstructor.tiny_autoencoder.decode(latents).sample * 0.8 + 0.2).clamp(0, 1), atol=1e-5)
    standard = reconstructor(tokens[:1], base, output="standard")
    assert torch.allclose(standard, ((reconstructor.decode_latents(latents) + 1) / 2).clamp(0, 1), atol=1e-5)
    assert not torch.equal(latents, reconstructor.sample_latents(tokens[:1], base.replace(init_noise="standard")))
    assert not torch.equal(latents, reconstructor.sample_latents(tokens[:1], base.replace(seed=5)))


def test_official_initial_noise_is_z_plus_sigma0_noise(reconstructor):
    from rtrecon.reconstruction.schedulers import make_scheduler, set_schedule

    scheduler = make_scheduler("euler_edm")
    set_schedule(scheduler, "euler_edm", 38)
    x = reconstructor.initial_latents(64, 64, scheduler, SamplingOptions(), torch.Generator().manual_seed(0))
    # Var(z + 14.6146 * (n + 0.04 * o)) = 1 + 14.6146**2 * (1 + 0.04**2)
    assert x.var().item() == pytest.approx(1 + 14.6146**2 * 1.0016, rel=0.05)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_close_to_float32(reconstructor, tokens, dtype):
    half = UnclipReconstructor(reconstructor.unet, reconstructor.vae, TINY, dtype=dtype)
    try:
        options = SamplingOptions.fast(steps=2, guidance_scale=1.0)
        out = half(tokens[:1], options)
        # SDXL's VAE is marked force_upcast, so it decodes in float32 under float16.
        assert half.vae_dtype == (torch.float32 if dtype == torch.float16 else dtype)
    finally:
        reconstructor.unet.float(), reconstructor.vae.float()
    assert (out - reconstructor(tokens[:1], options)).abs().mean() < 0.05


def test_save_and_load_gives_the_same_images(reconstructor, tokens, tmp_path):
    reconstructor.save_pretrained(tmp_path / "dec")
    assert load_config(tmp_path / "dec") == TINY
    loaded = UnclipReconstructor.from_pretrained(tmp_path / "dec", tiny_autoencoder=tmp_path / "dec" / "tiny_autoencoder")
    options = SamplingOptions.fast(steps=2, tiny_autoencoder=True)
    assert torch.equal(loaded(tokens[:1], options), reconstructor(tokens[:1], options))


def test_bad_inputs_are_refused(reconstructor, tmp_path):
    with pytest.raises(ValueError, match=r"\(B, T, 64\)"):
        reconstructor(torch.zeros(1, 64, 1664))
    with pytest.raises(ValueError, match="NaN"):
        reconstructor(torch.full((1, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="multiple"):
        reconstructor(torch.zeros(1, 64, 64), image_size=30)
    with pytest.raises(FileNotFoundError, match="unclip.json"):
        UnclipReconstructor.from_pretrained(tmp_path)
    (tmp_path / "unclip.json").write_text("{}")
    with pytest.raises(ValueError, match="unclip.json"):
        load_config(tmp_path)


def test_tensorrt_without_torch_tensorrt_says_so(reconstructor):
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torch_tensorrt"):
            UnclipReconstructor(reconstructor.unet, reconstructor.vae, TINY).compile(backend="tensorrt")
    else:
        pytest.skip("torch_tensorrt is installed; the GPU test covers it")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile/TensorRT timings are for a GPU")
def test_compiled_decoder_matches_eager_on_gpu(tokens):
    eager = UnclipReconstructor.tiny(device="cuda", dtype=torch.float16)
    options = SamplingOptions.fast(steps=4)
    reference = eager(tokens, options)
    compiled = UnclipReconstructor.tiny(device="cuda", dtype=torch.float16).compile()
    assert (compiled(tokens, options) - reference).abs().max() < 0.05


def test_sampling_options_presets():
    from rtrecon.reconstruction.config import OFFICIAL, SYNTHETIC

    assert SamplingOptions() == SamplingOptions.official()
    fast = SamplingOptions.fast(steps=8)
    with pytest.raises(ValueError, match="resolve"):
        fast.uses_cfg  # noqa: B018  (the reconstructor's CFG scale is not known yet)
    assert (fast.scheduler, fast.steps, fast.resolve(OFFICIAL).uses_cfg) == ("dpmpp_karras", 8, True)
    assert fast.resolve(OFFICIAL).guidance_scale == 5.0
    assert fast.resolve(SYNTHETIC).guidance_scale == SYNTHETIC.guidance_scale
    assert fast.replace(guidance_scale=2.0).resolve(SYNTHETIC).guidance_scale == 2.0
    assert not dataclasses.replace(fast, guidance_scale=1.0).uses_cfg


def test_autocast_runs_the_unet_half_the_chain_and_kl_vae_float32(tokens):
    """The official flow (utils.unclip_recon under fp16 autocast, first stage with autocast off)."""
    mixed = UnclipReconstructor.tiny(seed=0, autocast=torch.bfloat16)
    seen = {}

    def record(key):
        def hook(module, args, out):
            seen.setdefault(key, out.dtype)  # returns None: the output is left as it is
        return hook

    hooks = [mixed.unet.conv_out.register_forward_hook(record("unet_out")),
             mixed.vae.decoder.conv_in.register_forward_hook(record("vae"))]
    fast = SamplingOptions.fast(steps=2)
    try:
        latents = mixed.sample_latents(tokens, fast)
        images = mixed(tokens, fast)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"unet_out": torch.bfloat16, "vae": torch.float32} and latents.dtype == torch.float32
    assert mixed.unet.conv_in.weight.dtype == torch.bfloat16 and mixed.unet.conv_norm_out.weight.dtype == torch.float32
    reference = UnclipReconstructor.tiny(seed=0)(tokens, fast)
    assert (images - reference).abs().max() < 0.1 and (images - reference).abs().mean() < 0.01
    with pytest.raises(ValueError, match="autocast=torch.bfloat16 keeps float32 weights"):
        UnclipReconstructor.tiny(seed=0, autocast=torch.bfloat16, dtype=torch.bfloat16)


def test_precast_weights_give_the_same_bits_under_autocast(tokens, monkeypatch):
    import rtrecon.reconstruction.unclip as unclip_module

    fast = SamplingOptions.fast(steps=2)
    precast_decoder = UnclipReconstructor.tiny(seed=0, autocast=torch.bfloat16)
    precast = precast_decoder(tokens, fast)
    monkeypatch.setattr(unclip_module, "precast_for_autocast", lambda model, dtype: model)
    plain = UnclipReconstructor.tiny(seed=0, autocast=torch.bfloat16)
    assert plain.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(plain(tokens, fast), precast)
    from rtrecon.runtime.device import parameter_bytes

    # the UNet's weights take about half the memory (norms stay float32); the KL VAE is not pre-cast
    assert parameter_bytes([plain.unet]) > 1.95 * parameter_bytes([precast_decoder.unet])
    assert plain.nbytes > precast_decoder.nbytes


def test_channels_last_gives_the_same_image(tokens):
    laid_out = UnclipReconstructor.tiny(seed=0, channels_last=True)
    assert laid_out.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    fast = SamplingOptions.fast(steps=2)
    # a fresh reconstructor: the module's fixture had its weights rounded by the half-precision test
    torch.testing.assert_close(laid_out(tokens, fast), UnclipReconstructor.tiny(seed=0)(tokens, fast), atol=1e-4, rtol=0)
