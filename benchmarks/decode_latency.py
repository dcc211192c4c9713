"""Decode latency: betas -> CLIP tokens + retrieval, torch eager vs ONNX Runtime (same run).

CPU mode (default): the real-time MindEye2 architecture (h=1024, 256x1664 tokens, no blurry
branch) with two subjects of 8,627 and 15,724 voxels, random weights, batch 1. For each subject
it times ``model.encode`` + top-k retrieval over a gallery in torch eager, then the exported
encoder under ONNX Runtime (fp32), then its int8 dynamic quantisation (the documented option
when fp32 ONNX Runtime cannot beat eager: the model is memory-bound, 1.9 GB of fp32 weights per
call). Outputs are compared on ``clip_voxels_norm`` and ``backbone``; top-1 agreement with eager
is reported for int8. The roofline is measured in the same run: the machine's memory read
bandwidth (``memory_read_gb_per_s``, a 1 GiB sum), the bytes of weights a call reads
(``weights_gb``) and so the bandwidth eager already reaches, and ``max_fp32_speedup``, their
ratio: no fp32 backend reading every weight once per call can beat eager by more.

GPU mode (``--gpu``): fp32 eager vs fp16 + ``torch.compile`` (CUDA graphs) for betas -> tokens +
prior (20 DDIM steps); skips cleanly (exit 0, ``"skipped"`` in the JSON) without CUDA.
``--quick`` leaves out the int8 variant (quantising 1.8 GB of weights takes minutes on 2 cores);
``--int8`` puts it back.

The last line printed is one JSON object::

    {"benchmark": "decode_latency", "machine": ..., "results": {"eager_ms", "onnx_ms",
     "speedup_onnx_vs_eager", "max_abs_diff", "int8_ms", "speedup_int8_vs_eager",
     "max_abs_diff_int8", "by_voxels": {...}, ...}}

Top-level figures are those of the 15,724-voxel subject; ``by_voxels`` has both.

``--quick`` (meant to finish within a minute on 2 idle CPU cores) keeps the h=1024 model and the eager-vs-ONNX
comparison at equal output, but builds it for the 8,627-voxel subject only (the real-time union
mask; the top-level figures are then that subject's), takes 6 rounds of calls after 1 warm-up, and
skips int8.

Export cache: most of a run is exporting the 1.7 GB backbone graph (the TorchScript exporter
serialises and shape-infers every weight: ~40 s on 2 idle cores) and loading it into ONNX
Runtime. The benchmark's model is a pure function of its configuration and seed, so the exported
backbone is kept in ``--cache-dir`` (default ``$XDG_CACHE_HOME/rtrecon/decode_latency`` or
``~/.cache/...``) under a key of the configuration, the weight-initialisation and export code,
and the torch/onnx versions; later runs load it instead of exporting (``--no-cache``: always
export into a temporary folder). The parity check against eager runs either way, so a stale
graph could not pass unnoticed. ``results["backbone_export"]`` says which happened and how long
it took.

``--threads N`` gives torch and ONNX Runtime the same N intra-op threads (default: torch's
default, used for both). On a shared, oversubscribed machine two-thread torch eager slows down
far more than ONNX Runtime (backbone + head at a load average of 7-10 on 2 cores, two runs minutes
apart: eager 194 -> 1305 ms, ONNX Runtime 173 -> 542 ms from 1 to 2 threads), so compare ratios
only at the same thread count and a similar load.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _report import emit  # noqa: E402
from rtrecon.models import MindEye2, MindEye2Config  # noqa: E402
from rtrecon.runtime.retrieval import Retriever  # noqa: E402

VOXELS = (8627, 15724)
QUICK_VOXELS = (8627,)


def random_model(config: MindEye2Config, device: str = "cpu") -> MindEye2:
    """Random weights without the slow default initialisation (scaled normal, unit norms)."""
    with torch.device("meta"):
        model = MindEye2(config)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("freqs"):
                continue
            if p.ndim >= 2:
                # uniform with the std of N(0, 1/fan_in): half the time of normal_ on 0.7 G weights;
                # seeded per tensor, so the backbone is the same whatever the adapters (export cache)
                bound = (3.0 / p.shape[1]) ** 0.5
                p.uniform_(-bound, bound, generator=gen.manual_seed(zlib.crc32(name.encode())))
            elif name.endswith((".g", "0.weight", "3.weight", "6.weight")) and p.ndim == 1:
                p.fill_(1.0)
            else:
                p.zero_()
        if config.use_prior:
            fresh = type(model.prior.noise_scheduler)(config.prior_timesteps).to(device)
            model.prior.noise_scheduler.load_state_dict(fresh.state_dict())
            rot = model.prior.net.causal_transformer.layers[0][0].rotary_emb
            rot.freqs.copy_(1.0 / (10000 ** (torch.arange(0, config.rotary_dim, 2).float() / config.rotary_dim)))
    return model.eval()


def timed(fn, repeats: int, warmup: int = 2, sync=lambda: None) -> tuple[float, object]:
    out = None
    for _ in range(warmup):
        out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rtrecon" / "decode_latency"


def cached_backbone(model: MindEye2, cache_dir: Path | None, tmp: Path) -> tuple[Path, str, float]:
    """The backbone graph of ``model``: ``(path, "cached" | "exported", seconds)``.

    Without ``cache_dir`` it is exported into ``tmp``. With one, the key hashes everything the
    graph depends on (configuration without the adapters' voxel counts, this file's weight
    initialisation, the export module, the torch and onnx versions); a new graph is written under
    a temporary name and renamed, so an interrupted run never leaves a truncated file behind.
    """
    import onnx

    from rtrecon.runtime import export

    t0 = time.perf_counter()
    if cache_dir is None:
        return export.export_backbone(model, tmp / "backbone.onnx"), "exported", time.perf_counter() - t0
    key = hashlib.sha256(json.dumps({
        # the adapters are not in this graph: every voxel count shares one cached backbone
        "config": {k: v for k, v in model.config.to_dict().items() if k != "n_voxels"},
        "init": inspect.getsource(random_model),
        "export": Path(export.__file__).read_text(), "torch": torch.__version__, "onnx": onnx.__version__,
    }, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"backbone-h{model.config.hidden_dim}-{key}.onnx"
    if path.is_file():
        return path, "cached", time.perf_counter() - t0
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        export.export_backbone(model, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path, "exported", time.perf_counter() - t0


def interleaved(backends: dict, rounds: int, warmup: int = 2) -> tuple[dict[str, float], dict[str, object]]:
    """Median ms per call of each backend and its last output, the backends taking turns call by call
    for ``rounds`` rounds: on a shared machine the memory bandwidth drifts over seconds, and timing
    one backend's calls after the other's would charge that drift to one of them."""
    outputs = {}
    for name, fn in backends.items():
        for _ in range(warmup):
            outputs[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(rounds):
        for name, fn in backends.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def read_bandwidth_gb_s(repeats: int = 5) -> float:
    """This machine's memory read bandwidth as torch sees it (GB/s): the best of ``repeats`` sums of a
    1 GiB fp32 tensor, far larger than any cache, with torch's intra-op threads."""
    data = torch.ones(2**28)
    best = min(timed(data.sum, repeats, warmup=1)[0] for _ in range(2))
    return data.numel() * 4 / 1e9 / (best / 1000)


def weight_bytes(model: MindEye2, subject: int) -> int:
    """Bytes of the weights one ``encode`` call of ``subject`` reads (its adapter and everything shared)."""
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters()
               if not name.startswith("ridge.") or name.startswith(f"ridge.linears.{subject}."))


def cpu_benchmark(args: argparse.Namespace) -> dict:
    from rtrecon.runtime.export import export_adapter
    from rtrecon.runtime.onnxruntime_backend import OrtEncoder, quantize_dynamic, session

    voxels = QUICK_VOXELS if args.quick else VOXELS
    config = MindEye2Config.realtime(voxels).replace(use_prior=False)
    t0 = time.perf_counter()
    model = random_model(config)
    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    results: dict = {"by_voxels": {}, "gallery": args.gallery, "batch": 1, "repeats": args.repeats,
                     "hidden_dim": config.hidden_dim, "tokens": [config.clip_tokens, config.clip_dim],
                     "onnx_graphs": "per-subject adapter + one shared backbone (fp32); int8: dynamic quantisation"}
    results["voxels"] = list(voxels)
    log = lambda msg: print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)  # noqa: E731
    log("built the model")
    # The roofline: a batch-1 encode reads every weight once, so read bandwidth bounds any fp32 backend.
    results["memory_read_gb_per_s"] = read_bandwidth_gb_s()
    log(f"memory read bandwidth {results['memory_read_gb_per_s']:.1f} GB/s")
    # Without a cache the 1.7 GB backbone graph is written and read back once: in RAM (/dev/shm) when there is one.
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as tmp:
        tmp = Path(tmp)
        backbone_path, how, export_s = cached_backbone(model, args.cache_dir, tmp)
        results["backbone_export"] = {"how": how, "seconds": export_s, "path": str(backbone_path)}
        log(f"{how} the shared backbone ({backbone_path})")
        backbone = session(backbone_path, threads=threads)
        backbone_int8 = None
        if args.int8:
            backbone_int8 = session(quantize_dynamic(backbone_path, tmp / "backbone_int8.onnx"), threads=threads)
            log("quantised the backbone to int8")
        log("loaded the backbone into ONNX Runtime")
        for subject, n_vox in enumerate(voxels):
            x = torch.from_numpy(rng.standard_normal((1, n_vox), dtype=np.float32))
            with torch.inference_mode():
                truth = model.encode(x, subject).clip_voxels_norm.numpy()
            # A graded gallery around the prediction (noise growing item by item), so that top-k
            # agreement between backends is a meaningful check, not a tie among random vectors.
            noise = rng.standard_normal((args.gallery, config.out_dim), dtype=np.float32) / np.sqrt(config.out_dim)
            retriever = Retriever(truth + np.linspace(0.3, 3.0, args.gallery, dtype=np.float32)[:, None] * noise)

            def eager():
                with torch.inference_mode():
                    out = model.encode(x, subject)
                    return out, retriever.topk(out.clip_voxels_norm, k=5)

            adapter_path = export_adapter(model, tmp / f"adapter{subject}.onnx", subject)
            ort_enc = OrtEncoder.from_parts(adapter_path, backbone, threads=threads)

            def onnx_run(enc=ort_enc):
                out = enc(x.numpy())
                return out, retriever.topk(out["clip_voxels_norm"], k=5)

            backends = {"eager": eager, "onnx": onnx_run}
            if backbone_int8 is not None:
                q_adapter = quantize_dynamic(adapter_path, tmp / f"adapter{subject}_int8.onnx")
                backends["int8"] = partial(onnx_run, OrtEncoder.from_parts(q_adapter, backbone_int8, threads=threads))
            ms, outputs = interleaved(backends, args.repeats, args.warmup)
            eager_ms, (ref, ref_top) = ms["eager"], outputs["eager"]
            onnx_ms, (ort_out, ort_top) = ms["onnx"], outputs["onnx"]
            row = {
                "eager_ms": eager_ms,
                "onnx_ms": onnx_ms,
                "speedup_onnx_vs_eager": eager_ms / onnx_ms,
                "max_abs_diff": float(max(
                    np.abs(ort_out["clip_voxels_norm"] - ref.clip_voxels_norm.numpy()).max(),
                    np.abs(ort_out["backbone"] - ref.backbone.numpy()).max(),
                )),
                "top5_equal": ort_top[0] == ref_top[0],
                "weights_gb": weight_bytes(model, subject) / 1e9,
            }
            row["eager_read_gb_per_s"] = row["weights_gb"] / (eager_ms / 1000)
            row["max_fp32_speedup"] = results["memory_read_gb_per_s"] / row["eager_read_gb_per_s"]
            if "int8" in ms:
                int8_ms, (q_out, q_top) = ms["int8"], outputs["int8"]
                cos = float((q_out["clip_voxels_norm"] * ref.clip_voxels_norm.numpy()).sum())
                row.update(
                    int8_ms=int8_ms,
                    speedup_int8_vs_eager=eager_ms / int8_ms,
                    max_abs_diff_int8=float(np.abs(q_out["clip_voxels_norm"] - ref.clip_voxels_norm.numpy()).max()),
                    cosine_int8_vs_eager=cos,
                    top1_equal_int8=q_top[0][0] == ref_top[0][0],
                    top5_equal_int8=q_top[0] == ref_top[0],
                )
            results["by_voxels"][str(n_vox)] = row
            log(f"{n_vox} voxels: " + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    results.update({k: v for k, v in results["by_voxels"][str(voxels[-1])].items()})
    return results


def gpu_benchmark(args: argparse.Namespace) -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: --gpu needs a GPU"}
    device = "cuda"
    config = MindEye2Config.realtime(VOXELS)
    model = random_model(config, device)
    sync = torch.cuda.synchronize
    results: dict = {"by_voxels": {}, "prior_steps": args.prior_steps}
    from rtrecon.models.loading import cast_model

    half = cast_model(copy.deepcopy(model), torch.float16)
    encode_fast = torch.compile(half.encode, mode="reduce-overhead", dynamic=False)
    net_fast = torch.compile(half.prior.net, mode="reduce-overhead", dynamic=False)
    from rtrecon.models.schedulers import ddim_sample, randn_source

    for subject, n_vox in enumerate(VOXELS):
        x = torch.randn(1, n_vox, device=device)

        def eager():
            with torch.inference_mode():
                out = model.encode(x, subject)
                return out.clip_voxels_norm, model.prior.sample(out.backbone, steps=args.prior_steps,
                                                                generator=torch.Generator(device).manual_seed(0))

        def fast():
            with torch.inference_mode():
                out = encode_fast(x.half(), subject)
                gen = torch.Generator(device).manual_seed(0)
                tokens = ddim_sample(half.prior.noise_scheduler, lambda xt, t: net_fast(xt, t, out.backbone),
                                     tuple(out.backbone.shape), args.prior_steps, randn_source(device, torch.float16, gen))
                # CUDA-graph outputs are overwritten by the next replay: keep copies
                return out.clip_voxels_norm.float().clone(), tokens.float().clone()

        eager_ms, (ref, ref_tokens) = timed(eager, args.repeats, sync=sync)
        fast_ms, (got, tokens) = timed(fast, args.repeats, warmup=3, sync=sync)
        row = {
            "eager_fp32_ms": eager_ms, "fp16_compiled_ms": fast_ms, "speedup": eager_ms / fast_ms,
            "max_abs_diff_clip_voxels_norm": float((got - ref).abs().max()),
            "token_cosine": float(torch.nn.functional.cosine_similarity(tokens.flatten(1), ref_tokens.flatten(1)).mean()),
        }
        row["fp16_encode_ms"], _ = timed(lambda: encode_fast(x.half(), subject), args.repeats, warmup=3, sync=sync)
        results["by_voxels"][str(n_vox)] = row
    top = results["by_voxels"][str(VOXELS[-1])]
    results.update(eager_ms=top["eager_fp32_ms"], fast_ms=top["fp16_compiled_ms"], speedup=top["speedup"])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="8,627 voxels only, 6 rounds, small gallery, no int8 (about a minute)")
    parser.add_argument("--gpu", action="store_true", help="GPU mode: fp32 eager vs fp16 + torch.compile, with the prior")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds, the backends taking turns (default 20, quick 6)")
    parser.add_argument("--gallery", type=int, default=None, help="retrieval gallery size (default 300, quick 100)")
    parser.add_argument("--prior-steps", type=int, default=20)
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=None,
                        help="also time int8 dynamic quantisation (default: on, off with --quick: quantising "
                             "1.8 GB of weights takes minutes on 2 cores)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for torch and ONNX Runtime alike (default: torch's default)")
    parser.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                        help="keep the exported backbone graph here for later runs (default: %(default)s)")
    parser.add_argument("--no-cache", dest="cache_dir", action="store_const", const=None,
                        help="export the backbone into a temporary folder every run")
    args = parser.parse_args(argv)
    if args.threads:
        # both backends get the same number: on a busy machine one thread each can beat two
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (6 if args.quick else 20)
    args.warmup = 1 if args.quick else 2
    args.gallery = args.gallery or (100 if args.quick else 300)
    if args.int8 is None:
        args.int8 = not args.quick
    t0 = time.perf_counter()
    results = gpu_benchmark(args) if args.gpu else cpu_benchmark(args)
    results["wall_s"] = time.perf_counter() - t0
    line = emit("decode_latency", results, mode="gpu" if args.gpu else "cpu")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
