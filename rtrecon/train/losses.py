"""MindEye2's training losses (Train.ipynb / utils.py of MedARC-AI/MindEyeV2, rewritten).

- :func:`mixco`: mixes voxel patterns of a batch (Beta(0.15, 0.15) weights, each sample mixed
  with probability 0.5); returns what :func:`mixco_nce` needs.
- :func:`mixco_nce`: bidirectional InfoNCE with the mixed soft labels (BiMixCo), temperature 0.006.
- :func:`soft_clip_loss`: SoftCLIP, CLIP-CLIP similarities as soft targets.
- :func:`soft_cont_loss`: the blurry branch's soft contrastive loss against teacher features
  and their augmentations (temperature 0.2 upstream).
- :func:`cosine_anneal`: the SoftCLIP temperature schedule (0.004 -> 0.0075 upstream).

Predictions and targets are L2-normalised flat embeddings ``(B, E)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mixco", "mixco_nce", "soft_clip_loss", "soft_cont_loss", "cosine_anneal"]


def mixco(
    voxels: torch.Tensor, beta: float = 0.15, s_thresh: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each selected sample with a random partner: ``(mixed, perm, betas, select)``.

    ``betas`` is the weight of the sample itself (1 where not selected). Draws come from the
    global generator, as upstream (seed it, e.g. with ``accelerate.utils.set_seed``).
    """
    n = voxels.shape[0]
    device = voxels.device
    perm = torch.randperm(n).to(device)
    betas = torch.distributions.Beta(beta, beta).sample((n,)).to(device=device, dtype=voxels.dtype)
    select = (torch.rand(n) <= s_thresh).to(device)
    shape = [-1] + [1] * (voxels.ndim - 1)
    mixed = voxels * betas.reshape(shape) + voxels[perm] * (1 - betas).reshape(shape)
    mixed = torch.where(select.reshape(shape), mixed, voxels)
    betas = torch.where(select, betas, torch.ones_like(betas))
    return mixed, perm, betas, select


def mixco_nce(
    preds: torch.Tensor, targs: torch.Tensor, temp: float = 0.006,
    perm: torch.Tensor | None = None, betas: torch.Tensor | None = None, select: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional (Bi)MixCo InfoNCE; plain bidirectional InfoNCE without mixing information."""
    logits = preds @ targs.T / temp
    if perm is None or betas is None or select is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    probs = torch.diag(betas)
    probs[torch.arange(preds.shape[0], device=preds.device), perm] = 1 - betas
    loss = -(logits.log_softmax(-1) * probs).sum(-1).mean()
    loss2 = -(logits.T.log_softmax(-1) * probs.T).sum(-1).mean()
    return (loss + loss2) / 2


def soft_clip_loss(preds: torch.Tensor, targs: torch.Tensor, temp: float = 0.125) -> torch.Tensor:
    """SoftCLIP: cross-entropy against the softmax of target-target similarities, both directions."""
    clip_clip = targs @ targs.T / temp
    brain_clip = preds @ targs.T / temp
    soft = clip_clip.softmax(-1)
    loss1 = -(brain_clip.log_softmax(-1) * soft).sum(-1).mean()
    loss2 = -(brain_clip.T.log_softmax(-1) * soft).sum(-1).mean()
    return (loss1 + loss2) / 2


def soft_cont_loss(student: torch.Tensor, teacher: torch.Tensor, teacher_aug: torch.Tensor, temp: float = 0.2) -> torch.Tensor:
    """Soft contrastive loss of the blurry branch's tokens against teacher features."""
    teacher_teacher_aug = teacher @ teacher_aug.T / temp
    teacher_teacher_aug_t = teacher_aug @ teacher.T / temp
    student_teacher_aug = student @ teacher_aug.T / temp
    student_teacher_aug_t = teacher_aug @ student.T / temp
    loss1 = -(student_teacher_aug.log_softmax(-1) * teacher_teacher_aug.softmax(-1)).sum(-1).mean()
    loss2 = -(student_teacher_aug_t.log_softmax(-1) * teacher_teacher_aug_t.softmax(-1)).sum(-1).mean()
    return (loss1 + loss2) / 2


def cosine_anneal(start: float, end: float, steps: int) -> torch.Tensor:
    """``steps`` values from ``start`` to ``end`` along half a cosine."""
    if steps <= 1:
        return torch.tensor([float(end)] if steps == 1 else [])
    return end + (start - end) / 2 * (1 + torch.cos(torch.pi * torch.arange(steps) / (steps - 1)))
