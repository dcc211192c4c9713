"""What the participant was shown, as it happened: each segment's measured onset, its event row, the responses.

:class:`EventLog` is the stimulus program's account of the segments of a run's
:class:`~stimulus.timeline.Timeline` as they reached the screen: :meth:`EventLog.start` books a
segment's first flip (and a resumed run books the ones its journal holds the same way);
:meth:`EventLog.respond` gives a key press to the segment that was on screen when it was made;
:meth:`EventLog.next_index` picks the segment a coming flip shows, never skipping one with an
event. The event rows go to the :class:`~stimulus.records.RunRecord`; journaling them is the
program's part.
"""

from __future__ import annotations

from bisect import bisect_right

from .records import EventRecord, RunRecord
from .timeline import Segment, Timeline
from .trigger import KeyPress

__all__ = ["EventLog"]


class EventLog:
    """The segments of ``timeline`` shown so far, with their event rows appended to ``record.events``.

    ``current`` is the index of the segment on screen (-1 before the first); ``onsets`` maps each
    shown segment's index to its measured onset in scanner seconds (the end screen's index is
    ``len(timeline.segments)``, filled in by the program).
    """

    def __init__(self, timeline: Timeline, record: RunRecord):
        self.timeline = timeline
        self.record = record
        self.current = -1
        self.onsets: dict[int, float] = {}
        self._open: EventRecord | None = None
        self._events_by_trial: dict[int, list[EventRecord]] = {}
        self._event_index: dict[int, EventRecord] = {}
        self._shown: list[tuple[float, Segment]] = []

    def start(self, index: int, onset: float, clock_time: float) -> None:
        """Book segment ``index``'s first frame, at run time ``onset`` (program clock ``clock_time``)."""
        segment = self.timeline.segments[index]
        if self._open is not None:
            self._open.duration = onset - self._open.onset
            self._open = None
        self._shown.append((clock_time, segment))
        self.onsets[index] = onset
        if segment.event_type and segment.phase != "feedback":  # feedback rows come from the policy
            ev = EventRecord(segment, onset)
            self.record.events.append(ev)
            self._event_index[index] = ev
            self._open = ev
            trial = segment.trial
            if trial is not None:
                self._events_by_trial.setdefault(trial.index, []).append(ev)

    def respond(self, press: KeyPress) -> tuple[int, EventRecord] | None:
        """Record ``press`` as the response to what was on screen when it was made (even if the
        screen changed before it was polled); returns the segment index and the event it answered,
        or None when that segment takes no such key or its trial has answered already."""
        shown = bisect_right(self._shown, press.time, key=lambda item: item[0])
        if not shown:
            return None
        segment = self._shown[shown - 1][1]
        label = segment.responses.get(press.key)
        trial = segment.trial
        if label is None or trial is None:
            return None
        takers = [ev for ev in self._events_by_trial.get(trial.index, []) if ev.segment.responses]
        if not takers or takers[-1].response:
            return None
        ev = takers[-1]
        ev.response = label
        ev.response_time = self.record.run_time(press.time) - ev.onset
        index = next(i for i, e in self._event_index.items() if e is ev)
        return index, ev

    def restore_response(self, index: int, response: str, response_time: float) -> None:
        """A response a killed program of this run recorded to segment ``index`` (ignored if it has no event)."""
        if index in self._event_index:
            ev = self._event_index[index]
            ev.response, ev.response_time = response, response_time

    def next_index(self, t: float) -> int:
        """The segment a flip at run time ``t`` shows: never skips one with an event (a stalled
        process shows it late, for a frame, rather than not at all)."""
        segments = self.timeline.segments
        index = max(self.timeline.index_at(t), self.current)
        for i in range(self.current + 1, min(index, len(segments))):
            if segments[i].event_type:
                return i
        return index

    def close(self, end: float | None) -> None:
        """End the event still open at run time ``end`` (the last flip; None: no flip, it lasted nothing)."""
        if self._open is not None:
            self._open.duration = (end if end is not None else self._open.onset) - self._open.onset
