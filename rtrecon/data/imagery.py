"""Synthetic mental imagery in the NSD-Imagery protocol, for a subject of a synthetic NSD dataset.

The protocol (:class:`ImageryProtocol`), as NSD-Imagery ran it (Kneeland et al. 2025, arXiv
2506.06898; the NSD data manual's "Functional data (nsdimagery)"; summarised in
``shared/reference/nsd_imagery.md``):

====================================  =====================================================
parameter                             value and source
====================================  =====================================================
``target_sets``                       simple, naturalistic, conceptual (NSD-Imagery's three)
``targets_per_set``                   6 conditions per run (NSD-Imagery)
``repeats``                           each target 8 times per run: 48 trials (NSD-Imagery)
``runs_per_set``                      2: the three imagery run types were run twice (NSD-Imagery)
cue                                   a single letter at fixation per target (NSD-Imagery)
``vividness``                         a 1-4 rating per trial (standard in imagery studies; the
                                      reference note; NSD-Imagery's own rating is not described)
====================================  =====================================================

The synthetic world has no simple or conceptual images: each set is 6 of the world's images
(by default from the shared test images, which a decoder trained on the other trials never saw).

The responses (:class:`ImageryModel`) share the perception representation: a trial's beta is the
subject's noise-free mean response to the target as seen (``true_responses`` of the synthetic
ground truth), at a lower gain, spatially smoothed (coarser precision) and with more noise. The
reference gives the direction of each effect ("mental images are encoded with lower SNR and
coarser spatial precision than seen images"), not its size: the defaults below are this module's
choice, stated as such, and the noise is set relative to the subject's own perception betas
(their single-trial deviation from the mean response, measured per voxel on the dataset), so
that "more noise than vision" has a meaning.

Layout written by :meth:`ImageryRuns.write` (the synthetic counterpart of NSD-Imagery's betas and
trial table, beside the NSD layout; not the real NSD-Imagery release's file names)::

    ROOT/nsdimagery_synthetic/subjAA/betas_imagery.npy   float32 (n_trials, n_roi), % signal change
    ROOT/nsdimagery_synthetic/subjAA/trials.tsv          run, trial, target_set, image_id, cue, vividness
    ROOT/nsdimagery_synthetic/subjAA/imagery.json        protocol, model and the measured noise

:func:`imagery_retrieval` scores decoded embeddings as NSD-Imagery does per set: retrieval among
the set's 6 targets (chance 1/6), per set and per vividness rating.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from rtrecon.data.nsd import NSDDataset
from rtrecon.data.synthetic import load_truth

__all__ = ["ImageryProtocol", "ImageryModel", "ImageryRuns", "simulate", "read_imagery", "imagery_retrieval", "perception_noise",
           "session_betas"]

FOLDER = "nsdimagery_synthetic"


@dataclass(frozen=True)
class ImageryProtocol:
    """NSD-Imagery's imagery runs (see the module docstring for each value's source)."""

    target_sets: tuple[str, ...] = ("simple", "naturalistic", "conceptual")
    targets_per_set: int = 6
    repeats: int = 8
    runs_per_set: int = 2
    vividness_levels: int = 4

    @property
    def trials_per_run(self) -> int:
        return self.targets_per_set * self.repeats


@dataclass(frozen=True)
class ImageryModel:
    """How an imagery beta follows from the seen image's response (the sizes are assumptions).

    ``gain``: the imagery response's amplitude relative to vision's; ``blur_mm``: the FWHM of the
    spatial smoothing (coarser precision); ``noise_ratio``: its noise sd over the perception betas'
    single-trial sd (per voxel); ``vividness_gain``: the gain at the lowest and highest rating
    (linear between), as a trial rated more vivid carries more of the target's pattern.
    """

    gain: float = 0.5
    blur_mm: float = 8.0
    noise_ratio: float = 1.25
    vividness_gain: tuple[float, float] = (0.5, 1.5)


@dataclass
class ImageryRuns:
    """A subject's synthetic imagery trials: their table and their betas (ROI voxels)."""

    trials: pd.DataFrame
    betas: np.ndarray
    info: dict = field(default_factory=dict)

    def write(self, root: str | Path, subject: int) -> Path:
        folder = Path(root) / FOLDER / f"subj{subject:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "betas_imagery.npy", self.betas.astype(np.float32))
        self.trials.to_csv(folder / "trials.tsv", sep="\t", index=False)
        (folder / "imagery.json").write_text(json.dumps(self.info, indent=2))
        return folder


def read_imagery(root: str | Path, subject: int) -> ImageryRuns:
    """The imagery trials :meth:`ImageryRuns.write` left for ``subject`` (FileNotFoundError naming the file)."""
    folder = Path(root) / FOLDER / f"subj{subject:02d}"
    for name in ("betas_imagery.npy", "trials.tsv", "imagery.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: missing (write synthetic imagery with rtrecon.data.imagery.simulate)")
    trials = pd.read_csv(folder / "trials.tsv", sep="\t")
    betas = np.load(folder / "betas_imagery.npy")
    if len(trials) != len(betas):
        raise ValueError(f"{folder}: {len(trials)} trials but {len(betas)} betas")
    return ImageryRuns(trials, betas, json.loads((folder / "imagery.json").read_text()))


def session_betas(nsd: NSDDataset, subject: int, session: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A session's perception betas over ``mask`` (default: the ROI) and each trial's 1-based image id."""
    betas = nsd.betas(subject, session, mask=nsd.roi_mask(subject) if mask is None else mask)
    ids = np.array([t.image_id for t in nsd.trials(subject) if t.session == session])
    if len(ids) != len(betas):
        raise ValueError(f"{nsd.betas_path(subject, session)}: {len(betas)} betas, the design has {len(ids)} trials")
    return betas, ids


def perception_noise(nsd: NSDDataset, subject: int, responses: np.ndarray) -> np.ndarray:
    """Per ROI voxel: the sd of the subject's perception betas around its mean response to each image."""
    mask = nsd.roi_mask(subject)
    deviations = []
    for session in nsd.sessions(subject):
        betas, ids = session_betas(nsd, subject, session, mask)
        deviations.append(betas - responses[ids - 1])
    return np.concatenate(deviations).std(axis=0)


def _blur(values: np.ndarray, roi_index: np.ndarray, grid: tuple[int, int, int], sigma_vox: float) -> np.ndarray:
    """Smooth ROI patterns (n, V) within the ROI (normalised convolution: no loss at its edge)."""
    if sigma_vox <= 0:
        return values
    weight = np.zeros(int(np.prod(grid)))
    weight[roi_index] = 1.0
    norm = gaussian_filter(weight.reshape(grid), sigma_vox).ravel()[roi_index]
    out = np.empty_like(values, dtype=np.float64)
    volume = np.zeros(int(np.prod(grid)))
    for i, row in enumerate(values):
        volume[:] = 0.0
        volume[roi_index] = row
        out[i] = gaussian_filter(volume.reshape(grid), sigma_vox).ravel()[roi_index] / norm
    return out


def simulate(root: str | Path, subject: int, *, protocol: ImageryProtocol = ImageryProtocol(),
             model: ImageryModel = ImageryModel(), seed: int = 0, target_ids: np.ndarray | None = None) -> ImageryRuns:
    """Imagery runs for ``subject`` of the synthetic dataset at ``root`` (see the module docstring).

    ``target_ids`` (1-based image ids, one row of ``targets_per_set`` per set) default to the
    shared test images, drawn with ``seed``. The order of trials in each run is random.
    """
    rng = np.random.default_rng(seed)
    nsd = NSDDataset(root)
    truth = load_truth(root, subject)
    responses = truth["true_responses"].astype(np.float64)  # (n_images, V)
    voxels = truth["voxels"]
    n_sets, per_set = len(protocol.target_sets), protocol.targets_per_set
    if target_ids is None:
        shared = np.asarray(nsd.shared_ids, int)
        if len(shared) < n_sets * per_set:
            raise ValueError(f"{root}: {len(shared)} shared images, the protocol needs {n_sets * per_set} targets")
        target_ids = rng.choice(shared, size=(n_sets, per_set), replace=False)
    target_ids = np.asarray(target_ids, int).reshape(n_sets, per_set)
    voxel_mm = float(np.abs(np.linalg.svd(voxels["affine"][:3, :3], compute_uv=False)).mean())
    sigma_vox = model.blur_mm / voxel_mm / np.sqrt(8 * np.log(2))
    grid = tuple(int(g) for g in voxels["grid"])
    patterns = _blur(responses[target_ids.ravel() - 1], voxels["roi_index"], grid, sigma_vox).reshape(n_sets, per_set, -1)
    vision_noise = perception_noise(nsd, subject, responses)
    noise = model.noise_ratio * vision_noise
    lo, hi = model.vividness_gain
    rows, betas = [], []
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    run = 0
    for repeat in range(protocol.runs_per_set):
        for s, name in enumerate(protocol.target_sets):
            run += 1
            order = rng.permutation(np.repeat(np.arange(per_set), protocol.repeats))
            for trial, k in enumerate(order):
                vividness = int(rng.integers(1, protocol.vividness_levels + 1))
                gain = model.gain * (lo + (hi - lo) * (vividness - 1) / max(protocol.vividness_levels - 1, 1))
                betas.append(gain * patterns[s, k] + noise * rng.standard_normal(noise.shape))
                rows.append({"run": run, "trial": trial, "target_set": name, "image_id": int(target_ids[s, k]),
                             "cue": letters[k], "vividness": vividness})
    info = {"subject": subject, "seed": seed, "protocol": asdict(protocol), "model": asdict(model),
            "voxel_mm": voxel_mm, "perception_noise_median": float(np.median(vision_noise)),
            "targets": {name: target_ids[s].tolist() for s, name in enumerate(protocol.target_sets)}}
    return ImageryRuns(pd.DataFrame(rows), np.asarray(betas, np.float32), info)


def imagery_retrieval(predicted: np.ndarray, trials: pd.DataFrame, embeddings: np.ndarray) -> dict:
    """Top-1 retrieval of each trial's target among its set's targets, by cosine similarity.

    ``predicted`` (n_trials, ...) decoded embeddings, ``embeddings`` the world's (n_images, ...) in
    1-based id order. Returns ``accuracy``, ``chance``, ``n``, ``correct`` (per trial), and
    ``per_set`` / ``per_vividness`` accuracies.
    """
    trials = trials.reset_index(drop=True)
    flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)  # noqa: E731
    pred = flat(predicted)
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    correct = np.zeros(len(trials), bool)
    chance = []
    for name, rows in trials.groupby("target_set", sort=False):
        ids = np.array(sorted(rows["image_id"].unique()))
        targets = flat(embeddings[ids - 1])
        targets /= np.linalg.norm(targets, axis=1, keepdims=True)
        index = rows.index.to_numpy()
        best = ids[np.argmax(pred[index] @ targets.T, axis=1)]
        correct[index] = best == rows["image_id"].to_numpy()
        chance.append(1 / len(ids))
    table = trials.assign(correct=correct)
    return {
        "accuracy": float(correct.mean()),
        "chance": float(np.mean(chance)),
        "n": int(len(correct)),
        "correct": correct,
        "per_set": {str(k): float(v) for k, v in table.groupby("target_set", sort=False)["correct"].mean().items()},
        "per_vividness": {int(k): float(v) for k, v in table.groupby("vividness")["correct"].mean().items()},
    }
