"""unCLIP latency: the official setting vs few-step settings, with a fidelity check.

Baseline, in the same run: MindEye2's official sampling (38 Euler EDM steps, CFG 5 with random
unconditional tokens). Against it, few-step settings (DPM-Solver++ / Euler on Karras sigmas at
4, 8, 12 steps, CFG on and off, the tiny autoencoder). Every setting decodes the same tokens
with the same seed; latency is tokens in to an image tensor out (median of ``--repeats``).

Fidelity: the official-setting image and each fast image are re-embedded by the OpenCLIP image
embedder and compared (cosine of the flattened tokens, mean over the batch), so a speed-up is
never bought with a silent loss of fidelity.

Each row also gives ``pixel_r``: the Pearson correlation over pixels between the official-setting
image and the fast one.

- On a CPU: the tiny configuration (random weights, 64² images, the tiny OpenCLIP embedder), or
  with ``--unclip DIR`` a small trained unCLIP model (``--unclip synthetic``: the synthetic world's,
  shipped with rtrecon), whose fidelity numbers then mean something.
- Always (unless ``--unclip`` is given), a fidelity block ``synthetic_unclip`` with real
  weights: the shipped synthetic unCLIP model on held-out synthetic pairs, official setting vs
  few-step settings (latency, re-embedded token cosine and pixel r against the official image,
  and pixel r against the ground-truth image, beside the same for shuffled pairs).
- On a GPU: the official architecture at 512² and 768², float16, eager and ``torch.compile``
  (and TensorRT when ``torch_tensorrt`` is importable); real weights with ``--unclip DIR``
  (a ``rtrecon convert-unclip`` folder) and ``--embedder FILE`` (local bigG OpenCLIP weights),
  otherwise random weights of the same architecture (latency is weight-independent; the
  fidelity numbers are then reported as null). ``--save`` appends the JSON line to
  ``benchmarks/results/unclip_latency_<device>.jsonl``, as the other saved results are kept.

    .venv/bin/python benchmarks/unclip_latency.py [--quick] [--device cpu|cuda] [--unclip DIR]

The last line printed is one JSON object: {"benchmark": "unclip_latency", "machine": ...,
"results": {"official_ms", "fast_ms", "speedup", "token_cosine", "fast_setting", "settings": [...],
"synthetic_unclip": {...}}}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _report import emit  # noqa: E402
from rtrecon.reconstruction.config import OFFICIAL, OFFICIAL_SAMPLING, TINY  # noqa: E402
from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor  # noqa: E402


#: The main table's "cfg" rows use the official CFG scale, whatever the reconstructor's own default.
CFG = OFFICIAL_SAMPLING.guidance_scale


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setting(reconstructor: UnclipReconstructor, tokens: torch.Tensor, options: SamplingOptions, repeats: int, warmup: int):
    """(median ms, images) for decoding ``tokens`` with ``options``."""
    for _ in range(warmup):
        reconstructor(tokens, options)
    _sync(reconstructor.device)
    times, images = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        images = reconstructor(tokens, options)
        _sync(reconstructor.device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), images


def token_cosine(embedder, a: torch.Tensor, b: torch.Tensor) -> float:
    ea = F.normalize(embedder.embed(a.float()).flatten(1).float(), dim=1)
    eb = F.normalize(embedder.embed(b.float()).flatten(1).float(), dim=1)
    return float((ea * eb).sum(1).mean())


def pixel_r(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of the Pearson correlation over pixels."""
    a, b = a.flatten(1).float(), b.flatten(1).float()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).mean())


def synthetic_check(quick: bool, repeats: int, device: torch.device) -> dict:
    """The shipped synthetic unCLIP model on held-out synthetic pairs: official setting vs few-step ones."""
    from rtrecon.reconstruction.train_synthetic import _images_to_tensor, synthetic_pairs
    from rtrecon.reconstruction.weights import load_synthetic_reconstructor, synthetic_reconstructor_path
    from rtrecon.embedders.openclip import OpenClipImageEmbedder

    reconstructor = load_synthetic_reconstructor(device=device)
    embedder = OpenClipImageEmbedder.tiny(seed=0, device=device)
    images, tokens = synthetic_pairs(4 if quick else 16, seed=99)  # a seed no training used
    tokens = torch.from_numpy(tokens).to(device)
    truth = (_images_to_tensor(images, reconstructor.config.image_size) + 1) / 2
    shuffled = torch.roll(torch.arange(len(truth)), 1)
    # The official sampler (38 Euler EDM steps) at the reconstructor's own CFG scale, which the engine uses too.
    g = reconstructor.config.guidance_scale
    official_ms, reference = time_setting(reconstructor, tokens, SamplingOptions.official(), repeats, warmup=1)
    rows = []
    settings = [(f"official_euler_edm_38_cfg{g:g}", None), (f"dpmpp_karras_4_cfg{g:g}", SamplingOptions.fast(steps=4)),
                (f"dpmpp_karras_8_cfg{g:g}", SamplingOptions.fast(steps=8)),
                ("dpmpp_karras_4_cfg5", SamplingOptions.fast(steps=4, guidance_scale=5.0))]
    for name, options in settings:
        ms, out = (official_ms, reference) if options is None else time_setting(reconstructor, tokens, options, repeats, warmup=1)
        out = out.cpu()
        rows.append({
            "name": name, "ms": ms, "speedup": official_ms / ms,
            "token_cosine": token_cosine(embedder, reference, out), "pixel_r": pixel_r(reference.cpu(), out),
            "pixel_r_truth": pixel_r(out, truth), "pixel_r_truth_shuffled": pixel_r(out, truth[shuffled]),
        })
        print(f"synthetic {name:<28} {ms:9.1f} ms  x{official_ms / ms:5.1f}  cos {rows[-1]['token_cosine']:.4f}  "
              f"r {rows[-1]['pixel_r']:.3f}  r(truth) {rows[-1]['pixel_r_truth']:.3f} vs {rows[-1]['pixel_r_truth_shuffled']:.3f}",
              file=sys.stderr)
    return {"weights": str(synthetic_reconstructor_path()), "pairs": len(images), "image_size": reconstructor.config.image_size,
            "guidance_scale": g, "settings": rows}


def few_step_settings(quick: bool, gpu: bool, sizes: list[int]) -> list[tuple[str, SamplingOptions]]:
    steps = (4, 8) if quick and not gpu else (4, 8, 12)
    out = []
    for size in sizes:
        for n in steps:
            out.append((f"dpmpp_karras_{n}_cfg_{size}", SamplingOptions.fast(steps=n, image_size=size, guidance_scale=CFG)))
        out.append((f"dpmpp_karras_4_nocfg_{size}", SamplingOptions.fast(steps=4, guidance_scale=1.0, image_size=size)))
        out.append((f"euler_karras_8_cfg_{size}", SamplingOptions.fast(steps=8, scheduler="euler_karras", image_size=size, guidance_scale=CFG)))
    return out


def build(args, device: torch.device, dtype: torch.dtype):
    """(reconstructor, embedder or None, description of the weights)."""
    from rtrecon.embedders.openclip import OpenClipImageEmbedder

    if args.unclip:
        if args.unclip == "synthetic":
            from rtrecon.reconstruction.weights import synthetic_reconstructor_path

            args.unclip = str(synthetic_reconstructor_path())
        reconstructor = UnclipReconstructor.from_pretrained(args.unclip, device=device, dtype=dtype, tiny_autoencoder=args.tiny_autoencoder)
        weights = str(args.unclip)
    elif device.type == "cpu":
        reconstructor = UnclipReconstructor.tiny(seed=0, config=TINY, dtype=dtype)
        weights = "random weights, tiny configuration"
    else:
        reconstructor = UnclipReconstructor.tiny(seed=0, config=OFFICIAL, device=device, dtype=dtype, tiny_autoencoder=False)
        weights = "random weights, official architecture"
    if args.embedder:
        embedder = OpenClipImageEmbedder.from_local(args.embedder, device=device)
    elif reconstructor.config.context_dim != OFFICIAL.context_dim:
        # The small unCLIP models (tiny, synthetic world) are conditioned on the tiny embedder's tokens.
        embedder = OpenClipImageEmbedder.tiny(seed=0, device=device)
    else:
        embedder = None
    return reconstructor, embedder, weights


def sibling(reconstructor: UnclipReconstructor) -> UnclipReconstructor:
    """Another reconstructor over the same modules (to compile without touching the eager one)."""
    return UnclipReconstructor(
        reconstructor.unet, reconstructor.vae, reconstructor.config, tiny_autoencoder=reconstructor.tiny_autoencoder, device=reconstructor.device, dtype=reconstructor.dtype
    )


def make_tokens(reconstructor: UnclipReconstructor, embedder, batch: int, seed: int = 1) -> torch.Tensor:
    """Tokens of real-looking images (the synthetic world's) when the embedder fits the reconstructor."""
    cfg = reconstructor.config
    if embedder is not None and (embedder.num_tokens, embedder.dim) == (cfg.num_tokens, cfg.context_dim):
        from rtrecon.data.images import make_images

        images, _ = make_images(batch, size=embedder.image_size, seed=seed)
        return embedder.embed(images).to(reconstructor.device)
    return torch.randn(batch, cfg.num_tokens, cfg.context_dim, generator=torch.Generator().manual_seed(seed)).to(reconstructor.device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and settings (under a minute on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--unclip", help="unCLIP folder (converted official, or trained synthetic; 'synthetic': the shipped "
                        "one); default random weights")
    parser.add_argument("--embedder", help="local OpenCLIP bigG weights for the fidelity check (GPU runs)")
    parser.add_argument("--tiny-autoencoder", help="local AutoencoderTiny folder (taesdxl) for the tiny-VAE setting")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the tiny models are latency-bound: 1 is fastest)")
    parser.add_argument("--save", action="store_true", help="append the JSON line to benchmarks/results/unclip_latency_<GPU>.jsonl (GPU runs)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    dtype = torch.float16 if gpu else torch.float32
    repeats = args.repeats or (2 if args.quick else 5)
    reconstructor, embedder, weights = build(args, device, dtype)
    tokens = make_tokens(reconstructor, embedder, args.batch)
    sizes = [512, 768] if gpu else [reconstructor.config.image_size]
    big = max(sizes)

    official = SamplingOptions.official(image_size=big, guidance_scale=OFFICIAL_SAMPLING.guidance_scale)
    official_ms, reference = time_setting(reconstructor, tokens, official, repeats, warmup=1)
    rows = [{"name": f"official_euler_edm_38_cfg_{big}", "ms": official_ms, "speedup": 1.0, "token_cosine": 1.0 if embedder else None,
             "pixel_r": 1.0}]

    settings = few_step_settings(args.quick, gpu, sizes)
    if reconstructor.tiny_autoencoder is not None:
        settings.append((f"dpmpp_karras_4_cfg_tinyvae_{big}", SamplingOptions.fast(steps=4, image_size=big, tiny_autoencoder=True, guidance_scale=CFG)))
    variants = [("eager", reconstructor, settings)]
    if gpu:
        # Compiled variants: the CFG DPM-Solver++ rows only (each new shape is a recompilation).
        compiled_rows = [(n, o) for n, o in settings if n.startswith("dpmpp_karras") and "_cfg_" in n and "tinyvae" not in n]
        variants.append(("compile", sibling(reconstructor).compile(), compiled_rows))
        try:
            import torch_tensorrt  # noqa: F401

            variants.append(("tensorrt", sibling(reconstructor).compile(backend="tensorrt"), compiled_rows))
        except ImportError:
            print("torch_tensorrt not importable: TensorRT rows skipped", file=sys.stderr)
    for variant, dec, rows_to_run in variants:
        for name, options in rows_to_run:
            ms, images = time_setting(dec, tokens, options, repeats, warmup=2 if variant != "eager" else 1)
            cosine = r = None
            if images.shape[-1] == reference.shape[-1]:
                r = pixel_r(reference.cpu(), images.cpu())
                if embedder is not None:
                    cosine = token_cosine(embedder, reference, images)
            rows.append({"name": f"{name}_{variant}", "ms": ms, "speedup": official_ms / ms, "token_cosine": cosine, "pixel_r": r})
            print(f"{rows[-1]['name']:<40} {ms:9.1f} ms  x{official_ms / ms:5.1f}  cos {cosine}  r {r}", file=sys.stderr)

    headline_name = f"dpmpp_karras_4_cfg_{big}_" + ("compile" if gpu else "eager")
    headline = next(r for r in rows if r["name"] == headline_name)
    # What the cosine is between unrelated images, for scale: the fast setting on other tokens.
    baseline_cosine = None
    if embedder is not None:
        other = make_tokens(reconstructor, embedder, args.batch, seed=2)
        baseline_cosine = token_cosine(embedder, reference, reconstructor(other, SamplingOptions.fast(steps=4, image_size=big, guidance_scale=CFG)))
    results = {
        "official_ms": official_ms,
        "fast_ms": headline["ms"],
        "speedup": headline["speedup"],
        "token_cosine": headline["token_cosine"],
        "token_cosine_other_tokens": baseline_cosine,
        "fast_setting": headline_name,
        "image_size": big,
        "dtype": str(dtype).removeprefix("torch."),
        "batch": args.batch,
        "weights": weights,
        "official_setting": asdict(official),
        "settings": rows,
        "synthetic_unclip": None if args.unclip else synthetic_check(args.quick, repeats, device),
    }
    line = emit("unclip_latency", results)
    if args.save and gpu:
        out = REPO / "benchmarks" / "results" / f"unclip_latency_{torch.cuda.get_device_name(device).replace(' ', '_')}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as fh:
            fh.write(line + "\n")
    return json.loads(line)


if __name__ == "__main__":
    main()
