"""Engine latency per volume, and a whole run against the published real-time recipe.

An NSD-size synthetic run (81×104×83 grid at 1.8 mm, 15,724 ROI voxels, TR 1.333 s, 226
volumes, NSD's 3 s images every 4 s) with rigid head motion (a slow drift and one 1.5 mm jerk)
and trial responses in the ROI is fed to :class:`engine.server.Engine` message by message, as
it would receive them: each volume is persisted (fsynced), realigned, added to the GLM, and
every trial is released 8 s after its onset with its LSS beta (and again at run end). The per-volume latency is
"received → GLM updated" from the engine's own stage timings (the first volume, which builds the
reference and brain mask, is reported apart), in wall time and in CPU time of this process
(``cpu_median_ms``: on a shared machine the wall time includes waiting for a core).
``end_start_cost_ratio`` compares the median latency over the last fifth of the run with the
first fifth. ``engine_run_s`` is the wall time from the first event to the last volume's
trials released; ``run_end_s`` (final LSA/LSS betas from fresh statistics, and the gzip of the
BIDS run that the engine does in a background thread) comes after the run and is reported apart.

Baseline, in the same run: the recipe of the published real-time MindEye pipeline, with
elastix (Debian's, one thread) standing in for FSL's mcflirt: a rigid registration of every
volume to the reference with the resampled volume written out, and for every trial a nilearn
``FirstLevelModel`` fit (OLS, LSS design: that trial, the other trials, motion, cosine drift) on
the run so far, masked to the ROI. Without elastix a scipy Powell rigid registration is used.
With ``--quick`` the run has 40 volumes, only a few registrations and refits are timed, and the
baseline's whole-run time is extrapolated from them (``baseline_extrapolated`` says so).

All work runs on one core (BLAS and OpenMP threads are pinned to 1 before numpy loads).

    .venv/bin/python benchmarks/engine_latency.py [--quick] [--volumes N]

The last line printed is one JSON object: {"benchmark": "engine_latency", "machine": ...,
"results": {"median_ms", "p99_ms", "end_start_cost_ratio", "baseline_run_s", "engine_run_s",
"speedup_vs_baseline", "early_beta_r", "end_beta_r", ...}} (the betas' median per-voxel correlation with the
true single-trial responses: see :func:`beta_correlations`).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage, optimize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402
from engine.design import RunDesign  # noqa: E402
from engine.motion import rigid_matrix  # noqa: E402
from engine.server import Engine, EngineSettings  # noqa: E402
from engine.store import SessionStore  # noqa: E402
from rtrecon.contract.wire import EventMessage, RunEndMessage, VolumeMessage  # noqa: E402

SHAPE = (81, 104, 83)
VOXEL_MM = 1.8
TR = 1.333171
N_ROI = 15724
SESSION = "sub-01_ses-01"


def synthetic_run(n_volumes: int, seed: int = 0):
    """Volumes (int16), affine, ROI mask, trial onsets and true motion of an NSD-size run."""
    rng = np.random.default_rng(seed)
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * (np.array(SHAPE) - 1) / 2
    grid = np.indices(SHAPE, dtype=np.float32)
    centre = (np.array(SHAPE) - 1) / 2
    radii = np.array(SHAPE) * np.array([0.40, 0.42, 0.38])
    r = np.sqrt(sum(((grid[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))
    texture = ndimage.gaussian_filter(rng.normal(size=SHAPE).astype(np.float32), 2.0)
    anatomy = ndimage.gaussian_filter(((r < 1) * (900 + 2500 * texture)).clip(0), 1.0).astype(np.float32)
    brain = r < 0.92
    # The ROI: the most posterior brain voxels (nsdgeneral covers visual cortex).
    order = np.argsort(grid[1][brain], kind="stable")
    roi = np.zeros(SHAPE, bool)
    roi[tuple(np.argwhere(brain)[order[:N_ROI]].T)] = True
    onsets = np.arange(4.0 * 1.0, n_volumes * TR - 10.0, 4.0)
    design = RunDesign(TR, n_volumes)
    tuning = rng.normal(0, 1, (len(onsets), int(roi.sum()))).astype(np.float32)
    motion = np.cumsum(rng.normal(0, [0.03, 0.03, 0.03, 3e-4, 3e-4, 3e-4], (n_volumes, 6)), axis=0)
    motion[n_volumes // 2:] += [1.0, -0.8, 0.5, 0.01, 0.0, -0.008]
    motion -= motion[0]
    centre_mm = (affine @ np.r_[centre, 1])[:3]
    responses = np.stack([design.trial_columns(o, 3.0)[:, 0] for o in onsets], axis=1)  # (n, trials)
    volumes = np.empty((n_volumes, *SHAPE), np.int16)
    for i in range(n_volumes):
        clean = anatomy.copy()
        clean[roi] *= 1 + 0.02 * (responses[i] @ tuning)
        clean += rng.normal(0, 8, SHAPE).astype(np.float32) * (anatomy > 0)
        vmap = np.linalg.inv(affine) @ rigid_matrix(motion[i], centre_mm) @ affine
        volumes[i] = ndimage.affine_transform(clean, np.linalg.inv(vmap), order=1, mode="nearest").clip(0, 32767)
    return volumes, affine, roi, onsets, motion, tuning


def beta_correlations(session: Path, tuning: np.ndarray) -> dict:
    """How well the released betas follow the true single-trial responses (``tuning``, trials × ROI).

    Per ROI voxel, the correlation over trials of the true response with the beta the engine
    released first (``early_beta_r``: 8 s after onset, what is decoded live) and with the run's
    end-of-run LSS beta (``end_beta_r``); the median over voxels.
    """
    # One file per release (``desc-trial<N>...beta.npz``); the first name in order is the first release.
    early: dict[int, np.ndarray] = {}
    for path in sorted(session.rglob("*_desc-trial*beta.npz")):
        match = re.search(r"desc-trial(\d+)\D*?\d*beta\.npz$", path.name)
        if match and int(match.group(1)) not in early:
            early[int(match.group(1))] = np.load(path)["beta"]
    if not early:
        raise FileNotFoundError(f"no released trial betas (*_desc-trial<N>beta.npz) under {session}")
    (final,) = session.rglob("*_desc-trialbetas.npz")
    with np.load(final) as f:
        end = dict(zip(f["trials"].tolist(), f["lss"]))

    def median_r(betas: dict) -> float:
        trials = sorted(betas)
        b, t = np.stack([betas[i] for i in trials]), tuning[trials].astype(np.float64)
        b, t = b - b.mean(0), t - t.mean(0)
        return float(np.median(np.sum(b * t, 0) / np.sqrt(np.sum(b**2, 0) * np.sum(t**2, 0) + 1e-30)))

    return {"early_beta_r": median_r(early), "end_beta_r": median_r(end)}


def run_engine(volumes, affine, roi, onsets, work: Path) -> dict:
    nib.save(nib.Nifti1Image(roi.astype(np.uint8), affine), work / "roi.nii.gz")
    # One live release per trial, at 8 s, as the baseline refits (each trial also gets one at run end).
    settings = EngineSettings(roi_mask=work / "roi.nii.gz", planned_volumes=len(volumes), releases_s=[8.0])
    store = SessionStore(work / "session", "01", "01", "bench")
    engine = Engine(settings, store)
    start = time.perf_counter()
    sent = 0
    cpu = []
    for i, volume in enumerate(volumes):
        while sent < len(onsets) and onsets[sent] <= i * TR:
            engine.handle(EventMessage(session=SESSION, run=1, trial=sent, onset=float(onsets[sent]), duration=3.0,
                                       trial_type="image", stimulus=f"img{sent}"))
            sent += 1
        before = time.process_time()
        engine.handle(VolumeMessage(session=SESSION, run=1, index=i, tr=TR, voxels=volume, affine=affine,
                                    stamps={"sent": time.time()}))
        cpu.append((time.process_time() - before) * 1000)
    total = time.perf_counter() - start
    start = time.perf_counter()
    engine.handle(RunEndMessage(session=SESSION, run=1, n_volumes=len(volumes)))
    engine.join_background()  # the BIDS run's gzip must not run during the baseline
    run_end = time.perf_counter() - start
    timings = pd.read_csv(store.derivative_path(1, "volumetimings"), sep="\t", na_values="n/a")
    confounds = pd.read_csv(store.derivative_path(1, "confounds_timeseries"), sep="\t", na_values="n/a")
    latency = timings.glm_updated_ms.to_numpy()
    fifth = max(1, (len(latency) - 1) // 5)
    return {
        "total_s": total,
        "run_end_s": run_end,
        "cpu_ms": np.array(cpu[1:]),
        "first_volume_ms": float(latency[0]),
        "latency_ms": latency[1:],
        "end_start": float(np.median(latency[-fifth:]) / np.median(latency[1 : 1 + fifth])),
        "realigned_ms": float(np.median((timings.realigned_time - timings.persisted_time)[1:] * 1000)),
        "params": confounds[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy(),
    }


_ELASTIX_PARAMS = """(FixedInternalImagePixelType "float")
(MovingInternalImagePixelType "float")
(Registration "MultiResolutionRegistration")
(Interpolator "BSplineInterpolator")
(ResampleInterpolator "FinalBSplineInterpolator")
(Resampler "DefaultResampler")
(FixedImagePyramid "FixedSmoothingImagePyramid")
(MovingImagePyramid "MovingSmoothingImagePyramid")
(Optimizer "AdaptiveStochasticGradientDescent")
(Transform "EulerTransform")
(Metric "AdvancedMeanSquares")
(AutomaticScalesEstimation "true")
(AutomaticTransformInitialization "false")
(NumberOfResolutions 2)
(MaximumNumberOfIterations 250)
(NumberOfSpatialSamples 4000)
(ImageSampler "RandomCoordinate")
(WriteResultImage "true")
(ResultImageFormat "nii.gz")
"""


def register_elastix(fixed: Path, volume: np.ndarray, affine: np.ndarray, work: Path) -> float:
    """Seconds for one elastix rigid registration (+ resampled volume written), as a pipeline runs it."""
    start = time.perf_counter()
    moving = work / "moving.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), moving)
    out = work / "elx"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    subprocess.run(["elastix", "-f", str(fixed), "-m", str(moving), "-p", str(work / "rigid.txt"), "-out", str(out),
                    "-threads", "1"], check=True, capture_output=True)
    np.asarray(nib.load(next(out.glob("result.0.nii*"))).dataobj)
    return time.perf_counter() - start


def register_scipy(reference: np.ndarray, volume: np.ndarray, affine: np.ndarray) -> float:
    """Seconds for a generic scipy rigid registration (Powell on the mean squared difference)."""
    start = time.perf_counter()
    centre = (affine @ np.r_[(np.array(reference.shape) - 1) / 2, 1])[:3]
    small_ref = reference[::2, ::2, ::2]
    step = affine.copy()
    step[:3, :3] *= 2

    def cost(p):
        vmap = np.linalg.inv(affine) @ rigid_matrix(p, centre) @ step
        return float(((ndimage.affine_transform(volume, vmap, output_shape=small_ref.shape, order=1) - small_ref) ** 2).mean())

    best = optimize.minimize(cost, np.zeros(6), method="Powell", options={"xtol": 1e-3, "ftol": 1e-6}).x
    ndimage.affine_transform(volume, np.linalg.inv(affine) @ rigid_matrix(best, centre) @ affine, order=1)
    return time.perf_counter() - start


def refit_nilearn(volumes, affine, roi, onsets, params, n: int, target: int) -> float:
    """Seconds for one from-scratch FirstLevelModel LSS fit of trial ``target`` on volumes :n."""
    from nilearn.glm.first_level import FirstLevelModel

    start = time.perf_counter()
    img = nib.Nifti1Image(np.moveaxis(volumes[:n], 0, -1).astype(np.float32), affine)
    events = pd.DataFrame({"onset": onsets, "duration": 3.0,
                           "trial_type": ["target" if i == target else "other" for i in range(len(onsets))]})
    events = events[events.onset < n * TR]
    confounds = pd.DataFrame(params[:n], columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"])
    model = FirstLevelModel(t_r=TR, noise_model="ols", signal_scaling=False, hrf_model="glover",
                            drift_model="cosine", mask_img=nib.Nifti1Image(roi.astype(np.uint8), affine),
                            minimize_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(img, events=events, confounds=confounds)
        model.compute_contrast("target", output_type="effect_size")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 volumes; baseline timed on a sample and extrapolated")
    parser.add_argument("--volumes", type=int, default=None, help="run length (default 226, quick 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    n = args.volumes or (40 if args.quick else 226)

    t0 = time.perf_counter()
    volumes, affine, roi, onsets, motion, tuning = synthetic_run(n)
    print(f"synthetic run: {n} volumes of {SHAPE}, {int(roi.sum())} ROI voxels, {len(onsets)} trials "
          f"({time.perf_counter() - t0:.1f} s to make)", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        eng = run_engine(volumes, affine, roi, onsets, work)
        betas_r = beta_correlations(work / "session", tuning)
        lat = eng["latency_ms"]
        centre_err = np.abs(eng["params"][:, :3] - motion[:, :3]).mean()
        print(f"engine: {eng['total_s']:.2f} s for the run (+ {eng['run_end_s']:.2f} s at its end: final betas, "
              f"compressing the BIDS run); per volume median {np.median(lat):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms "
              f"(CPU {np.median(eng['cpu_ms']):.1f} ms; realign {eng['realigned_ms']:.1f} ms); first volume "
              f"{eng['first_volume_ms']:.0f} ms; end/start {eng['end_start']:.2f}; translation error {centre_err:.3f} mm",
              flush=True)

        use_elastix = shutil.which("elastix") is not None
        fixed = work / "fixed.nii.gz"
        nib.save(nib.Nifti1Image(volumes[0], affine), fixed)
        (work / "rigid.txt").write_text(_ELASTIX_PARAMS)
        sample = np.linspace(1, n - 1, 3 if args.quick else n - 1).astype(int)
        reg_times = [register_elastix(fixed, volumes[i], affine, work) if use_elastix
                     else register_scipy(volumes[0].astype(np.float32), volumes[i].astype(np.float32), affine)
                     for i in sample]
        ready = [min(n, int(np.ceil((o + 8.0) / TR)) + 1) for o in onsets]
        fit_points = list(range(len(onsets))) if not args.quick else list(np.linspace(0, len(onsets) - 1, 3).astype(int))
        fit_times = {t: refit_nilearn(volumes, affine, roi, onsets, motion, ready[t], t) for t in fit_points}
        if args.quick:
            slope, intercept = np.polyfit([ready[t] for t in fit_points], [fit_times[t] for t in fit_points], 1)
            refit_total = float(sum(intercept + slope * r for r in ready))
            registration_total = float(np.mean(reg_times) * n)
        else:
            refit_total = float(sum(fit_times.values()))
            registration_total = float(np.sum(reg_times))
        baseline = registration_total + refit_total
        print(f"baseline ({'elastix' if use_elastix else 'scipy Powell'} + nilearn refit per trial): "
              f"registration {np.median(reg_times) * 1000:.0f} ms per volume, refit {np.median(list(fit_times.values())) * 1000:.0f} ms "
              f"per trial; whole run {baseline:.1f} s", flush=True)

    results = {
        "median_ms": float(np.median(lat)),
        "p99_ms": float(np.percentile(lat, 99)),
        "end_start_cost_ratio": eng["end_start"],
        "baseline_run_s": baseline,
        "engine_run_s": eng["total_s"],
        "speedup_vs_baseline": baseline / eng["total_s"],
        "cpu_median_ms": float(np.median(eng["cpu_ms"])),
        "cpu_p99_ms": float(np.percentile(eng["cpu_ms"], 99)),
        "run_end_s": eng["run_end_s"],
        "first_volume_ms": eng["first_volume_ms"],
        "realign_median_ms": eng["realigned_ms"],
        "translation_error_mm": float(centre_err),
        "baseline_registration_ms": float(np.median(reg_times) * 1000),
        "baseline_refit_ms": float(np.median(list(fit_times.values())) * 1000),
        "baseline_registration": "elastix" if use_elastix else "scipy-powell",
        "baseline_extrapolated": bool(args.quick),
        "volumes": n,
        "roi_voxels": int(roi.sum()),
        "trials": len(onsets),
        **betas_r,
    }
    emit("engine_latency", results, machine_extra="engine run on 1 core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
