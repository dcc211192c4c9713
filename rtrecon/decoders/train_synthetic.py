"""Train a small unCLIP decoder (same UNet + KL VAE, smaller) on images conditioned on tokens.

This gives the synthetic world a real image decoder: tokens from its "CLIP"
(``OpenClipImageEmbedder.tiny``) in, pictures out, through exactly the code that runs the
official SDXL unCLIP (:class:`~rtrecon.decoders.unclip.UnclipDecoder`). The same script trains on
real images and bigG tokens on a GPU (``--device cuda``, more steps); ``--resume DIR`` continues a
run. :func:`cached_decoder` trains on first use and reloads afterwards (keyed by the data and
settings).

Two stages, as for the original model:

1. the KL autoencoder on the images (L2 reconstruction + a small KL term); its
   ``scaling_factor`` is then set to 1 / std of the training latents (how SD's 0.18215 and SDXL's
   0.13025 were chosen);
2. the UNet on the scaled latents, epsilon prediction over the official DDPM discretisation with
   offset noise 0.04 (sgm ``StandardDiffusionLoss``), conditioned on the tokens through
   cross-attention and on the size/crop vector; the tokens are replaced by random ones with
   probability ``cond_drop`` so that CFG with the official random-token unconditional works.

Inputs are arrays (or the files holding them): images uint8 (N, H, W, 3) and tokens (N, T, D),
row i of one matching row i of the other; e.g. the synthetic dataset's ``imgBrick`` (stimuli
HDF5) and ``synthetic_truth/embeddings.npy``. The last ``holdout`` pairs are kept out of training
and used by :func:`evaluate_reconstructions` (pixel correlation and, with an embedder, CLIP-token
cosine, each against a shuffled-pairs baseline).

Command line::

    python -m rtrecon.decoders.train_synthetic --images stimuli.hdf5 --tokens embeddings.npy \\
        --out weights/synthetic_unclip --vae-steps 250 --unet-steps 4000

Measured on this project's 2-core machine (shared, 1 thread): 250 VAE steps ~12 min, UNet
~1-2 steps/s at batch 16 (64 px, :data:`~rtrecon.decoders.config.SYNTHETIC`).
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

from rtrecon.decoders.conditioning import size_crop_vector
from rtrecon.decoders.config import OFFICIAL_SAMPLING, SYNTHETIC, UnclipConfig
from rtrecon.decoders.unclip import SamplingOptions, UnclipDecoder
from rtrecon.decoders.unet import build_unet
from rtrecon.decoders.vae import build_vae

__all__ = ["TrainSettings", "cached_decoder", "evaluate_reconstructions", "load_arrays", "main", "train_decoder"]

#: Written beside a trained decoder: what it was trained on and how (for :func:`cached_decoder`).
TRAINING_NAME = "training.json"


@dataclass(frozen=True)
class TrainSettings:
    vae_steps: int = 400
    unet_steps: int = 4000
    batch_size: int = 16
    vae_lr: float = 1e-3
    unet_lr: float = 3e-4
    kl_weight: float = 1e-6
    cond_drop: float = 0.1
    seed: int = 0
    log_every: int = 100


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
        if step % settings.log_every == 0 or step == settings.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(x[i : i + 64].to(vae.device)).latent_dist.mean for i in range(0, len(x), 64)])
    scaling = float(1.0 / means.std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=scaling)
    return scaling


def _train_unet(unet, vae, x: torch.Tensor, tokens: torch.Tensor, config: UnclipConfig, settings: TrainSettings, gen, log) -> None:
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
    vector = size_crop_vector((config.image_size,) * 2, (0, 0), embed_dim=config.size_embed_dim, device=device)
    opt = torch.optim.AdamW(unet.parameters(), lr=settings.unet_lr, weight_decay=1e-2)
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
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step % settings.log_every == 0 or step == settings.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.4f}")
    unet.eval()


def train_decoder(
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    config: UnclipConfig = SYNTHETIC,
    settings: TrainSettings = TrainSettings(),
    device: str = "cpu",
    log: Callable[[str], None] = print,
    resume: UnclipDecoder | None = None,
) -> UnclipDecoder:
    """Train the KL VAE then the UNet of ``config`` on (images, tokens); returns the decoder.

    The token shape (T, D) comes from ``tokens`` and overrides ``config``'s; the output mapping is
    ``(x + 1) / 2``, the inverse of how the images are fed to the autoencoder here. ``resume``
    continues from a decoder trained earlier (its config wins; with ``vae_steps=0`` its
    autoencoder and scaling factor are kept as they are).
    """
    _check_arrays(images, tokens)
    if resume is not None:
        config = resume.config
        if (config.num_tokens, config.context_dim) != tuple(tokens.shape[1:]):
            raise ValueError(f"tokens {tokens.shape[1:]} do not fit the resumed decoder ({config.num_tokens}, {config.context_dim})")
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
    _train_unet(unet, vae, x, tok, config.replace(scale_factor=scaling), settings, gen, log)
    log(f"unet trained in {time.perf_counter() - t0:.0f} s")
    return UnclipDecoder(unet, vae, config.replace(scale_factor=scaling), device=device)


def _fingerprint(images: np.ndarray, tokens: np.ndarray, config: UnclipConfig, settings: TrainSettings) -> str:
    import hashlib

    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(images), np.ascontiguousarray(tokens, dtype=np.float32)):
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    h.update(json.dumps([asdict(config), asdict(settings)], sort_keys=True).encode())
    return h.hexdigest()


def cached_decoder(
    cache_dir: str | Path,
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    config: UnclipConfig = SYNTHETIC,
    settings: TrainSettings = TrainSettings(),
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> UnclipDecoder:
    """The decoder trained on (images, tokens): loaded from ``cache_dir`` if it was trained there on
    the same data with the same settings, otherwise trained now and saved there (first use)."""
    cache_dir = Path(cache_dir)
    key = _fingerprint(images, tokens, config, settings)
    record = cache_dir / TRAINING_NAME
    if record.is_file():
        try:
            if json.loads(record.read_text()).get("fingerprint") == key:
                return UnclipDecoder.from_pretrained(cache_dir, device=device)
        except json.JSONDecodeError:
            log(f"{record}: unreadable, retraining")
        log(f"{cache_dir}: trained on other data or settings, retraining")
    decoder = train_decoder(images, tokens, config=config, settings=settings, device=device, log=log)
    decoder.save_pretrained(cache_dir)
    record.write_text(json.dumps({"fingerprint": key, "settings": asdict(settings), "pairs": len(images)}, indent=2) + "\n")
    return decoder


def _pixel_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def evaluate_reconstructions(
    decoder: UnclipDecoder,
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    options: SamplingOptions | None = None,
    embedder=None,
) -> dict[str, float]:
    """Decode ``tokens`` and compare with ``images``: matched pairs vs shuffled pairs.

    Returns ``pixel_corr`` / ``pixel_corr_shuffled`` (Pearson over pixels at the decoder's size)
    and, with an ``embedder`` (images -> tokens), ``token_cosine`` / ``token_cosine_shuffled``
    (cosine of the flattened tokens of the reconstruction and of the original).
    """
    _check_arrays(images, tokens)
    options = options or SamplingOptions.fast(steps=12, guidance_scale=3.0)
    recon = torch.cat([decoder(tokens[i : i + 16], options).cpu() for i in range(0, len(tokens), 16)])
    target = (_images_to_tensor(images, recon.shape[-1]) + 1) / 2
    shuffled = np.roll(np.arange(len(images)), 1)
    out = {
        "pixel_corr": float(_pixel_corr(recon.numpy(), target.numpy()).mean()),
        "pixel_corr_shuffled": float(_pixel_corr(recon.numpy(), target.numpy()[shuffled]).mean()),
    }
    if embedder is not None:
        a = F.normalize(embedder(recon).flatten(1).float(), dim=1)
        b = F.normalize(embedder(target).flatten(1).float(), dim=1)
        out["token_cosine"] = float((a * b).sum(1).mean())
        out["token_cosine_shuffled"] = float((a * b[shuffled]).sum(1).mean())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtrecon.decoders.train_synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--images", required=True, help="uint8 (N,H,W,3) images: .npy, or .hdf5 with --images-key")
    parser.add_argument("--images-key", default="imgBrick", help="dataset name inside an HDF5 images file")
    parser.add_argument("--tokens", required=True, help="(N,T,D) tokens .npy, row-aligned with the images")
    parser.add_argument("--out", required=True, help="decoder folder to write (loads with UnclipDecoder.from_pretrained)")
    parser.add_argument("--image-size", type=int, default=SYNTHETIC.image_size)
    parser.add_argument("--holdout", type=int, default=32, help="last N pairs kept out of training, for the evaluation")
    parser.add_argument("--vae-steps", type=int, default=TrainSettings.vae_steps)
    parser.add_argument("--unet-steps", type=int, default=TrainSettings.unet_steps)
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    parser.add_argument("--resume", help="decoder folder to continue training (use --vae-steps 0 to keep its VAE)")
    parser.add_argument("--eval-steps", type=int, default=12, help="sampler steps of the held-out evaluation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    ns = parser.parse_args(argv)
    try:
        images, tokens = load_arrays(ns.images, ns.tokens, ns.images_key)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"train_synthetic: {err}", file=sys.stderr)
        return 1
    if not 0 <= ns.holdout < len(images) - 1:
        print(f"train_synthetic: --holdout {ns.holdout} leaves no training data ({len(images)} pairs)", file=sys.stderr)
        return 1
    n_train = len(images) - ns.holdout
    settings = TrainSettings(vae_steps=ns.vae_steps, unet_steps=ns.unet_steps, batch_size=ns.batch_size, seed=ns.seed)
    config = SYNTHETIC.replace(image_size=ns.image_size)
    try:
        resume = UnclipDecoder.from_pretrained(ns.resume) if ns.resume else None
        decoder = train_decoder(images[:n_train], tokens[:n_train], config=config, settings=settings, device=ns.device, resume=resume)
    except (FileNotFoundError, ValueError) as err:
        print(f"train_synthetic: {err}", file=sys.stderr)
        return 1
    out = decoder.save_pretrained(ns.out)
    if ns.holdout >= 2:
        options = SamplingOptions.fast(steps=ns.eval_steps, guidance_scale=3.0)
        metrics = evaluate_reconstructions(decoder, images[n_train:], tokens[n_train:], options=options)
        (Path(out) / "heldout_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
