"""What a run leaves on disk: BIDS events, PsychoPy's data file, results, triggers and frame timing.

:class:`RunPaths` names the files of one run (BIDS entities from the session config)::

    OUT/sourcedata/stimulus/sub-S/ses-E/func/sub-S_ses-E_task-T_run-RR_
        events.tsv (+ .json sidecar)    BIDS events: every event the participant saw, with responses
        psychopy.csv, psychopy.psydat   PsychoPy ExperimentHandler, one row per event
        results.tsv                     each result: received / shown (run seconds), engine latencies,
                                        and its stage stamps (time.time(), the latency chain) with
                                        "received" and "shown" added
        triggers.tsv                    every scanner trigger, seconds since the first
        frames.json                     frame-timing statistics (dropped frames, intervals)
    OUT/sourcedata/stimulus/sub-S/ses-E/link/   the engine link's event spool and results state

The stimulus program's record is source data: the raw dataset's own ``func/..._events.tsv`` is
the engine's (what it received), so the two never write the same file when the processes share
an output folder (the demo).

:class:`RunRecord` collects a run as it goes (events with measured onsets, responses,
results, flips) and :meth:`RunRecord.write` writes all of the above; the program calls it even
when a run is aborted, so nothing recorded is lost. Times are seconds since the first trigger;
missing values are ``n/a`` as BIDS asks.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .feedback import ReceivedResult
from .timeline import Segment
from .trigger import ScannerTrigger

__all__ = ["RunPaths", "EventRecord", "FrameStats", "RunRecord", "frame_stats"]

EVENT_COLUMNS = (
    "onset",
    "duration",
    "trial_type",
    "trial",
    "stim_file",
    "stim_id",
    "response",
    "response_time",
    "planned_onset",
    "result_received",
    "result_shown",
)

RESULT_COLUMNS = ("trial", "stimulus", "retrieved", "score", "received", "shown", "received_to_shown", "engine_latencies", "stamps")

_SIDECAR = {
    "onset": {"Description": "First frame of the event, seconds since the run's first scanner trigger", "Units": "s"},
    "duration": {"Description": "Until the first frame of the next segment (measured)", "Units": "s"},
    "trial_type": {"Description": "Event type: the trial list's trial_type for the main event; cue, vividness, feedback otherwise"},
    "trial": {"Description": "Trial index in the trial list (0-based)"},
    "stim_file": {"Description": "Image shown or cued, relative to the trial list's folder"},
    "stim_id": {"Description": "Stimulus id (e.g. NSD 73k id)"},
    "response": {"Description": "First response in the trial (perception: new/old; vividness: the rating key)"},
    "response_time": {"Description": "Response time from the event's onset", "Units": "s"},
    "planned_onset": {"Description": "Onset in the design", "Units": "s"},
    "result_received": {"Description": "When the engine's result for this trial was received", "Units": "s"},
    "result_shown": {"Description": "First frame that showed the result", "Units": "s"},
}


@dataclass(frozen=True)
class RunPaths:
    """File names of one run."""

    output_dir: Path
    subject: str
    session: str
    task: str
    run: int

    @property
    def stem(self) -> str:
        return f"sub-{self.subject}_ses-{self.session}_task-{self.task}_run-{self.run:02d}"

    @property
    def session_dir(self) -> Path:
        return self.output_dir / "sourcedata" / "stimulus" / f"sub-{self.subject}" / f"ses-{self.session}"

    @property
    def folder(self) -> Path:
        """Where the run's files go."""
        return self.session_dir / "func"

    @property
    def link_dir(self) -> Path:
        """The session's engine-link state (event spool, results received)."""
        return self.session_dir / "link"

    @property
    def events(self) -> Path:
        return self.source("events.tsv")

    def source(self, suffix: str) -> Path:
        """The run's file ending in ``_<suffix>``."""
        return self.folder / f"{self.stem}_{suffix}"

    def check_free(self) -> None:
        """Refuse to run over a recorded run (FileExistsError naming the file)."""
        if self.events.exists():
            raise FileExistsError(f"{self.events}: run {self.run} is already recorded; choose another run number")


@dataclass
class EventRecord:
    """One task event as it happened."""

    segment: Segment
    onset: float
    duration: float | None = None
    response: str = ""
    response_time: float | None = None

    @property
    def trial(self) -> int | None:
        return self.segment.trial.index if self.segment.trial is not None else None


@dataclass(frozen=True)
class FrameStats:
    """Frame timing of a run: intervals between flips and the frames that came late."""

    n_frames: int
    expected_interval: float
    median_interval: float | None
    mean_interval: float | None
    max_interval: float | None
    dropped: int
    dropped_at: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "dropped_at": list(self.dropped_at)}


def frame_stats(flip_times: Sequence[float], expected_interval: float, threshold: float = 1.5) -> FrameStats:
    """Statistics of flips at ``flip_times``: an interval over ``threshold`` expected ones is a drop."""
    t = np.asarray(flip_times, dtype=float)
    intervals = np.diff(t)
    if intervals.size == 0:
        return FrameStats(int(t.size), expected_interval, None, None, None, 0, ())
    late = intervals > threshold * expected_interval
    return FrameStats(
        n_frames=int(t.size),
        expected_interval=expected_interval,
        median_interval=float(np.median(intervals)),
        mean_interval=float(intervals.mean()),
        max_interval=float(intervals.max()),
        dropped=int(late.sum()),
        dropped_at=tuple(float(x) for x in t[1:][late]),
    )


def _cell(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


@dataclass
class RunRecord:
    """Everything recorded during one run."""

    paths: RunPaths
    trials_file: Path | None = None
    events: list[EventRecord] = field(default_factory=list)
    results: dict[int, ReceivedResult] = field(default_factory=dict)
    flips: list[float] = field(default_factory=list)
    zero: float | None = None
    wall_offset: float = 0.0
    aborted: bool = False

    def run_time(self, clock_time: float | None) -> float | None:
        """``clock_time`` in seconds since the first trigger."""
        if clock_time is None or self.zero is None:
            return None
        return clock_time - self.zero

    def _rel(self, path: Path | None) -> str:
        if path is None:
            return ""
        if self.trials_file is not None:
            try:
                return str(path.relative_to(self.trials_file.resolve().parent))
            except ValueError:
                pass
        return str(path)

    def _stamps(self, result: ReceivedResult) -> dict[str, float]:
        """The result's stage stamps (``time.time()``) with this program's received and shown added."""
        stamps = dict(result.message.stamps)
        stamps["received"] = result.received + self.wall_offset
        if result.shown is not None:
            stamps["shown"] = result.shown + self.wall_offset
        return stamps

    def event_rows(self) -> list[dict[str, Any]]:
        rows = []
        for ev in self.events:
            trial = ev.segment.trial
            result = self.results.get(trial.index) if trial is not None and ev.segment.main else None
            rows.append(
                {
                    "onset": ev.onset,
                    "duration": ev.duration,
                    "trial_type": ev.segment.event_type,
                    "trial": ev.trial,
                    "stim_file": self._rel(trial.stim_file if trial is not None else None),
                    "stim_id": trial.stim_id if trial is not None else "",
                    "response": ev.response,
                    "response_time": ev.response_time,
                    "planned_onset": ev.segment.start,
                    "result_received": self.run_time(result.received) if result else None,
                    "result_shown": self.run_time(result.shown) if result else None,
                }
            )
        return rows

    def _write_tsv(self, path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_cell(row.get(c)) for c in columns])

    def _write_psychopy(self, rows: Sequence[dict[str, Any]]) -> None:
        from psychopy import data

        handler = data.ExperimentHandler(
            name="rtrecon",
            extraInfo={"participant": self.paths.subject, "session": self.paths.session, "run": self.paths.run, "task": self.paths.task},
            dataFileName=str(self.paths.source("psychopy")),
            savePickle=False,
            saveWideText=False,
            autoLog=False,
        )
        for row in rows:
            for key in EVENT_COLUMNS:
                handler.addData(key, row[key])
            handler.nextEntry()
        handler.saveAsWideText(str(self.paths.source("psychopy.csv")), delim=",")
        handler.saveAsPickle(str(self.paths.source("psychopy")))
        handler.abort()  # already saved: stops PsychoPy saving again at interpreter exit

    def write(self, trigger: ScannerTrigger, expected_interval: float) -> None:
        """Write every file of the run (see the module docstring)."""
        rows = self.event_rows()
        self._write_tsv(self.paths.events, EVENT_COLUMNS, rows)
        self.paths.events.with_suffix(".json").write_text(json.dumps(_SIDECAR, indent=2), encoding="utf-8")
        self._write_psychopy(rows)
        result_rows = [
            {
                "trial": index,
                "stimulus": r.message.stimulus,
                "retrieved": ",".join(r.message.retrieved),
                "score": r.score,
                "received": self.run_time(r.received),
                "shown": self.run_time(r.shown),
                "received_to_shown": (r.shown - r.received) if r.shown is not None else None,
                "engine_latencies": json.dumps(r.message.latencies, sort_keys=True),
                "stamps": json.dumps(self._stamps(r), sort_keys=True),
            }
            for index, r in sorted(self.results.items())
        ]
        self._write_tsv(self.paths.source("results.tsv"), RESULT_COLUMNS, result_rows)
        self._write_tsv(self.paths.source("triggers.tsv"), ["trigger", "time"], [{"trigger": i, "time": t} for i, t in enumerate(trigger.run_times)])
        drift = trigger.drift()
        stats = frame_stats(self.flips, expected_interval)
        summary = {"frames": stats.as_dict(), "triggers": drift.__dict__, "aborted": self.aborted}
        self.paths.source("frames.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
