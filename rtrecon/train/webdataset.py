"""MindEye2's webdataset tars + betas HDF5 as :class:`rtrecon.train.data.TrainingData`.

The layout read here is the one of the released MindEye2 data (Hugging Face dataset
``pscotti/mindeyev2``, downloaded into one folder ``ROOT``)::

    ROOT/wds/subj0X/train/{session-1}.tar      one tar per NSD session (0.tar = session 1)
    ROOT/wds/subj0X/new_test/0.tar             the shared-1000 test trials (all repeats)
    ROOT/betas_all_subj0X_fp32_renorm.hdf5     dataset "betas": (all trials, nsdgeneral voxels), normalised
    ROOT/coco_images_224_float16.hdf5          dataset "images": (73000, 3, 224, 224) float16 in [0, 1]

Each tar sample (webdataset grouping: the member name up to its first dot is the sample key) holds
``behav.npy`` (1x17), ``past_behav.npy`` (15x17), ``future_behav.npy`` (15x17) and
``olds_behav.npy`` (3x17); -1 means missing. Of the 17 ``behav`` columns this loader uses
column 0, the COCO 73k index (row of ``coco_images_224_float16.hdf5``), and column 5, the global
trial index (row of the subject's betas HDF5), as MindEye2's training loop does
(``image_idx = behav[:,0,0]``, ``voxel_idx = behav[:,0,5]``, ``voxels[voxel_idx]``). The other
entries are history for ``seq_len > 1`` models, which MindEye2's released models do not use.

Sources for the layout: ``../shared/reference/mindeye2.md`` section 3 ("WebDataset format") and
section 1.6; MedARC-AI/MindEyeV2 ``src/Train.ipynb`` (tar URLs ``wds/subj0{s}/train/{0..n-1}.tar``
and ``wds/subj0{s}/new_test/0.tar``, ``h5py.File(f'{data_path}/betas_all_subj0{s}_fp32_renorm.hdf5')['betas']``,
``h5py.File(f'{data_path}/coco_images_224_float16.hdf5')['images']``, the behav column use above)
and ``src/dataset_creation.ipynb`` (sample entries), read through the code search store.
The tars are plain POSIX tars, so Python's :mod:`tarfile` reads them; no ``webdataset`` package.

API::

    data = from_webdataset(ROOT, subjects=[1, 2], split="train", sessions=[1],
                           embedder=OpenClipImageEmbedder.from_local(bigG_weights),
                           targets_cache=ROOT / "bigG_tokens.npz")
    test = from_webdataset(ROOT, subjects=[1], split="new_test", targets_cache=...)

CLIP targets come either from ``targets`` (an array in 73k order, e.g. ``np.load(path,
mmap_mode="r")``) or from :func:`clip_targets`, which embeds the used rows of the images HDF5 with
an OpenCLIP embedder and caches the tokens by 73k index in an ``.npz`` (later calls embed only
what the cache lacks, and need no embedder when it has everything). ``TrainingData.targets`` holds
only the images the trials use, in ascending 73k order; :func:`image_index` gives that order.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.train.data import SubjectData, TrainingData

__all__ = [
    "BEHAV_COLUMNS", "betas_path", "clip_targets", "from_webdataset", "image_index", "images_path",
    "read_behav", "tar_paths",
]

#: The 17 columns of ``behav.npy`` (MindEye2 ``dataset_creation.ipynb``).
BEHAV_COLUMNS = (
    "cocoidx", "subject", "session", "run", "trial", "global_trial", "time", "isold", "iscorrect", "rt",
    "changemind", "isoldcurrent", "iscorrectcurrent", "total1", "total2", "button", "shared1000",
)
COCO_COLUMN, TRIAL_COLUMN = 0, 5
SPLITS = ("train", "new_test", "test")


def betas_path(root: str | os.PathLike, subject: int) -> Path:
    return Path(root) / f"betas_all_subj{subject:02d}_fp32_renorm.hdf5"


def images_path(root: str | os.PathLike) -> Path:
    return Path(root) / "coco_images_224_float16.hdf5"


def tar_paths(root: str | os.PathLike, subject: int, split: str = "train",
              sessions: Iterable[int] | None = None) -> list[Path]:
    """The tars of one subject and split; ``sessions`` (1-based) picks ``train/{session-1}.tar``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    folder = Path(root) / "wds" / f"subj{subject:02d}" / split
    if split != "train":
        if sessions is not None:
            raise ValueError(f"sessions select train tars only; the {split!r} split is one tar")
        paths = [folder / "0.tar"]
    elif sessions is not None:
        paths = [folder / f"{s - 1}.tar" for s in sessions]
    else:
        found = [p for p in folder.glob("*.tar") if p.stem.isdigit()] if folder.is_dir() else []
        paths = sorted(found, key=lambda p: int(p.stem))
        if not paths:
            raise FileNotFoundError(f"{folder}: no session tars (0.tar, 1.tar, ...)")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such webdataset tar")
    return paths


def read_behav(tar: str | os.PathLike) -> np.ndarray:
    """The ``behav.npy`` rows of every sample of one tar, in tar order: ``(n_samples, 17)`` float64."""
    tar = Path(tar)
    rows: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(tar) as tf:
            for member in tf:
                name = Path(member.name).name
                key, _, entry = name.partition(".")
                prefix = str(Path(member.name).parent / key)
                if member.isfile() and entry == "behav.npy":
                    data = tf.extractfile(member).read()
                    arr = np.load(io.BytesIO(data), allow_pickle=False)
                    if arr.size != len(BEHAV_COLUMNS):
                        raise ValueError(f"{tar}: {member.name} has shape {arr.shape}, expected 1x{len(BEHAV_COLUMNS)}")
                    rows[prefix] = arr.reshape(-1).astype(np.float64)
    except tarfile.TarError as err:
        raise ValueError(f"{tar}: not a readable tar ({err})") from err
    if not rows:
        raise ValueError(f"{tar}: no 'behav.npy' entries; not a MindEye2 webdataset shard")
    return np.stack(list(rows.values()))


def image_index(behav: np.ndarray) -> np.ndarray:
    """Sorted unique 73k indices of these trials: the row order of the loader's ``targets``."""
    return np.unique(behav[:, COCO_COLUMN].astype(np.int64))


def _subject_trials(root: Path, subject: int, split: str, sessions: Iterable[int] | None) -> np.ndarray:
    paths = tar_paths(root, subject, split, sessions)
    behav = np.concatenate([read_behav(p) for p in paths])
    bad = (behav[:, COCO_COLUMN] < 0) | (behav[:, TRIAL_COLUMN] < 0)
    if bad.any():
        raise ValueError(f"{paths[0].parent}: {int(bad.sum())} samples lack the 73k index or trial index (-1)")
    return behav


def _read_betas(path: Path, rows: np.ndarray) -> np.ndarray:
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such betas file")
    with h5py.File(path, "r") as f:
        if "betas" not in f:
            raise ValueError(f"{path}: no 'betas' dataset")
        betas = f["betas"]
        if rows.size and rows.max() >= betas.shape[0]:
            raise ValueError(f"{path}: trial index {int(rows.max())} outside its {betas.shape[0]} rows")
        # h5py fancy indexing wants increasing, unique rows: read those, then expand.
        unique, inverse = np.unique(rows, return_inverse=True)
        return np.asarray(betas[unique], dtype=np.float32)[inverse]


def clip_targets(images: str | os.PathLike, ids: np.ndarray, embedder: Any | None = None,
                 cache: str | os.PathLike | None = None, batch_size: int = 32) -> np.ndarray:
    """CLIP tokens ``(len(ids), tokens, dim)`` of rows ``ids`` of ``coco_images_224_float16.hdf5``.

    ``embedder`` is an :class:`rtrecon.embedders.openclip.OpenClipImageEmbedder` (bigG from local
    weights for real data). With ``cache`` (an ``.npz`` of ``ids`` and ``tokens``), cached rows are
    reused and new ones appended, so the embedder runs once per image.
    """
    import h5py

    ids = np.asarray(ids, dtype=np.int64)
    cache = Path(cache) if cache is not None else None
    known: dict[int, int] = {}
    cached_ids, cached_tokens = np.zeros(0, np.int64), None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if "ids" not in z or "tokens" not in z:
                raise ValueError(f"{cache}: not a CLIP target cache (needs 'ids' and 'tokens')")
            cached_ids, cached_tokens = z["ids"].astype(np.int64), z["tokens"]
        known = {int(i): r for r, i in enumerate(cached_ids)}
    missing = np.array(sorted({int(i) for i in ids} - set(known)), dtype=np.int64)
    if missing.size:
        if embedder is None:
            where = f"{cache} lacks {missing.size} of them" if cache is not None else "no cache given"
            raise ValueError(f"CLIP targets for {missing.size} images need an embedder ({where})")
        path = Path(images)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such images file")
        with h5py.File(path, "r") as f:
            if "images" not in f:
                raise ValueError(f"{path}: no 'images' dataset")
            if missing.max() >= f["images"].shape[0]:
                raise ValueError(f"{path}: 73k index {int(missing.max())} outside its {f['images'].shape[0]} images")
            chunks = [embedder.embed(np.asarray(f["images"][missing[i:i + batch_size]], np.float32)).cpu().numpy()
                      for i in range(0, missing.size, batch_size)]
        new = np.concatenate(chunks).astype(np.float32)
        cached_tokens = new if cached_tokens is None else np.concatenate([cached_tokens, new])
        cached_ids = np.concatenate([cached_ids, missing])
        known = {int(i): r for r, i in enumerate(cached_ids)}
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, ids=cached_ids, tokens=cached_tokens)
    return np.asarray(cached_tokens[[known[int(i)] for i in ids]], dtype=np.float32)


def from_webdataset(root: str | os.PathLike, subjects: list[int], split: str = "train",
                    sessions: Iterable[int] | None = None, *, targets: np.ndarray | None = None,
                    embedder: Any | None = None, targets_cache: str | os.PathLike | None = None) -> TrainingData:
    """Single-trial betas of ``subjects`` from MindEye2's tars + betas HDF5 as :class:`TrainingData`.

    ``split`` is ``"train"`` (optionally only ``sessions``, 1-based: ``[1]`` is MindEye2's
    one-hour fine-tuning data), ``"new_test"`` (shared-1000, all repeats) or ``"test"`` (the
    MindEye1 split). Betas are used as stored (the ``_renorm`` files are already normalised).
    Targets: ``targets`` indexed by 73k id, else :func:`clip_targets` with ``embedder`` /
    ``targets_cache`` on ``coco_images_224_float16.hdf5``.
    """
    root = Path(root)
    if not subjects:
        raise ValueError("from_webdataset needs at least one subject")
    sessions = list(sessions) if sessions is not None else None
    trials = {s: _subject_trials(root, s, split, sessions) for s in subjects}
    ids = image_index(np.concatenate(list(trials.values())))
    if targets is not None:
        if ids.max() >= targets.shape[0]:
            raise ValueError(f"targets have {targets.shape[0]} rows but the trials use 73k index {int(ids.max())}")
        tokens = np.asarray(targets[ids], dtype=np.float32)
    else:
        tokens = clip_targets(images_path(root), ids, embedder, targets_cache)
    row_of = np.searchsorted(ids, np.arange(ids.max() + 1))
    out = []
    for s, behav in trials.items():
        betas = _read_betas(betas_path(root, s), behav[:, TRIAL_COLUMN].astype(np.int64))
        out.append(SubjectData(betas, row_of[behav[:, COCO_COLUMN].astype(np.int64)], f"subj{s:02d}"))
    return TrainingData(out, tokens)
