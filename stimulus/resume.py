"""Resuming a killed run: its journal read back, so that the run goes on at the current scanner time.

Everything a run does is journaled as it happens (:class:`~stimulus.records.RunJournal`). A
program started again on a run whose journal holds a first trigger but no end does not wait for
a trigger; :func:`resume_run` restores, in the journal's order:

- time zero: the journaled first trigger (``time.monotonic()``, the same clock in every process
  of the machine), and the triggers after it;
- the segments shown (their onsets and event rows, :class:`~stimulus.eventlog.EventLog`), the
  responses, the flips;
- the results (accepted again, so a newer release still replaces an older one), the feedback rows
  and each result's ``shown`` time (:class:`~stimulus.results.ResultHandler`);
- the virtual participant's view: what it saw and answered; its scanner goes on with the next
  trigger due.

Segments that began and ended while the program was down were never seen, so they are not sent;
their trials are returned as missed. The segment under way starts on the first frame (its onset
is that frame: later than planned).
"""

from __future__ import annotations

import logging
from typing import Any

from .eventlog import EventLog
from .participant import VirtualParticipant
from .policy import FeedbackShow
from .records import RunJournal, RunRecord, result_from_entry
from .results import ResultHandler
from .timeline import Timeline
from .trigger import ScannerTrigger, psychopy_time

__all__ = ["check_speed", "resume_run"]

log = logging.getLogger(__name__)


def check_speed(journal: RunJournal, run: int, speed: float) -> None:
    """Raise ValueError when ``journal``'s run was started at another speed than ``speed`` (nothing when it was not started)."""
    started = journal.started
    if started is not None and abs(float(started.get("speed", 1.0)) - speed) > 1e-9:
        raise ValueError(f"{journal.path}: run {run} was started at speed {started.get('speed')}, "
                         f"not {speed:g}: resume it at that speed")


def resume_run(start: dict[str, Any], journal: RunJournal, *, run: int, timeline: Timeline, record: RunRecord,
               trigger: ScannerTrigger, events: EventLog, results: ResultHandler,
               participant: VirtualParticipant | None = None) -> list[int]:
    """Read back what a killed program of run ``run`` recorded in ``journal`` (its ``start`` entry
    first); returns the trials missed while it was down (see the module docstring)."""
    offset = journal.clock_offset
    zero = float(start["zero_monotonic"]) - offset
    trigger.times.append(zero)
    record.zero = zero
    record.wall_offset = journal.wall_offset
    folder = record.paths.folder
    segments = timeline.segments
    for entry in journal.previous:
        kind = entry.get("t")
        if kind == "onset":
            index = int(entry["segment"])
            events.start(index, float(entry["onset"]), record.clock_time(float(entry["onset"])))
            events.current = max(events.current, index)
        elif kind == "response":
            events.restore_response(int(entry["segment"]), entry["response"], entry["response_time"])
        elif kind == "trigger":
            trigger.times.append(record.clock_time(float(entry["time"])))
        elif kind == "flips":
            record.flips.extend(entry["times"])
        elif kind == "result":
            results.receive(result_from_entry(entry, folder), float(entry["received_monotonic"]) - offset)
        elif kind == "feedback":
            results.restore_feedback(FeedbackShow(int(entry["period"]), int(entry["trial"]), int(entry["release"]), float(entry["onset"])))
        elif kind == "shown":
            results.restore_shown(int(entry["trial"]), int(entry.get("release", 0)), entry["shown"])
        elif kind == "operator":
            record.operator_actions.append({k: v for k, v in entry.items() if k != "t"})
    now = record.run_time(psychopy_time())
    upto = timeline.index_at(now)
    missed = [segments[i].trial.index for i in range(events.current + 1, min(upto, len(segments)))
              if segments[i].main and segments[i].trial is not None]
    if missed:
        log.warning("run %d resumed at %.1f s: trial(s) %s came while the program was down and were not shown",
                    run, now, ", ".join(map(str, missed)))
    # the segment under way now starts on the first frame (late: it began while the program was down)
    events.current = max(events.current, upto - 1)
    if participant is not None:
        seen = {ev.segment.trial.stimulus for ev in record.events if ev.segment.phase == "image" and ev.segment.trial is not None}
        answered = {ev.trial for ev in record.events if ev.response and ev.trial is not None}
        participant.resume(zero, seen, answered)
    log.info("run %d resumed at %.1f s after the first trigger (%d events, %d results kept)",
             run, now, len(record.events), len(record.results))
    return missed
