"""The low-level ("blurry") branch of the MindEye2 backbone.

From the backbone's hidden vector it predicts a 4x28x28 Stable-Diffusion VAE latent (decoded
to a blurry image by the SD image-variation VAE) and 49x512 feature tokens that are matched to
ConvNeXt-XL features during training. :func:`blurry_modules` builds the submodules, which the
backbone registers directly under the official names ``blin1``, ``bnorm``, ``bupsampler`` and
``b_maps_projector``; :func:`blurry_forward` runs them.

The upsampler is diffusers' VAE ``Decoder`` with the official arguments (the library made for
it, identical key names since diffusers 0.23). diffusers is imported only when a blurry model is
built, so models without the branch never pay its import time.
"""

from __future__ import annotations

import torch
from torch import nn

from rtrecon._compat import import_torchvision

__all__ = ["blurry_modules", "blurry_forward", "import_vae_decoder"]

LATENT_SHAPE = (4, 28, 28)
AUX_TOKENS, AUX_DIM = 49, 512


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
