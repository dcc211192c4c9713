"""Held-out retrieval as MindEye2 reports it.

``retrieval_accuracy(model, subject, data, subject_index, n=300, loops=30)``: trials are grouped
by image and their betas averaged over repeats; ``clip_voxels`` (flattened, L2-normalised) are
compared with the normalised CLIP targets; each loop draws ``n`` random images (all of them if
fewer) and scores top-1 brain->image ("image retrieval", forward) and image->brain ("brain
retrieval", backward). Returns the means over loops (chance is 1/n). ``head_retrieval_accuracy``
scores a :class:`~rtrecon.models.linear_head.LinearHead` the same way, in its centred space (as the engine retrieves).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from rtrecon.models.linear_head import LinearHead
from rtrecon.models.mindeye import MindEye2
from rtrecon.train.data import SubjectData

__all__ = ["average_repeats", "retrieval_accuracy", "head_retrieval_accuracy"]


def average_repeats(subject: SubjectData) -> tuple[np.ndarray, np.ndarray]:
    """``(betas averaged per image (n_images, n_vox), image ids (n_images,))``."""
    ids, inverse = np.unique(subject.image_ids, return_inverse=True)
    sums = np.zeros((len(ids), subject.n_voxels), dtype=np.float64)
    np.add.at(sums, inverse, subject.betas)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    return (sums / counts).astype(np.float32), ids


@torch.no_grad()
def retrieval_accuracy(model: MindEye2, subject: SubjectData, targets: np.ndarray, subject_index: int = 0,
                       n: int = 300, loops: int = 30, seed: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Top-1 forward (brain->image) and backward (image->brain) retrieval among ``n`` images."""
    model.eval()
    betas, ids = average_repeats(subject)
    param = next(model.parameters())
    preds = torch.cat([
        model.encode(torch.from_numpy(betas[i : i + batch_size]).to(param.device, param.dtype), subject_index)
        .clip_voxels_norm.float().cpu()
        for i in range(0, len(betas), batch_size)
    ])
    return _top1_loops(preds, targets, ids, n, loops, seed)


def head_retrieval_accuracy(head: LinearHead, subject: SubjectData, targets: np.ndarray, n: int = 300, loops: int = 30,
                            seed: int = 0) -> dict[str, float]:
    """:func:`retrieval_accuracy` of a linear decoding head, in its centred space as the engine retrieves
    (predictions and targets less the head's training targets' mean: ``engine.decoding``)."""
    betas, ids = average_repeats(subject)
    preds = F.normalize(torch.from_numpy(head.predict(betas).reshape(len(betas), -1) - head.target_mean).float(), dim=-1)
    return _top1_loops(preds, np.asarray(targets).reshape(len(targets), -1) - head.target_mean, ids, n, loops, seed)


def _top1_loops(preds: torch.Tensor, targets: np.ndarray, ids: np.ndarray, n: int, loops: int, seed: int) -> dict[str, float]:
    targs = F.normalize(torch.from_numpy(targets[ids]).flatten(1).float(), dim=-1)
    rng = np.random.default_rng(seed)
    k = min(n, len(ids))
    fwd, bwd = [], []
    for _ in range(loops):
        pick = torch.from_numpy(rng.choice(len(ids), size=k, replace=False))
        sim = preds[pick] @ targs[pick].T
        labels = torch.arange(k)
        fwd.append((sim.argmax(1) == labels).float().mean().item())
        bwd.append((sim.argmax(0) == labels).float().mean().item())
    return {"fwd_top1": float(np.mean(fwd)), "bwd_top1": float(np.mean(bwd)), "n": k, "chance": 1.0 / k}
