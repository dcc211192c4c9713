"""Run a live session of an NSD subject through the real processes, then write its report.

:func:`run_session` takes a :class:`LiveSpec` (the NSD root, subject, session, runs, decoder
checkpoint, output folder, replay speed) and

1. writes the session config (``session.toml``: the engine's ROI is the subject's nsdgeneral
   ROI, its ``[decoder]`` the checkpoint and a gallery of the session's images, its ``[reconstruction]``
   the unCLIP folder when one is given, the links on free localhost ports, its ``[stimulus]`` the trial lists written from the design), the trial lists
   and images (:mod:`rtrecon.demo.stimulus_pc`) and the gallery (``gallery.npz``: the targets'
   tokens of every image shown in the session's runs, ids ``nsd:<73k id>``);
2. finds the participant's screen (``DISPLAY``, else a private Xvfb) and starts the engine
   (``rtrecon engine --config``) and the operator console (``rtrecon console``, its address printed), then for each run the stimulus program (``rtrecon stimulus run
   --virtual --speed S``: the real PsychoPy task with a virtual participant, results drawn on its
   window as they arrive) and, once it waits for the scanner, the bridge (``rtrecon bridge
   replay-nsd``); the bridge's first volume starts the program's virtual scanner. Each is its own
   process over ZeroMQ (:class:`~rtrecon.demo.processes.ProcessGroup`); progress (rich) comes from
   the bridge's log and the program's journal, until the bridge has every volume acknowledged and
   the program has shown every trial's result; then the engine is stopped (SIGTERM);
3. builds the report (:func:`rtrecon.demo.collect.build_report`) in
   ``OUT/derivatives/rtrecon/sub-XX/ses-YY/report/``.

The BIDS session (``OUT/sub-XX/ses-YY/func``) and derivatives are the engine's; the processes'
logs are in ``OUT/logs``.
"""

from __future__ import annotations

import json
import re
import time
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rtrecon.data.imagery import CUE_S
from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.collect import LiveSessionFiles, beta_correlation, build_report, decoded_betas
from rtrecon.demo.processes import ProcessFailed, ProcessGroup, free_endpoints
from rtrecon.demo.stimulus_pc import (imagery_settings, journal_path, read_results, start_display, stimulus_command,
                                      stimulus_folder, stimulus_settings, write_imagery_trial_lists, write_trial_lists)
from rtrecon.report import ReportSummary

__all__ = ["LiveSpec", "write_session_config", "write_gallery", "run_session"]


@dataclass(frozen=True)
class LiveSpec:
    """One live session of NSD subject ``subject``, scan session ``session`` (runs ``runs``).

    ``releases_s``: seconds after onset at which each trial is released (and at run end). ``clip_seed``: the seed of the synthetic world's
    CLIP embedder (``OpenClipImageEmbedder.tiny``), which gives the reconstructions' two-way
    identification; None (a real NSD root) leaves it out. ``notes``: lines for the report.
    ``metric_weights``: (metric, local weights file) pairs for MindEye2's metrics of external
    networks (:data:`rtrecon.report.metrics.EXTERNAL_METRICS`); the others are reported not computed.

    ``head``: ``"mindeye"`` (``checkpoint`` a MindEye2 checkpoint) or ``"linear"`` (``checkpoint`` a
    :class:`~rtrecon.models.linear_head.LinearHead` file; retrieval only). ``imagery``: for a mental
    imagery session (task ``imagery``), its trial table (:func:`rtrecon.data.imagery.write_live_session`):
    the stimulus program runs the imagery task and the report scores each trial among its run's targets.
    """

    root: Path
    subject: int
    session: int
    runs: tuple[int, ...]
    checkpoint: Path
    targets: np.ndarray = field(repr=False)
    out: Path
    decoder_subject: int = 0
    decoder_description: str = "MindEye2 checkpoint"
    speed: float = 1.0
    top_k: int = 5
    unclip: Path | None = None
    released_betas: bool = True
    releases_s: tuple[float, ...] = (8.0, 16.0)
    clip_seed: int | None = None
    notes: tuple[str, ...] = ()
    metric_weights: tuple[tuple[str, Path], ...] = ()
    head: Literal["mindeye", "linear"] = "mindeye"
    imagery: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def task(self) -> str:
        return "perception" if self.imagery is None else "imagery"

    @property
    def bids_subject(self) -> str:
        return f"{self.subject:02d}"

    @property
    def bids_session(self) -> str:
        return f"{self.session:02d}"


def _toml(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Path):
        # A config's relative paths are read from the config's own folder: write them absolute.
        return json.dumps(str(value.resolve()))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_session_config(spec: LiveSpec, nsd: NSDDataset, gallery: Path, endpoints: Sequence[str], n_volumes: int) -> Path:
    """``OUT/session.toml`` for the engine, the bridge and the stimulus program (whose trial lists and
    images it writes in ``OUT/stimulus``: :func:`rtrecon.demo.stimulus_pc.write_trial_lists`)."""
    stimulus_dir = spec.out / "stimulus"
    if spec.imagery is None:
        trial_lists = write_trial_lists(nsd, spec.subject, spec.session, stimulus_dir)
    else:
        trial_lists = write_imagery_trial_lists(nsd, spec.subject, spec.session, spec.imagery, stimulus_dir)
    decoder = ({"head": "linear", "linear_head": spec.checkpoint} if spec.head == "linear"
               else {"checkpoint": spec.checkpoint, "subject": spec.decoder_subject})
    engine: dict[str, object] = {"roi_mask": nsd.roi_path(spec.subject), "planned_volumes": n_volumes,
                                 "releases_s": list(spec.releases_s)}
    sections = {
        "session": {"subject": spec.bids_subject, "session": spec.bids_session, "task": spec.task, "output_dir": spec.out},
        "network": dict(zip(("volumes", "events", "results", "status", "operator"), endpoints), heartbeat_s=0.5),
        "bridge": {"spool_dir": spec.out / "bridge_spool"},
        "engine": engine,
        "decoder": {**decoder, "gallery": gallery, "top_k": spec.top_k},
    }
    if spec.unclip is not None:
        sections["reconstruction"] = {"unclip": spec.unclip}
    if spec.imagery is None:
        sections.update(stimulus_settings(trial_lists, nsd.tr, stimulus_dir / "images"))
    else:
        sections.update(imagery_settings(trial_lists, nsd.tr, stimulus_dir / "images", CUE_S))
    lines = ["# written by rtrecon demo / rtrecon replay nsd"]
    for name, keys in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml(v)}" for k, v in keys.items()]
    path = spec.out / "session.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_gallery(spec: LiveSpec, nsd: NSDDataset) -> tuple[Path, np.ndarray, list[str]]:
    """The session's images (every run of it) as the retrieval gallery ``OUT/gallery.npz``."""
    image_ids = sorted({int(i) for run in nsd.runs(spec.subject, spec.session)
                        for i in nsd.events(spec.subject, spec.session, run)["image_id"]})
    if not image_ids:
        raise ValueError(f"{nsd.root}: subject {spec.subject} session {spec.session} shows no images")
    embeddings = np.asarray(spec.targets[np.asarray(image_ids) - 1], np.float32)
    ids = [f"nsd:{i}" for i in image_ids]
    path = spec.out / "gallery.npz"
    np.savez(path, embeddings=embeddings, ids=np.array(ids))
    return path, embeddings, ids


def _image_lookup(nsd: NSDDataset) -> Callable[[list[str]], list[np.ndarray | None]]:
    cache: dict[str, np.ndarray] = {}

    def images(ids: list[str]) -> list[np.ndarray | None]:
        wanted = [i for i in ids if i.startswith("nsd:") and i not in cache]
        if wanted:
            for name, image in zip(wanted, nsd.images([int(i[4:]) for i in wanted])):
                cache[name] = image
        return [cache.get(i) for i in ids]

    return images


def _count_lines(path: Path, prefix: str) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        return sum(line.startswith(prefix.encode()) for line in f)


def _final_releases(layout: LiveSessionFiles, run: int) -> int:
    """How many of ``run``'s trials have their end-of-run release in the engine's trials table."""
    try:
        table = layout.table(run, "trials")
    except (FileNotFoundError, pd.errors.ParserError, pd.errors.EmptyDataError):  # not written yet, or caught mid-write
        return 0
    return table.loc[table["final"] == 1, "trial"].nunique()  # the store writes 0/1


def _wait_for_final_releases(group: ProcessGroup, layout: LiveSessionFiles, trials: dict[int, int], bar: Progress,
                             idle_s: float = 120.0) -> None:
    """Wait until the engine has decoded every trial's end-of-run release (it decodes them after the
    stimulus program has shown the first ones, and a slow machine may still be at it), for as long as
    it keeps delivering them; stopping it earlier would leave them to a next start the demo never makes."""
    task = bar.add_task("end-of-run releases (engine)", total=sum(trials.values()))
    done, deadline = -1, time.monotonic() + idle_s
    while time.monotonic() < deadline:
        group.check("engine")
        now = sum(min(_final_releases(layout, run), n) for run, n in trials.items())
        bar.update(task, completed=now)
        if now == sum(trials.values()):
            return
        if now > done:
            done, deadline = now, time.monotonic() + idle_s
        time.sleep(0.2)
    bar.console.print(f"warning: the engine delivered no end-of-run release for {idle_s:.0f} s: stopping it with "
                      f"{sum(trials.values()) - max(done, 0)} of {sum(trials.values())} left (see its log)")


def _wait_for_line(group: ProcessGroup, name: str, log: Path, text: str, timeout_s: float, poll_s: float = 0.2) -> None:
    """Wait until ``name``'s log holds ``text`` (e.g. the engine is listening before volumes flow)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.is_file() and text in log.read_text(errors="replace"):
            return
        group.check(name)
        if group.returncode(name) is not None:
            break
        time.sleep(poll_s)
    raise ProcessFailed(f"{name} did not report {text!r} within {timeout_s:g} s (log {log}):\n{group.tail(name)}")


def run_session(spec: LiveSpec, console: Console | None = None, timeout_s: float = 1800.0) -> ReportSummary:
    """Run ``spec``'s session live (see the module docstring) and return the report's summary."""
    console = console or Console(stderr=True)
    nsd = NSDDataset(spec.root)
    spec.out.mkdir(parents=True, exist_ok=True)
    for run in spec.runs:
        if run not in nsd.runs(spec.subject, spec.session):
            raise ValueError(f"{spec.root}: subject {spec.subject} session {spec.session} has no run {run}")
    gallery_path, gallery, ids = write_gallery(spec, nsd)
    n_volumes = nsd.read_design(spec.subject, spec.session, spec.runs[0]).size
    config = write_session_config(spec, nsd, gallery_path, free_endpoints(5), n_volumes)
    layout = LiveSessionFiles(spec.out, spec.bids_subject, spec.bids_session, spec.task,
                              stimulus_folder(spec.out, spec.bids_subject, spec.bids_session, spec.task))
    speed = ["--speed", repr(spec.speed)]
    with ProcessGroup(spec.out / "logs") as group, Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
    ) as bar:
        display = start_display(group)
        console.print(f"    the participant's screen: X display {display}")
        engine_log = group.start("engine", ["-m", "rtrecon.cli", "engine", "--config", str(config)])
        _wait_for_line(group, "engine", engine_log, "engine up", timeout_s=300.0)
        console_log = group.start("console", ["-m", "rtrecon.cli", "console", "--config", str(config), "--port", "0"])
        _wait_for_line(group, "console", console_log, "console up", timeout_s=120.0)
        address = re.search(r"console up: (\S+)", console_log.read_text())[1]
        console.print(f"    operator console: {address}")
        for run in spec.runs:
            n_trials = len(nsd.events(spec.subject, spec.session, run))
            n_vols = nsd.read_design(spec.subject, spec.session, run).size
            volumes = bar.add_task(f"run {run}: volumes (bridge → engine)", total=n_vols)
            results = bar.add_task(f"run {run}: trials decoded (engine → stimulus program)", total=n_trials)
            bridge, stimulus = f"bridge_run-{run:02d}", f"stimulus_run-{run:02d}"
            bridge_log = spec.out / "logs" / f"{bridge}.log"
            journal = journal_path(layout.stimulus_dir, spec.bids_subject, spec.bids_session, spec.task, run)

            def update(run: int = run, volumes: int = volumes, results: int = results, log: Path = bridge_log,
                       journal: Path = journal) -> None:
                bar.update(volumes, completed=_count_lines(log, f"run {run} volume"))
                bar.update(results, completed=len({r["trial"] for r in read_results(journal)}))

            # The stimulus program's virtual scanner triggers with the bridge's first volume: the
            # program first loads its images and waits, then the bridge starts, and its "run started"
            # (volume 0 begins) creates the start file the virtual scanner waits for.
            start_file = spec.out / "stimulus" / f"start_run-{run:02d}"
            start_file.unlink(missing_ok=True)
            stimulus_log = group.start(stimulus, stimulus_command(config, run, nsd.tr, n_vols, spec.speed, start_file))
            _wait_for_line(group, stimulus, stimulus_log, "waiting for the scanner", timeout_s=120.0)
            group.start(bridge, [
                "-m", "rtrecon.cli", "bridge", "replay-nsd", "--config", str(config), "--root", str(spec.root),
                "--subject", str(spec.subject), "--session", str(spec.session), "--run", str(run), *speed])
            _wait_for_line(group, bridge, bridge_log, f"run {run} started", timeout_s=120.0, poll_s=0.005)
            start_file.touch()
            deadline = time.monotonic() + timeout_s
            for name in (bridge, stimulus):
                group.wait(name, max(1.0, deadline - time.monotonic()), poll=update, also_check=("engine",))
                group.check(name)
            update()
        _wait_for_final_releases(group, layout, {run: len(nsd.events(spec.subject, spec.session, run)) for run in spec.runs},
                                 bar)
        group.stop("engine")
    per_release = _released_beta_metrics(spec, nsd, layout) if spec.released_betas else {}
    metrics: dict[str, float] = {}
    if per_release:  # the headline: the betas the participant's first feedback was decoded from
        metrics["live_vs_released_beta_r"] = per_release[min(per_release)]["live_vs_released_beta_r"]
    report_dir = layout.derivatives.parent / "report"
    if spec.head == "linear":  # ranked where the engine retrieved: the head's centred space (engine.decoding)
        from rtrecon.models.linear_head import LinearHead

        gallery = gallery.reshape(len(gallery), -1) - LinearHead.load(spec.checkpoint).target_mean
    return build_report(layout, spec.runs, nsd.tr, gallery, ids, _image_lookup(nsd), spec.decoder_description,
                        report_dir, metrics, release_metrics=per_release, clip_features=_clip_features(spec.clip_seed),
                        presentations=presentations(nsd, spec.subject, spec.session, spec.runs), notes=spec.notes,
                        external_weights=dict(spec.metric_weights), target_sets=_target_sets(spec))


def _target_sets(spec: LiveSpec) -> dict[int, tuple[str, list[str]]] | None:
    """An imagery session's target set per run: its name and its targets' gallery ids."""
    if spec.imagery is None:
        return None
    return {int(run): (str(table["target_set"].iloc[0]), [f"nsd:{i}" for i in sorted(table["image_id"].unique())])
            for run, table in spec.imagery.groupby("run")}


def _clip_features(seed: int | None) -> Callable[[np.ndarray], np.ndarray] | None:
    if seed is None:
        return None
    from rtrecon.embedders.openclip import OpenClipImageEmbedder

    embedder = OpenClipImageEmbedder.tiny(seed=seed)
    return lambda images: embedder.embed(images).numpy().reshape(len(images), -1)


def presentations(nsd: NSDDataset, subject: int, session: int, runs: Sequence[int]) -> dict[tuple[int, int], int]:
    """(run, engine trial) → the how-manieth showing of the trial's image to the subject, over the
    whole experiment (NSD's repeats are mostly across sessions); the engine's trial k is the run's
    k-th image."""
    trials = nsd.trials(subject)
    out: dict[tuple[int, int], int] = {}
    for run in runs:
        exp_run = nsd.experiment_run(subject, session, run)
        in_run = [t for t in trials if t.session == session and t.run == exp_run]
        out.update({(run, k): t.repeat + 1 for k, t in enumerate(in_run)})
    return out


def _released_beta_metrics(spec: LiveSpec, nsd: NSDDataset, layout: LiveSessionFiles) -> dict[int, dict[str, float]]:
    """Per release, the median per-voxel correlation of the betas it decoded with NSD's released
    betas of the same trials (``live_vs_released_beta_r``)."""
    try:
        released = nsd.betas(spec.subject, spec.session, mask=nsd.roi_mask(spec.subject))
    except (OSError, ValueError) as exc:
        print(f"report: no comparison with the released betas: {exc}", file=sys.stderr)
        return {}
    offset, correlations = 0, {}
    for run in nsd.runs(spec.subject, spec.session):
        # the engine's trial k is the run's k-th image (the stimulus program's trial list row)
        n = len(nsd.events(spec.subject, spec.session, run))
        if run in spec.runs:
            for release in decoded_betas(layout, run):
                correlations.setdefault(release, []).append(
                    beta_correlation(layout, run, released, {k: offset + k for k in range(n)}, release))
        offset += n
    out = {}
    for release, values in sorted(correlations.items()):
        r = np.concatenate(values)
        r = r[np.isfinite(r)]
        if r.size:
            out[release] = {"live_vs_released_beta_r": float(np.median(r))}
    return out
