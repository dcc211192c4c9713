"""Synthetic subjects written in NSD's own layout, with their ground truth (``rtrecon synth``).

``generate(out, n_subjects, n_sessions, n_runs, size, seed)`` writes a dataset that
``rtrecon.data.nsd.NSDDataset`` reads like real NSD, so the demo, the tests and the benchmarks
run the whole loop with nothing downloaded. The world:

* **Images** (``rtrecon.data.images``): procedural scenes, stored as ``imgBrick``; a shared test
  subset (``sharedix``) is seen 3 times by every subject, like NSD's shared 1000.
* **Shared embedding**: the tokens of ``OpenClipImageEmbedder.tiny(seed)`` -- the same code that
  computes real bigG targets -- saved as ``synthetic_truth/embeddings.npy`` (73k-id order).
* **Brains** (``rtrecon.data.brains``): per subject its own grid, anatomy and ``nsdgeneral`` ROI;
  low-level pRF voxels and high-level voxels tuned through a subject-specific random mapping to
  the whitened principal components of the shared embedding.
* **Time series** (``rtrecon.data.timeseries``): NSD trial timing at TR 1.333171 s (226 volumes a
  run), per-voxel HRFs from a library, single-trial variability, slow drift, spatially and
  temporally correlated noise, and rigid head motion applied by resampling every volume.
  Unlike NSD's ``ppdata`` (already motion corrected), the synthetic time series still contain
  the motion, so the engine's realignment has real work; the motion files hold the true
  parameters (head pose of each volume relative to the session's first one).
* **Betas** (``betas_assumehrf``): per-run LSA least squares with nilearn's Glover HRF on the
  motion-free series (as NSD's betas are computed after preprocessing), % signal change × 300.
* **Ground truth** in ``synthetic_truth/``: ``world.json``, ``embeddings.npy``, ``features.npy``,
  ``images.csv`` and per subject ``voxels.npz`` (ROI voxel indices and tuning),
  ``true_betas_sessionBB.npy`` (trials × ROI voxels, chronological, % signal change) and
  ``true_responses.npy`` (images × ROI voxels, noise-free mean responses).

Size presets (``PRESETS``): ``small`` (the default; seconds on 2 cores) and ``nsd`` (subject
grids from NSD's func1pt8mm table, 15,724 ROI voxels for subject 1).

World presets (``WORLDS``, ``rtrecon synth --world``) set the noise, i.e. how well single trials
can be told apart. :func:`ncsnr` measures it the NSD way (Allen et al. 2022: betas z-scored per
voxel within each session; per voxel, the noise SD is the pooled SD across the repeats of images
seen 3 times, the signal SD ``sqrt(max(0, 1 - noise²))``, ncsnr their ratio). Medians over the
nsdgeneral voxels of the released (``betas_assumehrf``) betas, ``small`` size, 4 subjects × 4
sessions × 1 run, seed 0, measured for all 4 subjects:

* ``typical`` (noise SD 1.5 % signal change): median ncsnr 0.33-0.39, inside NSD's own nsdgeneral
  range;
* ``high-snr`` (noise SD 0.5): median ncsnr 0.63-0.71, the top of NSD's range; the demo's
  default, so that a few sessions of one subject decode visibly.

``shuffled=True`` (``--shuffled``) is the control world: each trial's true response is that of
another image, drawn at random, so the betas carry nothing about the image shown and every
decoding metric must fall to chance.

``shared_images=N`` (``rtrecon synth --shared-images N``) sets the number of shared test images instead of the preset's
``shared_fraction`` (e.g. more than 300, for retrieval among 300 as MindEye2 reports it). Output is
a pure function of the arguments and the seed.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import scipy.io
from rich.console import Console
from rich.progress import Progress
from threadpoolctl import threadpool_limits

from rtrecon.data import brains, images, timeseries
from rtrecon.data.nsd import BETA_SCALE, SPACES, NSDDataset

__all__ = ["PRESETS", "WORLDS", "NSD_GRIDS", "NoiseModel", "SizePreset", "configure", "generate", "load_truth",
           "ncsnr", "noise_ceiling", "ceiling_ranks"]

SPACE = "func1pt8mm"
TR = SPACES[SPACE]["tr"]
N_VOLS = int(SPACES[SPACE]["volumes"])
TRUTH_DIR = "synthetic_truth"
BETAS_VERSION = "betas_assumehrf"
#: NSD's func1pt8mm grids per subject (reference §8).
NSD_GRIDS = [(81, 104, 83), (82, 106, 84), (81, 106, 82), (85, 99, 80), (79, 97, 78), (85, 113, 83), (78, 95, 81), (80, 103, 78)]


@dataclass(frozen=True)
class NoiseModel:
    """Noise and nuisance levels, in % signal change unless stated."""

    noise_sd: float = 1.5  # correlated physiological + thermal noise per volume
    ar: float = 0.4  # AR(1) coefficient of that noise
    spatial_sigma: float = 1.0  # its spatial smoothness (voxels)
    global_fraction: float = 0.1  # variance share of a global fluctuation
    drift: float = 1.0  # slow drift amplitude
    trial_sd: float = 0.35  # single-trial variability, as a fraction of a voxel's amplitude
    thermal: float = 5.0  # scanner-frame noise after motion (raw intensity units, baseline ~1000)
    motion: bool = True


@dataclass(frozen=True)
class SizePreset:
    name: str
    grid: tuple[int, int, int]
    voxel_mm: float
    roi_voxels: int  # for a subject with the base grid; scaled with each subject's grid
    image_size: int
    shared_fraction: float = 0.25  # fraction of trials showing shared images
    n_features: int = 32  # shared embedding dimensions the high-level voxels read
    n_hrfs: int = 20
    nsd_grids: bool = False  # subjects 1-8 take NSD's own grids
    clip_seed: int = 0
    noise: NoiseModel = NoiseModel()


#: Noise levels of the worlds (see the module docstring for their measured ncsnr).
WORLDS: dict[str, NoiseModel] = {
    "typical": NoiseModel(),
    "high-snr": NoiseModel(noise_sd=0.5),
}

PRESETS: dict[str, SizePreset] = {
    "small": SizePreset("small", grid=(24, 29, 24), voxel_mm=4.5, roi_voxels=1000, image_size=96),
    "nsd": SizePreset("nsd", grid=NSD_GRIDS[0], voxel_mm=1.8, roi_voxels=15724, image_size=128, nsd_grids=True),
}


def _subject_grid(preset: SizePreset, subject: int, rng: np.random.Generator) -> tuple[tuple[int, int, int], int]:
    if preset.nsd_grids and subject <= len(NSD_GRIDS):
        grid = NSD_GRIDS[subject - 1]
    else:
        grid = tuple(max(8, int(round(g * rng.uniform(0.92, 1.08)))) for g in preset.grid)
    # ROI size follows brain size (subject 1 of the nsd preset keeps NSD's 15,724 exactly).
    return grid, int(round(preset.roi_voxels * np.prod(grid) / np.prod(preset.grid)))


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, tr: float | None = None) -> None:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1: the time series dominate the generation time at nibabel's default level.
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(img.to_bytes())


def _write_column(path: Path, values: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, values, fmt=fmt, delimiter="\t")


def _glm_betas(data: np.ndarray, onsets: np.ndarray) -> np.ndarray:
    """LSA least-squares betas (peak % signal change) of a (T, V) run: nilearn's Glover HRF, one
    regressor per trial, a cosine drift basis (128-s cutoff) and an intercept."""
    from nilearn.glm.first_level.hemodynamic_models import glover_hrf

    dt = 0.1
    hrf = glover_hrf(t_r=dt, oversampling=1, time_length=32.0)
    trials = timeseries.trial_regressors(onsets, data.shape[0], TR, hrf[None, :], dt)[0]
    trials /= trials.max(0)  # unit peak: beta = peak % signal change
    t = np.arange(data.shape[0])
    n_cos = int(np.floor(2 * data.shape[0] * TR / 128.0))
    drift = np.cos(np.pi * (t[:, None] + 0.5) * np.arange(1, n_cos + 1)[None, :] / data.shape[0])
    x = np.concatenate([trials, drift, np.ones((data.shape[0], 1))], 1)
    coef = (np.linalg.pinv(x) @ data)[: len(onsets)]
    mean = data.mean(0)
    return (coef / np.where(mean > 0, mean, 1.0) * 100.0).astype(np.float32)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(console=Console(stderr=True), transient=False) as progress:
        yield progress


def generate(
    out: str | Path,
    n_subjects: int = 4,
    n_sessions: int = 2,
    n_runs: int = 3,
    size: str | SizePreset = "small",
    seed: int = 0,
    progress: bool = True,
    shared_images: int | None = None,
    world: str | None = None,
    shuffled: bool = False,
) -> Path:
    """Write a synthetic dataset in NSD's layout under ``out`` and return its path.

    ``shared_images``: number of shared test images (each shown 3 times to every subject);
    ``None`` takes the preset's ``shared_fraction`` of the trials. ``world``: a :data:`WORLDS`
    name whose noise replaces the preset's (its motion setting is kept); ``shuffled``: the control
    world (responses shuffled across images, trial by trial).
    """
    preset = PRESETS[size] if isinstance(size, str) else size
    if world is not None:
        if world not in WORLDS:
            raise ValueError(f"unknown world {world!r}: choose one of {', '.join(WORLDS)}")
        preset = replace(preset, noise=replace(WORLDS[world], motion=preset.noise.motion))
    if min(n_subjects, n_sessions, n_runs) < 1:
        raise ValueError(f"need at least one subject, session and run, got {n_subjects}, {n_sessions}, {n_runs}")
    if shared_images is not None and shared_images < 1:
        raise ValueError(f"shared_images must be at least 1, got {shared_images}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ss_design, ss_images, ss_subjects = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(ss_design)

    # ---- experiment design (the same for every subject, as in NSD) ----
    stimpattern = timeseries.make_stimpattern(n_sessions, n_runs, rng)
    n_trials = int(stimpattern.sum())
    n_shared = max(1, int(n_trials * preset.shared_fraction / 3)) if shared_images is None else shared_images
    if 3 * n_shared >= n_trials:
        raise ValueError(
            f"{n_shared} shared images shown 3 times need more than the {n_trials} trials of "
            f"{n_sessions} session(s) x {n_runs} run(s): add sessions or runs"
        )
    n_other = math.ceil((n_trials - 3 * n_shared) / 2)
    masterordering = timeseries.make_masterordering(n_trials, n_shared + n_other, n_shared, rng)
    n_images = n_shared + n_subjects * n_other
    ids = rng.permutation(n_images) + 1
    sharedix = np.sort(ids[:n_shared])
    own = ids[n_shared:].reshape(n_subjects, n_other)
    subjectim = np.concatenate([np.tile(sharedix, (n_subjects, 1)), own], 1)
    per_session = stimpattern.sum((1, 2))
    bounds = np.concatenate([[0], np.cumsum(per_session)]).astype(int)
    basiccnt = np.zeros((3, n_sessions), np.int64)
    for s in range(n_sessions):
        _, counts = np.unique(masterordering[bounds[s] : bounds[s + 1]], return_counts=True)
        for c in (1, 2, 3):
            basiccnt[c - 1, s] = int((counts == c).sum())
    exp_path = out / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"
    exp_path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(
        exp_path,
        {
            "masterordering": masterordering[None, :].astype(np.float64),
            "subjectim": subjectim.astype(np.float64),
            "sharedix": sharedix[None, :].astype(np.float64),
            "stimpattern": stimpattern.astype(np.float64),
            "basiccnt": basiccnt.astype(np.float64),
        },
    )

    # Single-threaded BLAS: the matrices here are small, and multi-threaded OpenBLAS spinning
    # against torch's threads on a busy machine made tiny solves ~50× slower.
    with threadpool_limits(limits=1, user_api="blas"), _progress(progress) as bar:
        # ---- images and the shared embedding ----
        task = bar.add_task("images + embedding", total=3) if bar else None
        imgs, info = images.make_images(n_images, preset.image_size, seed=int(ss_images.generate_state(1)[0]))
        stim_path = out / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
        stim_path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(stim_path, "w") as f:
            f.create_dataset("imgBrick", data=imgs)
        if bar:
            bar.advance(task)
        from rtrecon.embedders.openclip import OpenClipImageEmbedder

        embedder = OpenClipImageEmbedder.tiny(seed=preset.clip_seed)
        embeddings = embedder.embed(imgs).numpy().astype(np.float32)
        features = brains.embedding_features(embeddings, preset.n_features)
        lowlevel = brains.lowlevel_features(imgs)
        if bar:
            bar.advance(task)
        truth = out / TRUTH_DIR
        truth.mkdir(exist_ok=True)
        np.save(truth / "embeddings.npy", embeddings)
        np.save(truth / "features.npy", features)
        with open(truth / "images.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["image_id", "shared", *info[0].keys()])
            writer.writeheader()
            shared_set = set(sharedix.tolist())
            for i, meta in enumerate(info):
                writer.writerow({"image_id": i + 1, "shared": int(i + 1 in shared_set), **meta})
        world = {
            "generator": "rtrecon.data.synthetic",
            "seed": seed,
            "subjects": n_subjects,
            "sessions": n_sessions,
            "runs": n_runs,
            "preset": asdict(preset),
            "world": world or "custom",
            "shuffled": shuffled,
            "space": SPACE,
            "tr": TR,
            "embedder": {"name": "OpenClipImageEmbedder.tiny", "seed": preset.clip_seed, "quirk": embedder.quirk,
                         "num_tokens": embedder.num_tokens, "dim": embedder.dim},
            "n_images": n_images,
            "n_shared": n_shared,
            "motion_corrected": False,
            "betas_version": BETAS_VERSION,
        }
        (truth / "world.json").write_text(json.dumps(world, indent=2))
        if bar:
            bar.advance(task)

        # ---- subjects ----
        hrf_dt = 0.1
        hrfs = timeseries.hrf_library(preset.n_hrfs, hrf_dt)
        run_task = bar.add_task("subjects × sessions × runs", total=n_subjects * n_sessions * n_runs) if bar else None
        for subject, ss in enumerate(ss_subjects.spawn(n_subjects), start=1):
            srng = np.random.default_rng(ss)
            _write_subject(out, subject, srng, preset, stimpattern, masterordering, subjectim,
                           features, lowlevel, hrfs, hrf_dt, bar, run_task, shuffled)
    (out / "README_SYNTHETIC.md").write_text(_README.format(**world, root=out.name))
    return out


def _write_subject(out, subject, rng, preset, stimpattern, masterordering, subjectim,
                   features, lowlevel, hrfs, hrf_dt, bar, run_task, shuffled=False) -> None:
    """Anatomy, tuning, every run's time series, betas and ground truth of one subject."""
    noise = preset.noise
    grid, n_roi = _subject_grid(preset, subject, rng)
    anatomy = brains.make_anatomy(grid, preset.voxel_mm, n_roi, rng)
    tuning = brains.make_tuning(anatomy, features.shape[1], len(hrfs), rng)
    responses = tuning.responses(lowlevel, features)  # (n_images, V)
    affine = anatomy.affine
    brain = anatomy.brain
    roi_in_brain = np.flatnonzero((anatomy.roi[brain] > 0))  # ROI voxels among brain voxels (same C order)
    baseline = anatomy.baseline[brain]

    sdir = f"subj{subject:02d}"
    pp = out / "nsddata" / "ppdata" / sdir / SPACE
    _save_nifti(anatomy.roi, affine, pp / "roi" / "nsdgeneral.nii.gz")
    _save_nifti(brain.astype(np.uint8), affine, pp / "brainmask.nii.gz")
    _save_nifti(anatomy.baseline, affine, pp / "mean.nii.gz")
    truth = out / TRUTH_DIR / sdir
    truth.mkdir(parents=True, exist_ok=True)
    np.savez(truth / "voxels.npz", roi_index=anatomy.roi_index, grid=np.asarray(grid), affine=affine,
             **{k: v for k, v in asdict(tuning).items()})
    np.save(truth / "true_responses.npy", responses)
    ts = out / "nsddata_timeseries" / "ppdata" / sdir / SPACE
    betas_dir = out / "nsddata_betas" / "ppdata" / sdir / SPACE / BETAS_VERSION
    betas_dir.mkdir(parents=True, exist_ok=True)

    n_sessions, n_runs, _ = stimpattern.shape
    offset = 0
    for session in range(1, n_sessions + 1):
        pose = np.zeros(6)
        true_betas, glm_betas = [], []
        for run in range(1, n_runs + 1):
            slots = np.flatnonzero(stimpattern[session - 1, run - 1])
            image_ids = subjectim[subject - 1, masterordering[offset : offset + len(slots)] - 1]
            offset += len(slots)
            onsets = slots * SPACES[SPACE]["rows_per_trial"] * TR
            # True single-trial betas: the voxel's mean response to the image plus trial variability
            # (the control world: to a random image, not the one shown).
            evoked = rng.integers(1, len(responses) + 1, len(slots)) if shuffled else image_ids
            b = responses[evoked - 1] + rng.normal(0, noise.trial_sd, (len(slots), responses.shape[1])) * tuning.amplitude
            b = b.astype(np.float32)
            true_betas.append(b)
            regs = timeseries.trial_regressors(onsets, N_VOLS, TR, hrfs, hrf_dt)
            regs /= regs.max(axis=1, keepdims=True)  # unit peak: beta = peak % signal change
            psc = noise.noise_sd * timeseries.correlated_noise(brain, N_VOLS, rng, noise.ar, noise.spatial_sigma, noise.global_fraction)
            psc += timeseries.drift(psc.shape[1], N_VOLS, TR, rng, noise.drift)
            for h in np.unique(tuning.hrf_index):
                sel = tuning.hrf_index == h
                psc[:, roi_in_brain[sel]] += regs[h] @ b[:, sel]
            series = baseline * (1.0 + psc / 100.0)  # (T, n_brain), the motion-free brain frame
            glm_betas.append(_glm_betas(series, onsets))
            design = np.zeros(N_VOLS - 1, np.int64)
            design[slots * SPACES[SPACE]["rows_per_trial"]] = image_ids
            motion = timeseries.make_motion(N_VOLS, rng, start=pose) if noise.motion else np.zeros((N_VOLS, 6))
            if run == 1:
                motion -= motion[0]  # the session's first volume is the reference pose
            pose = motion[-1] + rng.normal(0, [0.2, 0.2, 0.2, 0.002, 0.002, 0.002])
            frames = np.zeros((N_VOLS, *grid), np.float32)
            frames[:, brain] = series
            if noise.motion:
                frames = timeseries.move_volumes(frames, affine, motion)
            inside = frames > 1.0
            frames[inside] += rng.normal(0, noise.thermal, int(inside.sum())).astype(np.float32)
            vols = np.clip(np.rint(frames), 0, np.iinfo(np.int16).max).astype(np.int16).transpose(1, 2, 3, 0)
            _save_nifti(vols, affine, ts / "timeseries" / f"timeseries_session{session:02d}_run{run:02d}.nii.gz", tr=TR)
            _write_column(ts / "design" / f"design_session{session:02d}_run{run:02d}.tsv", design, "%d")
            _write_column(ts / "motion" / f"motion_session{session:02d}_run{run:02d}.tsv", motion, "%.6f")
            if bar:
                bar.advance(run_task)
        np.save(truth / f"true_betas_session{session:02d}.npy", np.concatenate(true_betas))
        est = np.concatenate(glm_betas)  # (n_trials, n_brain)
        full = np.zeros((est.shape[0], *grid), np.int16)
        full[:, brain] = np.clip(np.rint(est * BETA_SCALE), -32768, 32767)
        with h5py.File(betas_dir / f"betas_session{session:02d}.hdf5", "w") as f:
            f.create_dataset("betas", data=full.transpose(0, 3, 2, 1))  # read back as (n, Z, Y, X), as NSD's


def load_truth(root: str | Path, subject: int | None = None) -> dict:
    """Ground truth of a synthetic dataset: ``world`` (dict), ``embeddings``, ``features``, and for
    a ``subject`` its ``voxels`` (dict of arrays), ``true_responses`` and ``true_betas``
    ({session: (n_trials, n_roi)})."""
    base = Path(root) / TRUTH_DIR
    world_path = base / "world.json"
    if not world_path.is_file():
        raise FileNotFoundError(f"{world_path}: missing (expected the ground truth of a synthetic dataset made by 'rtrecon synth')")
    out: dict = {
        "world": json.loads(world_path.read_text()),
        "embeddings": np.load(base / "embeddings.npy"),
        "features": np.load(base / "features.npy"),
    }
    if subject is not None:
        sdir = base / f"subj{subject:02d}"
        if not sdir.is_dir():
            raise FileNotFoundError(f"{sdir}: missing (no ground truth for subject {subject})")
        with np.load(sdir / "voxels.npz") as z:
            out["voxels"] = {k: z[k] for k in z.files}
        out["true_responses"] = np.load(sdir / "true_responses.npy")
        out["true_betas"] = {int(p.stem[-2:]): np.load(p) for p in sorted(sdir.glob("true_betas_session*.npy"))}
    return out


def _zscore(betas: np.ndarray) -> np.ndarray:
    std = betas.std(0, ddof=1)
    return np.divide(betas - betas.mean(0), std, out=np.zeros_like(betas), where=std > 0)


def ncsnr(root: str | Path, subject: int, sessions: list[int] | None = None) -> np.ndarray:
    """Per-voxel noise-ceiling SNR of ``subject``'s released betas over nsdgeneral, the NSD way.

    Betas are z-scored per voxel within each session; for the images shown 3 times (in
    ``sessions``, default all), the noise variance is the mean over images of the variance across
    their repeats (ddof 1), the signal SD ``sqrt(max(0, 1 - noise variance))``, and ncsnr the
    signal SD over the noise SD (Allen et al. 2022, Methods).
    """
    nsd = NSDDataset(root)
    sessions = sessions or nsd.sessions(subject)
    mask = nsd.roi_mask(subject)
    trials = [t for t in nsd.trials(subject) if t.session in sessions]
    betas = np.concatenate([_zscore(nsd.betas(subject, s, mask=mask).astype(np.float64)) for s in sessions])
    ids = np.array([t.image_id for t in trials])
    if len(ids) != len(betas):
        raise ValueError(f"{root}: subject {subject} has {len(betas)} betas for {len(ids)} trials in sessions {sessions}")
    unique, counts = np.unique(ids, return_counts=True)
    thrice = unique[counts == 3]
    if not thrice.size:
        raise ValueError(f"{root}: subject {subject} sees no image 3 times in sessions {sessions}: ncsnr needs repeats")
    noise_var = np.mean([betas[ids == i].var(0, ddof=1) for i in thrice], axis=0)
    return np.sqrt(np.clip(1.0 - noise_var, 0.0, None)) / np.sqrt(noise_var)


def ceiling_ranks(root: str | Path, subject: int, betas: np.ndarray, image_ids: np.ndarray,
                  gallery_ids: np.ndarray) -> np.ndarray:
    """1-based rank of each trial's image among ``gallery_ids`` by an oracle that knows the world.

    The oracle correlates each trial's beta (rows of ``betas``, trials × nsdgeneral voxels, any
    scale: z-scored per voxel here) with the noise-free mean response of every gallery image
    (``true_responses``, z-scored per voxel over the gallery): what the betas carry about the
    image, whatever a decoder learns. Its top-1 is the identification ceiling a decoder's
    thresholds are set against; in the shuffled world it is at chance.
    """
    truth = load_truth(root, subject)
    responses = truth["true_responses"][np.asarray(gallery_ids) - 1].astype(np.float64)
    responses = _zscore(responses)
    b = _zscore(np.asarray(betas, np.float64))
    b -= b.mean(1, keepdims=True)
    responses -= responses.mean(1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True) + 1e-12
    responses /= np.linalg.norm(responses, axis=1, keepdims=True) + 1e-12
    scores = b @ responses.T
    index = {int(g): k for k, g in enumerate(gallery_ids)}
    targets = np.array([index[int(i)] for i in image_ids])
    own = scores[np.arange(len(b)), targets]
    return (scores > own[:, None]).sum(1) + 1


def noise_ceiling(snr: np.ndarray, n_trials: int = 1) -> np.ndarray:
    """NSD's noise ceiling (% of variance explainable) of the average of ``n_trials`` trials."""
    snr2 = np.asarray(snr, np.float64) ** 2
    return 100.0 * snr2 / (snr2 + 1.0 / n_trials)


_README = """# Synthetic NSD-layout dataset ({root})

Made by `rtrecon synth` (seed {seed}, {subjects} subjects × {sessions} sessions × {runs} runs,
{n_images} images of which {n_shared} shared). Read it with `rtrecon.data.nsd.NSDDataset`.

Differences from real NSD: the time series are NOT motion corrected (the motion files hold the
true head pose per volume, relative to the session's first volume); betas are `{betas_version}`
(LSA least squares, Glover HRF, on the motion-free series); fewer sessions/runs per subject.
Ground truth lives in `synthetic_truth/` (see `rtrecon.data.synthetic.load_truth`).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    """``rtrecon synth``: write synthetic subjects in the NSD layout."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (the NSD root to create)")
    parser.add_argument("--subjects", type=int, default=4, help="number of subjects (default 4)")
    parser.add_argument("--sessions", type=int, default=2, help="sessions per subject (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="runs per session (default 3; NSD has 12)")
    parser.add_argument("--size", choices=sorted(PRESETS), default="small",
                        help="small: fast demo grids (default); nsd: NSD subject grids and ROI sizes")
    parser.add_argument("--seed", type=int, default=0, help="random seed (output is deterministic for it)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="typical",
                        help="noise level: typical (median ncsnr 0.33-0.39, inside NSD's nsdgeneral range; default) or "
                             "high-snr (0.63-0.71, the top of NSD's range)")
    parser.add_argument("--shuffled", action="store_true",
                        help="control world: each trial's response is that of a random image (decoding must fall to chance)")
    parser.add_argument("--shared-images", type=int,
                        help="number of shared test images, each seen 3 times by every subject "
                             "(default: the preset's share of the trials)")
    parser.add_argument("--no-motion", action="store_true", help="leave the head still")
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(func=_main)


def _main(ns: argparse.Namespace) -> int:
    console = Console(stderr=True, soft_wrap=True)
    if (ns.out / "nsddata").exists():
        console.print(f"[red]error:[/] {ns.out} already holds a dataset (nsddata/); choose an empty folder")
        return 2
    preset = PRESETS[ns.size]
    if ns.no_motion:
        preset = replace(preset, noise=replace(preset.noise, motion=False))
    try:
        root = generate(ns.out, ns.subjects, ns.sessions, ns.runs, preset, ns.seed, progress=not ns.quiet,
                        shared_images=ns.shared_images, world=ns.world, shuffled=ns.shuffled)
    except ValueError as err:
        console.print(f"[red]error:[/] {err}")
        return 2
    notes = NSDDataset(root).check()
    for line in notes:
        console.print(line)
    try:
        snr = np.median(ncsnr(root, 1))
        console.print(f"world {ns.world}{' (shuffled control)' if ns.shuffled else ''}: subject 1's median ncsnr "
                      f"over nsdgeneral {snr:.2f}")
    except ValueError as err:  # too few sessions for images seen 3 times
        console.print(f"no ncsnr: {err}")
    console.print(f"wrote {root} (checked with rtrecon.data.nsd)")
    return 0
