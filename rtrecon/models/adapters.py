"""Per-subject linear adapters ("ridge regression") into the shared space.

``RidgeRegression(n_voxels, hidden_dim)`` holds one ``nn.Linear(n_vox_s, hidden_dim)`` per subject
under ``linears.{s}`` (the official key names). The "ridge" is AdamW weight decay during training,
not a closed-form fit. ``forward(voxels, subject)`` maps ``(B, n_vox)`` or ``(B, 1, n_vox)`` to
``(B, 1, hidden_dim)``. ``add_subject`` appends a freshly initialised adapter (a new participant).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["RidgeRegression"]


class RidgeRegression(nn.Module):
    """One linear map per subject from its voxels to the shared ``hidden_dim`` space."""

    def __init__(self, n_voxels: Sequence[int], hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.linears = nn.ModuleList([nn.Linear(int(n), hidden_dim) for n in n_voxels])

    @property
    def n_voxels(self) -> tuple[int, ...]:
        return tuple(lin.in_features for lin in self.linears)

    def add_subject(self, n_voxels: int) -> int:
        """Append an adapter for a new subject (same device and dtype); return its index."""
        ref = self.linears[0].weight
        lin = nn.Linear(int(n_voxels), self.hidden_dim)
        if ref.device.type != "meta":
            lin = lin.to(device=ref.device, dtype=ref.dtype)
        self.linears.append(lin)
        return len(self.linears) - 1

    def forward(self, voxels: torch.Tensor, subject: int) -> torch.Tensor:
        if not 0 <= subject < len(self.linears):
            raise IndexError(f"subject index {subject} out of range: the model has {len(self.linears)} adapters")
        if voxels.ndim == 2:
            voxels = voxels[:, None]
        expected = self.linears[subject].in_features
        if voxels.ndim != 3 or voxels.shape[-1] != expected:
            raise ValueError(
                f"subject {subject} expects voxels of shape (B, {expected}) or (B, 1, {expected}), got {tuple(voxels.shape)}"
            )
        return self.linears[subject](voxels[:, 0]).unsqueeze(1)
