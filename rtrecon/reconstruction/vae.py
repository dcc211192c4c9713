"""The unCLIP autoencoders: the SDXL KL-f8 ``AutoencoderKL`` and an optional ``AutoencoderTiny``.

``build_vae(config)`` / ``load_vae(folder)`` give the KL autoencoder whose ``scaling_factor``
(0.13025 for SDXL) maps the UNet's latents to the VAE's (``decode(z / scaling_factor)``).
``build_tiny_autoencoder()`` / ``load_tiny_autoencoder(folder)`` give diffusers'
``AutoencoderTiny`` (TAESD-style; for SDXL latents the user's local copy of ``taesdxl``), which
decodes the *scaled* latents directly (its ``scaling_factor`` is 1) in a fraction of the KL
decoder's time. Both decode to [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch

from rtrecon.reconstruction.config import UnclipConfig

__all__ = ["build_tiny_autoencoder", "build_vae", "load_tiny_autoencoder", "load_vae"]

#: A small ``AutoencoderTiny`` for tests (random weights, f8 like TAESD).
TINY_AUTOENCODER_CONFIG: dict = {
    "in_channels": 3,
    "out_channels": 3,
    "encoder_block_out_channels": (8, 8, 8, 8),
    "decoder_block_out_channels": (8, 8, 8, 8),
    "num_encoder_blocks": (1, 1, 1, 1),
    "num_decoder_blocks": (1, 1, 1, 1),
    "latent_channels": 4,
}


def _check_folder(folder: Path, what: str) -> Path:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a diffusers {what} folder (no config.json)")
    return folder


def build_vae(config: UnclipConfig, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A randomly initialised KL autoencoder of ``config`` (``device="meta"`` allocates nothing)."""
    from diffusers import AutoencoderKL

    with torch.device(device or "cpu"):
        vae = AutoencoderKL(**config.vae_config())
    return vae if dtype is None else vae.to(dtype)


def load_vae(folder: str | Path, *, dtype: torch.dtype | None = None):
    """The KL autoencoder saved under ``folder`` (local files only)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(_check_folder(Path(folder), "AutoencoderKL"), local_files_only=True, torch_dtype=dtype)


def build_tiny_autoencoder(config: dict | None = None, *, dtype: torch.dtype | None = None):
    """A randomly initialised ``AutoencoderTiny`` (default: :data:`TINY_AUTOENCODER_CONFIG`)."""
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny(**(config or TINY_AUTOENCODER_CONFIG))
    return vae if dtype is None else vae.to(dtype)


def load_tiny_autoencoder(folder: str | Path, *, dtype: torch.dtype | None = None):
    """An ``AutoencoderTiny`` from a local folder (e.g. the user's copy of ``madebyollin/taesdxl``)."""
    from diffusers import AutoencoderTiny

    return AutoencoderTiny.from_pretrained(_check_folder(Path(folder), "AutoencoderTiny"), local_files_only=True, torch_dtype=dtype)
