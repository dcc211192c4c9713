"""The in-memory training data interface: betas per subject, CLIP target tokens, image ids.

Any source (the NSD layout, MindEye2's webdataset tars, the synthetic dataset) is turned into a
:class:`TrainingData` and everything downstream (training, evaluation) reads only that:

- ``TrainingData.subjects``: one :class:`SubjectData` per subject, in adapter order, holding
  ``betas`` ``(n_trials, n_voxels)`` float32 (single trials, already normalised) and
  ``image_ids`` ``(n_trials,)``: the row of ``targets`` each trial showed;
- ``TrainingData.targets``: ``(n_images, tokens, dim)`` CLIP image tokens (256x1664 bigG for
  MindEye2), shared by all subjects;
- optional ``blurry_latents`` ``(n_images, 4, 28, 28)``: VAE latents for the blurry branch;
- optional ``images`` ``(n_images, 3, H, W)``: the stimuli, uint8 or float in [0, 1], for the
  blurry branch's ConvNeXt teacher (:mod:`rtrecon.models.convnext`).

``save(path)``/``TrainingData.load(path)`` use one ``.npz``; :func:`from_nsd` reads an NSD-layout
root (real NSD or ``rtrecon synth``) through :class:`rtrecon.data.nsd.NSDDataset`. :func:`epoch_batches` deals each
process its share of an epoch: every step holds ``batch_size`` trials of *every* subject
(MindEye2's multi-subject batches), reproducibly from ``(seed, epoch)``, disjoint across ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SubjectData", "TrainingData", "epoch_batches", "from_nsd"]


@dataclass
class SubjectData:
    """One subject's single-trial betas and the image each trial showed."""

    betas: np.ndarray
    image_ids: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        self.betas = np.asarray(self.betas, dtype=np.float32)
        self.image_ids = np.asarray(self.image_ids, dtype=np.int64)
        if self.betas.ndim != 2:
            raise ValueError(f"subject {self.name!r}: betas must be (n_trials, n_voxels), got {self.betas.shape}")
        if self.image_ids.shape != (self.betas.shape[0],):
            raise ValueError(
                f"subject {self.name!r}: {self.betas.shape[0]} trials of betas but image_ids of shape {self.image_ids.shape}"
            )

    @property
    def n_voxels(self) -> int:
        return self.betas.shape[1]

    def subset(self, mask: np.ndarray) -> SubjectData:
        return SubjectData(self.betas[mask], self.image_ids[mask], self.name)


@dataclass
class TrainingData:
    """Subjects' betas + shared CLIP targets (+ optional blurry latents)."""

    subjects: list[SubjectData]
    targets: np.ndarray
    blurry_latents: np.ndarray | None = field(default=None)
    images: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.float32)
        if not self.subjects:
            raise ValueError("TrainingData needs at least one subject")
        if self.targets.ndim != 3:
            raise ValueError(f"targets must be (n_images, tokens, dim), got {self.targets.shape}")
        n = self.targets.shape[0]
        for s in self.subjects:
            if s.image_ids.size and (s.image_ids.min() < 0 or s.image_ids.max() >= n):
                raise ValueError(f"subject {s.name!r}: image ids outside 0..{n - 1}")
        if self.blurry_latents is not None:
            self.blurry_latents = np.asarray(self.blurry_latents, dtype=np.float32)
            if self.blurry_latents.shape[0] != n:
                raise ValueError(f"blurry_latents has {self.blurry_latents.shape[0]} rows, targets {n}")
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.ndim != 4 or self.images.shape[1] != 3 or self.images.shape[0] != n:
                raise ValueError(f"images must be ({n}, 3, H, W) like the targets' rows, got {self.images.shape}")
            if self.images.dtype != np.uint8:
                self.images = self.images.astype(np.float32)

    @property
    def n_voxels(self) -> tuple[int, ...]:
        return tuple(s.n_voxels for s in self.subjects)

    def select(self, names_or_indices: list[str | int]) -> TrainingData:
        """A view with only some subjects (by name or index), in the given order."""
        names = [s.name for s in self.subjects]
        picked = [self.subjects[names.index(k) if isinstance(k, str) else k] for k in names_or_indices]
        return TrainingData(picked, self.targets, self.blurry_latents, self.images)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        arrays: dict[str, np.ndarray] = {"targets": self.targets, "subject_names": np.array([s.name for s in self.subjects])}
        for i, s in enumerate(self.subjects):
            arrays[f"betas_{i}"], arrays[f"image_ids_{i}"] = s.betas, s.image_ids
        if self.blurry_latents is not None:
            arrays["blurry_latents"] = self.blurry_latents
        if self.images is not None:
            arrays["images"] = self.images
        np.savez(path, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingData:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such training data file")
        with np.load(path, allow_pickle=False) as z:
            if "targets" not in z or "subject_names" not in z:
                raise ValueError(f"{path}: not an rtrecon training file (needs 'targets' and 'subject_names')")
            names = [str(n) for n in z["subject_names"]]
            subjects = [SubjectData(z[f"betas_{i}"], z[f"image_ids_{i}"], n) for i, n in enumerate(names)]
            latents = z["blurry_latents"] if "blurry_latents" in z else None
            images = z["images"] if "images" in z else None
            return cls(subjects, z["targets"], latents, images)


def epoch_batches(
    n_trials: tuple[int, ...], batch_size: int, epoch: int, seed: int = 0, rank: int = 0, world_size: int = 1
) -> list[list[np.ndarray]]:
    """This rank's steps for one epoch: ``steps[i][s]`` = trial indices of subject ``s``.

    Each subject's trials are shuffled with ``(seed, epoch, subject)`` and split across ranks;
    the epoch has as many steps as the smallest subject's share allows.
    """
    shares = []
    for s, n in enumerate(n_trials):
        order = np.random.default_rng([seed, epoch, s]).permutation(n)
        shares.append(order[rank::world_size])
    steps = min(len(share) for share in shares) // batch_size
    if steps == 0:
        raise ValueError(
            f"batch size {batch_size} x {world_size} process(es) is larger than the smallest subject ({min(n_trials)} trials)"
        )
    return [[share[i * batch_size : (i + 1) * batch_size] for share in shares] for i in range(steps)]


def from_nsd(dataset: Any, targets: np.ndarray, subjects: list[int], sessions: list[int] | None = None,
             shared: str = "all", roi: str = "nsdgeneral") -> TrainingData:
    """Single-trial ROI betas of an NSD-layout dataset as :class:`TrainingData`.

    ``dataset`` is an :class:`rtrecon.data.nsd.NSDDataset`; ``targets`` the CLIP tokens of all
    images in 73k-id order (row ``id - 1``). Betas are z-scored per session and voxel, as
    MindEye2's data. ``sessions`` limits the sessions (e.g. ``[1]`` for one hour of data);
    ``shared`` keeps ``"all"`` trials, ``"exclude"``-s the shared images (training) or keeps
    ``"only"`` them (the test set).
    """
    if shared not in ("all", "exclude", "only"):
        raise ValueError(f"shared must be 'all', 'exclude' or 'only', got {shared!r}")
    out = []
    for subject in subjects:
        mask = dataset.roi_mask(subject, roi)
        trials = dataset.trials(subject)
        betas, ids, keep = [], [], []
        for session in sessions or dataset.sessions(subject):
            rows = [t for t in trials if t.session == session]
            b = dataset.betas(subject, session, mask)
            if b.shape[0] != len(rows):
                raise ValueError(f"{dataset.betas_path(subject, session)}: {b.shape[0]} trials of betas, "
                                 f"the design lists {len(rows)}")
            b = (b - b.mean(0)) / (b.std(0) + 1e-6)
            betas.append(b)
            ids.extend(t.image_id - 1 for t in rows)
            keep.extend(shared == "all" or (t.shared == (shared == "only")) for t in rows)
        keep_arr = np.asarray(keep)
        out.append(SubjectData(np.concatenate(betas)[keep_arr], np.asarray(ids)[keep_arr], f"subj{subject:02d}"))
    return TrainingData(out, targets)
