"""The shared MindEye2 backbone: residual MLP mixer, token head, retrieval projector, blurry branch.

``BrainNetwork(config)`` maps the adapter output ``(B, 1, hidden_dim)`` to

- ``backbone`` ``(B, clip_tokens, clip_dim)``: the diffusion prior's conditioning tokens;
- ``clip_voxels`` ``(B, clip_tokens, clip_dim)``: the retrieval embedding (flatten and
  L2-normalise it to compare with CLIP image tokens);
- with ``config.blurry``: ``blurry_latent`` ``(B, 4, 28, 28)`` and ``blurry_aux`` ``(B, 49, 512)``.

Module names and the quirks of the official ``BrainNetwork`` are kept so that released
checkpoints load key-for-key: two separate residual streams in the mixer (block ``k+1`` adds the
block-``k`` output of its own stream), and a degenerate second mixer over the length-1 token axis
(``LayerNorm(1)`` returns its bias).
"""

from __future__ import annotations

import torch
from torch import nn

from rtrecon.models.blurry import blurry_forward, blurry_modules
from rtrecon.models.config import MindEye2Config

__all__ = ["BrainNetwork"]


def _mlp(dim: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(drop), nn.Linear(dim, dim))


def _mixer_block(dim: int, drop: float) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), _mlp(dim, drop))


def _projector(dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim),
        nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim),
        nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, dim),
    )


class BrainNetwork(nn.Module):
    """Residual MLP backbone with the token head, retrieval projector and optional blurry branch."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        self.config = config
        h, seq = config.hidden_dim, config.seq_len
        self.mixer_blocks1 = nn.ModuleList([_mixer_block(h, config.drop) for _ in range(config.n_blocks)])
        self.mixer_blocks2 = nn.ModuleList([_mixer_block(seq, config.drop) for _ in range(config.n_blocks)])
        self.backbone_linear = nn.Linear(h * seq, config.out_dim)
        self.clip_proj = _projector(config.clip_dim)
        if config.blurry:
            for name, module in blurry_modules(h).items():
                self.add_module(name, module)

    def mixer(self, x: torch.Tensor) -> torch.Tensor:
        """The residual mixer: ``(B, 1, h)`` to the flattened hidden vector ``(B, h)``."""
        residual1 = x
        residual2 = x.transpose(1, 2)
        for block1, block2 in zip(self.mixer_blocks1, self.mixer_blocks2):
            x = block1(x) + residual1
            residual1 = x
            x = block2(x.transpose(1, 2)) + residual2
            residual2 = x
            x = x.transpose(1, 2)
        return x.reshape(x.shape[0], -1)

    def tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """The prior's conditioning tokens ``(B, clip_tokens, clip_dim)`` from ``(B, h)``."""
        return self.backbone_linear(hidden).reshape(hidden.shape[0], -1, self.config.clip_dim)

    def forward(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """``(backbone, clip_voxels, (blurry_latent, blurry_aux) or None)`` from ``(B, 1, h)``."""
        hidden = self.mixer(x)
        backbone = self.tokens(hidden)
        clip_voxels = self.clip_proj(backbone)
        blurry = blurry_forward(self, hidden) if self.config.blurry else None
        return backbone, clip_voxels, blurry
