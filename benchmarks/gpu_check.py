"""The decoder and the reconstruction at full size on one GPU: MindEye2 and the SDXL unCLIP UNet with random weights.

Run it through ``bash benchmarks/gpu_check.sh`` (which brings diffusers from the wheel folder
``--prepare`` built); it needs only torch with CUDA, numpy and what rtrecon's model code imports.
Latency does not depend on the weights' values, so random weights of the official shapes give
the real timings; the precision figures compare the same random model in two precisions.

Measured, in one process, each stage after a warm-up call (median of ``--repeats``):

- MindEye2 ``final`` architecture (h=4096, blurry branch, 15,724 voxels of subj01, 2.2 B
  parameters): betas to tokens (adapter, backbone, retrieval and blurry heads) and the prior's
  20 DDIM steps, in float32 and in the official ``fp16-autocast`` (float32 weights; ``Linear``
  weights pre-cast, which changes no bit under autocast); the float32 baseline is measured in
  the same run. fp16-vs-fp32 cosines of the backbone tokens, the retrieval embedding and the
  prior's output tokens (same noise draws in both).
- Speed-ups of the prior chain: one CUDA graph (:class:`rtrecon.runtime.cuda_graphs.GraphedPriorSampler`,
  its result against the eager chain with the same draws), ``torch.compile`` of the backbone and
  the prior network (compile seconds and steady-state time).
- The unCLIP UNet of ``unclip6.yaml`` (2.6 B parameters) and the SDXL VAE at 768² in
  fp16-autocast (VAE in float32, as sgm): 4 DPM-Solver++ steps and the official 38 Euler EDM
  steps, both with CFG 5 (two UNet passes per step), tokens in to image out; the 4-step image
  with channels-last, and with ``torch.compile`` of the UNet when the time budget allows.
- Peak GPU memory of each part and of the whole run.

``--tiny`` runs the same code at the tiny sizes (CPU or GPU, seconds): the smoke test of this
script. Without ``--tiny`` and without CUDA it refuses with one line and exit status 2.

The last line printed is one JSON object: ``{"benchmark": "gpu_check", "machine": ...,
"results": {...}}`` (times in ms unless named ``_s``; a stage that fails reports its error
instead of its figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from _report import emit  # noqa: E402

# NSD subject 1's nsdgeneral voxels, the size of the released final models' adapter.
FULL_VOXELS = 15724


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", "--cpu-smoke", dest="tiny", action="store_true",
                   help="tiny models (the CPU smoke run of this script)")
    p.add_argument("--device", default=None, help="cuda (default) or, with --tiny, cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per figure (median)")
    p.add_argument("--budget-s", type=float, default=360.0,
                   help="skip the optional stages (UNet compile) that would end past this many seconds")
    p.add_argument("--no-compile", action="store_true", help="skip every torch.compile measurement")
    return p.parse_args(argv)


class Clock:
    """Median wall time of a callable on the device (synchronised), and the run's elapsed seconds."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats, self.start = device, repeats, time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once_ms(self, fn: Callable[[], object]) -> tuple[float, object]:
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return (time.perf_counter() - t0) * 1e3, out

    def median_ms(self, fn: Callable[[], object], repeats: int | None = None, warmup: int = 1) -> tuple[float, object]:
        out = None
        for _ in range(warmup):
            out = fn()
        times = []
        for _ in range(repeats or self.repeats):
            ms, out = self.once_ms(fn)
            times.append(ms)
        return statistics.median(times), out

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.start


def _peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1)).min())


def _stage(results: dict, name: str, fn: Callable[[], dict]) -> None:
    """Run one stage; its figures go under ``name``, or its error (the run goes on)."""
    try:
        results[name] = fn()
    except Exception as exc:  # a stage that fails must not lose the others' figures
        traceback.print_exc()
        results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}


def mindeye_stages(args, device: torch.device, clock: Clock, results: dict) -> None:
    """MindEye2 betas -> tokens + 20 prior steps, fp32 vs fp16-autocast, CUDA graphs, compile."""
    from rtrecon.models import MindEye2, MindEye2Config
    from rtrecon.models.schedulers import ddim_time_pairs, replay_source
    from rtrecon.runtime.device import Placement, precast_for_autocast

    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    config = MindEye2Config.tiny((50,), blurry=True) if args.tiny else MindEye2Config.final(n_voxels=(FULL_VOXELS,))
    torch.manual_seed(0)
    _reset_peak(device)
    t0 = time.perf_counter()
    with torch.device(device):
        model = MindEye2(config).eval().requires_grad_(False)
    init_s = time.perf_counter() - t0
    total = model.prior.noise_scheduler.num_timesteps
    steps = min(20, total - 1)  # the DDIM chain MindEye2's inference runs (20 of 100)
    betas = torch.randn(1, config.n_voxels[0], device=device)
    shape = (1, config.clip_tokens, config.clip_dim)
    n_draws = 1 + sum(1 for _, t_next in ddim_time_pairs(total, steps) if t_next > 0)
    draws = list(torch.randn((n_draws, *shape), device=device, generator=torch.Generator(device).manual_seed(1)).unbind(0))
    fp32 = Placement(device, "fp32")
    mixed = Placement(device, "fp16-autocast" if half == torch.float16 else "bf16-autocast")

    def encode(placement):
        with torch.inference_mode(), placement.autocast():
            return model.encode(betas)

    def prior(placement, backbone):
        with torch.inference_mode(), placement.autocast():
            return model.prior.sample(backbone, steps=steps, noise=replay_source(draws))

    def both(placement):
        out = encode(placement)
        return out, prior(placement, out.backbone)

    out = {"params": sum(p.numel() for p in model.parameters()), "hidden_dim": config.hidden_dim,
           "voxels": config.n_voxels[0], "prior_steps": steps, "init_s": round(init_s, 2)}
    out["fp32_tokens_ms"], ref = clock.median_ms(lambda: encode(fp32))
    out["fp32_prior_ms"], ref_tokens = clock.median_ms(lambda: prior(fp32, ref.backbone))
    out["fp32_total_ms"], _ = clock.median_ms(lambda: both(fp32))
    precast_for_autocast(model, half)  # half the weight memory; the same bits under autocast
    out["fp16_tokens_ms"], got = clock.median_ms(lambda: encode(mixed))
    out["fp16_prior_ms"], got_tokens = clock.median_ms(lambda: prior(mixed, got.backbone))
    out["fp16_total_ms"], _ = clock.median_ms(lambda: both(mixed))
    out["speedup_fp16_vs_fp32"] = out["fp32_total_ms"] / out["fp16_total_ms"]
    out["backbone_token_cosine"] = _cosine(got.backbone, ref.backbone)
    out["retrieval_cosine"] = _cosine(got.clip_voxels_norm, ref.clip_voxels_norm)
    out["prior_token_cosine"] = _cosine(got_tokens, ref_tokens)
    out["blurry_latent_cosine"] = _cosine(got.blurry_latent, ref.blurry_latent)
    out["peak_mb"] = _peak_mb(device)
    results["mindeye2"] = out

    if device.type == "cuda":
        def graphs() -> dict:
            from rtrecon.runtime.cuda_graphs import GraphedPriorSampler

            capture_ms, sampler = clock.once_ms(lambda: GraphedPriorSampler(model.prior, shape, steps, autocast=half))
            generator = torch.Generator(device).manual_seed(2)
            ms, tokens = clock.median_ms(lambda: sampler(got.backbone, generator))
            # the eager chain on the last replay's draws: the graph must give what it gives
            with torch.inference_mode(), mixed.autocast():
                eager = model.prior.sample(got.backbone, steps=steps, noise=replay_source(list(sampler._noise.unbind(0))))
            return {"capture_ms": capture_ms, "prior_ms": ms, "speedup_vs_eager": out["fp16_prior_ms"] / ms,
                    "tokens_and_prior_ms": out["fp16_tokens_ms"] + ms,
                    "max_abs_diff_vs_eager": float((tokens.float() - eager.float()).abs().max())}

        _stage(results, "prior_cuda_graphs", graphs)

    if args.no_compile:
        results["mindeye2_compiled"] = {"skipped": "--no-compile or CPU"}
    else:
        def compiled() -> dict:
            # In place (Module.compile): the prior's sampler calls the network through its own
            # methods (forward_with_cond_scale), which a torch.compile wrapper would bypass. Last
            # stage on this model: it is not undone.
            model.diffusion_prior.net.compile()
            model.backbone.compile()
            first_ms, _ = clock.once_ms(lambda: both(mixed))
            ms, (_, tokens) = clock.median_ms(lambda: both(mixed))
            return {"compile_s": first_ms / 1e3, "total_ms": ms, "speedup_vs_eager": out["fp16_total_ms"] / ms,
                    "prior_token_cosine_vs_eager": _cosine(tokens, got_tokens)}

        _stage(results, "mindeye2_compiled", compiled)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def unclip_stages(args, device: torch.device, clock: Clock, results: dict) -> None:
    """The SDXL-unCLIP UNet at 768², 4 and 38 steps with CFG, fp16-autocast (VAE float32)."""
    from rtrecon.reconstruction.config import OFFICIAL, TINY
    from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor
    from rtrecon.reconstruction.unet import build_unet
    from rtrecon.reconstruction.vae import build_vae

    half = torch.bfloat16 if device.type == "cpu" else torch.float16
    config = TINY if args.tiny else OFFICIAL
    size = config.image_size if args.tiny else 768
    torch.manual_seed(0)
    _reset_peak(device)
    t0 = time.perf_counter()
    unet, vae = build_unet(config, device=device), build_vae(config, device=device)
    reconstructor = UnclipReconstructor(unet, vae, config, device=device, autocast=half)
    init_s = time.perf_counter() - t0
    tokens = torch.randn(1, 8 if args.tiny else 256, config.context_dim, device=device,
                         generator=torch.Generator(device).manual_seed(3)).to(half)
    fast = SamplingOptions.fast(steps=4, guidance_scale=5.0, image_size=size)
    official = SamplingOptions.official(image_size=size, guidance_scale=5.0)
    out = {"unet_params": sum(p.numel() for p in unet.parameters()), "image_size": size, "guidance_scale": 5.0,
           "init_s": round(init_s, 2)}
    out["latents_4_steps_ms"], _ = clock.median_ms(lambda: reconstructor.sample_latents(tokens, fast))
    out["image_4_steps_ms"], image = clock.median_ms(lambda: reconstructor(tokens, fast))
    out["image_38_steps_ms"], _ = clock.median_ms(lambda: reconstructor(tokens, official), repeats=min(2, args.repeats))
    out["vae_decode_ms"] = out["image_4_steps_ms"] - out["latents_4_steps_ms"]
    out["image_shape"] = list(image.shape)
    out["finite"] = bool(torch.isfinite(image).all())
    out["peak_mb"] = _peak_mb(device)
    results["unclip"] = out

    def channels_last() -> dict:
        laid_out = UnclipReconstructor(unet, vae, config, device=device, autocast=half, channels_last=True)
        ms, image_cl = clock.median_ms(lambda: laid_out(tokens, fast))
        return {"image_4_steps_ms": ms, "speedup_vs_default": out["image_4_steps_ms"] / ms,
                "max_abs_diff_vs_default": float((image_cl - image).abs().max())}

    _stage(results, "unclip_channels_last", channels_last)
    # The compile of the 2.6 B-parameter UNet takes minutes: only when the budget leaves room.
    if not args.no_compile and (args.tiny or clock.elapsed_s < args.budget_s - 200):
        def compiled() -> dict:
            for model in (unet, vae):  # undo the channels-last stage's layout: compile alone is measured
                model.to(memory_format=torch.contiguous_format)
            plain = UnclipReconstructor(unet, vae, config, device=device, autocast=half).compile()
            first_ms, _ = clock.once_ms(lambda: plain(tokens, fast))
            ms, image_c = clock.median_ms(lambda: plain(tokens, fast), repeats=min(3, args.repeats))
            return {"compile_s": first_ms / 1e3, "image_4_steps_ms": ms, "speedup_vs_eager": out["image_4_steps_ms"] / ms,
                    "max_abs_diff_vs_eager": float((image_c - image).abs().max())}

        _stage(results, "unclip_compiled", compiled)
    else:
        results["unclip_compiled"] = {"skipped": f"{clock.elapsed_s:.0f} s elapsed of a {args.budget_s:.0f} s budget"
                                      if not args.no_compile else "--no-compile or CPU"}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.device is None:
        args.device = "cpu" if args.tiny and not torch.cuda.is_available() else "cuda"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU here, nothing measured "
              "(the full-size check needs one GPU of ~40 GB; --tiny runs the CPU smoke version)", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.tiny:
        print("gpu_check: the full-size check runs on CUDA only (--tiny runs at tiny sizes on a CPU)", file=sys.stderr)
        return 2
    if device.type != "cuda":
        args.no_compile = True  # inductor's C++ compile of every graph takes minutes on a CPU: not a smoke test
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 baseline is real float32
        torch.backends.cudnn.allow_tf32 = False
        _reset_peak(device)
    clock = Clock(device, args.repeats)
    results: dict = {"device": str(device), "size": "tiny" if args.tiny else "full", "torch": torch.__version__}
    for name, stages in (("mindeye2", mindeye_stages), ("unclip", unclip_stages)):
        try:
            stages(args, device, clock, results)
        except Exception as exc:  # e.g. out of memory: the other part is still measured
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    me, un = results.get("mindeye2", {}), results.get("unclip", {})
    # The headline figures, flat: targets on one H100 are <= 50 ms, <= 1000 ms, >= 0.999.
    results["betas_to_tokens_prior_ms"] = me.get("fp16_total_ms")
    results["image_4_steps_ms"] = un.get("image_4_steps_ms")
    results["image_38_steps_ms"] = un.get("image_38_steps_ms")
    results["fp16_token_cosine"] = me.get("backbone_token_cosine")
    results["peak_gpu_mb"] = max(me.get("peak_mb", 0.0), un.get("peak_mb", 0.0))
    results["elapsed_s"] = round(clock.elapsed_s, 1)
    emit("gpu_check", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
