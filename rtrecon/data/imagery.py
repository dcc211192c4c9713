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

:func:`write_live_session` writes an imagery session of a synthetic subject as scanner runs, for the
closed loop (``rtrecon demo --task imagery``): a folder in the NSD layout (so that the NSD reader,
the bridge's replay and the engine read it as they read a perception session) holding one run per
target set, the subject's anatomy, ROI, stimuli and ground truth linked from the perception
dataset, and the session's trial table (:meth:`ImageryRuns.write`, the vividness of each trial
included). Timing: one trial every 6 volumes (8.0 s at NSD's TR; NSD-Imagery's imagery runs hold
48 trials in 240 volumes of 1.6 s, 8 s a trial), a cue of :data:`CUE_S` then an imagery period
of 3 s, when the response is evoked; 6 volumes of fixation open a run and 12 close it. The
evoked amplitudes are the trials' imagery betas (:func:`simulate`), carried by each voxel's own
HRF, their own noise the model's less the measurement noise (``simulate(..., scanner_noise=True)``);
the world's scanner noise, drift and head motion are then added as for a perception run, so that
the betas a GLM estimates from these runs scatter as the model says. The session is numbered after the subject's perception sessions (NSD-Imagery
was scanned after NSD).
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
           "session_betas", "write_live_session", "TRIAL_ROWS", "CUE_S"]

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
             model: ImageryModel = ImageryModel(), seed: int = 0, target_ids: np.ndarray | None = None,
             scanner_noise: bool = False) -> ImageryRuns:
    """Imagery runs for ``subject`` of the synthetic dataset at ``root`` (see the module docstring).

    ``target_ids`` (1-based image ids, one row of ``targets_per_set`` per set) default to the
    shared test images, drawn with ``seed``. The order of trials in each run is random.

    ``scanner_noise``: the betas are the evoked amplitudes of trials whose scanner runs will add the
    world's measurement noise (:func:`write_live_session`): their own noise is then the part of
    the model's that is not measurement noise, so that the betas a GLM estimates from the runs scatter
    as the model says. The perception betas' variance around the mean response is the trials'
    variability (``trial_sd`` × each voxel's amplitude, the world's) plus the measurement noise, so
    the trial noise's variance is ``noise_ratio² · perception_noise² - measurement²`` =
    ``(noise_ratio² - 1) · perception_noise² + variability²``.
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
    if scanner_noise:
        variability = truth["world"]["preset"]["noise"]["trial_sd"] * truth["voxels"]["amplitude"]
        noise = np.sqrt(np.clip((model.noise_ratio**2 - 1) * vision_noise**2 + variability**2, 0.0, None))
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


#: Design rows (volumes) per imagery trial, before the first trial and after the last.
TRIAL_ROWS, LEAD_ROWS, TAIL_ROWS = 6, 6, 12
#: The cue's duration (s): the imagery period, and the response it evokes, start this long after the trial's onset.
CUE_S = 1.0


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())


def write_live_session(dataset: str | Path, subject: int, out: str | Path, *, protocol: ImageryProtocol | None = None,
                       model: ImageryModel = ImageryModel(), seed: int = 0) -> tuple[Path, int, ImageryRuns]:
    """An imagery session of ``subject`` of the synthetic ``dataset`` as scanner runs under ``out``
    (see the module docstring); returns ``(out, session, trials)``.

    ``protocol`` defaults to one run per target set (the live session of the demo). The targets are
    the world's shared test images when there are enough, else images the subject saw.
    """
    from rtrecon.data import timeseries
    from rtrecon.data.synthetic import SPACE, TR, TRUTH_DIR, _save_nifti, _write_column

    dataset, out = Path(dataset), Path(out)
    protocol = protocol or ImageryProtocol(runs_per_set=1)
    nsd = NSDDataset(dataset)
    session = max(nsd.sessions(subject)) + 1
    # the shared test images when there are enough (as simulate's default), else any the subject saw
    need = len(protocol.target_sets) * protocol.targets_per_set
    pool = np.asarray(nsd.shared_ids, int)
    if len(pool) < need:
        pool = np.unique([t.image_id for t in nsd.trials(subject)])
    if len(pool) < need:
        raise ValueError(f"{dataset}: subject {subject} saw {len(pool)} images, the protocol needs {need} targets")
    targets = np.random.default_rng([seed, subject]).choice(pool, size=need, replace=False)
    runs = simulate(dataset, subject, protocol=protocol, model=model, seed=seed, target_ids=targets, scanner_noise=True)
    truth = load_truth(dataset, subject)
    world = truth["world"]
    noise, n_hrfs = world["preset"]["noise"], int(world["preset"]["n_hrfs"])
    voxels = truth["voxels"]
    brain = nsd.brainmask(subject)
    baseline = np.asarray(_volume(dataset / "nsddata" / "ppdata" / f"subj{subject:02d}" / SPACE / "mean.nii.gz"))
    roi_in_brain = np.searchsorted(np.flatnonzero(brain.ravel()), voxels["roi_index"])
    affine = voxels["affine"]
    for name in ("nsddata/ppdata", "nsddata/experiments", "nsddata_stimuli", TRUTH_DIR):
        _link(dataset / name, out / name)
    hrf_dt = 0.1
    hrfs = timeseries.hrf_library(n_hrfs, hrf_dt)
    rng = np.random.default_rng([seed, subject, session])
    ts = out / "nsddata_timeseries" / "ppdata" / f"subj{subject:02d}" / SPACE
    pose = np.zeros(6)
    for run, table in runs.trials.groupby("run", sort=True):
        n_rows = LEAD_ROWS + TRIAL_ROWS * len(table) + TAIL_ROWS
        n_vols = n_rows + 1  # the design has no row for the last volume
        rows = LEAD_ROWS + TRIAL_ROWS * np.arange(len(table))
        regs = timeseries.trial_regressors(rows * TR + CUE_S, n_vols, TR, hrfs, hrf_dt)
        regs /= regs.max(axis=1, keepdims=True)  # unit peak: beta = peak % signal change
        psc = noise["noise_sd"] * timeseries.correlated_noise(brain, n_vols, rng, noise["ar"], noise["spatial_sigma"],
                                                              noise["global_fraction"])
        psc += timeseries.drift(psc.shape[1], n_vols, TR, rng, noise["drift"])
        b = runs.betas[table.index.to_numpy()]
        for h in np.unique(voxels["hrf_index"]):
            sel = voxels["hrf_index"] == h
            psc[:, roi_in_brain[sel]] += regs[h] @ b[:, sel]
        frames = np.zeros((n_vols, *brain.shape), np.float32)
        frames[:, brain] = baseline[brain] * (1.0 + psc / 100.0)
        motion = np.zeros((n_vols, 6))
        if noise["motion"]:
            motion = timeseries.make_motion(n_vols, rng, start=pose)
            motion -= motion[0] if run == 1 else 0.0  # the session's first volume is the reference pose
            pose = motion[-1]
            frames = timeseries.move_volumes(frames, affine, motion)
        inside = frames > 1.0
        frames[inside] += rng.normal(0, noise["thermal"], int(inside.sum())).astype(np.float32)
        vols = np.clip(np.rint(frames), 0, np.iinfo(np.int16).max).astype(np.int16).transpose(1, 2, 3, 0)
        design = np.zeros(n_rows, np.int64)
        design[rows] = table["image_id"].to_numpy()
        stem = f"session{session:02d}_run{int(run):02d}"
        _save_nifti(vols, affine, ts / "timeseries" / f"timeseries_{stem}.nii.gz", tr=TR)
        _write_column(ts / "design" / f"design_{stem}.tsv", design, "%d")
        _write_column(ts / "motion" / f"motion_{stem}.tsv", motion, "%.6f")
    runs.info.update({"session": session, "trial_rows": TRIAL_ROWS, "lead_rows": LEAD_ROWS, "tail_rows": TAIL_ROWS,
                      "cue_s": CUE_S, "perception_dataset": str(dataset)})
    runs.write(out, subject)
    return out, session, runs


def _volume(path: Path) -> np.ndarray:
    """A NIfTI volume's voxels as stored."""
    import nibabel as nib

    return np.asanyarray(nib.load(path).dataobj)
