"""What a run leaves on disk: BIDS events, PsychoPy's data file, results, triggers and frame timing.

:class:`RunPaths` names the files of one run (BIDS entities from the session config)::

    OUT/sourcedata/stimulus/sub-S/ses-E/func/sub-S_ses-E_task-T_run-RR_
        events.tsv (+ .json sidecar)    BIDS events: every event the participant saw, with responses,
                                        planned and measured onset and duration; one feedback row per
                                        (period, trial, release shown), with its status; the sidecar's
                                        StimulusTiming counts the stimuli that slipped over a frame;
                                        its OperatorActions, the operator's controls followed
                                        (rtrecon console: feedback paused / resumed, trials
                                        marked bad, the run ended), when there were any
        psychopy.csv, psychopy.psydat   PsychoPy ExperimentHandler, one row per event
        results.tsv                     each result (its latest release; its CPD when the trial has a
                                        pairmate): received / shown (run seconds), engine latencies,
                                        and its stage stamps (time.time(), the latency chain) with
                                        "received" and "shown" added
        triggers.tsv                    every scanner trigger, seconds since the first
        frames.json                     frame-timing statistics (dropped frames, intervals), in seconds
                                        of the display (a replay's scanner seconds / speed)
        journal.jsonl                   the run as it happens (see below), also after a kill
        trial-TTT_recon.png             each reconstruction received
    OUT/sourcedata/stimulus/sub-S/ses-E/link/   the engine link's event spool and results state

The stimulus program's record is source data: the raw dataset's own ``func/..._events.tsv`` is
the engine's (what it received), so the two never write the same file when the processes share
an output folder (the demo).

:class:`RunRecord` collects a run as it goes (events with measured onsets, responses,
results, flips) and :meth:`RunRecord.write` writes all of the above when the run ends, also
when it is aborted. Times are seconds of the scanner since the first trigger (a replay at
``speed`` S runs S times faster than the scanner: its elapsed clock time × S); missing values are
``n/a`` as BIDS asks.

The journal: a killed program writes nothing at its end, so everything is also appended, as it
happens, to ``journal.jsonl`` (:class:`RunJournal`: one JSON object a line, each line flushed and
fsynced; a torn line, from a kill mid-write, is ignored by :func:`read_journal`). Lines, by
their ``"t"``:

- ``start``: the first trigger: ``zero_monotonic`` (``time.monotonic()`` of it: system-wide, so a
  restarted program finds the run's time zero), ``speed``, ``wall_offset``, ``run``, ``session``;
- ``onset``: a segment first shown: ``segment`` (its index in the timeline), ``onset`` (s);
- ``response``: ``segment`` (the event it answers), ``response``, ``response_time`` (s);
- ``trigger``: a later scanner trigger, ``time`` (s);
- ``result``: a result, written before the engine is told it arrived: the message's fields
  (``embedding`` as a list; ``image``: its PNG's file name), ``received_monotonic`` and
  ``received_wall`` (``time.time()``);
- ``shown``: ``trial``, ``release``, ``shown`` (s) and ``shown_wall``: the flip that first showed
  its result (that release of it);
- ``feedback``: ``period`` (the feedback segment's index; the end screen's is the number of
  segments), ``trial``, ``release``, ``onset`` (s): a result first drawn in a feedback period
  (:class:`~stimulus.policy.FeedbackShow`);
- ``end_screen``: ``onset`` (s) of the end-of-run screen;
- ``operator``: an operator's control followed (:attr:`RunRecord.operator_actions`): ``action``,
  ``time`` (s), and ``trial`` for a trial marked or unmarked bad;
- ``flips``: ``times`` (s) of a batch of flips;
- ``end``: the run ended (``aborted``).

(s): scanner seconds since the first trigger. Results are written by the link's thread before
they are acknowledged (:class:`~stimulus.link.EngineLink` ``on_result``), the rest by the
journal's own thread (:meth:`RunJournal.post`), so the frame loop never waits on a disk.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.contract.layout import SessionLayout, atomic_file
from rtrecon.contract.wire import TrialResultMessage

from .feedback import ReceivedResult
from .timeline import Segment
from .trigger import ScannerTrigger

__all__ = ["RunPaths", "EventRecord", "FrameStats", "RunRecord", "RunJournal", "bad_trials", "frame_stats", "read_journal", "stimulus_timing"]

log = logging.getLogger(__name__)

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
    "planned_duration",
    "result_received",
    "result_shown",
    "release",
    "feedback_status",
)

RESULT_COLUMNS = ("trial", "stimulus", "release", "final", "retrieved", "score", "cpd", "received", "shown", "received_to_shown",
                  "engine_latencies", "stamps")

#: Phases whose timing is checked against the plan: what the participant sees as the task.
STIMULUS_PHASES = ("image", "cue", "imagery")

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
    "planned_duration": {"Description": "Duration in the design", "Units": "s"},
    "result_received": {"Description": "When the engine's (latest) result for this trial was received", "Units": "s"},
    "result_shown": {"Description": "First frame that showed the result", "Units": "s"},
    "release": {"Description": "feedback rows: which release of the trial's result was shown (0: the first; the engine refines each trial's result)"},
    "feedback_status": {
        "Description": "feedback rows: what the period showed of the trial",
        "Levels": {
            "shown": "the trial's result, in its own period (or, with slot feedback, the first slot after it arrived)",
            "late": "a result that missed its own period, shown in a later one or on the end screen ([stimulus.feedback] late)",
            "missing": "the period ended before the trial's result arrived",
            "empty": "a slot with no result waiting",
            "paused": "the operator had paused feedback: the period would have shown this release of the trial's result, and did not",
        },
    },
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
    def layout(self) -> SessionLayout:
        return SessionLayout(self.output_dir, self.subject, self.session, self.task)

    @property
    def stem(self) -> str:
        return self.layout.stem(self.run)

    @property
    def session_dir(self) -> Path:
        return self.layout.stimulus_session_dir

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

    @property
    def journal(self) -> Path:
        """The run's journal (see the module docstring)."""
        return self.source("journal.jsonl")

    def reconstruction(self, trial: int) -> Path:
        """Where trial ``trial``'s reconstruction is kept (PNG)."""
        return self.source(f"trial-{trial:03d}_recon.png")

    def source(self, suffix: str) -> Path:
        """The run's file ending in ``_<suffix>``."""
        return self.layout.stimulus(self.run, suffix)

    def check_free(self) -> None:
        """Refuse to run over a recorded run (FileExistsError naming the file).

        A run with a journal but no events file was stopped before its end (killed): it is
        resumed, not refused.
        """
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


def stimulus_timing(events: Sequence["EventRecord"], frame_s: float, speed: float = 1.0) -> dict[str, Any]:
    """How the stimuli kept to the plan: onset and duration errors in seconds of the display
    (scanner seconds / ``speed``); an event whose onset or duration is off by more than one frame
    (``frame_s``) has slipped. ``slipped_events`` lists the first 50."""
    checked, slipped = 0, []
    worst_onset, worst_duration = 0.0, 0.0
    for ev in events:
        seg = ev.segment
        if seg.phase not in STIMULUS_PHASES:
            continue
        checked += 1
        onset_error = (ev.onset - seg.start) / speed
        duration_error = (ev.duration - seg.duration) / speed if ev.duration is not None else 0.0
        worst_onset = max(worst_onset, abs(onset_error))
        worst_duration = max(worst_duration, abs(duration_error))
        if abs(onset_error) > frame_s or abs(duration_error) > frame_s:
            slipped.append({"trial": ev.trial, "trial_type": seg.event_type, "planned_onset": seg.start, "onset": ev.onset,
                            "planned_duration": seg.duration, "duration": ev.duration})
    return {"speed": speed, "frame_s": frame_s, "stimuli": checked, "slipped": len(slipped),
            "max_onset_error_s": worst_onset, "max_duration_error_s": worst_duration, "slipped_events": slipped[:50]}


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a run's journal (none when it does not exist); a torn line is dropped.

    A kill mid-write tears the last line; the next program ends it before appending, so a torn
    line may also sit between whole ones.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    for line in text.splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


class RunJournal:
    """Appends a run's journal lines, each flushed and fsynced (see the module docstring).

    :meth:`append` writes at once (from any thread); :meth:`post` hands a line to the journal's
    own thread and returns at once (the frame loop's way); :meth:`close` writes what was posted.
    """

    def __init__(self, paths: RunPaths, clock: Callable[[], float] = time.monotonic):
        self.paths = paths
        self.path = paths.journal
        self.previous = read_journal(self.path)
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._file: Any = None
        # both offsets from one reading of the program's clock, so every wall stamp of the run (received,
        # shown) is mapped the same way and their order is the order of the program's clock
        now = clock()
        #: ``time.monotonic()`` minus the program's clock (PsychoPy's counts from its import)
        self.clock_offset = time.monotonic() - now
        #: ``time.time()`` minus the program's clock
        self.wall_offset = time.time() - now

    @property
    def started(self) -> dict[str, Any] | None:
        """The previous life's ``start`` line, when this run was started before (and not ended)."""
        if any(e.get("t") == "end" for e in self.previous):
            return None
        return next((e for e in self.previous if e.get("t") == "start"), None)

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry) + "\n"
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
                    # a torn line from a kill: end it, so that the next line reads back
                    with self.path.open("ab") as f:
                        f.write(b"\n")
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def begin(self, entry: dict[str, Any]) -> None:
        """Start the run's journal afresh with ``entry`` (the first trigger), dropping an old run's lines
        (``--overwrite``) -- but not a result this program received while it waited."""
        with self._lock:
            kept = read_journal(self.path)[len(self.previous):]
            if self._file is not None:
                self._file.close()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w", encoding="utf-8")
        self.previous = []
        self.append(entry)
        for line in kept:
            self.append(line)

    def post(self, entry: dict[str, Any]) -> None:
        """Write ``entry`` from the journal's thread; returns at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="rtrecon-journal", daemon=True)
            self._thread.start()
        self._queue.put(entry)

    def _drain(self) -> None:
        while (entry := self._queue.get()) is not None:
            try:
                self.append(entry)
            except OSError as exc:  # a full disk must not stop the run: the end-of-run files still come
                log.error("%s: journal line not written: %s", self.path, exc)

    def record_result(self, message: TrialResultMessage, received: float) -> None:
        """Write a result (its reconstruction as PNG) at once: the link calls it before acknowledging."""
        fields = {k: getattr(message, k) for k in _RESULT_FIELDS}
        fields["embedding"] = None if message.embedding is None else np.asarray(message.embedding, np.float32).ravel().tolist()
        fields["image"] = None
        if message.image is not None and message.run == self.paths.run:
            from PIL import Image

            path = self.paths.reconstruction(message.trial)
            with atomic_file(path) as f:  # durable: the engine drops its copy once acknowledged
                Image.fromarray(np.asarray(message.image, np.uint8)).save(f, format="PNG")
            fields["image"] = path.name
        # on the system's monotonic clock, which a restarted program shares (its own clock may not)
        self.append({"t": "result", **fields, "received_monotonic": received + self.clock_offset,
                     "received_wall": received + self.wall_offset})

    def close(self) -> None:
        """Write every posted line, then close the file."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


_RESULT_FIELDS = ("session", "run", "trial", "stimulus", "retrieved", "scores", "decoder", "release", "release_s", "final",
                  "sequence", "latencies", "stamps")


def result_from_entry(entry: dict[str, Any], folder: Path) -> TrialResultMessage:
    """The message a journal's ``result`` line holds (its reconstruction read back from ``folder``)."""
    image = None
    if entry.get("image"):
        from PIL import Image

        image = np.asarray(Image.open(folder / entry["image"]).convert("RGB"))
    embedding = None if entry.get("embedding") is None else np.asarray(entry["embedding"], np.float32)
    fields = {k: entry[k] for k in _RESULT_FIELDS if k in entry}  # a journal from before releases has none
    return TrialResultMessage(**fields, image=image, embedding=embedding)


def bad_trials(actions: Sequence[dict[str, Any]]) -> set[int]:
    """The trials the operator's ``actions`` leave marked bad."""
    bad: set[int] = set()
    for action in actions:
        if action["action"] == "trial_marked_bad":
            bad.add(action["trial"])
        elif action["action"] == "trial_unmarked_bad":
            bad.discard(action["trial"])
    return bad


def _cell(value: Any) -> str:
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


@dataclass
class RunRecord:
    """Everything recorded during one run.

    ``zero`` is the first trigger on the program's clock; ``flips`` are run times (scanner
    seconds); ``speed`` the replay's time scale (1: the scanner's own pace).
    """

    paths: RunPaths
    trials_file: Path | None = None
    events: list[EventRecord] = field(default_factory=list)
    results: dict[int, ReceivedResult] = field(default_factory=dict)
    flips: list[float] = field(default_factory=list)
    zero: float | None = None
    wall_offset: float = 0.0
    aborted: bool = False
    speed: float = 1.0
    feedback_rows: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    #: the operator's controls followed, in order: {"action", "time" (s; None before the first trigger)[, "trial"]}
    operator_actions: list[dict[str, Any]] = field(default_factory=list)
    #: who ended an aborted run: "quit_key" or "operator"
    ended_by: str | None = None

    def run_time(self, clock_time: float | None) -> float | None:
        """``clock_time`` in scanner seconds since the first trigger."""
        if clock_time is None or self.zero is None:
            return None
        return (clock_time - self.zero) * self.speed

    def clock_time(self, run_time: float) -> float:
        """The program's clock time of scanner time ``run_time``."""
        if self.zero is None:
            raise RuntimeError("no trigger yet")
        return self.zero + run_time / self.speed

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
                    "planned_duration": ev.segment.duration,
                    "result_received": self.run_time(result.received) if result else None,
                    "result_shown": self.run_time(result.shown) if result else None,
                }
            )
        for row in self.feedback_rows:
            trial = self.results.get(row["trial"]) if row["trial"] is not None else None
            rows.append({**row, "result_received": self.run_time(trial.received) if trial else None})
        rows.sort(key=lambda r: r["onset"])  # stable: a feedback row after the event it shares a flip with
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
                handler.addData(key, row.get(key))
            handler.nextEntry()
        handler.saveAsWideText(str(self.paths.source("psychopy.csv")), delim=",")
        handler.saveAsPickle(str(self.paths.source("psychopy")))
        handler.abort()  # already saved: stops PsychoPy saving again at interpreter exit

    def write(self, trigger: ScannerTrigger, expected_interval: float) -> None:
        """Write every file of the run (see the module docstring)."""
        rows = self.event_rows()
        self._write_tsv(self.paths.events, EVENT_COLUMNS, rows)
        self.timing = stimulus_timing(self.events, expected_interval, self.speed)
        if self.timing["slipped"]:
            worst = max(self.timing["slipped_events"], key=lambda e: abs(e["onset"] - e["planned_onset"]))
            log.warning("%d of %d stimuli slipped more than one frame (%.1f ms) from the plan at speed %g: worst onset error "
                        "%.1f ms, duration error %.1f ms (e.g. trial %s %s planned at %.3f s, shown at %.3f s); see %s",
                        self.timing["slipped"], self.timing["stimuli"], expected_interval * 1e3, self.speed,
                        self.timing["max_onset_error_s"] * 1e3, self.timing["max_duration_error_s"] * 1e3, worst["trial"],
                        worst["trial_type"], worst["planned_onset"], worst["onset"], self.paths.events.with_suffix(".json").name)
        else:
            log.info("timing: all %d stimuli within one frame (%.1f ms) of the plan", self.timing["stimuli"], expected_interval * 1e3)
        sidecar = {**_SIDECAR, "StimulusTiming": {
            "Description": "stimuli (image, cue, imagery) against the plan, in seconds of the display (scanner seconds / speed); "
                           "slipped: onset or duration off by more than one frame", **self.timing}}
        if self.operator_actions:
            sidecar["OperatorActions"] = {
                "Description": "the operator's controls (rtrecon console) the program followed, in order; time: seconds since "
                               "the first trigger (null: before it). feedback_paused / feedback_resumed; trial_marked_bad / "
                               "trial_unmarked_bad (trial); run_ended (the run ended there, its records whole)",
                "actions": self.operator_actions,
                "bad_trials": sorted(bad_trials(self.operator_actions)),
            }
        self.paths.events.with_suffix(".json").write_text(json.dumps(sidecar, indent=2), encoding="utf-8")
        self._write_psychopy(rows)
        result_rows = [
            {
                "trial": index,
                "stimulus": r.message.stimulus,
                "release": r.message.release,
                "final": int(r.message.final),
                "retrieved": ",".join(r.message.retrieved),
                "score": r.score,
                "cpd": r.cpd,
                "received": self.run_time(r.received),
                "shown": self.run_time(r.shown),
                "received_to_shown": (r.shown - r.received) * self.speed if r.shown is not None else None,
                "engine_latencies": json.dumps(r.message.latencies, sort_keys=True),
                "stamps": json.dumps(self._stamps(r), sort_keys=True),
            }
            for index, r in sorted(self.results.items())
        ]
        self._write_tsv(self.paths.source("results.tsv"), RESULT_COLUMNS, result_rows)
        # triggers in scanner seconds, so that their drift is measured against the scanner's TR
        scanner = ScannerTrigger(trigger.keys, trigger.tr, [self.run_time(t) for t in trigger.times]) if trigger.times else trigger
        self._write_tsv(self.paths.source("triggers.tsv"), ["trigger", "time"], [{"trigger": i, "time": t} for i, t in enumerate(scanner.run_times)])
        drift = scanner.drift()
        # frames on the display's own clock: a dropped frame is one of the screen, at any speed
        stats = frame_stats([t / self.speed for t in self.flips], expected_interval)
        summary = {"frames": stats.as_dict(), "triggers": drift.__dict__, "stimulus_timing": self.timing, "aborted": self.aborted,
                   "ended_by": self.ended_by, "speed": self.speed,
                   "frames_clock": "seconds of the display (scanner seconds / speed)"}
        self.paths.source("frames.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
