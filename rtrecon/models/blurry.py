"""The low-level ("blurry") branch of the MindEye2 backbone.

From the backbone's hidden vector it predicts a 4x28x28 Stable-Diffusion VAE latent (decoded
to a blurry image by the SD image-variation VAE) and 49x512 feature tokens that are matched to
ConvNeXt-XL features during training. :func:`blurry_modules` builds the submodules, which the
backbone registers directly under the official names ``blin1``, ``bnorm``, ``bupsampler`` and
``b_maps_projector``; :func:`blurry_forward` runs them.

The upsampler is diffusers' VAE ``Decoder`` with the official arguments (the library made for
it, identical key names since diffusers 0.23). diffusers is imported only when a blurry model is
built, so models without the branch never pay its import time.

The latent becomes an image through the SD image-variation VAE (MindEye2's
``sd_image_var_autoenc.pth``, a diffusers ``AutoencoderKL`` state dict): :func:`load_blurry_vae`
reads it (or any local diffusers ``AutoencoderKL`` folder with 4 latent channels), and
:func:`decode_blurry` is ``recon_inference``'s ``(autoenc.decode(latent / 0.18215).sample / 2 + 0.5).clamp(0, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtrecon._compat import import_torchvision

__all__ = [
    "BLURRY_VAE_CONFIG", "BLURRY_VAE_SCALE", "blurry_modules", "blurry_forward", "decode_blurry", "import_vae_decoder",
    "load_blurry_vae",
]

LATENT_SHAPE = (4, 28, 28)
AUX_TOKENS, AUX_DIM = 49, 512

#: The SD image-variation autoencoder as ``recon_inference.ipynb`` builds it before loading
#: ``sd_image_var_autoenc.pth``; its latents are scaled by :data:`BLURRY_VAE_SCALE`.
BLURRY_VAE_CONFIG: dict = {
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "sample_size": 256,
}
BLURRY_VAE_SCALE = 0.18215


def import_vae_decoder() -> type[nn.Module]:
    """diffusers' VAE ``Decoder`` class (diffusers imports torchvision: see :mod:`rtrecon._compat`)."""
    import_torchvision()
    try:
        from diffusers.models.autoencoders.vae import Decoder
    except ImportError as exc:  # the module moved in diffusers 0.26
        try:
            from diffusers.models.vae import Decoder  # type: ignore[no-redef]
        except ImportError:
            raise ImportError("the blurry branch needs diffusers (pip install diffusers)") from exc
    return Decoder


def blurry_modules(hidden_dim: int) -> dict[str, nn.Module]:
    """The four official blurry submodules, in registration order."""
    decoder_cls = import_vae_decoder()
    return {
        "blin1": nn.Linear(hidden_dim, 4 * 28 * 28),
        "bdropout": nn.Dropout(0.3),
        "bnorm": nn.GroupNorm(1, 64),
        "bupsampler": decoder_cls(
            in_channels=64,
            out_channels=4,
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
            block_out_channels=[32, 64, 128],
            layers_per_block=1,
        ),
        "b_maps_projector": nn.Sequential(
            nn.Conv2d(64, 512, 1, bias=False),
            nn.GroupNorm(1, 512),
            nn.ReLU(True),
            nn.Conv2d(512, 512, 1, bias=False),
            nn.GroupNorm(1, 512),
            nn.ReLU(True),
            nn.Conv2d(512, 512, 1, bias=True),
        ),
    }


def blurry_forward(backbone: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(blurry_latent (B,4,28,28), blurry_aux (B,49,512))`` from the mixer output ``(B, h)``."""
    b = backbone.bdropout(backbone.blin1(hidden))
    b = backbone.bnorm(b.reshape(b.shape[0], -1, 7, 7).contiguous())
    aux = backbone.b_maps_projector(b).flatten(2).permute(0, 2, 1).reshape(b.shape[0], AUX_TOKENS, AUX_DIM)
    return backbone.bupsampler(b), aux


def load_blurry_vae(path: str | Path) -> nn.Module:
    """The autoencoder that decodes blurry latents: ``sd_image_var_autoenc.pth`` (strict) or a diffusers folder."""
    import_torchvision()
    from diffusers import AutoencoderKL

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a diffusers AutoencoderKL folder (no config.json)")
        vae = AutoencoderKL.from_pretrained(path, local_files_only=True)
    elif path.is_file():
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        with torch.device("meta"):
            vae = AutoencoderKL(**BLURRY_VAE_CONFIG)
        try:
            vae.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not the SD image-variation autoencoder MindEye2 decodes blurry latents with: {exc}") from None
    else:
        raise FileNotFoundError(f"{path}: no such blurry-branch autoencoder (sd_image_var_autoenc.pth or a diffusers folder)")
    if vae.config.latent_channels != LATENT_SHAPE[0]:
        raise ValueError(f"{path}: an autoencoder of {vae.config.latent_channels} latent channels; blurry latents have {LATENT_SHAPE[0]}")
    return vae.eval().requires_grad_(False)


def decode_blurry(vae: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """Blurry latents ``(B, 4, 28, 28)`` to images ``(B, 3, H, W)`` in [0, 1] (224 px with the official VAE)."""
    param = next(vae.parameters())
    image = vae.decode(latent.to(param.device, param.dtype) / BLURRY_VAE_SCALE).sample
    return (image.float() / 2 + 0.5).clamp(0, 1)
