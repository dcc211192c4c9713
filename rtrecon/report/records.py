"""What a session report is made from: plain records any producer can fill, and their summary.

:class:`SessionReportData` holds the session's names, which decoder made the reconstructions,
one :class:`TrialRecord` per release of a trial (a trial is decoded several times as its beta
refines: images as arrays, retrieval, the correct image's rank and score, the duration of every
stage, the trial's onset, motion, response and repeat) and one :class:`MotionTrace` per run.
:func:`summarise` turns it into the headline :class:`ReportSummary`: retrieval accuracy with its
chance level on each trial's first release (what the participant saw first) and per release
(:attr:`ReportSummary.by_release`: top-1/top-5, hubness, PixCorr and SSIM of the reconstructions,
with the producer's per-release metrics such as CLIP two-way identification), for mental imagery
the retrieval of each trial's target among its target set, overall, per set and per vividness
rating (:func:`imagery_figures`, :attr:`ReportSummary.imagery`), with pairmates the per-run mean
pairmate distinctiveness and pairmate two-way accuracy (:func:`pairmate_figures`,
:attr:`ReportSummary.pairmates`), latency median
and 95th percentile (overall and per stage), the closed-loop delay from stimulus onset to
feedback shown, framewise displacement.

Helpers for producers: :func:`stage_durations` turns the time stamps of one trial (volume
written, ..., shown on screen) into per-stage durations, and :func:`load_confounds` reads a
:class:`MotionTrace` from an fMRIPrep-style ``desc-confounds_timeseries.tsv``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "MOTION_COLUMNS",
    "TrialRecord",
    "MotionTrace",
    "SessionReportData",
    "ReportSummary",
    "stage_durations",
    "load_confounds",
    "release_figures",
    "imagery_figures",
    "pairmate_figures",
    "summarise",
]

#: fMRIPrep's names of the 6 rigid-body parameters (translations in mm, rotations in radians).
MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the report shows it.

    Images are arrays (H, W), (H, W, 3|4) or channel-first (3, H, W), either ``uint8`` or floats
    in [0, 1]. ``seen_image`` is None for imagery without a target; ``reconstruction`` is None when
    no image was generated. ``retrieved_ids`` are gallery ids best first (``retrieved_images``
    their thumbnails, optional). ``correct_rank`` is the 1-based rank of ``stimulus_id`` among the
    whole gallery (None: not retrieved, or the stimulus is not in the gallery). ``latencies`` maps
    each stage to its duration in seconds (see :func:`stage_durations`).

    ``release`` is the 0-based release of the trial this record decodes, ``release_s`` the seconds
    from onset to the start of the last volume its beta used, ``final`` whether it is the
    end-of-run release. ``onset_s`` is the trial's onset (run seconds), ``fd_mm`` the largest
    framewise displacement over the volumes its beta used, ``score`` the true image's similarity,
    ``response`` the participant's, ``presentation`` how many times the image had been seen (1: a
    first showing), ``feedback_delay_s`` stimulus onset → this result shown (run seconds).

    Mental imagery (NSD-Imagery's protocol): ``target_set`` names the set of targets the trial's
    target belongs to (empty for perception), ``set_rank`` the 1-based rank of the target among
    the set's ``set_size`` targets by the decoded embedding (:func:`rtrecon.report.metrics.rank_among`),
    and ``response`` holds the vividness rating.

    Pairmates (real-time MindEye's design): ``pairmate`` is the stimulus id of the seen image's
    pairmate (empty: none) and ``cpd`` the decoded embedding's pairmate distinctiveness (+1 at the
    seen image, -1 at the pairmate; None: no pairmate, or not decoded).
    """

    run: int
    trial: int
    stimulus_id: str
    seen_image: np.ndarray | None = None
    reconstruction: np.ndarray | None = None
    retrieved_ids: Sequence[str] = ()
    retrieved_images: Sequence[np.ndarray] = ()
    correct_rank: int | None = None
    latencies: Mapping[str, float] = field(default_factory=dict)
    release: int = 0
    release_s: float | None = None
    final: bool = False
    onset_s: float | None = None
    fd_mm: float | None = None
    score: float | None = None
    response: str = ""
    presentation: int = 1
    feedback_delay_s: float | None = None
    target_set: str = ""
    set_rank: int | None = None
    set_size: int | None = None
    pairmate: str = ""
    cpd: float | None = None

    def __post_init__(self) -> None:
        if self.set_rank is not None and not (self.set_size and 1 <= self.set_rank <= self.set_size):
            raise ValueError(f"run {self.run} trial {self.trial}: set_rank {self.set_rank} is not a rank among "
                             f"{self.set_size} targets")
        if self.correct_rank is not None and self.correct_rank < 1:
            raise ValueError(f"run {self.run} trial {self.trial}: correct_rank is 1-based, got {self.correct_rank}")
        if self.retrieved_images and len(self.retrieved_images) != len(self.retrieved_ids):
            raise ValueError(
                f"run {self.run} trial {self.trial}: {len(self.retrieved_images)} retrieved images "
                f"for {len(self.retrieved_ids)} retrieved ids"
            )

    @property
    def decoded(self) -> bool:
        """Whether the decoder produced anything for this trial."""
        return self.reconstruction is not None or bool(self.retrieved_ids) or self.correct_rank is not None

    @property
    def top1_id(self) -> str | None:
        return str(self.retrieved_ids[0]) if self.retrieved_ids else None

    @property
    def total_latency_s(self) -> float | None:
        """The sum of the stage durations (None without latencies)."""
        return float(sum(self.latencies.values())) if self.latencies else None


@dataclass(frozen=True)
class MotionTrace:
    """The realignment parameters of one run: ``params`` (n, 6) in mm and radians, ``fd`` (n,) in mm.

    ``fd[0]`` may be NaN (no previous volume), as fMRIPrep writes it. ``tr`` (seconds) puts the
    plots on a time axis; without it they count volumes.
    """

    params: np.ndarray
    fd: np.ndarray
    tr: float | None = None
    run: int = 1

    def __post_init__(self) -> None:
        params = np.asarray(self.params, dtype=np.float64)
        fd = np.asarray(self.fd, dtype=np.float64)
        if params.ndim != 2 or params.shape[1] != 6:
            raise ValueError(f"run {self.run}: motion params must be (n, 6), got {params.shape}")
        if fd.shape != (params.shape[0],):
            raise ValueError(f"run {self.run}: fd has shape {fd.shape}, params have {params.shape[0]} volumes")
        if self.tr is not None and not self.tr > 0:
            raise ValueError(f"run {self.run}: TR must be positive, got {self.tr}")
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "fd", fd)


@dataclass(frozen=True)
class SessionReportData:
    """Everything a session report shows.

    ``decoder_description`` says which decoder produced the reconstructions (the official weights
    or the synthetic world's own decoder) and is printed at the top. ``gallery_size`` is the
    number of images retrieval chooses from (chance top-1 = 1 / gallery_size). ``latency_stages``
    orders the stages of :attr:`TrialRecord.latencies` (empty: the order they first appear).
    ``metrics`` are extra headline figures (e.g. the correlation of live and released betas);
    ``release_metrics`` per release index, figures the producer measured for that release (e.g.
    ``two_way_clip``, ``beta_r_end``: the decoded betas' correlation with the end-of-run betas);
    ``external_metrics`` MindEye2's metrics of external networks (a value, or why there is none);
    ``notes`` lines shown under the decoder (e.g. the synthetic world used).
    """

    subject: str
    session: str
    task: str
    decoder_description: str
    trials: Sequence[TrialRecord]
    gallery_size: int | None = None
    motion: Sequence[MotionTrace] = ()
    latency_stages: Sequence[str] = ()
    fd_threshold_mm: float = 0.5
    metrics: Mapping[str, float] = field(default_factory=dict)
    release_metrics: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    external_metrics: Mapping[str, float | str] = field(default_factory=dict)
    notes: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.gallery_size is not None and self.gallery_size < 1:
            raise ValueError(f"gallery_size must be at least 1, got {self.gallery_size}")
        too_deep = [t for t in self.trials if t.correct_rank and self.gallery_size and t.correct_rank > self.gallery_size]
        if too_deep:
            t = too_deep[0]
            raise ValueError(
                f"run {t.run} trial {t.trial}: correct_rank {t.correct_rank} exceeds the gallery size {self.gallery_size}"
            )

    def first_releases(self) -> list[TrialRecord]:
        """Each trial's earliest release (what the participant saw first), in (run, trial) order."""
        first: dict[tuple[int, int], TrialRecord] = {}
        for t in self.trials:
            key = (t.run, t.trial)
            if key not in first or t.release < first[key].release:
                first[key] = t
        return [first[k] for k in sorted(first)]

    def stages(self) -> list[str]:
        """The stage names, in :attr:`latency_stages` order, then any others as they first appear."""
        order = list(self.latency_stages)
        for trial in self.trials:
            order += [s for s in trial.latencies if s not in order]
        return order


@dataclass(frozen=True)
class ReportSummary:
    """The headline figures of a session (``None`` where there is nothing to measure)."""

    report: Path
    trials: int
    decoded: int
    retrieval_trials: int
    top1: float | None
    top5: float | None
    chance_top1: float | None
    chance_top5: float | None
    median_latency_s: float | None
    p95_latency_s: float | None
    stage_median_s: dict[str, float]
    stage_p95_s: dict[str, float]
    mean_fd_mm: float | None
    max_fd_mm: float | None
    high_motion_volumes: int
    decoder: str
    metrics: dict[str, float]
    by_release: dict[int, dict[str, Any]] = field(default_factory=dict)
    two_way_clip: float | None = None
    pixcorr: float | None = None
    ssim: float | None = None
    hub_id: str | None = None
    hub_share: float | None = None
    median_feedback_delay_s: float | None = None
    p95_feedback_delay_s: float | None = None
    external_metrics: dict[str, float | str] = field(default_factory=dict)
    imagery: dict[str, Any] = field(default_factory=dict)
    pairmates: dict[str, Any] = field(default_factory=dict)

    @property
    def top1_by_release(self) -> dict[str, float | None]:
        """Top-1 per release: among the gallery, or for an imagery session among each trial's target set."""
        key = "imagery_top1" if self.imagery else "top1"
        return {str(r): m.get(key) for r, m in self.by_release.items()}

    def headline(self) -> dict[str, Any]:
        """The keys the demo prints as its last JSON line (``top1``/``top5``: first releases).

        An imagery session has the same keys, its retrieval scored as NSD-Imagery scores it: ``top1``,
        ``top5`` and ``chance_top1`` among each trial's target set (:func:`imagery_figures`).
        """
        keys = ("trials", "decoded", "top1", "top5", "chance_top1", "median_latency_s", "two_way_clip", "pixcorr")
        out = {"report": str(self.report), **{k: getattr(self, k) for k in keys}, "top1_by_release": self.top1_by_release}
        if self.imagery:  # an imagery session: retrieval among each trial's target set (first releases)
            out.update(top1=self.imagery["top1"], top5=self.imagery["top5"], chance_top1=self.imagery["chance"])
        if self.pairmates:  # trials with pairmates: CPD and two-way (first releases)
            out.update({f"pairmate_{k}": self.pairmates[k] for k in ("mean_cpd", "two_way")})
        return out

    def as_dict(self) -> dict[str, Any]:
        """Every figure, JSON-ready (what ``summary.json`` holds)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["report"] = str(self.report)
        out["by_release"] = {str(r): m for r, m in self.by_release.items()}
        out["top1_by_release"] = self.top1_by_release
        return out


def stage_durations(stamps: Mapping[str, float], order: Sequence[str]) -> dict[str, float]:
    """Per-stage durations (s) from the time stamps of one trial.

    ``order`` lists the stages from the first (e.g. ``written``) to the last (``shown``); each
    stage after the first that has a stamp gets the time since the previous stamped stage.
    Stamps from different machines are compared as given: a negative duration means their
    clocks disagree.
    """
    durations: dict[str, float] = {}
    previous: float | None = None
    for stage in order:
        if stage not in stamps:
            continue
        now = float(stamps[stage])
        if previous is not None:
            durations[stage] = now - previous
        previous = now
    return durations


def load_confounds(path: str | Path, *, tr: float | None = None, run: int = 1) -> MotionTrace:
    """The motion trace in an fMRIPrep-style ``desc-confounds_timeseries.tsv``.

    Needs the columns ``trans_x`` … ``rot_z``; ``framewise_displacement`` is used when present
    (``n/a`` on the first row is kept as NaN) and computed as Power's FD (50 mm head radius)
    otherwise.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: no such confounds file") from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: cannot be read as a TSV: {exc}") from exc
    missing = [c for c in MOTION_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing motion column(s) {', '.join(missing)}")
    try:
        params = table[list(MOTION_COLUMNS)].to_numpy(dtype=np.float64)
        if "framewise_displacement" in table.columns:
            fd = table["framewise_displacement"].to_numpy(dtype=np.float64)
        else:
            fd = np.full(len(params), np.nan)
            diff = np.abs(np.diff(params, axis=0))
            fd[1:] = diff[:, :3].sum(axis=1) + 50.0 * diff[:, 3:].sum(axis=1)
    except ValueError as exc:
        raise ValueError(f"{path}: motion columns are not numeric: {exc}") from exc
    if np.isnan(params).any():
        row = int(np.argwhere(np.isnan(params))[0, 0]) + 2  # the header is line 1
        raise ValueError(f"{path}, line {row}: a motion parameter is missing")
    return MotionTrace(params=params, fd=fd, tr=tr, run=run)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _median(values: Sequence[float | None]) -> float | None:
    v = np.array([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def release_figures(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Retrieval, hubness and low-level reconstruction metrics of one release's records."""
    from rtrecon.report.metrics import hubness, pixcorr, ssim

    ranks = [t.correct_rank for t in records if t.correct_rank is not None]
    hub_id, hub_share = hubness([t.top1_id for t in records if t.top1_id is not None])
    pairs = [(t.reconstruction, t.seen_image) for t in records if t.reconstruction is not None and t.seen_image is not None]
    return {
        "trials": len(records),
        "ranked": len(ranks),
        "top1": float(np.mean(np.array(ranks) <= 1)) if ranks else None,
        "top5": float(np.mean(np.array(ranks) <= 5)) if ranks else None,
        "median_release_s": _median([t.release_s for t in records]),
        "hub_id": hub_id,
        "hub_share": hub_share,
        "reconstructions": len(pairs),
        "pixcorr": pixcorr(*zip(*pairs)) if pairs else None,
        "ssim": ssim(*zip(*pairs)) if pairs else None,
    }


def imagery_figures(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Imagery retrieval among each trial's target set, as NSD-Imagery scores it (empty: no imagery trial).

    ``top1``: the share of trials whose target ranks first among its set's targets (``top5``: in
    the first five); ``chance``: the mean of ``1 / set_size``; ``per_set`` and ``per_vividness`` (by the rating in ``response``;
    ``"n/a"`` where none was given) the same share per group; ``trials``: the trials ranked.
    """
    ranked = [t for t in records if t.target_set and t.set_rank is not None]
    if not ranked:
        return {}

    def share(group: Sequence[TrialRecord]) -> float:
        return float(np.mean([t.set_rank == 1 for t in group]))

    by_set: dict[str, list[TrialRecord]] = {}
    by_rating: dict[str, list[TrialRecord]] = {}
    for t in ranked:
        by_set.setdefault(t.target_set, []).append(t)
        by_rating.setdefault(t.response or "n/a", []).append(t)
    return {
        "trials": len(ranked),
        "top1": share(ranked),
        "top5": float(np.mean([t.set_rank <= 5 for t in ranked])),
        "chance": float(np.mean([1.0 / t.set_size for t in ranked])),
        "per_set": {name: share(group) for name, group in by_set.items()},
        "per_vividness": {rating: share(by_rating[rating]) for rating in sorted(by_rating)},
        "trials_per_vividness": {rating: len(by_rating[rating]) for rating in sorted(by_rating)},
    }


def pairmate_figures(records: Sequence[TrialRecord]) -> dict[str, Any]:
    """Pairmate distinctiveness of the records that have one (empty: none has).

    ``mean_cpd`` and ``two_way`` (the share whose decoded embedding is nearer the seen image than
    its pairmate: CPD > 0, as the denominator of CPD is positive; chance 0.5) over all of them, and
    ``per_run``: run -> ``{"trials", "mean_cpd", "two_way"}``.
    """
    scored = [t for t in records if t.cpd is not None and math.isfinite(t.cpd)]
    if not scored:
        return {}

    def figures(group: Sequence[TrialRecord]) -> dict[str, Any]:
        cpd = np.array([t.cpd for t in group], dtype=float)
        return {"trials": len(group), "mean_cpd": float(cpd.mean()), "two_way": float(np.mean(cpd > 0))}

    runs: dict[int, list[TrialRecord]] = {}
    for t in scored:
        runs.setdefault(t.run, []).append(t)
    return {**figures(scored), "per_run": {run: figures(runs[run]) for run in sorted(runs)}}


def summarise(data: SessionReportData, report: str | Path) -> ReportSummary:
    """The headline figures of ``data`` (``report``: where its HTML is written).

    Retrieval, reconstruction and hubness headline figures are those of each trial's first
    release; :attr:`ReportSummary.by_release` has them for every release index.
    """
    first = data.first_releases()
    ranks = np.array([t.correct_rank for t in first if t.correct_rank is not None], dtype=float)
    top1 = float(np.mean(ranks <= 1)) if ranks.size else None
    top5 = float(np.mean(ranks <= 5)) if ranks.size else None
    n = data.gallery_size
    totals = np.array([t.total_latency_s for t in data.trials if t.latencies], dtype=float)
    stage_median: dict[str, float] = {}
    stage_p95: dict[str, float] = {}
    for stage in data.stages():
        values = np.array([t.latencies[stage] for t in data.trials if stage in t.latencies], dtype=float)
        stage_median[stage] = float(np.median(values))
        stage_p95[stage] = float(np.percentile(values, 95))
    fd = np.concatenate([m.fd for m in data.motion]) if data.motion else np.array([])
    fd = fd[np.isfinite(fd)]
    by_release: dict[int, dict[str, Any]] = {}
    for release in sorted({t.release for t in data.trials}):
        figures = release_figures([t for t in data.trials if t.release == release])
        figures.update({k: float(v) for k, v in data.release_metrics.get(release, {}).items() if v is not None})
        imagery = imagery_figures([t for t in data.trials if t.release == release])
        if imagery:
            figures["imagery_top1"] = imagery["top1"]
        by_release[release] = figures
    head = release_figures(first) if first else {}
    first_release = min(by_release) if by_release else None
    # a trial's feedback shows the newest release there is at its slot: its delay is that release's
    shown: dict[tuple[int, int], float] = {}
    for t in data.trials:
        if t.feedback_delay_s is not None:
            key = (t.run, t.trial)
            shown[key] = min(shown.get(key, np.inf), t.feedback_delay_s)
    delays = np.array(list(shown.values()), dtype=float)
    return ReportSummary(
        report=Path(report),
        trials=len(first),
        decoded=sum(t.decoded for t in first),
        retrieval_trials=int(ranks.size),
        top1=top1,
        top5=top5,
        chance_top1=1.0 / n if n else None,
        chance_top5=min(5, n) / n if n else None,
        median_latency_s=float(np.median(totals)) if totals.size else None,
        p95_latency_s=float(np.percentile(totals, 95)) if totals.size else None,
        stage_median_s=stage_median,
        stage_p95_s=stage_p95,
        mean_fd_mm=_finite_or_none(float(fd.mean())) if fd.size else None,
        max_fd_mm=_finite_or_none(float(fd.max())) if fd.size else None,
        high_motion_volumes=int(np.sum(fd > data.fd_threshold_mm)),
        decoder=data.decoder_description,
        metrics={k: float(v) for k, v in data.metrics.items()},
        by_release=by_release,
        two_way_clip=by_release[first_release].get("two_way_clip") if first_release is not None else None,
        pixcorr=head.get("pixcorr"),
        ssim=head.get("ssim"),
        hub_id=head.get("hub_id"),
        hub_share=head.get("hub_share"),
        median_feedback_delay_s=float(np.median(delays)) if delays.size else None,
        p95_feedback_delay_s=float(np.percentile(delays, 95)) if delays.size else None,
        external_metrics=dict(data.external_metrics),
        imagery=imagery_figures(first),
        pairmates=pairmate_figures(first),
    )
