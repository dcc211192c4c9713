"""Soak: a long session replayed at the fastest speed, with memory and per-volume time over the run,
and the engine's restart time at 1 000 volumes with and without its checkpoints.

A small synthetic run (a 32×32×20 head-like phantom at 3 mm, TR 1 s, drifting head motion, 3 s
trials every 4 s with responses in a "visual" block) is written as a 4D NIfTI and replayed by the
bridge's :class:`~scanner_bridge.replay.NiftiReplaySource` (``fast``: no waiting for the TR) as
consecutive runs of one session; each volume becomes the bridge's wire message
(:func:`~scanner_bridge.sender.volume_message`) and goes to :meth:`engine.server.Engine.handle` in
this process, with each trial's event sent once its onset has passed, and a ``RunEndMessage`` per
run. Per volume: the wall time of ``handle`` (persist, realign, GLM, every release due) and this
process's resident memory (``/proc/self/statm``). Runs are alike, so the per-run median volume time
and the memory at each run's end should not grow: ``time_flat`` / ``memory_flat`` say whether every
later whole run is within 10 % of the second (the first pays one-off costs: the reference, the
brain mask, first allocations); ``time_growth`` / ``memory_growth`` are last / second.

Restart: once 1 000 volumes are stored (mid-run), the store is copied and a new engine process
recovers each copy (the time of ``Engine.recover``, imports excluded): with the engine's state
checkpoint (:mod:`engine.checkpoint`, written every ``checkpoint_volumes`` volumes and at run ends,
here just written: ``restart_s_at_1000``; writing it costs ``checkpoint_median_ms``, within a volume's time), and ``checkpoint_volumes - 1`` volumes later, the most a
restart replays (``restart_worst_s``); without the state checkpoint, which replays every stored
volume through the GLM and every release, as the engine did before it (``restart_replay_s_at_1000``);
and without the realignment checkpoints either, which also realigns every stored volume
(``restart_realign_s_at_1000``). ``restart_speedup`` is replay / state checkpoint. Every recovered
engine must hold exactly the state of the live one (each live run's ROI signal and frames, every
run's releases and sequence numbers, the z-scoring's running statistics): ``restart_state_identical``.

All work runs on one core (BLAS and OpenMP threads pinned to 1 before numpy loads).

    .venv/bin/python benchmarks/soak.py [--quick] [--volumes N] [--run-volumes N]

The last line printed is one JSON object: {"benchmark": "soak", "machine": ..., "results":
{"volumes", "peak_rss_mb", "final_rss_mb", "max_volume_ms", "median_volume_ms",
"restart_s_at_1000", "restart_worst_s", "restart_replay_s_at_1000", "restart_realign_s_at_1000", "time_flat",
"memory_flat", ...}}.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402
from engine.design import RunDesign  # noqa: E402
from engine.server import Engine, EngineSettings  # noqa: E402
from engine.store import SessionStore  # noqa: E402
from rtrecon.contract import children  # noqa: E402
from rtrecon.contract.wire import EventMessage, RunEndMessage  # noqa: E402
from scanner_bridge.assembly import VolumeReady  # noqa: E402
from scanner_bridge.replay import NiftiReplaySource  # noqa: E402
from scanner_bridge.sender import volume_message  # noqa: E402

SHAPE, VOXEL_MM, TR = (32, 32, 20), 3.0, 1.0
SESSION = "sub-01_ses-01"
_PAGE = os.sysconf("SC_PAGE_SIZE")
SETTINGS = EngineSettings(realign_samples=2000)


def rss_mb() -> float:
    """This process's resident memory now (MiB)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE / 2**20


def synthetic_run(path: Path, n_volumes: int, seed: int = 0) -> np.ndarray:
    """Write a run of ``n_volumes`` (int16) to ``path``; returns the trial onsets (s)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(float)
    centre = (np.array(SHAPE) - 1) / 2
    r = np.sqrt((((grid.T - centre) / (np.array(SHAPE) * 0.4)) ** 2).sum(-1)).T
    anatomy = ndimage.gaussian_filter(1000 * (r < 1) * (1 + 0.3 * ndimage.gaussian_filter(rng.normal(size=SHAPE), 1.5) * 4), 0.7)
    visual = ((grid[1] < 12) & (r < 0.9)).astype(float)
    onsets = np.arange(4.0, (n_volumes - 12) * TR, 4.0)
    design = RunDesign(TR, n_volumes)
    response = sum(rng.uniform(0.5, 1.5) * design.trial_columns(o, 3.0)[:, 0] for o in onsets)
    drift = np.cumsum(rng.normal(0, 0.03, (n_volumes, 3)), axis=0)
    volumes = np.empty((*SHAPE, n_volumes), np.int16)
    for i in range(n_volumes):
        clean = anatomy * (1 + 0.03 * response[i] * visual) + rng.normal(0, 8, SHAPE) * (anatomy > 0)
        volumes[..., i] = np.round(ndimage.shift(clean, drift[i] / VOXEL_MM, order=1, mode="nearest"))
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -VOXEL_MM * centre
    image = nib.Nifti1Image(volumes, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_zooms((VOXEL_MM, VOXEL_MM, VOXEL_MM, TR))
    nib.save(image, path)
    return onsets


def _engine(root: Path, settings: EngineSettings) -> Engine:
    engine = Engine(settings, SessionStore(root, "01", "01", "soak"))
    engine.recover()
    return engine


def _state_digest(engine: Engine) -> str:
    """What a restart must rebuild exactly: each live run's ROI signal and frames, every run's releases,
    and the z-scoring's running statistics (which every release so far has moved)."""
    digest = hashlib.sha256()
    if engine.normaliser is not None:
        meta, arrays = engine.normaliser.state()
        digest.update(repr(meta).encode() + b"".join(arrays[k].tobytes() for k in sorted(arrays)))
    for run, state in sorted(engine.runs.items()):
        if state.glm is None:  # an ended run: what it released is what counts
            digest.update(repr((run, sorted(state.released.items()), state.sequence)).encode())
            continue
        digest.update(np.ascontiguousarray(state.glm.signal).tobytes() + state.glm.frames.tobytes())
        digest.update(repr((run, sorted(state.released.items()), state.sequence)).encode())
    return digest.hexdigest()


def _restart(store_root: Path, into: Path, keep: str) -> tuple[float, str]:
    """Recover a copy of the store in a new engine process: (seconds to recover, state digest).
    ``keep``: "state" (every checkpoint), "realignment" (not the state checkpoint), "none"."""
    shutil.copytree(store_root, into)
    if keep != "state":
        for path in into.rglob("*_desc-enginestate.npz"):
            path.unlink()
    if keep == "none":
        for path in into.rglob("*_desc-realigned.bin"):
            path.unlink()
    out = children.run([sys.executable, __file__, "--recover", str(into)], check=True, capture_output=True, text=True)
    seconds, digest = out.stdout.split()[-2:]
    shutil.rmtree(into)
    return float(seconds), digest


def _recover(root: Path) -> None:
    """(In the restarted process.) Recover the store at ``root``; print the seconds and the state digest."""
    t0 = time.perf_counter()
    engine = _engine(root, SETTINGS)
    seconds = time.perf_counter() - t0
    engine.join_background()
    print(seconds, _state_digest(engine))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="240 volumes in runs of 80, restart at 120 (under a minute)")
    parser.add_argument("--volumes", type=int, default=2000)
    parser.add_argument("--run-volumes", type=int, default=300, help="volumes per run (the session's runs are alike)")
    parser.add_argument("--restart-at", type=int, default=1000)
    parser.add_argument("--recover", type=Path, help=argparse.SUPPRESS)  # the restarted engine's process
    args = parser.parse_args()
    if args.recover is not None:
        _recover(args.recover)
        return 0
    if args.quick:
        args.volumes, args.run_volumes, args.restart_at = 240, 80, 120
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp = Path(tmp)
        nifti = tmp / "run.nii"
        onsets = synthetic_run(nifti, args.run_volumes)
        root = tmp / "store"
        engine = _engine(root, SETTINGS)
        # The state checkpoint's cost, inside the volumes' times (every checkpoint_volumes and at run ends).
        checkpoint_ms, save_state = [], engine._save_state

        def timed_save() -> None:
            t0 = time.perf_counter()
            save_state()
            checkpoint_ms.append((time.perf_counter() - t0) * 1000)

        engine._save_state = timed_save
        volume_ms, rss, run_of = [], [], []
        restart = None
        done, run = 0, 0
        t_start = time.perf_counter()
        while done < args.volumes:
            run += 1
            stop = min(args.run_volumes, args.volumes - done)
            source = NiftiReplaySource(nifti, fast=True, run=run, stop=stop)
            sent = 0
            for event in source:
                if not isinstance(event, VolumeReady):
                    continue
                volume = event.volume
                message = volume_message(SESSION, run, volume)
                t0 = time.perf_counter()
                for trial in np.flatnonzero(((volume.index - 1) * TR < onsets) & (onsets <= volume.index * TR)):
                    engine.handle(EventMessage(session=SESSION, run=run, trial=int(trial), onset=float(onsets[trial]),
                                               duration=3.0, trial_type="image", stimulus=f"img{trial % 7}.png"))
                engine.handle(message)
                volume_ms.append((time.perf_counter() - t0) * 1000)
                rss.append(rss_mb())
                run_of.append(run)
                done += 1
                sent += 1
                if done == args.restart_at:
                    engine.join_background()
                    live = _state_digest(engine)
                    times, digests = {}, []
                    for keep in ("state", "realignment", "none"):
                        times[keep], digest = _restart(root, tmp / f"restart-{keep}", keep)
                        digests.append(digest)
                    identical = all(d == live for d in digests)
                    print(f"restart at {done} volumes: {times['state']:.2f} s from the state checkpoint, "
                          f"{times['realignment']:.2f} s replaying every volume and release, {times['none']:.2f} s "
                          f"also realigning every volume; state identical: {identical}", flush=True)
                if done == args.restart_at + SETTINGS.checkpoint_volumes - 1:
                    engine.join_background()
                    worst, digest = _restart(root, tmp / "restart-worst", "state")
                    identical = identical and digest == _state_digest(engine)
                    restart = (times["state"], worst, times["realignment"], times["none"], identical)
                    print(f"restart {SETTINGS.checkpoint_volumes - 1} volumes after the state checkpoint: {worst:.2f} s; "
                          f"state identical: {identical}", flush=True)
            engine.handle(RunEndMessage(session=SESSION, run=run, n_volumes=sent))
            per_run = np.array(volume_ms)[np.array(run_of) == run]
            print(f"run {run}: {sent} volumes, median {np.median(per_run):.1f} ms, max {per_run.max():.1f} ms, "
                  f"RSS {rss[-1]:.0f} MiB", flush=True)
        total_s = time.perf_counter() - t_start
        engine.join_background()

    volume_ms, rss, run_of = np.array(volume_ms), np.array(rss), np.array(run_of)
    whole = [r for r in range(1, run + 1) if (run_of == r).sum() == args.run_volumes]
    # The first run pays one-off costs (the reference and brain mask, first-use allocations and
    # caches): flatness is judged from the second whole run to the last.
    medians = [float(np.median(volume_ms[run_of == r])) for r in whole]
    ends = [float(rss[run_of == r][-1]) for r in whole]
    results = {
        "volumes": int(done),
        "runs": int(run),
        "run_volumes": args.run_volumes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_rss_mb": float(rss[-1]),
        "max_volume_ms": float(volume_ms.max()),
        "median_volume_ms": float(np.median(volume_ms)),
        "p99_volume_ms": float(np.percentile(volume_ms, 99)),
        "run_median_volume_ms": medians,
        "run_end_rss_mb": ends,
        "time_growth": medians[-1] / medians[1],
        "memory_growth": ends[-1] / ends[1],
        "time_flat": bool(max(medians[1:]) <= 1.1 * medians[1]),
        "memory_flat": bool(max(ends[1:]) <= 1.1 * ends[1]),
        "restart_at": args.restart_at,
        "checkpoint_volumes": SETTINGS.checkpoint_volumes,
        "checkpoint_writes": len(checkpoint_ms),
        "checkpoint_median_ms": float(np.median(checkpoint_ms)),
        "checkpoint_max_ms": float(np.max(checkpoint_ms)),
        "restart_s_at_1000": restart[0] if restart else None,
        "restart_worst_s": restart[1] if restart else None,
        "restart_replay_s_at_1000": restart[2] if restart else None,
        "restart_realign_s_at_1000": restart[3] if restart else None,
        "restart_speedup": restart[2] / restart[0] if restart else None,
        "restart_state_identical": restart[4] if restart else None,
        "session_s": total_s,
        "quick": bool(args.quick),
    }
    emit("soak", results, machine_extra="engine in process on 1 core, replay at full speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
