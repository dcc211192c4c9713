"""Early releases with what the session already knows: noise pool and per-voxel HRF (engine.early).

A synthetic demo world (``rtrecon.data.synthetic``, the ``small`` preset without head motion, one
subject, one session of 4 runs) is made in a temporary folder. Runs 1-3 are the session's
earlier runs: :class:`engine.early.NoisePool` (from every brain voxel: the engine's ROI alone has
few voxels the task does not drive) and :class:`engine.early.HRFChoice` (ROI voxels) are fitted
on them. Run 4 is streamed volume by volume into :class:`engine.glm.IncrementalGLM`, and each
trial is released ``--delay`` s after its onset (the engine's default first release, 8 s) with
its LSS beta: plain, with the noise regressors as confounds, with the chosen HRFs, and with both.
``*_r`` is the median over ROI voxels of the correlation over trials of the released beta with
the true single-trial beta (``synthetic_truth/.../true_betas_session01.npy``); the baseline is
``ols_r`` (what the engine releases today), measured in the same run.

With ``--engine`` the demo's own world (``rtrecon demo``'s default: the ``small`` preset, world
``high-snr``, head motion on unless ``--no-motion``) goes through the live engine instead: every run is streamed through
:meth:`engine.server.Engine.handle` (realignment, the session's ``[engine.early]`` options learned
at each run's start from the runs before it, releases at 8 and 16 s), once per option, and
``engine_*_r`` scores the first releases of the last run as above.

With ``--demo`` the runs are the ones ``rtrecon demo`` decodes live: its default dataset (4 subjects
× 4 sessions × 1 run, ``small``, ``high-snr``, seed 0, from the demo's cache or made there), subject
1's sessions 1-4, each streamed through the engine as a session of its own (a live session has no
earlier run). ``demo_r`` is the mean over the four of the first releases' median per-voxel r with the
true betas, for the engine's defaults and for each default knob turned back
(``release_motion_confounds = true``, ``resample_order = 1``, both); with ``--checkpoint`` (the demo's
fine-tuned decoder, ``finetune/last.pth`` in its cache) also the retrieval top-1 of session 4's
decoded first releases (the live session: the decoder never saw it) over the session's images.

    .venv/bin/python benchmarks/early_estimates.py [--quick] [--delay S] [--engine] [--demo [--checkpoint PTH]]

The last line printed is one JSON object: {"benchmark": "early_estimates", "machine": ...,
"results": {"ols_r", "noise_pool_r", "hrf_r", "both_r", ...}} (``--engine``: {"engine_ols_r",
"engine_noise_pool_r", "engine_hrf_r", "engine_both_r", ...}).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402
from engine.design import RunDesign  # noqa: E402
from engine.early import EarlyRun, HRFChoice, NoisePool  # noqa: E402
from engine.glm import IncrementalGLM  # noqa: E402
from rtrecon.data import synthetic  # noqa: E402

SPACE = "func1pt8mm"


def load_world(root: Path, n_runs: int):
    """Per run: (ROI signal, every brain voxel's signal, onsets, true betas); the ROI size."""
    truth = synthetic.load_truth(root, 1)
    base = root / "nsddata_timeseries" / "ppdata" / "subj01" / SPACE
    anat = root / "nsddata" / "ppdata" / "subj01" / SPACE
    roi = truth["voxels"]["roi_index"]
    brain = nib.load(anat / "brainmask.nii.gz").get_fdata().ravel() > 0
    inside = np.zeros(brain.size, bool)
    inside[roi] = True
    others = np.flatnonzero(brain & ~inside)
    true_betas = truth["true_betas"][1]
    runs, start = [], 0
    for run in range(1, n_runs + 1):
        data = np.asarray(nib.load(base / "timeseries" / f"timeseries_session01_run{run:02d}.nii.gz").dataobj)
        flat = data.reshape(-1, data.shape[-1]).astype(np.float64)
        onsets = np.flatnonzero(np.loadtxt(base / "design" / f"design_session01_run{run:02d}.tsv")) * synthetic.TR
        runs.append((flat[roi].T, np.hstack([flat[roi].T, flat[others].T]), onsets, true_betas[start : start + len(onsets)]))
        start += len(onsets)
    return runs


def release(signal, whole, onsets, delay_s, pool: NoisePool | None, hrf: HRFChoice | None) -> np.ndarray:
    """Each trial's beta released ``delay_s`` after onset, as the engine streams a run."""
    glm = IncrementalGLM(RunDesign(synthetic.TR), signal.shape[1], pool.names if pool is not None else [])
    betas = np.full((len(onsets), signal.shape[1]), np.nan)
    for i, y in enumerate(signal):
        for t, onset in enumerate(onsets):
            if onset <= i * synthetic.TR and t not in glm.trial_ids:
                glm.add_trial(t, onset, 3.0)
        glm.add_volume(y, pool.regressors(whole[i]) if pool is not None else ())
        for t, onset in enumerate(onsets):
            if np.isnan(betas[t, 0]) and i * synthetic.TR >= onset + delay_s:
                betas[t] = hrf.lss(glm, t) if hrf is not None else glm.lss(t)
    return betas


def median_r(betas: np.ndarray, truth: np.ndarray) -> float:
    done = ~np.isnan(betas[:, 0])
    b, t = betas[done] - betas[done].mean(0), truth[done] - truth[done].mean(0)
    return float(np.median(np.sum(b * t, 0) / np.sqrt(np.sum(b**2, 0) * np.sum(t**2, 0) + 1e-30)))


EARLY_OPTIONS = [("ols_r", {}), ("noise_pool_r", {"noise_pool": True}), ("hrf_r", {"hrf_library": True}),
                 ("both_r", {"noise_pool": True, "hrf_library": True})]


def engine_first_release_r(root: Path, n_runs: int, early: dict, work: Path) -> float:
    """Stream the world's runs through the engine with ``[engine.early]`` = ``early``; the median
    per-voxel r of the last run's first releases with the true single-trial betas."""
    from engine.server import Engine, EngineSettings
    from engine.store import SessionStore
    from rtrecon.contract.wire import EventMessage, RunEndMessage, VolumeMessage

    truth = synthetic.load_truth(root, 1)
    base = root / "nsddata_timeseries" / "ppdata" / "subj01" / SPACE
    first = nib.load(base / "timeseries" / "timeseries_session01_run01.nii.gz")
    mask = np.zeros(first.shape[:3], np.uint8).ravel()
    mask[truth["voxels"]["roi_index"]] = 1
    work.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask.reshape(first.shape[:3]), first.affine), work / "roi.nii.gz")
    engine = Engine(EngineSettings(roi_mask=work / "roi.nii.gz", early=early), SessionStore(work / "s", "01", "01", "bench"))
    session = "sub-01_ses-01"
    for run in range(1, n_runs + 1):
        img = nib.load(base / "timeseries" / f"timeseries_session01_run{run:02d}.nii.gz")
        data = np.asarray(img.dataobj)
        onsets = np.flatnonzero(np.loadtxt(base / "design" / f"design_session01_run{run:02d}.tsv")) * synthetic.TR
        for i in range(data.shape[3]):
            for t, onset in enumerate(onsets):
                if (i - 1) * synthetic.TR < onset <= i * synthetic.TR:
                    engine.handle(EventMessage(session=session, run=run, trial=t, onset=float(onset), duration=3.0,
                                               trial_type="image", stimulus=f"img{t}"))
            engine.handle(VolumeMessage(session=session, run=run, index=i, tr=synthetic.TR,
                                        voxels=np.ascontiguousarray(data[..., i]), affine=img.affine))
        engine.handle(RunEndMessage(session=session, run=run, n_volumes=data.shape[3]))
    engine.join_background()
    n_before = sum(len(np.flatnonzero(np.loadtxt(base / "design" / f"design_session01_run{r:02d}.tsv")))
                   for r in range(1, n_runs))
    betas = np.full((len(onsets), int(mask.sum())), np.nan)
    for t in range(len(onsets)):
        path = engine.store.derivative_path(n_runs, f"trial{t}release0beta", ".npz")
        if path.exists():
            betas[t] = np.load(path)["beta"]
    return median_r(betas, truth["true_betas"][1][n_before : n_before + len(onsets)])


DEMO_OPTIONS = [("demo", {}), ("demo_motion_confounds", {"glm": {"release_motion_confounds": True}}),
                ("demo_trilinear", {"resample_order": 1}),
                ("demo_before", {"glm": {"release_motion_confounds": True}, "resample_order": 1})]


def demo_live_release(root: Path, session: int, settings: dict, work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subject 1's ``session`` (its one run) streamed through the engine as a session of its own: the
    first releases' betas and z (trials × ROI, NaN where none), and the images shown."""
    from engine.server import Engine, EngineSettings
    from engine.store import SessionStore
    from rtrecon.contract.wire import EventMessage, RunEndMessage, VolumeMessage

    base = root / "nsddata_timeseries" / "ppdata" / "subj01" / SPACE
    img = nib.load(base / "timeseries" / f"timeseries_session{session:02d}_run01.nii.gz")
    design = np.loadtxt(base / "design" / f"design_session{session:02d}_run01.tsv")
    onsets, images = np.flatnonzero(design) * synthetic.TR, design[design > 0].astype(int)
    roi = synthetic.load_truth(root, 1)["voxels"]["roi_index"]
    mask = np.zeros(img.shape[:3], np.uint8).ravel()
    mask[roi] = 1
    work.mkdir(parents=True)
    nib.save(nib.Nifti1Image(mask.reshape(img.shape[:3]), img.affine), work / "roi.nii.gz")
    engine = Engine(EngineSettings(roi_mask=work / "roi.nii.gz", **settings), SessionStore(work / "s", "01", "01", "bench"))
    data = np.asarray(img.dataobj)
    for i in range(data.shape[3]):
        for t, onset in enumerate(onsets):
            if (i - 1) * synthetic.TR < onset <= i * synthetic.TR:
                engine.handle(EventMessage(session="sub-01_ses-01", run=1, trial=t, onset=float(onset), duration=3.0,
                                           trial_type="image", stimulus=f"nsd:{images[t]}"))
        engine.handle(VolumeMessage(session="sub-01_ses-01", run=1, index=i, tr=synthetic.TR,
                                    voxels=np.ascontiguousarray(data[..., i]), affine=img.affine))
    engine.handle(RunEndMessage(session="sub-01_ses-01", run=1, n_volumes=data.shape[3]))
    engine.join_background()
    betas, z = np.full((2, len(onsets), len(roi)), np.nan)
    for t in range(len(onsets)):
        path = engine.store.derivative_path(1, f"trial{t}release0beta", ".npz")
        if path.exists():
            with np.load(path) as f:
                betas[t], z[t] = f["beta"], f["z"]
    return betas, z, images


def retrieval_top1(checkpoint: Path, z: np.ndarray, images: np.ndarray, embeddings: np.ndarray) -> float:
    """Top-1 of decoded ``z`` over the session's images, as the demo's report scores a trial."""
    import torch

    from rtrecon.models import load_official

    model = load_official(checkpoint).eval()
    gallery_ids = np.unique(images)
    gallery = torch.nn.functional.normalize(torch.from_numpy(embeddings[gallery_ids - 1]).float().flatten(1), dim=-1)
    done = ~np.isnan(z[:, 0])
    with torch.no_grad():
        pred = model.encode(torch.from_numpy(z[done].astype(np.float32)), 0).clip_voxels_norm.float().flatten(1)
    best = (torch.nn.functional.normalize(pred, dim=-1) @ gallery.T).argmax(1).numpy()
    return float(np.mean(gallery_ids[best] == images[done]))


def main_demo(checkpoint: Path | None) -> int:
    from rtrecon.demo.cache import cached_dataset

    root, _ = cached_dataset(4, 4, 1, "small", 0, "high-snr", progress=False)
    truth = synthetic.load_truth(root, 1)
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, settings in DEMO_OPTIONS:
            t0 = time.perf_counter()
            rs = []
            for session in (1, 2, 3, 4):
                betas, z, images = demo_live_release(root, session, settings, Path(tmp) / key / str(session))
                rs.append(median_r(betas, truth["true_betas"][session]))
            results[key + "_r"] = float(np.mean(rs))
            if checkpoint is not None:
                results[key + "_top1"] = retrieval_top1(checkpoint, z, images, truth["embeddings"])
            print(f"{key}: first-release r {results[key + '_r']:.3f} (sessions {', '.join(f'{r:.3f}' for r in rs)})"
                  + (f", session 4 top-1 {results[key + '_top1']:.1%}" if checkpoint is not None else "")
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    results.update(gain=results["demo_r"] - results["demo_before_r"], sessions=4)
    emit("early_estimates", results, machine_extra="1 core")
    return 0


def main_engine(n_runs: int, motion: bool) -> int:
    preset = synthetic.PRESETS["small"]
    preset = replace(preset, noise=replace(preset.noise, motion=motion))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = synthetic.generate(Path(tmp) / "world", 1, 1, n_runs, preset, seed=0, progress=False, world="high-snr")
        print(f"demo world (high-snr, motion {motion}): {n_runs} runs ({time.perf_counter() - t0:.0f} s to make)", flush=True)
        results = {}
        for key, early in EARLY_OPTIONS:
            t0 = time.perf_counter()
            results["engine_" + key] = engine_first_release_r(root, n_runs, early, Path(tmp) / key)
            print(f"engine_{key}: {results['engine_' + key]:.3f} ({time.perf_counter() - t0:.0f} s for the session)", flush=True)
    results.update(earlier_runs=n_runs - 1, motion=motion, gain_both=results["engine_both_r"] - results["engine_ols_r"],
                   gain_noise_pool=results["engine_noise_pool_r"] - results["engine_ols_r"])
    emit("early_estimates", results, machine_extra="1 core")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 earlier runs instead of 3")
    parser.add_argument("--delay", type=float, default=8.0, help="release delay after onset (s)")
    parser.add_argument("--engine", action="store_true", help="through the live engine, on the demo's world (see above)")
    parser.add_argument("--no-motion", action="store_true", help="with --engine: the demo's world without head motion")
    parser.add_argument("--demo", action="store_true", help="the demo's live runs through the engine, per default knob (see above)")
    parser.add_argument("--checkpoint", type=Path, help="with --demo: the demo's decoder, for session 4's top-1")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    if args.demo:
        return main_demo(args.checkpoint)
    n_runs = 3 if args.quick else 4
    if args.engine:
        return main_engine(n_runs, not args.no_motion)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        preset = synthetic.PRESETS["small"]
        preset = replace(preset, noise=replace(preset.noise, motion=False))
        root = synthetic.generate(Path(tmp), 1, 1, n_runs, preset, seed=0, progress=False)
        runs = load_world(root, n_runs)
    print(f"demo world: {n_runs} runs, {runs[0][0].shape[1]} ROI voxels ({time.perf_counter() - t0:.0f} s to make)", flush=True)
    earlier = runs[:-1]
    t0 = time.perf_counter()
    pool = NoisePool().fit([EarlyRun(w, synthetic.TR, o, [3.0] * len(o)) for _, w, o, _ in earlier])
    hrf = HRFChoice().fit([EarlyRun(s, synthetic.TR, o, [3.0] * len(o)) for s, _, o, _ in earlier])
    fit_s = time.perf_counter() - t0
    n_roi = runs[0][0].shape[1]
    print(f"fitted on {len(earlier)} earlier runs in {fit_s:.1f} s: noise pool of {len(pool.pool)} voxels "
          f"({np.mean(pool.pool < n_roi):.0%} in the ROI), {len(np.unique(hrf.choice))} HRFs in use", flush=True)
    signal, whole, onsets, truth = runs[-1]
    results = {}
    for key, kw in [("ols_r", {}), ("noise_pool_r", {"pool": pool}), ("hrf_r", {"hrf": hrf}),
                    ("both_r", {"pool": pool, "hrf": hrf})]:
        t0 = time.perf_counter()
        betas = release(signal, whole, onsets, args.delay, kw.get("pool"), kw.get("hrf"))
        results[key] = median_r(betas, truth)
        print(f"{key}: {results[key]:.3f} ({time.perf_counter() - t0:.1f} s for the run)", flush=True)
    results.update(delay_s=args.delay, earlier_runs=len(earlier), trials=len(onsets), roi_voxels=n_roi,
                   fit_s=fit_s, gain_both=results["both_r"] - results["ols_r"])
    emit("early_estimates", results, machine_extra="1 core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
