"""Gather a finished live session's outputs into the HTML report (:mod:`rtrecon.report`).

The engine's session folder (BIDS raw data + ``derivatives/rtrecon``) and the stimulus program's
records (``sourcedata/stimulus``: its journal, :func:`rtrecon.demo.stimulus_pc.read_results`) are
read back from disk -- never from the processes' memory -- so a report can be rebuilt from any
session folder. For each run:

* ``desc-trials.tsv`` (one row per release sent: which volume released it; with an engine that
  releases each trial once, one row per trial, release 0), ``desc-trialtimings.tsv`` and
  ``desc-volumetimings.tsv`` (the engine's stage times, with the bridge's ``written`` stamp) and
  the results (their ``decoded``/``generated``/``sent`` stamps and the stimulus program's ``shown``:
  the flip that first drew the result on the participant's window)
  give each trial's stamps from the last volume it needs being acquired to its result being shown
  (:data:`STAGES`), turned into per-stage durations by :func:`rtrecon.report.stage_durations`;
* each release's decoded arrays (``desc-trial<N>release<R>decoded.npz``, or ``desc-trial<N>decoded.npz``
  from an engine without releases: embedding, top-k, reconstruction) -- the decoded embedding
  ranks the whole gallery, so the correct image's rank and score are known beyond the top-k that
  went over the wire -- and the betas it decoded (``desc-trial<N>release<R>beta.npz`` or
  ``desc-trial<N>beta.npz``);
* the trials table's ``pairmate`` and ``cpd`` give each release's pairmate distinctiveness (the
  report's per-run mean CPD and pairmate two-way accuracy);
* the engine's ``_events.tsv`` gives each trial's onset and the participant's response, the
  stimulus program's journal when its feedback was shown (onset → feedback, in run seconds);
* ``desc-confounds_timeseries.tsv`` gives the motion trace and each trial's largest FD over the
  volumes its beta used;
* :func:`beta_correlation` correlates a release's decoded betas (or the end-of-run LSS betas,
  ``desc-trialbetas.npz``) with other betas of the same trials per voxel across trials;
* ``clip_features`` (the session's CLIP embedder) gives each release's two-way identification of
  the reconstructions against the seen images;
* ``target_sets`` (mental imagery, NSD-Imagery's protocol): per run its target set's name and
  target ids; each trial's target is then also ranked among the run's targets by its decoded
  embedding (the report's imagery retrieval, its vividness rating the participant's response).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rtrecon.demo.stimulus_pc import journal_path, read_results
from rtrecon.contract.layout import SessionLayout
from rtrecon.report import MotionTrace, ReportSummary, SessionReportData, TrialRecord, load_confounds, stage_durations, write_report
from rtrecon.report.figures import as_uint8
from rtrecon.report.metrics import external_metrics, rank_among, two_way_identification
from rtrecon.runtime.retrieval import normalize

__all__ = ["STAGES", "LiveSessionFiles", "release_rows", "release_arrays", "trial_records", "decoded_betas", "beta_correlation",
           "build_report"]

#: The stamps of a trial, in order: its last volume acquired (written by the scanner; for a replay,
#: read by the bridge) → received, realigned, GLM updated (engine) → beta estimated → decoded →
#: image generated → result sent → shown (stimulus PC).
STAGES = ("acquired", "received", "realigned", "glm_updated", "betas", "decoded", "generated", "sent", "shown")


@dataclass(frozen=True)
class LiveSessionFiles:
    """Where a live session's files are: the engine's ``output_dir`` and the stimulus program's run
    folder, named by :class:`rtrecon.contract.layout.SessionLayout`."""

    root: Path
    subject: str
    session: str
    task: str
    stimulus_dir: Path

    @property
    def layout(self) -> SessionLayout:
        return SessionLayout(self.root, self.subject, self.session, self.task)

    def prefix(self, run: int) -> str:
        return self.layout.stem(run)

    @property
    def derivatives(self) -> Path:
        return self.layout.derivatives_dir

    def derivative(self, run: int, desc: str, ext: str = ".tsv") -> Path:
        return self.layout.derivative(run, f"desc-{desc}{ext}")

    def events(self, run: int) -> Path:
        """The engine's BIDS ``_events.tsv`` of ``run``: the events it received."""
        return self.layout.raw(run, "events.tsv")

    def journal(self, run: int) -> Path:
        """The stimulus program's journal of ``run``."""
        return journal_path(self.stimulus_dir, self.subject, self.session, self.task, run)

    def table(self, run: int, desc: str) -> pd.DataFrame:
        path = self.derivative(run, desc)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (the engine writes it while the run is processed)")
        return pd.read_csv(path, sep="\t", na_values=["n/a"])


def _acquired(volumes: pd.DataFrame, index: int) -> float | None:
    """When volume ``index`` became available: its files' ``written`` time, or for a replay (files
    written before the run began) the time the bridge read it."""
    v = volumes.loc[index]
    written, read = v.get("written_time"), v.get("read_time")
    first_read = volumes["read_time"].min() if "read_time" in volumes else float("nan")
    if not pd.isna(written) and not (not pd.isna(first_read) and written < first_read - 1.0):
        return float(written)
    return None if pd.isna(read) else float(read)


def _rank_score(embedding: Sequence[float] | None, stimulus: str, gallery: np.ndarray, ids: list[str]) -> tuple[int | None, float | None]:
    if embedding is None or stimulus not in ids:
        return None, None
    scores = (normalize(np.asarray(embedding, np.float32)) @ normalize(gallery).T)[0].numpy()
    own = scores[ids.index(stimulus)]
    return int(np.sum(scores > own)) + 1, float(own)


def _vividness(layout: LiveSessionFiles, run: int) -> dict[int, str]:
    """Trial -> the vividness rating in the stimulus program's events file (the rating comes after the
    imagery event the engine received, so the engine's events do not hold it); empty for perception."""
    path = layout.stimulus_dir / f"{layout.prefix(run)}_events.tsv"
    if not path.is_file():
        return {}
    events = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"response": str})
    rows = events[(events["trial_type"] == "vividness") & events["response"].notna() & events["trial"].notna()]
    return {int(t): str(r) for t, r in zip(rows["trial"], rows["response"])}


def release_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """An engine table with ``release`` and ``final`` (an engine without releases: one per trial, release 0)."""
    trials = trials.copy()
    if "release" not in trials:
        trials["release"] = 0
    if "final" not in trials:
        trials["final"] = False
    trials["final"] = trials["final"].astype(str).str.lower().isin(("true", "1"))
    return trials


def release_arrays(layout: LiveSessionFiles, run: int, trial: int, release: int, kind: str, releases: bool) -> Path:
    """The engine's ``kind`` (``decoded`` or ``beta``) arrays of one release."""
    name = f"trial{trial}release{release}{kind}" if releases else f"trial{trial}{kind}"
    return layout.derivative(run, name, ".npz")


def trial_records(
    layout: LiveSessionFiles, run: int, gallery: np.ndarray, ids: list[str],
    images: Callable[[list[str]], list[np.ndarray | None]], top_k_images: int = 5, tr: float | None = None,
    presentations: dict[tuple[int, int], int] | None = None, target_sets: dict[int, tuple[str, list[str]]] | None = None,
) -> list[TrialRecord]:
    """One :class:`TrialRecord` per release the engine sent in ``run``; ``images(ids)`` gives the
    pictures of stimulus ids (None where there is none). ``tr`` (seconds) dates the volumes (release
    delays, FD during a trial); ``presentations`` maps (run, trial) to how many times its image has
    been seen (1 when absent); ``target_sets`` maps a run to its target set's name and target ids
    (imagery: each trial is also ranked among them)."""
    set_name, targets = (target_sets or {}).get(run, ("", []))
    ratings = _vividness(layout, run)
    table = layout.table(run, "trials")
    has_releases = "release" in table
    trials = release_rows(table)
    timings = release_rows(layout.table(run, "trialtimings")).set_index(["trial", "release"])
    volumes = layout.table(run, "volumetimings").set_index("volume")
    results = {(row["trial"], row["release"]): row for row in read_results(layout.journal(run))}
    events = pd.read_csv(layout.events(run), sep="\t", na_values=["n/a"], keep_default_na=False)
    events = events[events["trial"].notna()]
    events.index = events["trial"].astype(int)
    try:
        fd = load_confounds(layout.derivative(run, "confounds_timeseries")).fd
    except ValueError:
        fd = None
    records = []
    for row in trials.itertuples():
        trial, release, stimulus = int(row.trial), int(row.release), str(row.stimulus)
        last = int(row.volumes) - 1
        onset = float(events.loc[trial, "onset"]) if trial in events.index else None
        response = events.loc[trial, "response"] if trial in events.index and "response" in events else ""
        if (pd.isna(response) or response == "") and trial in ratings:
            response = ratings[trial]
        release_s = float(row.release_s) if has_releases else (
            last * tr - onset if tr is not None and onset is not None else None)
        fd_max = None
        if fd is not None and tr is not None and onset is not None:
            window = fd[int(np.ceil(onset / tr)): last + 1]
            window = window[np.isfinite(window)]
            fd_max = float(window.max()) if window.size else None
        stamps: dict[str, float] = {}
        if last in volumes.index:
            v = volumes.loc[last]
            stamps.update({s: float(v[f"{s}_time"]) for s in ("received", "realigned", "glm_updated")
                           if not pd.isna(v.get(f"{s}_time"))})
            acquired = _acquired(volumes, last)
            if acquired is not None:
                stamps["acquired"] = acquired
        if (trial, release) in timings.index and not pd.isna(timings.loc[(trial, release), "betas_time"]):
            stamps["betas"] = float(timings.loc[(trial, release), "betas_time"])
        result = results.get((trial, release))
        retrieved: list[str] = []
        reconstruction = embedding = None
        decoded = release_arrays(layout, run, trial, release, "decoded", has_releases)
        if decoded.is_file():
            with np.load(decoded) as f:
                embedding = f["embedding"][None]
                retrieved = [str(i) for i in f["retrieved"]]
                reconstruction = f["image"] if "image" in f.files else None
        if result is not None:
            stamps.update({s: float(result["stamps"][s]) for s in ("decoded", "generated", "sent", "shown") if s in result["stamps"]})
            if not decoded.is_file():  # the bare beta went out (no decoder): what the program received
                retrieved = list(result["retrieved"])
                embedding = result["embedding"]
                if result["image"] is not None:
                    reconstruction = np.asarray(Image.open(result["image"]).convert("RGB"))
        rank, score = _rank_score(embedding, stimulus, gallery, ids)
        cpd = _number(getattr(row, "cpd", None))
        pairmate = getattr(row, "pairmate", "")
        set_rank = None
        if embedding is not None and stimulus in targets:
            candidates = gallery[[ids.index(t) for t in targets]]
            set_rank = rank_among(np.asarray(embedding, np.float32).reshape(-1), candidates, targets.index(stimulus))
        shown_run_s = result.get("shown_run_s") if result is not None else None
        seen = images([stimulus])[0] if stimulus else None
        thumbs = images(retrieved[:top_k_images]) if retrieved else []
        with_thumbs = bool(thumbs) and all(t is not None for t in thumbs)
        records.append(TrialRecord(
            run=run, trial=trial, stimulus_id=stimulus, seen_image=seen, reconstruction=reconstruction,
            retrieved_ids=retrieved[:top_k_images] if with_thumbs else retrieved,
            retrieved_images=thumbs if with_thumbs else (),
            correct_rank=rank, latencies=stage_durations(stamps, STAGES),
            release=release, release_s=release_s, final=bool(row.final), onset_s=onset, fd_mm=fd_max, score=score,
            response="" if pd.isna(response) else str(response),
            presentation=(presentations or {}).get((run, trial), 1),
            feedback_delay_s=shown_run_s - onset if shown_run_s is not None and onset is not None else None,
            pairmate="" if pd.isna(pairmate) else str(pairmate), cpd=cpd,
            target_set=set_name if set_rank is not None else "", set_rank=set_rank,
            set_size=len(targets) if set_rank is not None else None,
        ))
    return records


def _number(value: object) -> float | None:
    """A table cell as a finite float (None: empty, n/a or not a number)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def decoded_betas(layout: LiveSessionFiles, run: int) -> dict[int, tuple[list[int], np.ndarray]]:
    """Per release index, the trials and the raw betas (trials × ROI voxels) the engine decoded."""
    table = layout.table(run, "trials")
    has_releases = "release" in table
    out: dict[int, tuple[list[int], list[np.ndarray]]] = {}
    for row in release_rows(table).itertuples():
        path = release_arrays(layout, run, int(row.trial), int(row.release), "beta", has_releases)
        if path.is_file():
            with np.load(path) as f:
                trials, betas = out.setdefault(int(row.release), ([], []))
                trials.append(int(row.trial))
                betas.append(f["beta"])
    return {r: (t, np.stack(b)) for r, (t, b) in out.items()}


def _voxel_r(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def beta_correlation(layout: LiveSessionFiles, run: int, released: np.ndarray, trial_rows: dict[int, int],
                     release: int | None = None) -> np.ndarray:
    """Per-voxel correlation across trials of the run's live betas with ``released``.

    ``release`` None: the end-of-run LSS betas (``desc-trialbetas.npz``); an index: the betas that
    release decoded (:func:`decoded_betas`). ``trial_rows`` maps the engine's trial numbers to rows
    of ``released``."""
    if release is None:
        path = layout.derivative(run, "trialbetas", ".npz")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (the engine writes the final betas when the run ends)")
        with np.load(path) as f:
            trials, live = f["trials"].tolist(), f["lss"]
    else:
        found = decoded_betas(layout, run)
        if release not in found:
            raise FileNotFoundError(f"{layout.derivatives}: no decoded betas of release {release} in run {run}")
        trials, live = found[release]
    keep = [i for i, t in enumerate(trials) if t in trial_rows]
    a = live[keep].astype(np.float64)
    b = released[[trial_rows[int(trials[i])] for i in keep]].astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{layout.derivatives}: live betas {a.shape} and released betas {b.shape} differ in shape")
    return _voxel_r(a, b)


def _end_of_run_r(layout: LiveSessionFiles, runs: Sequence[int]) -> dict[int, float]:
    """Per release, the median per-voxel correlation of its decoded betas with the end-of-run LSS betas."""
    rs: dict[int, list[np.ndarray]] = {}
    for run in runs:
        path = layout.derivative(run, "trialbetas", ".npz")
        if not path.is_file():
            continue
        with np.load(path) as f:
            rows = {int(t): i for i, t in enumerate(f["trials"])}
            end = f["lss"]
        for release in decoded_betas(layout, run):
            rs.setdefault(release, []).append(beta_correlation(layout, run, end, rows, release))
    out = {}
    for release, values in rs.items():
        r = np.concatenate(values)
        r = r[np.isfinite(r)]
        if r.size:
            out[release] = float(np.median(r))
    return out


def build_report(
    layout: LiveSessionFiles, runs: Sequence[int], tr: float, gallery: np.ndarray, ids: list[str],
    images: Callable[[list[str]], list[np.ndarray | None]], decoder_description: str, out_dir: Path,
    metrics: dict[str, float] | None = None, *, release_metrics: dict[int, dict[str, float]] | None = None,
    clip_features: Callable[[np.ndarray], np.ndarray] | None = None,
    presentations: dict[tuple[int, int], int] | None = None, notes: Sequence[str] = (),
    external_weights: dict[str, Path] | None = None, target_sets: dict[int, tuple[str, list[str]]] | None = None,
) -> ReportSummary:
    """Write ``out_dir/report.html`` and ``summary.json`` for the session's ``runs``.

    Per release, the report gets the decoded betas' correlation with the end-of-run betas
    (``beta_r_end``), and with ``clip_features`` (images (n, H, W, 3) uint8 → features (n, ...))
    the CLIP two-way identification of the reconstructions (``two_way_clip``); ``release_metrics``
    adds the producer's own. MindEye2's metrics of external networks are computed from
    ``external_weights`` where given and otherwise reported as not computed. ``target_sets``: an
    imagery session's target set per run (:func:`trial_records`).
    """
    records: list[TrialRecord] = []
    motion: list[MotionTrace] = []
    for run in runs:
        records += trial_records(layout, run, gallery, ids, images, tr=tr, presentations=presentations,
                                 target_sets=target_sets)
        try:
            motion.append(load_confounds(layout.derivative(run, "confounds_timeseries"), tr=tr, run=run))
        except ValueError as exc:  # a missing volume leaves a gap in the trace: report without it
            print(f"report: no motion trace for run {run}: {exc}", file=sys.stderr)
    per_release: dict[int, dict[str, float]] = {}
    for release, r in _end_of_run_r(layout, runs).items():
        per_release.setdefault(release, {})["beta_r_end"] = r
    pairs_by_release: dict[int, list[TrialRecord]] = {}
    for t in records:
        if t.reconstruction is not None and t.seen_image is not None:
            pairs_by_release.setdefault(t.release, []).append(t)
    first_pairs: list[TrialRecord] = []
    for release, pairs in sorted(pairs_by_release.items()):
        if clip_features is not None and len(pairs) > 1:
            size = pairs[0].reconstruction.shape[:2]
            recon = np.stack([as_uint8(t.reconstruction)[..., :3] for t in pairs])
            seen = np.stack([np.asarray(Image.fromarray(as_uint8(t.seen_image)[..., :3]).resize(size[::-1], Image.BILINEAR))
                             for t in pairs])
            per_release.setdefault(release, {})["two_way_clip"] = two_way_identification(clip_features(recon), clip_features(seen))
        first_pairs = first_pairs or pairs
    for release, values in (release_metrics or {}).items():
        per_release.setdefault(release, {}).update(values)
    external = external_metrics([t.reconstruction for t in first_pairs], [t.seen_image for t in first_pairs],
                                external_weights) if first_pairs else {}
    data = SessionReportData(
        subject=layout.subject, session=layout.session, task=layout.task, decoder_description=decoder_description,
        trials=records, gallery_size=len(ids), motion=motion,
        latency_stages=[s for s in STAGES[1:] if any(s in r.latencies for r in records)],
        metrics={k: v for k, v in (metrics or {}).items() if v is not None and math.isfinite(v)},
        release_metrics=per_release, external_metrics=external, notes=notes,
    )
    summary = write_report(data, out_dir)
    (out_dir / "trials.json").write_text(json.dumps(
        [{"run": r.run, "trial": r.trial, "release": r.release, "release_s": r.release_s, "final": r.final,
          "stimulus": r.stimulus_id, "retrieved": list(r.retrieved_ids), "correct_rank": r.correct_rank, "score": r.score,
          "onset_s": r.onset_s, "fd_mm": r.fd_mm, "response": r.response, "presentation": r.presentation,
          "feedback_delay_s": r.feedback_delay_s, "latencies": dict(r.latencies)} for r in records], indent=1))
    return summary
