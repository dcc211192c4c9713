"""What the unCLIP UNet is conditioned on, and how its output becomes an image, as officially.

- :func:`size_crop_vector`: sgm's conditioning ``vector``: ``original_size_as_tuple`` (h, w) and
  ``crop_coords_top_left`` (top, left), each scalar a sinusoidal embedding of ``embed_dim``
  values, cosines first, frequencies ``exp(-ln(10000) k / (embed_dim / 2))`` (sgm
  ``ConcatTimestepEmbedderND``). MindEye2 uses (768, 768) and (0, 0) for any output size; the
  result equals ``schedules.json``'s ``unclip_vector_suffix_768_crop0``.
- :func:`guidance_embedding`: an LCM-distilled UNet's guidance-scale input (``time_cond_proj_dim``),
  shared by the sampler (:mod:`~rtrecon.reconstruction.unclip`) and the distillation that trains it
  (:mod:`~rtrecon.reconstruction.distill_lcm`).
- :func:`unconditional_tokens`: the classifier-free-guidance unconditional input. Officially
  ``torch.randn_like(tokens)`` (random tokens, ``"random"``); ``"zero"`` gives zero tokens.
- :func:`map_output`: the official ``clamp(x * 0.8 + 0.2, 0, 1)`` on the VAE output, or the usual
  ``(x + 1) / 2`` (``"standard"``).
"""

from __future__ import annotations

from typing import Literal

import torch

from rtrecon.reconstruction.config import OFFICIAL_SAMPLING

__all__ = ["guidance_embedding", "map_output", "size_crop_vector", "unconditional_tokens"]

UncondMode = Literal["random", "zero"]
OutputMapping = Literal["official", "standard"]


def size_crop_vector(
    original_size: tuple[int, int] = (768, 768),
    crop_top_left: tuple[int, int] = (0, 0),
    *,
    embed_dim: int = 256,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """The (batch_size, 4 * embed_dim) size/crop vector the UNet's ``class_embedding`` reads."""
    from diffusers.models.embeddings import get_timestep_embedding

    scalars = torch.tensor([*original_size, *crop_top_left], dtype=torch.float32, device=device)
    # sgm's timestep_embedding is diffusers' with cos first and no frequency shift.
    emb = get_timestep_embedding(scalars, embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return emb.reshape(1, -1).expand(batch_size, -1).to(dtype)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance weight ``w`` (sin first, of ``1000 w``)."""
    from diffusers.models.embeddings import get_timestep_embedding

    return get_timestep_embedding(w.float() * 1000.0, dim, flip_sin_to_cos=False, downscale_freq_shift=1)


def unconditional_tokens(
    tokens: torch.Tensor, mode: UncondMode = "random", *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The unconditional cross-attention input for CFG: random tokens (official) or zeros."""
    if mode == "random":
        return torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=torch.float32).to(tokens.dtype)
    if mode == "zero":
        return torch.zeros_like(tokens)
    raise ValueError(f"unconditional mode {mode!r}: choose 'random' (official) or 'zero'")


def map_output(decoded: torch.Tensor, mapping: OutputMapping = "official") -> torch.Tensor:
    """VAE output (about [-1, 1]) to images in [0, 1], the official way or the usual one."""
    if mapping == "official":
        return (decoded * OFFICIAL_SAMPLING.output_scale + OFFICIAL_SAMPLING.output_shift).clamp(0, 1)
    if mapping == "standard":
        return ((decoded + 1) / 2).clamp(0, 1)
    raise ValueError(f"output mapping {mapping!r}: choose 'official' (x*0.8+0.2) or 'standard' ((x+1)/2)")
