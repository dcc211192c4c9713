"""The whole MindEye2 model: per-subject adapters, shared backbone and diffusion prior.

``MindEye2(config)`` registers ``ridge``, ``backbone`` and ``diffusion_prior`` in the official
order, so ``state_dict()`` has exactly the keys of a released ``last.pth``.

- ``model.encode(voxels, subject)`` -> :class:`EncodeOutput` with ``backbone`` (the prior's
  conditioning tokens), ``clip_voxels`` (retrieval tokens), ``clip_voxels_norm`` (flattened and
  L2-normalised, the space retrieval compares in) and, for blurry models, ``blurry_latent`` and
  ``blurry_aux``. ``voxels`` is ``(B, n_vox)`` or ``(B, 1, n_vox)``; ``subject`` is the adapter index.
- ``model.prior``: the :class:`~rtrecon.models.diffusion_prior.DiffusionPrior` (one network call
  via ``model.prior(x_t, t, backbone)``, sampling via ``model.prior.sample(backbone, steps=20)``).
- ``model.add_subject(n_voxels)``: a new adapter for a new participant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rtrecon.models.adapters import RidgeRegression
from rtrecon.models.backbone import BrainNetwork
from rtrecon.models.config import MindEye2Config
from rtrecon.models.diffusion_prior import DiffusionPrior

__all__ = ["MindEye2", "EncodeOutput"]


@dataclass
class EncodeOutput:
    """What the brain side of MindEye2 produces for a batch of voxel patterns."""

    backbone: torch.Tensor
    clip_voxels: torch.Tensor
    blurry_latent: torch.Tensor | None = None
    blurry_aux: torch.Tensor | None = None

    @property
    def clip_voxels_norm(self) -> torch.Tensor:
        """``clip_voxels`` flattened to ``(B, S*D)`` and L2-normalised (the retrieval space)."""
        return F.normalize(self.clip_voxels.flatten(1), dim=-1)


class MindEye2(nn.Module):
    """Ridge adapters -> residual MLP backbone -> CLIP tokens (+ blurry branch) -> diffusion prior."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        self._config = config
        self.ridge = RidgeRegression(config.n_voxels, config.hidden_dim)
        self.backbone = BrainNetwork(config)
        if config.use_prior:
            self.diffusion_prior = DiffusionPrior(config)

    @property
    def config(self) -> MindEye2Config:
        """The configuration, with the current adapters' voxel counts."""
        return self._config.replace(n_voxels=self.ridge.n_voxels)

    @property
    def prior(self) -> DiffusionPrior:
        if not self._config.use_prior:
            raise RuntimeError("this MindEye2 model was built without a diffusion prior (use_prior=False)")
        return self.diffusion_prior

    def add_subject(self, n_voxels: int) -> int:
        """Add a freshly initialised adapter for a new subject; return its index."""
        return self.ridge.add_subject(n_voxels)

    def encode(self, voxels: torch.Tensor, subject: int = 0) -> EncodeOutput:
        """Brain tokens, retrieval tokens and (if present) blurry outputs for ``voxels``."""
        backbone, clip_voxels, blurry = self.backbone(self.ridge(voxels, subject))
        if blurry is None:
            return EncodeOutput(backbone, clip_voxels)
        return EncodeOutput(backbone, clip_voxels, *blurry)

    def forward(self, voxels: torch.Tensor, subject: int = 0) -> EncodeOutput:
        return self.encode(voxels, subject)
