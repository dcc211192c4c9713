"""The unCLIP UNet as a diffusers ``UNet2DConditionModel``.

``build_unet(config)`` makes the model with random weights (on the ``meta`` device when asked,
for shape checks of the 2.5 B-parameter official model without allocating it);
``load_unet(folder)`` reads a converted folder (see :mod:`~rtrecon.reconstruction.conversion`) from
local files only.

Call it as ``unet(latents, t, encoder_hidden_states=tokens, class_labels=vector)``: the image
tokens (B, 256, 1664) feed the cross-attention and the size/crop vector (B, 1024) the
``class_embedding`` (see :func:`rtrecon.reconstruction.conditioning.size_crop_vector`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rtrecon.reconstruction.config import UnclipConfig

__all__ = ["build_unet", "load_unet"]


def build_unet(config: UnclipConfig, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """A randomly initialised unCLIP UNet of ``config`` (``device="meta"`` allocates nothing)."""
    from diffusers import UNet2DConditionModel

    with torch.device(device or "cpu"):
        unet = UNet2DConditionModel(**config.unet_config())
    return unet if dtype is None else unet.to(dtype)


def load_unet(folder: str | Path, *, dtype: torch.dtype | None = None):
    """The UNet saved under ``folder`` (a diffusers model folder, read with no network access)."""
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a diffusers UNet folder (no config.json)")
    return UNet2DConditionModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
