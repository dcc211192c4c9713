"""``rtrecon train``: MindEye2 shared-subject pretraining and new-subject fine-tuning.

Examples::

    # pretrain the real-time architecture on every subject of a training file
    rtrecon train --data train.npz --preset realtime --epochs 150 --output runs/pretrain
    # fine-tune a new participant (one subject in the file) from a multi-subject checkpoint
    rtrecon train --data sub-new.npz --init runs/pretrain/last.pth --new-subject --epochs 30 --output runs/ft
    # MindEye2's released data (wds tars + betas HDF5), bigG targets embedded once and cached
    rtrecon train --wds ~/mindeyev2 --wds-subjects 2 3 4 5 6 7 8 --clip-weights bigG.bin \
        --targets-cache ~/mindeyev2/bigG_tokens.npz --wds-test --output runs/pretrain
    # the h=4096 model with its blurry branch: VAE latents and images in the .npz, ConvNeXt teacher from local weights
    rtrecon train --data train.npz --preset final --convnext convnext_xlarge_alpha0.75_fullckpt.pth --output runs/final
    # several processes / GPUs / nodes: the same command under accelerate (or torchrun);
    # without GPUs the processes train on CPUs over gloo
    accelerate launch --multi_gpu --num_processes 2 -m rtrecon.cli train --data train.npz --output runs/ddp

    # the linear decoding head (ridge, voxels -> CLIP targets) for one subject: OUTPUT/linear_head.npz,
    # what the engine decodes with under [decoder] head = "linear" (it generalises to mental imagery)
    rtrecon train --data sub-new.npz --head linear --output runs/linear

The data is either a :class:`rtrecon.train.data.TrainingData` ``.npz`` (``--data``: betas per
subject, CLIP target tokens, image ids) or MindEye2's webdataset layout (``--wds ROOT``, read by
:mod:`rtrecon.train.webdataset`; targets from ``--targets`` (tokens in 73k order, ``.npy``) or
embedded from ``coco_images_224_float16.hdf5`` with local OpenCLIP weights, cached in
``--targets-cache``). ``--resume`` continues from ``OUTPUT/state``. After training, the
held-out retrieval of ``--test-data`` (same layout) is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rtrecon.models.config import MindEye2Config

PRESETS = {"tiny": MindEye2Config.tiny, "realtime": MindEye2Config.realtime, "final": MindEye2Config.final}


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="TrainingData .npz (betas, targets, image ids)")
    source.add_argument("--wds", type=Path, help="MindEye2 data folder (wds/subj0X/..., betas_all_subj0X_fp32_renorm.hdf5)")
    parser.add_argument("--wds-subjects", type=int, nargs="+", help="with --wds: NSD subject numbers, in adapter order")
    parser.add_argument("--wds-sessions", type=int, nargs="+", help="with --wds: only these (1-based) training sessions")
    parser.add_argument("--wds-test", action="store_true", help="with --wds: report retrieval on the new_test tars")
    parser.add_argument("--targets", type=Path, help="with --wds: CLIP tokens of all images in 73k order (.npy)")
    parser.add_argument("--clip-weights", type=Path, help="with --wds: local OpenCLIP bigG weights to embed the images")
    parser.add_argument("--targets-cache", type=Path, help="with --wds: .npz cache of embedded CLIP tokens")
    parser.add_argument("--output", type=Path, required=True, help="run folder (last.pth, state/, progress.json)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="realtime", help="architecture for a new model")
    parser.add_argument("--hidden-dim", type=int, help="override the preset's shared-space width")
    parser.add_argument("--no-blurry", action="store_true", help="build the model without the blurry branch")
    parser.add_argument("--init", type=Path, help="start from this checkpoint (official last.pth, .pth, .safetensors)")
    parser.add_argument("--new-subject", action="store_true",
                        help="with --init: new adapter for the (single) subject in --data, as upstream fine-tuning")
    parser.add_argument("--subjects", nargs="+", help="train on these subjects of --data (names), in this order")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=24, help="trials per subject per step and process")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--no-prior", action="store_true", help="train without the diffusion prior loss")
    parser.add_argument("--convnext", help="blurry branch's ConvNeXt teacher: a local VICRegL checkpoint "
                                           "(convnext_xlarge_alpha0.75_fullckpt.pth) or 'tiny' (seeded random, synthetic "
                                           "world); needs a blurry model and images in --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT/state")
    parser.add_argument("--test-data", type=Path, help="held-out TrainingData .npz for the final retrieval scores")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--head", choices=("mindeye", "linear"), default="mindeye",
                        help='"mindeye" (default) or "linear": fit the ridge head of one subject (OUTPUT/linear_head.npz; '
                             "the penalty by cross-validation) for the engine's [decoder] head = \"linear\"")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from rtrecon.models import MindEye2, load_official
    from rtrecon.train.data import TrainingData
    from rtrecon.train.evaluate import retrieval_accuracy
    from rtrecon.train.trainer import TrainConfig, train

    data = _wds_data(args, "train") if args.wds is not None else TrainingData.load(args.data)
    if args.subjects:
        data = data.select(args.subjects)
    if args.head == "linear":
        return _train_linear(args, data)
    if args.init is not None:
        if args.new_subject:
            if len(data.subjects) != 1:
                raise SystemExit(f"{args.data or args.wds}: --new-subject needs exactly one subject, found {len(data.subjects)}")
            model = load_official(args.init, new_subject_voxels=data.n_voxels[0])
        else:
            model = load_official(args.init)
    else:
        cfg = PRESETS[args.preset](data.n_voxels)
        cfg = cfg.replace(clip_tokens=data.targets.shape[1], clip_dim=data.targets.shape[2])
        if args.hidden_dim:
            cfg = cfg.replace(hidden_dim=args.hidden_dim)
        if args.no_blurry:
            cfg = cfg.replace(blurry=False)
        torch.manual_seed(args.seed)
        model = MindEye2(cfg)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         mixed_precision=args.mixed_precision, use_prior=not args.no_prior, seed=args.seed,
                         progress=not args.no_progress)
    teacher = None
    if args.convnext is not None:
        from rtrecon.models.convnext import ConvNeXtTeacher

        teacher = ConvNeXtTeacher.tiny(args.seed) if args.convnext == "tiny" else ConvNeXtTeacher.from_vicregl(args.convnext)
    try:
        history = train(model, data, config, args.output, resume=args.resume, teacher=teacher)
    except ValueError as err:
        raise SystemExit(f"{args.data or args.wds}: {err}") from None
    summary = {"epochs": len(history), "final_loss": history[-1]["loss"] if history else None,
               "world_size": history[-1]["world_size"] if history else None, "checkpoint": str(args.output / "last.pth")}
    test = None
    if args.wds is not None and args.wds_test:
        test = _wds_data(args, "new_test")
    elif args.test_data is not None:
        test = TrainingData.load(args.test_data)
    if test is not None:
        if args.subjects:
            test = test.select(args.subjects)
        summary["retrieval"] = {s.name or str(i): retrieval_accuracy(model, s, test.targets, i)
                                for i, s in enumerate(test.subjects)}
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps(summary))
    return 0


def _train_linear(args: argparse.Namespace, data) -> int:
    """Fit and save the linear head of the single subject of ``data``; print its summary as JSON."""
    from rtrecon.models.linear_head import LinearHead
    from rtrecon.train.data import TrainingData
    from rtrecon.train.evaluate import head_retrieval_accuracy

    if len(data.subjects) != 1:
        raise SystemExit(f"{args.data or args.wds}: --head linear fits one subject, found {len(data.subjects)} (pick one with --subjects)")
    subject = data.subjects[0]
    try:
        head = LinearHead().fit(subject.betas, data.targets[subject.image_ids])
    except ValueError as err:
        raise SystemExit(f"{args.data or args.wds}: {err}") from None
    path = head.save(args.output / "linear_head.npz")
    summary = {"head": "linear", "alpha": head.alpha, "cv_correlation": head.cv_scores[head.alpha],
               "trials": len(subject.betas), "checkpoint": str(path)}
    test = _wds_data(args, "new_test") if args.wds is not None and args.wds_test else (
        TrainingData.load(args.test_data) if args.test_data is not None else None)
    if test is not None:
        if subject.name not in [s.name for s in test.subjects]:
            raise SystemExit(f"{args.test_data or args.wds}: the test data has no subject {subject.name!r}")
        summary["retrieval"] = {subject.name: head_retrieval_accuracy(head, test.select([subject.name]).subjects[0], test.targets)}
    print(json.dumps(summary))
    return 0


def _wds_data(args: argparse.Namespace, split: str):
    import numpy as np

    from rtrecon.train.webdataset import from_webdataset

    if not args.wds_subjects:
        raise SystemExit("--wds needs --wds-subjects (NSD subject numbers)")
    targets = np.load(args.targets, mmap_mode="r") if args.targets is not None else None
    embedder = None
    if targets is None and args.clip_weights is not None:
        from rtrecon.embedders.openclip import OpenClipImageEmbedder

        embedder = OpenClipImageEmbedder.from_local(args.clip_weights)
    sessions = args.wds_sessions if split == "train" else None
    from accelerate import PartialState

    # The main process embeds and writes the target cache; the others then read it.
    with PartialState().main_process_first():
        return from_webdataset(args.wds, args.wds_subjects, split, sessions, targets=targets, embedder=embedder,
                               targets_cache=args.targets_cache)
