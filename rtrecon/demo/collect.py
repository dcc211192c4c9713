"""Gather a finished live session's outputs into the HTML report (:mod:`rtrecon.report`).

The engine's session folder (BIDS raw data + ``derivatives/rtrecon``) and the stimulus program's
records (``sourcedata/stimulus``: its journal, :func:`rtrecon.demo.stimulus_pc.read_results`) are
read back from disk -- never from the processes' memory -- so a report can be rebuilt from any
session folder. For each run:

* ``desc-trials.tsv`` (which volume released each trial: its first release, the one decoded live;
  the later ones refine it), ``desc-trialtimings.tsv`` and
  ``desc-volumetimings.tsv`` (the engine's stage times, with the bridge's ``written`` stamp) and
  the results (their ``decoded``/``generated``/``sent`` stamps and the stimulus program's ``shown``:
  the flip that first drew the result on the participant's window)
  give each trial's stamps from the last volume it needs being acquired to its result being shown
  (:data:`STAGES`), turned into per-stage durations by :func:`rtrecon.report.stage_durations`;
* the decoded embedding ranks the whole gallery, so the correct image's rank is known beyond the
  top-k that went over the wire;
* ``desc-confounds_timeseries.tsv`` gives the motion trace;
* with ``released_betas`` (NSD's own betas of the session's trials, (n_trials, n_roi)), the
  final live LSS betas (``desc-trialbetas.npz``) are correlated with them per voxel across
  trials (the metric ``live_vs_released_beta_r``: the median over voxels).
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
from rtrecon.report import MotionTrace, ReportSummary, SessionReportData, TrialRecord, load_confounds, stage_durations, write_report
from rtrecon.runtime.retrieval import normalize

__all__ = ["STAGES", "SessionLayout", "trial_records", "beta_correlation", "build_report"]

#: The stamps of a trial, in order: its last volume acquired (written by the scanner; for a replay,
#: read by the bridge) → received, realigned, GLM updated (engine) → beta estimated → decoded →
#: image generated → result sent → shown (stimulus PC).
STAGES = ("acquired", "received", "realigned", "glm_updated", "betas", "decoded", "generated", "sent", "shown")


@dataclass(frozen=True)
class SessionLayout:
    """Where a live session's files are: the engine's ``output_dir`` and the stimulus program's run folder."""

    root: Path
    subject: str
    session: str
    task: str
    stimulus_dir: Path

    def prefix(self, run: int) -> str:
        return f"sub-{self.subject}_ses-{self.session}_task-{self.task}_run-{run}"

    @property
    def derivatives(self) -> Path:
        return self.root / "derivatives" / "rtrecon" / f"sub-{self.subject}" / f"ses-{self.session}" / "func"

    def derivative(self, run: int, desc: str, ext: str = ".tsv") -> Path:
        return self.derivatives / f"{self.prefix(run)}_desc-{desc}{ext}"

    def events(self, run: int) -> Path:
        """The engine's BIDS ``_events.tsv`` of ``run``: the events it received."""
        return self.root / f"sub-{self.subject}" / f"ses-{self.session}" / "func" / f"{self.prefix(run)}_events.tsv"

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


def _rank(embedding: Sequence[float] | None, stimulus: str, gallery: np.ndarray, ids: list[str]) -> int | None:
    if embedding is None or stimulus not in ids:
        return None
    scores = (normalize(np.asarray(embedding, np.float32)) @ normalize(gallery).T)[0].numpy()
    return int(np.sum(scores > scores[ids.index(stimulus)])) + 1


def trial_records(
    layout: SessionLayout, run: int, gallery: np.ndarray, ids: list[str],
    images: Callable[[list[str]], list[np.ndarray | None]], top_k_images: int = 5,
) -> list[TrialRecord]:
    """One :class:`TrialRecord` per trial the engine released in ``run``; ``images(ids)`` gives the
    pictures of stimulus ids (None where there is none)."""
    # Each trial's first release (a trial is released again later, refined): the one decoded live.
    trials = layout.table(run, "trials").drop_duplicates("trial")
    timings = layout.table(run, "trialtimings").drop_duplicates("trial").set_index("trial")
    volumes = layout.table(run, "volumetimings").set_index("volume")
    results = {row["trial"]: row for row in read_results(layout.journal(run))}
    records = []
    for row in trials.itertuples():
        trial, stimulus = int(row.trial), str(row.stimulus)
        last = int(row.volumes) - 1
        stamps: dict[str, float] = {}
        if last in volumes.index:
            v = volumes.loc[last]
            stamps.update({s: float(v[f"{s}_time"]) for s in ("received", "realigned", "glm_updated")
                           if not pd.isna(v.get(f"{s}_time"))})
            acquired = _acquired(volumes, last)
            if acquired is not None:
                stamps["acquired"] = acquired
        if trial in timings.index and not pd.isna(timings.loc[trial, "betas_time"]):
            stamps["betas"] = float(timings.loc[trial, "betas_time"])
        result = results.get(trial)
        retrieved: list[str] = []
        reconstruction = None
        rank = None
        if result is not None:
            stamps.update({s: float(result["stamps"][s]) for s in ("decoded", "generated", "sent", "shown") if s in result["stamps"]})
            retrieved = list(result["retrieved"])
            rank = _rank(result["embedding"], stimulus, gallery, ids)
            if result["image"] is not None:
                reconstruction = np.asarray(Image.open(result["image"]).convert("RGB"))
        seen = images([stimulus])[0] if stimulus else None
        thumbs = images(retrieved[:top_k_images]) if retrieved else []
        with_thumbs = bool(thumbs) and all(t is not None for t in thumbs)
        records.append(TrialRecord(
            run=run, trial=trial, stimulus_id=stimulus, seen_image=seen, reconstruction=reconstruction,
            retrieved_ids=retrieved[:top_k_images] if with_thumbs else retrieved,
            retrieved_images=thumbs if with_thumbs else (),
            correct_rank=rank, latencies=stage_durations(stamps, STAGES),
        ))
    return records


def beta_correlation(layout: SessionLayout, run: int, released: np.ndarray, trial_rows: dict[int, int]) -> np.ndarray:
    """Per-voxel correlation across trials of the run's final live LSS betas with ``released``.

    ``trial_rows`` maps the engine's trial numbers to rows of ``released``."""
    path = layout.derivative(run, "trialbetas", ".npz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the engine writes the final betas when the run ends)")
    with np.load(path) as f:
        trials, live = f["trials"], f["lss"]
    keep = [i for i, t in enumerate(trials.tolist()) if t in trial_rows]
    a = live[keep].astype(np.float64)
    b = released[[trial_rows[int(trials[i])] for i in keep]].astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"{path}: live betas {a.shape} and released betas {b.shape} differ in shape")
    a, b = a - a.mean(0), b - b.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))


def build_report(
    layout: SessionLayout, runs: Sequence[int], tr: float, gallery: np.ndarray, ids: list[str],
    images: Callable[[list[str]], list[np.ndarray | None]], decoder_description: str, out_dir: Path,
    metrics: dict[str, float] | None = None,
) -> ReportSummary:
    """Write ``out_dir/report.html`` and ``summary.json`` for the session's ``runs``."""
    records: list[TrialRecord] = []
    motion: list[MotionTrace] = []
    for run in runs:
        records += trial_records(layout, run, gallery, ids, images)
        try:
            motion.append(load_confounds(layout.derivative(run, "confounds_timeseries"), tr=tr, run=run))
        except ValueError as exc:  # a missing volume leaves a gap in the trace: report without it
            print(f"report: no motion trace for run {run}: {exc}", file=sys.stderr)
    data = SessionReportData(
        subject=layout.subject, session=layout.session, task=layout.task, decoder_description=decoder_description,
        trials=records, gallery_size=len(ids), motion=motion,
        latency_stages=[s for s in STAGES[1:] if any(s in r.latencies for r in records)],
        metrics={k: v for k, v in (metrics or {}).items() if v is not None and math.isfinite(v)},
    )
    summary = write_report(data, out_dir)
    (out_dir / "trials.json").write_text(json.dumps(
        [{"run": r.run, "trial": r.trial, "stimulus": r.stimulus_id, "retrieved": list(r.retrieved_ids),
          "correct_rank": r.correct_rank, "latencies": dict(r.latencies)} for r in records], indent=1))
    return summary
