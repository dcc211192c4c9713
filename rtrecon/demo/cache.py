"""The demo's cache: the synthetic dataset and the trained decoder, each keyed by what made it.

``cache_root()`` is ``$RTRECON_CACHE`` or ``~/.cache/rtrecon``. :func:`cached_dataset` returns
``<cache>/synthetic/<key>/``, generating it first (into a temporary folder renamed when complete and on disk,
so an interrupted generation is never mistaken for a dataset) when it is not there; the key is a
hash of the generation parameters (counts, size and world presets with their contents, seed). :func:`cached_decoder` does the same for the decoder trained
on a dataset (``<cache>/decoders/<key>/finetune/last.pth``), keyed by the dataset's key, the
subjects and sessions, and the :class:`~rtrecon.demo.training.DecoderRecipe` (architecture, prior or
not, epochs, batch, learning rate, seed): everything that changes the weights. :func:`cached_imagery`
does it for a subject's imagery session written from a dataset (``<cache>/imagery/<key>/``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from rtrecon.demo.training import DecoderRecipe
from rtrecon.contract.layout import atomic_write, fsync_dir

__all__ = ["cache_root", "cache_key", "cached_dataset", "cached_decoder", "cached_imagery"]


def cache_root() -> Path:
    return Path(os.environ.get("RTRECON_CACHE") or Path.home() / ".cache" / "rtrecon")


def cache_key(**params: object) -> str:
    """A short stable hash of ``params`` (JSON-serialisable values)."""
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fresh(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def _publish(tmp: Path, folder: Path, params: dict) -> None:
    """Rename the complete ``tmp`` to ``folder`` once every file in it is on disk: a power cut must
    not leave a cache entry that looks whole (its marker file present) with torn files in it."""
    for path in tmp.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_dir(path)
    atomic_write(tmp / "rtrecon_cache.json", json.dumps(params, indent=1))
    tmp.rename(folder)
    fsync_dir(folder.parent)


def cached_dataset(n_subjects: int, n_sessions: int, n_runs: int, size: str = "small", seed: int = 0,
                   world: str = "typical", shuffled: bool = False,
                   *, root: Path | None = None, progress: bool = True) -> tuple[Path, bool]:
    """The synthetic dataset of these parameters (``world``: a :data:`rtrecon.data.synthetic.WORLDS`
    name; ``shuffled``: the control world) and whether it was already cached."""
    from rtrecon.data.synthetic import PRESETS, WORLDS, generate

    # The presets' contents, not only their names, so that retuning a preset is a new dataset.
    params = dict(kind="synthetic", n_subjects=n_subjects, n_sessions=n_sessions, n_runs=n_runs, size=size, seed=seed,
                  world=world, shuffled=shuffled, preset=asdict(PRESETS[size]), noise=asdict(WORLDS[world]))
    folder = (root or cache_root()) / "synthetic" / cache_key(**params)
    if (folder / "synthetic_truth" / "world.json").is_file():
        return folder, True
    tmp = _fresh(folder)
    generate(tmp, n_subjects, n_sessions, n_runs, size, seed, progress=progress, world=world, shuffled=shuffled)
    _publish(tmp, folder, params)
    return folder, False


def cached_decoder(dataset: Path, pretrain: dict[int, Sequence[int]], subject: int, finetune_sessions: Sequence[int],
                   recipe: DecoderRecipe, *, root: Path | None = None, progress: bool = True) -> tuple[Path, bool]:
    """The decoder trained on ``dataset`` (see :func:`rtrecon.demo.training.train_decoder`), and
    whether it was already cached."""
    import numpy as np

    from rtrecon.data.nsd import NSDDataset
    from rtrecon.data.synthetic import load_truth
    from rtrecon.demo.training import train_decoder

    params = dict(kind="decoder", dataset=dataset.name, pretrain={str(k): list(v) for k, v in pretrain.items()},
                  subject=subject, finetune_sessions=list(finetune_sessions), recipe=asdict(recipe))
    folder = (root or cache_root()) / "decoders" / cache_key(**params)
    checkpoint = folder / "finetune" / "last.pth"
    if checkpoint.is_file():
        return checkpoint, True
    tmp = _fresh(folder)
    targets = np.asarray(load_truth(dataset)["embeddings"])
    train_decoder(NSDDataset(dataset), targets, pretrain, subject, finetune_sessions, tmp, recipe, progress=progress)
    _publish(tmp, folder, params)
    return checkpoint, False


def cached_imagery(dataset: Path, subject: int, seed: int = 0, *, root: Path | None = None) -> tuple[Path, bool]:
    """The imagery session of ``subject`` written from ``dataset`` (:func:`rtrecon.data.imagery.write_live_session`,
    its default protocol and model), and whether it was already cached."""
    from rtrecon.data.imagery import CUE_S, TRIAL_ROWS, ImageryModel, ImageryProtocol, write_live_session

    params = dict(kind="imagery", dataset=dataset.name, subject=subject, seed=seed, trial_rows=TRIAL_ROWS, cue_s=CUE_S,
                  trial_noise="model less measurement",
                  protocol=asdict(ImageryProtocol(runs_per_set=1)), model=asdict(ImageryModel()))
    folder = (root or cache_root()) / "imagery" / cache_key(**params)
    if (folder / "rtrecon_cache.json").is_file():
        return folder, True
    tmp = _fresh(folder)
    write_live_session(dataset, subject, tmp, seed=seed)
    _publish(tmp, folder, params)
    return folder, False
