"""The demo's decoder: shared-subject pretraining, then fine-tuning on one session of a new subject.

:func:`subject_data` turns one subject's NSD betas (real or synthetic layout) into a
:class:`rtrecon.train.data.SubjectData`: nsdgeneral voxels in C order (the order the engine's
ROI uses), every beta z-scored per voxel within its session (MindEye's normalisation; the engine
z-scores live betas against the session's running statistics, the same scale), and the 0-based
row of the image in the targets. :func:`train_decoder` runs :func:`rtrecon.train.trainer.train`
twice -- several subjects together (one adapter each, one shared backbone), then
``load_official(pretrained, new_subject_voxels=N)`` fine-tuned on the demo subject's session --
and returns the fine-tuned checkpoint.

The targets are the synthetic world's CLIP tokens (``synthetic_truth/embeddings.npy``, 73k-id
order) or, for any NSD root, the tokens of a given embedder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtrecon.data.nsd import NSDDataset
from rtrecon.train.data import SubjectData, TrainingData

__all__ = ["DecoderRecipe", "subject_data", "zscore", "train_decoder"]


@dataclass(frozen=True)
class DecoderRecipe:
    """Architecture and schedule of the demo's small decoder (a MindEye2 of the real-time shape).

    ``use_prior`` (the default) adds a small diffusion prior (trained with the recipe's prior loss),
    whose image tokens an unCLIP model turns into reconstructions; retrieval alone needs none
    (``rtrecon demo --no-unclip`` leaves it out). ``prior_timesteps``
    is the prior's noise schedule length (MindEye2's is 100): the engine samples ``min(20, T)``
    steps per trial, and 10 keeps a trial's prior + unCLIP cost within the demo's 10x TR pace.
    """

    hidden_dim: int = 256
    n_blocks: int = 2
    use_prior: bool = True
    prior_depth: int = 2
    prior_heads: int = 4
    prior_dim_head: int = 16
    prior_timesteps: int = 10
    pretrain_epochs: int = 10
    finetune_epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0


def zscore(betas: np.ndarray) -> np.ndarray:
    """Per-voxel z-scores over trials (voxels without variance become 0)."""
    mean, std = betas.mean(0), betas.std(0, ddof=1) if len(betas) > 1 else np.zeros(betas.shape[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (betas - mean) / std
    return np.where(std > 0, z, 0.0).astype(np.float32)


def subject_data(nsd: NSDDataset, subject: int, sessions: Sequence[int]) -> SubjectData:
    """``subject``'s betas of ``sessions`` over nsdgeneral, z-scored per session, with 0-based image rows."""
    mask = nsd.roi_mask(subject)
    trials = nsd.trials(subject)
    betas, ids = [], []
    for session in sessions:
        b = nsd.betas(subject, session, mask=mask)
        image_ids = [t.image_id for t in trials if t.session == session]
        if len(image_ids) != len(b):
            raise ValueError(f"{nsd.betas_path(subject, session)}: {len(b)} betas for {len(image_ids)} trials of the design")
        betas.append(zscore(b))
        ids.extend(image_ids)
    return SubjectData(np.concatenate(betas), np.asarray(ids) - 1, name=f"subj{subject:02d}")


def train_decoder(
    nsd: NSDDataset,
    targets: np.ndarray,
    pretrain: dict[int, Sequence[int]],
    subject: int,
    finetune_sessions: Sequence[int],
    out: str | Path,
    recipe: DecoderRecipe = DecoderRecipe(),
    progress: bool = True,
) -> Path:
    """Pretrain on ``pretrain`` ({subject: sessions}), fine-tune on ``subject``; the checkpoint's path.

    ``targets`` (n_images, tokens, dim) are indexed by 73k id - 1. Writes ``out/pretrain/`` and
    ``out/finetune/`` (each a :func:`rtrecon.train.trainer.train` folder) and returns
    ``out/finetune/last.pth``.
    """
    import torch

    from rtrecon.models import MindEye2, MindEye2Config, load_official
    from rtrecon.train.trainer import TrainConfig, train

    out = Path(out)
    targets = np.asarray(targets, np.float32)
    shared = TrainingData([subject_data(nsd, s, sessions) for s, sessions in pretrain.items()], targets)
    config = MindEye2Config.realtime(shared.n_voxels).replace(
        hidden_dim=recipe.hidden_dim, n_blocks=recipe.n_blocks, clip_tokens=targets.shape[1], clip_dim=targets.shape[2],
        use_prior=recipe.use_prior, prior_depth=recipe.prior_depth, prior_heads=recipe.prior_heads,
        prior_dim_head=recipe.prior_dim_head, prior_rotary_dim=min(32, recipe.prior_dim_head),
        prior_timesteps=recipe.prior_timesteps,
    )
    torch.manual_seed(recipe.seed)
    model = MindEye2(config)
    settings = dict(batch_size=recipe.batch_size, lr=recipe.lr, use_prior=recipe.use_prior, seed=recipe.seed, progress=progress)
    # One torch thread: batches of 8 through a small model gain little from a second one, and on a
    # busy 2-core machine two threads spin against other processes (the demo's pretraining ran
    # about 10x slower per epoch with two threads than with one, at a load average of 6-8).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model, shared, TrainConfig(epochs=recipe.pretrain_epochs, **settings), out / "pretrain")
        own = TrainingData([subject_data(nsd, subject, finetune_sessions)], targets)
        model = load_official(out / "pretrain" / "last.pth", new_subject_voxels=own.n_voxels[0])
        train(model, own, TrainConfig(epochs=recipe.finetune_epochs, **settings), out / "finetune")
    finally:
        torch.set_num_threads(threads)
    return out / "finetune" / "last.pth"
