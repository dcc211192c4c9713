"""Which results a feedback period shows, and the rule for a result that comes late.

Feedback periods are the timeline's ``feedback`` segments (:mod:`stimulus.timeline`), and the
end-of-run screen; nothing else ever draws a result on the participant's screen. Per period:

- a trial's or a block's period (``feedback.when = "trial"`` / ``"block"``) shows its own trials,
  each from the first frame after its result arrived, and, with ``feedback.late = "next"``, the
  results that missed their own period and had arrived when this one began;
- a slot (``"slot"``: a free stretch of the design) shows the results waiting, oldest arrival
  first, up to ``feedback.slot_trials``; one arriving during the slot joins it while there is room;
- the end-of-run screen shows what is still owed and has arrived: late results (``"next"``,
  ``"end"``) and, in slot mode, the queue.

A result that misses its own period (it arrived after the period ended, or never) is recorded
as ``missing`` in that period's row; ``late = "skip"`` never shows it afterwards. While the
operator has paused feedback (``rtrecon console``) a period draws nothing: what it would have
drawn is recorded as ``paused`` (:meth:`FeedbackPolicy.withhold`), is drawn if the period is
still on when feedback resumes, and is not owed to a later period. Once a trial's
result has been shown in a period it is not queued again; a newer release of it (the engine
refines each trial's result) is drawn in place while the period lasts.

:class:`FeedbackPolicy` decides this from the timeline and the results' arrival times alone, so a
resumed run (:mod:`stimulus.app`) recomputes it from what its journal holds. Each (period, trial,
release) first drawn is one :class:`FeedbackShow`; :meth:`FeedbackPolicy.rows` turns them, with
the periods' measured onsets, into the events file's ``feedback`` rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rtrecon.contract.config import FeedbackSection

from .feedback import ReceivedResult
from .timeline import Segment, Timeline
from .trials import Trial

__all__ = ["FeedbackShow", "FeedbackPolicy", "FeedbackStatus"]

FeedbackStatus = Literal["shown", "late", "missing", "empty", "paused"]
#: At most this many results share one period's screen (one column each).
MAX_COLUMNS = 8


@dataclass(frozen=True)
class FeedbackShow:
    """A result first drawn in a period: ``period`` is the segment's index (the end screen's is
    ``len(segments)``), ``onset`` the run time of the flip that first showed it there."""

    period: int
    trial: int
    release: int
    onset: float


class FeedbackPolicy:
    """Chooses what each feedback period draws (see the module docstring); ``queue``: the run
    plans slots (``feedback.when = "slot"``, or live feedback on the participant's screen)."""

    def __init__(self, settings: FeedbackSection, trials: Sequence[Trial], timeline: Timeline, *, queue: bool = False):
        self.settings = settings
        self.trials = list(trials)
        self.segments = timeline.segments
        self.end_index = len(self.segments)
        self.own: dict[int, int] = {}  # trial -> index of its own period (trial / block feedback)
        for index, seg in enumerate(self.segments):
            for trial in seg.feedback_trials:
                self.own[trial] = index
        self.slots = queue  # slot feedback: every feedback trial's result waits in one queue
        self.shows: list[FeedbackShow] = []
        self._members: dict[int, list[int]] = {}
        self._drawn: set[tuple[int, int, int]] = set()  # (period, trial, release)
        #: what feedback paused withheld: [period, trial, release, first frame withheld, when feedback resumed]
        self.withheld: list[list[Any]] = []

    # -- what a period shows ---------------------------------------------------------------------
    def _shown_trials(self) -> set[int]:
        """Trials shown, or withheld by a pause: neither is owed to a later period."""
        return {s.trial for s in self.shows} | {w[1] for w in self.withheld}

    def _owed(self, results: Mapping[int, ReceivedResult], before: int) -> list[int]:
        """Arrived results still to show in a period at index ``before``, oldest arrival first."""
        shown = self._shown_trials()
        late = self.settings.late
        out = []
        for trial, result in results.items():
            if trial in shown or not self.trials[trial].feedback:
                continue
            own = self.own.get(trial)
            if own is None:
                if not self.slots:
                    continue  # no period of its own and no slots: only the operator's demand shows it
            elif own >= before or late == "skip" or (late == "end" and before != self.end_index):
                continue
            out.append(trial)
        return sorted(out, key=lambda t: results[t].received)

    def members(self, index: int, segment: Segment, results: Mapping[int, ReceivedResult], t: float = 0.0) -> list[int]:
        """The trials period ``index`` shows at run time ``t``, as its layout's columns.

        A period's columns are fixed once chosen; the end screen, which may owe more results than
        fit, shows them in batches, each for ``window_s`` after its last one was first drawn.
        """
        if index == self.end_index:
            return self._end_members(results, t)
        members = self._members.get(index)
        if members is None:
            members = list(segment.feedback_trials)
            members += [t for t in dict.fromkeys(s.trial for s in self.shows if s.period == index) if t not in members]  # resumed
            if segment.feedback_trials:
                members += [t for t in self._owed(results, index) if t not in members]
            self._members[index] = members = members[:MAX_COLUMNS]
        if not segment.feedback_trials:  # a slot: the queue joins while there is room
            room = self.settings.slot_trials - len(members)
            members += [t for t in self._owed(results, index) if t not in members][: max(room, 0)]
        return members

    def _end_members(self, results: Mapping[int, ReceivedResult], t: float) -> list[int]:
        batch = self._members.setdefault(self.end_index, [])
        shown = {s.trial: s.onset for s in self.shows if s.period == self.end_index}
        done = all(i in shown for i in batch) and (not batch or t >= max(shown[i] for i in batch) + self.settings.window_s)
        if done:
            batch[:] = self._owed(results, self.end_index)[:MAX_COLUMNS]
        elif len(batch) < MAX_COLUMNS:
            batch += [i for i in self._owed(results, self.end_index) if i not in batch][: MAX_COLUMNS - len(batch)]
        return batch

    def group(self, index: int, segment: Segment, results: Mapping[int, ReceivedResult], t: float = 0.0) -> tuple[int, ...]:
        """The trials period ``index`` lays out on a frame at run time ``t`` (those not yet arrived draw nothing)."""
        return tuple(self.members(index, segment, results, t))

    def drawn(self, index: int, trials: Sequence[int], results: Mapping[int, ReceivedResult], onset: float) -> list[FeedbackShow]:
        """Record the trials a frame of period ``index`` drew (flip at run time ``onset``); returns the new shows."""
        new = []
        for trial in trials:
            release = results[trial].message.release
            if (index, trial, release) not in self._drawn:
                self._drawn.add((index, trial, release))
                new.append(FeedbackShow(index, trial, release, onset))
        self.shows.extend(new)
        return new

    def withhold(self, index: int, trials: Sequence[int], results: Mapping[int, ReceivedResult], onset: float) -> list[FeedbackShow]:
        """Record the trials a frame of period ``index`` would have drawn while feedback was paused
        (its flip at run time ``onset``); returns those withheld for the first time."""
        open_ = {(w[0], w[1], w[2]) for w in self.withheld if w[4] is None}
        new = []
        for trial in trials:
            key = (index, trial, results[trial].message.release)
            if key not in open_:
                self.withheld.append([*key, onset, None])
                new.append(FeedbackShow(*key, onset))
        return new

    def resumed(self, t: float) -> None:
        """Feedback resumed at run time ``t``: what was withheld stops there, and is drawn anew
        (a new row) if its period is still on."""
        for w in self.withheld:
            if w[4] is None:
                w[4] = t
                self._drawn.discard((w[0], w[1], w[2]))

    def restore(self, show: FeedbackShow) -> None:
        """A show read back from a resumed run's journal."""
        if (show.period, show.trial, show.release) not in self._drawn:
            self._drawn.add((show.period, show.trial, show.release))
            self.shows.append(show)

    def owed(self, results: Mapping[int, ReceivedResult], missed: Sequence[int] = ()) -> list[int]:
        """Trials whose result the end screen can still show (arrived or not): what a run waits for."""
        shown = self._shown_trials()
        out = []
        for trial in self.trials:
            if not trial.feedback or trial.index in shown or trial.index in missed:
                continue
            own = self.own.get(trial.index)
            if (own is None and self.slots) or (own is not None and self.settings.late != "skip"):
                out.append(trial.index)
        return out

    # -- the events file ---------------------------------------------------------------------------
    def rows(self, onsets: Mapping[int, float], end: float) -> list[dict[str, Any]]:
        """One row per (period, trial, release) shown, one per own trial a period missed, one per empty slot.

        ``onsets`` are the periods' measured onsets (segment index -> run time; the end screen's
        under ``len(segments)``), ``end`` the run time of the last flip. A row lasts until the next
        release of its trial in the period, or the period's end.
        """
        def stop_of(index: int) -> float:
            later = [t for i, t in onsets.items() if i > index]
            return min(later) if later else end

        rows: list[dict[str, Any]] = []
        by_period: dict[int, list[FeedbackShow]] = {}
        for show in self.shows:
            by_period.setdefault(show.period, []).append(show)
        for index in sorted(i for i in onsets if i == self.end_index or self.segments[i].phase == "feedback"):
            shows = sorted(by_period.get(index, []), key=lambda s: s.onset)
            stop = stop_of(index)
            planned = self.segments[index] if index < self.end_index else None
            paused = sorted((w for w in self.withheld if w[0] == index), key=lambda w: w[3])
            for k, show in enumerate(shows):
                newer = [s.onset for s in shows[k + 1:] if s.trial == show.trial]
                newer += [w[3] for w in paused if w[1] == show.trial and w[3] > show.onset]
                newer.sort()
                own = self.own.get(show.trial)
                status: FeedbackStatus = "late" if (own is not None and own != index) or index == self.end_index else "shown"
                rows.append(self._row(show.onset, (newer[0] if newer else stop) - show.onset, show.trial, show.release, status, planned))
            for _, trial, release, onset, resumed in paused:
                until = stop if resumed is None else min(stop, resumed)
                rows.append(self._row(onset, until - onset, trial, release, "paused", planned))
            drawn = {s.trial for s in shows} | {w[1] for w in paused}
            missing = [t for t in (planned.feedback_trials if planned is not None else ()) if t not in drawn]
            for trial in missing:
                rows.append(self._row(onsets[index], stop - onsets[index], trial, None, "missing", planned))
            if not drawn and not missing and index != self.end_index:
                rows.append(self._row(onsets[index], stop - onsets[index], None, None, "empty", planned))
        return rows

    @staticmethod
    def _row(onset: float, duration: float, trial: int | None, release: int | None, status: FeedbackStatus,
             planned: Segment | None) -> dict[str, Any]:
        return {"onset": onset, "duration": duration, "trial_type": "feedback", "trial": trial, "release": release,
                "feedback_status": status, "planned_onset": planned.start if planned is not None else None,
                "planned_duration": planned.duration if planned is not None else None}
