"""Train a small unCLIP model (same UNet + KL VAE, smaller) on images conditioned on tokens.

This gives the synthetic world a real image reconstructor: tokens from its "CLIP"
(``OpenClipImageEmbedder.tiny``) in, pictures out, through exactly the code that runs the
official SDXL unCLIP (:class:`~rtrecon.reconstruction.unclip.UnclipReconstructor`). The same script trains on
real images and bigG tokens on a GPU (``--device cuda``, more steps); ``--resume DIR`` continues a
run. :func:`cached_reconstructor` trains on first use and reloads afterwards (keyed by the data and
settings). The synthetic world's reconstructor trained by this script ships with the package
(:mod:`rtrecon.reconstruction.weights`).

Two stages, as for the original model:

1. the KL autoencoder on the images (L2 reconstruction + a small KL term); its
   ``scaling_factor`` is then set to 1 / std of the training latents (how SD's 0.18215 and SDXL's
   0.13025 were chosen);
2. the UNet on the scaled latents over the official DDPM discretisation with offset noise 0.04
   (sgm ``StandardDiffusionLoss``), predicting what ``config.prediction_type`` says (epsilon
   officially; v for :data:`~rtrecon.reconstruction.config.SYNTHETIC`), optionally Min-SNR-weighted
   (``snr_gamma``), conditioned on the tokens through cross-attention and on the size/crop vector;
   the tokens are replaced by random ones with probability ``cond_drop`` so that CFG with the
   official random-token unconditional works.

Both stages use AdamW with a linear warm-up and a cosine decay of the learning rate.

Inputs are arrays (or the files holding them): images uint8 (N, H, W, 3) and tokens (N, T, D),
row i of one matching row i of the other; e.g. the synthetic dataset's ``imgBrick`` (stimuli
HDF5) and ``synthetic_truth/embeddings.npy``, or as many fresh pairs as wanted from
:func:`synthetic_pairs` (the synthetic world's image generator and embedder; ``--synthetic N``).
The last ``holdout`` pairs are kept out of training and used by :func:`evaluate_reconstructions`
(pixel correlation and, with an embedder, CLIP-token cosine, each against a shuffled-pairs
baseline); ``--grid PNG`` draws them beside their reconstructions.

Command line: the shipped synthetic reconstructor was trained in stages like these (its
``training.json`` records the exact run, 6000 UNet steps on one CPU thread, about 86 minutes)::

    python -m rtrecon.reconstruction.train_synthetic --synthetic 8064 --holdout 64 --out vae \\
        --vae-steps 300 --unet-steps 0
    python -m rtrecon.reconstruction.train_synthetic --synthetic 8064 --holdout 64 --out dec --resume vae \\
        --vae-steps 0 --unet-steps 1000 --grid heldout.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rtrecon.reconstruction.conditioning import size_crop_vector
from rtrecon.reconstruction.config import OFFICIAL_SAMPLING, SYNTHETIC, UnclipConfig
from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor
from rtrecon.reconstruction.unet import build_unet
from rtrecon.reconstruction.vae import build_vae

__all__ = [
    "TrainSettings",
    "cached_reconstructor",
    "evaluate_reconstructions",
    "load_arrays",
    "main",
    "save_grid",
    "synthetic_pairs",
    "train_reconstructor",
]

#: Written beside a trained reconstructor: what it was trained on and how (for :func:`cached_reconstructor`).
TRAINING_NAME = "training.json"


@dataclass(frozen=True)
class TrainSettings:
    vae_steps: int = 400
    unet_steps: int = 3000
    batch_size: int = 32
    vae_lr: float = 2e-3
    unet_lr: float = 1e-3
    #: Linear warm-up steps of each stage's learning rate (then a cosine decay to 0).
    warmup_steps: int = 50
    kl_weight: float = 1e-6
    cond_drop: float = 0.1
    #: Min-SNR loss weighting (Hang et al. 2023): min(SNR, gamma) in x0 terms; 0 (the default)
    #: keeps the plain loss. Off by default: it all but silences the high-noise timesteps, where
    #: a reconstructor learns what the tokens say (the few-step sampler's first steps).
    snr_gamma: float = 0.0
    seed: int = 0
    log_every: int = 100


def synthetic_pairs(n: int, seed: int = 0, *, image_size: int = 96, clip_seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (images, tokens) pairs of the synthetic world: :func:`rtrecon.data.images.make_images`
    drawn at ``image_size`` (the dataset's "small" preset draws 96 px), embedded by
    ``OpenClipImageEmbedder.tiny(clip_seed)`` as :mod:`rtrecon.data.synthetic` does; a pure
    function of its arguments."""
    from rtrecon.data.images import make_images
    from rtrecon.embedders.openclip import OpenClipImageEmbedder

    images, _ = make_images(n, image_size, seed=seed)
    tokens = OpenClipImageEmbedder.tiny(seed=clip_seed).embed(images).numpy().astype(np.float32)
    return images, tokens


def _schedule(opt: torch.optim.Optimizer, settings: TrainSettings, steps: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, min(settings.warmup_steps, steps // 2), max(steps, 1))


def _images_to_tensor(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, 3) to float (N, 3, size, size) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    return x


def _check_arrays(images: np.ndarray, tokens: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (N, T, D), got shape {tokens.shape}")
    if len(images) != len(tokens):
        raise ValueError(f"{len(images)} images but {len(tokens)} token rows: they must match row for row")
    if len(images) < 2:
        raise ValueError("need at least 2 image/token pairs")


def load_arrays(images_path: str | Path, tokens_path: str | Path, images_key: str = "imgBrick") -> tuple[np.ndarray, np.ndarray]:
    """Images from ``.npy`` or an HDF5 dataset (``images_key``), tokens from ``.npy``."""
    images_path, tokens_path = Path(images_path), Path(tokens_path)
    for path in (images_path, tokens_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
    if images_path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(images_path, "r") as f:
            if images_key not in f:
                raise KeyError(f"{images_path}: no dataset {images_key!r} (has {', '.join(f.keys())})")
            images = f[images_key][()]
    else:
        images = np.load(images_path)
    tokens = np.load(tokens_path)
    _check_arrays(images, tokens)
    return images, tokens.astype(np.float32)


def _train_vae(vae, x: torch.Tensor, settings: TrainSettings, gen: torch.Generator, log: Callable[[str], None]) -> float:
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    lr = _schedule(opt, settings, settings.vae_steps)
    vae.train()
    for step in range(settings.vae_steps):
        idx = torch.randint(0, len(x), (min(settings.batch_size, len(x)),), generator=gen)
        batch = x[idx].to(vae.device)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        loss = F.mse_loss(recon, batch) + settings.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr.step()
        if step % settings.log_every == 0 or step == settings.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(x[i : i + 64].to(vae.device)).latent_dist.mean for i in range(0, len(x), 64)])
    scaling = float(1.0 / means.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scaling)
    return scaling


def _loss_weights(acp: torch.Tensor, prediction_type: str, gamma: float) -> torch.Tensor:
    """Min-SNR weights, expressed for the loss of each parametrisation (1 when ``gamma`` is 0)."""
    if gamma <= 0:
        return torch.ones_like(acp)
    snr = acp / (1 - acp)
    clipped = snr.clamp(max=gamma)
    # The x0 loss times min(SNR, gamma), rewritten for what the UNet predicts.
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def _train_unet(unet, vae, x: torch.Tensor, tokens: torch.Tensor, config: UnclipConfig, settings: TrainSettings, gen, log,
                on_checkpoint: Callable[[int], None] | None = None, checkpoint_every: int = 0) -> None:
    from diffusers import DDPMScheduler

    d = config.discretization
    noise_sched = DDPMScheduler(
        num_train_timesteps=d.num_timesteps, beta_start=d.linear_start, beta_end=d.linear_end, beta_schedule="scaled_linear"
    )
    device = unet.device
    with torch.no_grad():
        dists = [vae.encode(x[i : i + 64].to(device)).latent_dist for i in range(0, len(x), 64)]
    mean = torch.cat([p.mean for p in dists])
    std = torch.cat([p.std for p in dists])
    scale = vae.config.scaling_factor
    acp = noise_sched.alphas_cumprod.to(device)
    vector = size_crop_vector((config.image_size,) * 2, (0, 0), embed_dim=config.size_embed_dim, device=device)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-2)
    lr = _schedule(opt, settings, settings.unet_steps)
    unet.train()
    for step in range(settings.unet_steps):
        b = min(settings.batch_size, len(x))
        idx = torch.randint(0, len(x), (b,), generator=gen)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(device)) * scale
        noise = torch.randn(latents.shape, generator=gen).to(device)
        noise = noise + OFFICIAL_SAMPLING.offset_noise_level * torch.randn(b, 1, 1, 1, generator=gen).to(device)
        t = torch.randint(0, d.num_timesteps, (b,), generator=gen).to(device)
        cond = tokens[idx].to(device)
        drop = (torch.rand(b, generator=gen) < settings.cond_drop).to(device)
        cond = torch.where(drop[:, None, None], torch.randn(cond.shape, generator=gen).to(device), cond)
        noisy = noise_sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond, class_labels=vector.expand(b, -1)).sample
        if config.prediction_type == "epsilon":
            target = noise
        elif config.prediction_type == "v_prediction":
            target = noise_sched.get_velocity(latents, noise, t)
        else:
            target = latents
        per_sample = F.mse_loss(pred, target, reduction="none").mean((1, 2, 3))
        loss = (per_sample * _loss_weights(acp[t], config.prediction_type, settings.snr_gamma)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr.step()
        if step % settings.log_every == 0 or step == settings.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f}")
        if on_checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < settings.unet_steps:
            unet.eval()
            on_checkpoint(step + 1)
            unet.train()
    unet.eval()


def train_reconstructor(
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    config: UnclipConfig = SYNTHETIC,
    settings: TrainSettings = TrainSettings(),
    device: str = "cpu",
    log: Callable[[str], None] = print,
    resume: UnclipReconstructor | None = None,
    on_checkpoint: Callable[[UnclipReconstructor, int], None] | None = None,
    checkpoint_every: int = 0,
) -> UnclipReconstructor:
    """Train the KL VAE then the UNet of ``config`` on (images, tokens); returns the reconstructor.

    The token shape (T, D) comes from ``tokens`` and overrides ``config``'s; the output mapping is
    ``(x + 1) / 2``, the inverse of how the images are fed to the autoencoder here. ``resume``
    continues from a reconstructor trained earlier (its config wins; with ``vae_steps=0`` its
    autoencoder and scaling factor are kept as they are). ``on_checkpoint(reconstructor, step)`` is
    called every ``checkpoint_every`` UNet steps with the reconstructor as it stands (to save or
    evaluate a long run part-way).
    """
    _check_arrays(images, tokens)
    if resume is not None:
        config = resume.config
        if (config.num_tokens, config.context_dim) != tuple(tokens.shape[1:]):
            raise ValueError(f"tokens {tokens.shape[1:]} do not fit the resumed reconstructor ({config.num_tokens}, {config.context_dim})")
    config = config.replace(
        num_tokens=int(tokens.shape[1]), context_dim=int(tokens.shape[2]), output_mapping="standard"
    )
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    x = _images_to_tensor(images, config.image_size)
    tok = torch.from_numpy(np.asarray(tokens, dtype=np.float32))
    if resume is None:
        vae, unet = build_vae(config).to(device), build_unet(config).to(device)
    else:
        vae, unet = resume.vae.float().to(device), resume.unet.float().to(device)
    scaling = float(vae.config.scaling_factor)
    if settings.vae_steps > 0:
        vae.requires_grad_(True)
        t0 = time.perf_counter()
        scaling = _train_vae(vae, x, settings, gen, log)
        log(f"vae trained in {time.perf_counter() - t0:.0f} s, scaling_factor {scaling:.4f}")
    vae.requires_grad_(False)
    unet.requires_grad_(True)
    t0 = time.perf_counter()
    config = config.replace(scale_factor=scaling)

    def checkpoint(step: int) -> None:
        # The reconstructor shares the training modules; UnclipReconstructor would freeze them, so unfreeze after.
        on_checkpoint(UnclipReconstructor(unet, vae, config, device=device), step)
        unet.requires_grad_(True)

    _train_unet(unet, vae, x, tok, config, settings, gen, log, checkpoint if on_checkpoint else None, checkpoint_every)
    log(f"unet trained in {time.perf_counter() - t0:.0f} s")
    return UnclipReconstructor(unet, vae, config, device=device)


def _fingerprint(images: np.ndarray, tokens: np.ndarray, config: UnclipConfig, settings: TrainSettings) -> str:
    import hashlib

    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(images), np.ascontiguousarray(tokens, dtype=np.float32)):
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    h.update(json.dumps([asdict(config), asdict(settings)], sort_keys=True).encode())
    return h.hexdigest()


def cached_reconstructor(
    cache_dir: str | Path,
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    config: UnclipConfig = SYNTHETIC,
    settings: TrainSettings = TrainSettings(),
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> UnclipReconstructor:
    """The reconstructor trained on (images, tokens): loaded from ``cache_dir`` if it was trained there on
    the same data with the same settings, otherwise trained now and saved there (first use)."""
    cache_dir = Path(cache_dir)
    key = _fingerprint(images, tokens, config, settings)
    record = cache_dir / TRAINING_NAME
    if record.is_file():
        try:
            if json.loads(record.read_text()).get("fingerprint") == key:
                return UnclipReconstructor.from_pretrained(cache_dir, device=device)
        except json.JSONDecodeError:
            log(f"{record}: unreadable, retraining")
        log(f"{cache_dir}: trained on other data or settings, retraining")
    reconstructor = train_reconstructor(images, tokens, config=config, settings=settings, device=device, log=log)
    reconstructor.save_pretrained(cache_dir)
    record.write_text(json.dumps({"fingerprint": key, "settings": asdict(settings), "pairs": len(images)}, indent=2) + "\n")
    return reconstructor


def _pixel_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def evaluate_reconstructions(
    reconstructor: UnclipReconstructor,
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    options: SamplingOptions | None = None,
    embedder=None,
) -> dict[str, float]:
    """Decode ``tokens`` and compare with ``images``: matched pairs vs shuffled pairs.

    Returns ``pixel_corr`` / ``pixel_corr_shuffled`` (Pearson over pixels at the reconstructor's size)
    and, with an ``embedder`` (images -> tokens), ``token_cosine`` / ``token_cosine_shuffled``
    (cosine of the flattened tokens of the reconstruction and of the original, both embedded at
    the reconstructor's size) and ``token_cosine_centered`` / ``..._shuffled`` (the same after taking
    the originals' mean token away). Shuffled pairs: reconstruction i against original i - 1.
    """
    _check_arrays(images, tokens)
    options = options or SamplingOptions.fast(steps=12)
    recon = torch.cat([reconstructor(tokens[i : i + 16], options).cpu() for i in range(0, len(tokens), 16)])
    target = (_images_to_tensor(images, recon.shape[-1]) + 1) / 2
    shuffled = np.roll(np.arange(len(images)), 1)
    out = {
        "pixel_corr": float(_pixel_corr(recon.numpy(), target.numpy()).mean()),
        "pixel_corr_shuffled": float(_pixel_corr(recon.numpy(), target.numpy()[shuffled]).mean()),
    }
    if embedder is not None:
        ea, eb = embedder(recon).flatten(1).float(), embedder(target).flatten(1).float()
        a, b = F.normalize(ea, dim=1), F.normalize(eb, dim=1)
        out["token_cosine"] = float((a * b).sum(1).mean())
        out["token_cosine_shuffled"] = float((a * b[shuffled]).sum(1).mean())
        # Tokens of unrelated images share a large common part (cosine ~0.95 for the synthetic
        # world's embedder); without the targets' mean token the cosine shows what is image-specific.
        centre = eb.mean(0, keepdim=True)
        a, b = F.normalize(ea - centre, dim=1), F.normalize(eb - centre, dim=1)
        out["token_cosine_centered"] = float((a * b).sum(1).mean())
        out["token_cosine_centered_shuffled"] = float((a * b[shuffled]).sum(1).mean())
    return out


def save_grid(path: str | Path, images: np.ndarray, reconstructions: torch.Tensor, *, columns: int = 8, cell: int = 96) -> Path:
    """A PNG of pairs of rows: originals (uint8 (N, H, W, 3)) above their reconstructions ((N, 3, h, w) in [0, 1]), each
    cell resized to ``cell`` pixels (nearest, so the reconstructor's own resolution stays visible)."""
    from PIL import Image

    if len(images) != len(reconstructions):
        raise ValueError(f"{len(images)} images but {len(reconstructions)} reconstructions")
    recon = (reconstructions.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)

    def cells(batch: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(Image.fromarray(im).resize((cell, cell), Image.NEAREST)) for im in batch]

    pad = -len(images) % columns
    blank = [np.full((cell, cell, 3), 255, np.uint8)] * pad
    rows = []
    for start in range(0, len(images), columns):
        rows.append(np.concatenate(cells(images[start : start + columns]) + (blank if start + columns > len(images) else []), 1))
        rows.append(np.concatenate(cells(recon[start : start + columns]) + (blank if start + columns > len(images) else []), 1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows[:-1], 0)).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtrecon.reconstruction.train_synthetic", description=__doc__.split("\n")[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", help="uint8 (N,H,W,3) images: .npy, or .hdf5 with --images-key (with --tokens)")
    data.add_argument("--synthetic", type=int, metavar="N", help="train on N fresh synthetic-world pairs (synthetic_pairs)")
    parser.add_argument("--images-key", default="imgBrick", help="dataset name inside an HDF5 images file")
    parser.add_argument("--tokens", help="(N,T,D) tokens .npy, row-aligned with the images")
    parser.add_argument("--synthetic-seed", type=int, default=1, help="image seed of --synthetic (default %(default)s)")
    parser.add_argument("--out", required=True, help="unCLIP folder to write (loads with UnclipReconstructor.from_pretrained)")
    parser.add_argument("--image-size", type=int, default=SYNTHETIC.image_size)
    parser.add_argument("--holdout", type=int, default=32, help="last N pairs kept out of training, for the evaluation")
    parser.add_argument("--vae-steps", type=int, default=TrainSettings.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=TrainSettings.unet_steps)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--unet-lr", type=float, default=TrainSettings.unet_lr)
    parser.add_argument("--snr-gamma", type=float, default=TrainSettings.snr_gamma, help="Min-SNR weighting (0: off)")
    parser.add_argument("--resume", help="unCLIP folder to continue training (use --vae-steps 0 to keep its VAE)")
    parser.add_argument("--save-every", type=int, default=0, help="also write the reconstructor to --out every N UNet steps")
    parser.add_argument("--eval-steps", type=int, default=12, help="sampler steps of the held-out evaluation")
    parser.add_argument("--eval-cfg", type=float, help="CFG scale of the held-out evaluation (default: the reconstructor's)")
    parser.add_argument("--grid", type=Path, help="PNG of the held-out images above their reconstructions")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    ns = parser.parse_args(argv)
    try:
        if ns.synthetic is not None:
            images, tokens = synthetic_pairs(ns.synthetic, ns.synthetic_seed)
        elif ns.tokens is None:
            raise ValueError("--images needs --tokens")
        else:
            images, tokens = load_arrays(ns.images, ns.tokens, ns.images_key)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"train_synthetic: {err}", file=sys.stderr)
        return 1
    if not 0 <= ns.holdout < len(images) - 1:
        print(f"train_synthetic: --holdout {ns.holdout} leaves no training data ({len(images)} pairs)", file=sys.stderr)
        return 1
    n_train = len(images) - ns.holdout
    settings = TrainSettings(
        vae_steps=ns.vae_steps, unet_steps=ns.unet_steps, batch_size=ns.batch_size, unet_lr=ns.unet_lr,
        snr_gamma=ns.snr_gamma, seed=ns.seed,
    )
    config = SYNTHETIC.replace(image_size=ns.image_size)
    started = time.perf_counter()
    try:
        resume = UnclipReconstructor.from_pretrained(ns.resume) if ns.resume else None
        reconstructor = train_reconstructor(
            images[:n_train], tokens[:n_train], config=config, settings=settings, device=ns.device, resume=resume,
            on_checkpoint=lambda dec, step: print(f"step {step}: saved {dec.save_pretrained(ns.out)}", flush=True),
            checkpoint_every=ns.save_every,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"train_synthetic: {err}", file=sys.stderr)
        return 1
    out = reconstructor.save_pretrained(ns.out)
    record = {"settings": asdict(settings), "pairs": n_train, "train_s": round(time.perf_counter() - started, 1),
              "data": f"synthetic_pairs({ns.synthetic}, seed={ns.synthetic_seed})" if ns.synthetic else [ns.images, ns.tokens],
              "torch_threads": torch.get_num_threads()}
    (Path(out) / TRAINING_NAME).write_text(json.dumps(record, indent=2) + "\n")
    if ns.holdout >= 2:
        options = SamplingOptions.fast(steps=ns.eval_steps, guidance_scale=ns.eval_cfg)
        from rtrecon.embedders.openclip import OpenClipImageEmbedder

        # Tokens of the synthetic world's shape are its embedder's: re-embed the reconstructions with it.
        embedder = OpenClipImageEmbedder.tiny(seed=0)
        if (embedder.num_tokens, embedder.dim) != tokens.shape[1:]:
            embedder = None
        held_images, held_tokens = images[n_train:], tokens[n_train:]
        metrics = evaluate_reconstructions(reconstructor, held_images, held_tokens, options=options, embedder=embedder)
        (Path(out) / "heldout_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics))
        if ns.grid is not None:
            print(f"grid: {save_grid(ns.grid, held_images[:16], reconstructor(held_tokens[:16], options))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
