"""Shared-subject pretraining vs one subject alone: held-out retrieval among 300, as MindEye2 reports it.

MindEye2's claim (Scotti et al. 2024, the 1-session results): a model pretrained on other
subjects and fine-tuned on one session of a new subject retrieves better than the same
architecture trained on that session alone. :func:`compare_shared_vs_single` measures it on any
NSD-layout root (real NSD with bigG targets, or the synthetic world of ``rtrecon synth``):

1. **pretrain** on ``pretrain_subjects`` (all sessions, shared test images excluded, one adapter
   each, one shared backbone);
2. **fine-tune** from that checkpoint with a new adapter (``load_official(...,
   new_subject_voxels=N)``, the official path) on ``finetune_sessions`` of the held-out subject
   (shared images excluded);
3. **subject-only**: the same architecture from random weights, trained on the same data for the
   same number of epochs;
4. both are scored on the held-out subject's shared test images (every session, betas averaged
   over the 3 repeats) with :func:`rtrecon.train.evaluate.retrieval_accuracy`: top-1 brain->image
   (``fwd_top1``) and image->brain (``bwd_top1``) among ``n`` = 300 images drawn at random from
   the test set, averaged over ``loops`` draws (chance 1/300).

The synthetic world needs more than 300 shared images for this: ``rtrecon synth --subjects 5
--sessions 4 --runs 12 --shared-images 400`` makes one. Command line (``rtrecon train-compare``)::

    rtrecon train-compare --root WORLD --heldout 1 --output runs/compare
    # real NSD: CLIP tokens of the 73k images (73k-id order, .npy) as targets
    rtrecon train-compare --root NSD --targets bigG_73k.npy --heldout 1 --pretrain 2 3 4 5 6 7 8 --output runs/cmp

The result (also written to ``OUTPUT/comparison.json``, and printed as the last line) holds both
models' retrieval, the chance level, epochs, trial counts and wall times.
:func:`compare_on_data` runs the same comparison on :class:`~rtrecon.train.data.TrainingData`
already in memory (any source).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.train.data import TrainingData

__all__ = ["ComparisonRecipe", "compare_on_data", "compare_shared_vs_single", "configure"]


@dataclass(frozen=True)
class ComparisonRecipe:
    """Architecture and schedule shared by both models (a MindEye2 of the real-time shape)."""

    hidden_dim: int = 256
    n_blocks: int = 4
    pretrain_epochs: int = 20
    finetune_epochs: int = 30
    batch_size: int = 24
    lr: float = 1e-3
    use_prior: bool = False
    n: int = 300
    loops: int = 30
    seed: int = 0


def compare_shared_vs_single(
    root: str | os.PathLike,
    heldout: int,
    pretrain_subjects: Sequence[int],
    out: str | os.PathLike,
    finetune_sessions: Sequence[int] = (1,),
    targets: np.ndarray | None = None,
    recipe: ComparisonRecipe = ComparisonRecipe(),
    progress: bool = True,
) -> dict[str, Any]:
    """Train both models under ``out`` and return their held-out retrieval (see the module docstring).

    ``targets``: CLIP tokens ``(n_images, tokens, dim)`` in 73k-id order; ``None`` reads the
    synthetic world's ``synthetic_truth/embeddings.npy``.
    """
    from rtrecon.data.nsd import NSDDataset
    from rtrecon.data.synthetic import TRUTH_DIR
    from rtrecon.train.data import from_nsd

    root = Path(root)
    if heldout in pretrain_subjects:
        raise ValueError(f"the held-out subject {heldout} must not be among the pretraining subjects {list(pretrain_subjects)}")
    if not pretrain_subjects:
        raise ValueError("need at least one pretraining subject")
    if targets is None:
        path = root / TRUTH_DIR / "embeddings.npy"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; not a synthetic world, so give the CLIP targets (--targets)")
        targets = np.load(path)
    targets = np.asarray(targets, np.float32)
    dataset = NSDDataset(root)
    test = from_nsd(dataset, targets, [heldout], shared="only")
    n_test = len(np.unique(test.subjects[0].image_ids))
    if n_test < recipe.n:
        raise ValueError(f"{root}: subject {heldout} has {n_test} shared test images, fewer than the "
                         f"{recipe.n} to retrieve among (rtrecon synth --shared-images N makes more)")
    own = from_nsd(dataset, targets, [heldout], list(finetune_sessions), shared="exclude")
    shared = from_nsd(dataset, targets, list(pretrain_subjects), shared="exclude")
    result = {"root": str(root), "heldout": heldout, "pretrain_subjects": list(pretrain_subjects),
              "finetune_sessions": list(finetune_sessions)}
    result.update(compare_on_data(shared, own, test, out, recipe, progress))
    (Path(out) / "comparison.json").write_text(json.dumps(result, indent=1))
    return result


def compare_on_data(shared: TrainingData, own: TrainingData, test: TrainingData, out: str | os.PathLike,
                    recipe: ComparisonRecipe = ComparisonRecipe(), progress: bool = True) -> dict[str, Any]:
    """The comparison on data already in memory.

    ``shared``: the pretraining subjects; ``own``: the new subject's training trials (one
    subject); ``test``: its held-out trials (one subject, repeats are averaged). All three share
    ``targets``. Writes ``out/{pretrain,finetune,subject_only}/`` and ``out/comparison.json``.
    """
    import torch

    from rtrecon.models import MindEye2, MindEye2Config, load_official
    from rtrecon.train.evaluate import retrieval_accuracy
    from rtrecon.train.trainer import TrainConfig, train

    out = Path(out)
    if len(own.subjects) != 1 or len(test.subjects) != 1:
        raise ValueError(f"the new subject's data must hold one subject (train: {len(own.subjects)}, test: {len(test.subjects)})")
    if own.n_voxels != test.n_voxels:
        raise ValueError(f"the new subject's training data has {own.n_voxels[0]} voxels, its test data {test.n_voxels[0]}")
    targets = own.targets
    n_test = len(np.unique(test.subjects[0].image_ids))
    if n_test < recipe.n:
        raise ValueError(f"{n_test} test images, fewer than the {recipe.n} to retrieve among")
    settings = dict(batch_size=recipe.batch_size, lr=recipe.lr, use_prior=recipe.use_prior, seed=recipe.seed,
                    progress=progress)

    def architecture(n_voxels: tuple[int, ...]) -> MindEye2Config:
        return MindEye2Config.realtime(n_voxels).replace(
            hidden_dim=recipe.hidden_dim, n_blocks=recipe.n_blocks, clip_tokens=targets.shape[1],
            clip_dim=targets.shape[2], use_prior=recipe.use_prior)

    def score(model: MindEye2) -> dict[str, float]:
        return retrieval_accuracy(model, test.subjects[0], test.targets, 0, n=recipe.n, loops=recipe.loops,
                                  seed=recipe.seed)

    result: dict[str, Any] = {
        "recipe": asdict(recipe),
        "trials": {"pretrain": sum(len(s.image_ids) for s in shared.subjects), "finetune": len(own.subjects[0].image_ids),
                   "test_trials": len(test.subjects[0].image_ids), "test_images": n_test},
        "chance": 1.0 / recipe.n,
    }
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    pretrained = MindEye2(architecture(shared.n_voxels))
    train(pretrained, shared, TrainConfig(epochs=recipe.pretrain_epochs, **settings), out / "pretrain")
    pretrain_s = time.perf_counter() - start
    start = time.perf_counter()
    model = load_official(out / "pretrain" / "last.pth", new_subject_voxels=own.n_voxels[0])
    train(model, own, TrainConfig(epochs=recipe.finetune_epochs, **settings), out / "finetune")
    result["shared_subject"] = {**score(model), "pretrain_epochs": recipe.pretrain_epochs,
                                "finetune_epochs": recipe.finetune_epochs, "pretrain_s": pretrain_s,
                                "finetune_s": time.perf_counter() - start}
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    alone = MindEye2(architecture(own.n_voxels))
    train(alone, own, TrainConfig(epochs=recipe.finetune_epochs, **settings), out / "subject_only")
    result["subject_only"] = {**score(alone), "epochs": recipe.finetune_epochs, "train_s": time.perf_counter() - start}
    result["shared_subject_wins"] = bool(
        result["shared_subject"]["fwd_top1"] > result["subject_only"]["fwd_top1"]
        and result["shared_subject"]["bwd_top1"] > result["subject_only"]["bwd_top1"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(result, indent=1))
    return result


def configure(parser: argparse.ArgumentParser) -> None:
    """``rtrecon train-compare``: shared-subject (pretrained + fine-tuned) vs subject-only retrieval."""
    defaults = ComparisonRecipe()
    parser.add_argument("--root", type=Path, required=True, help="NSD-layout root (real NSD or 'rtrecon synth' output)")
    parser.add_argument("--targets", type=Path, help="CLIP tokens of the 73k images, 73k-id order (.npy); "
                                                     "default: the synthetic world's embeddings")
    parser.add_argument("--heldout", type=int, default=1, help="the new subject (default 1)")
    parser.add_argument("--pretrain", type=int, nargs="+", help="pretraining subjects (default: every other subject)")
    parser.add_argument("--finetune-sessions", type=int, nargs="+", default=[1], help="held-out subject's sessions (default 1)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the three training runs and comparison.json")
    parser.add_argument("--hidden-dim", type=int, default=defaults.hidden_dim)
    parser.add_argument("--blocks", type=int, default=defaults.n_blocks)
    parser.add_argument("--pretrain-epochs", type=int, default=defaults.pretrain_epochs)
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs,
                        help="fine-tuning epochs, also the subject-only model's epochs")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="trials per subject per step")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--prior", action="store_true", help="train the diffusion prior too (MindEye2's full loss)")
    parser.add_argument("--n", type=int, default=defaults.n, help="images per retrieval draw (default 300)")
    parser.add_argument("--loops", type=int, default=defaults.loops, help="random draws averaged (default 30)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rtrecon.data.nsd import NSDDataset

    pretrain = args.pretrain or [s for s in NSDDataset(args.root).subjects() if s != args.heldout]
    targets = np.load(args.targets, mmap_mode="r") if args.targets is not None else None
    recipe = ComparisonRecipe(hidden_dim=args.hidden_dim, n_blocks=args.blocks, pretrain_epochs=args.pretrain_epochs,
                              finetune_epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.lr,
                              use_prior=args.prior, n=args.n, loops=args.loops, seed=args.seed)
    try:
        result = compare_shared_vs_single(args.root, args.heldout, pretrain, args.output, args.finetune_sessions,
                                          targets, recipe, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(result))
    return 0
