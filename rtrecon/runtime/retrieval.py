"""Retrieval and the pairmate-distinctiveness feedback score.

Everything is compared in L2-normalised embedding space (for MindEye2: the 256x1664 tokens
flattened to 425,984 values; any ``(N, ...)`` array is flattened after the first axis).

- ``Retriever(gallery, ids)``: ``retriever.topk(pred, k)`` -> ``(ids (B,k), scores (B,k))``,
  the cosine similarities of the ``k`` nearest gallery images, best first.
- ``pairmate_distinctiveness(pred, correct, foil)`` = ``2 <pred - mid, correct - foil> /
  ||correct - foil||^2`` with ``mid = (correct + foil) / 2``: +1 at the shown image, -1 at its
  pairmate foil, 0 halfway (the closed-loop score of real-time MindEye's CPD analysis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Retriever", "pairmate_distinctiveness", "normalize"]


def normalize(x: Any) -> torch.Tensor:
    """Flatten after the batch axis and L2-normalise, as float32 torch."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    t = t.float()
    if t.ndim == 1:
        t = t[None]
    return F.normalize(t.flatten(1), dim=-1)


class Retriever:
    """Nearest neighbours of brain embeddings among gallery image embeddings."""

    def __init__(self, gallery: Any, ids: Sequence[Any] | None = None) -> None:
        self.gallery = normalize(gallery)
        n = self.gallery.shape[0]
        self.ids = list(range(n)) if ids is None else list(ids)
        if len(self.ids) != n:
            raise ValueError(f"gallery has {n} embeddings but {len(self.ids)} ids were given")

    def scores(self, pred: Any) -> torch.Tensor:
        """Cosine similarity of each prediction with every gallery item, ``(B, N)``."""
        p = normalize(pred)
        if p.shape[1] != self.gallery.shape[1]:
            raise ValueError(f"prediction has {p.shape[1]} features, the gallery {self.gallery.shape[1]}")
        return p @ self.gallery.T

    def topk(self, pred: Any, k: int = 5) -> tuple[list[list[Any]], torch.Tensor]:
        """The ``k`` best gallery ids per prediction and their scores, best first."""
        values, index = self.scores(pred).topk(min(k, len(self.ids)), dim=-1)
        return [[self.ids[i] for i in row] for row in index.tolist()], values


def pairmate_distinctiveness(pred: Any, correct: Any, foil: Any) -> torch.Tensor:
    """``2 <pred - mid, correct - foil> / ||correct - foil||^2`` per row, in normalised space."""
    p, c, f = normalize(pred), normalize(correct), normalize(foil)
    diff = c - f
    denom = (diff * diff).sum(-1)
    if bool((denom == 0).any()):
        raise ValueError("correct and foil embeddings are identical: distinctiveness is undefined")
    return 2 * ((p - (c + f) / 2) * diff).sum(-1) / denom
