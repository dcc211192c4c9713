"""The stimulus program: one run of a task, locked to the scanner's trigger.

Usage::

    from rtrecon.config import load_config
    from stimulus.app import StimulusProgram, prepare_run
    from stimulus.link import EngineLink
    from stimulus.records import RunJournal
    from stimulus.trigger import PsychopyKeys, psychopy_time

    config = load_config("session.toml")          # its [stimulus] table holds the settings
    setup = prepare_run(config, run=1)            # run 1's trial list: stimulus.trial_lists[0]
    journal = RunJournal(setup.paths, clock=psychopy_time)   # the run on disk as it happens
    link = EngineLink(config.network.events, config.network.results, setup.session_label,
                      setup.paths.link_dir / "event_spool", setup.paths.link_dir / "results.json",
                      clock=psychopy_time, on_result=journal.record_result)
    if journal.started is None:                   # else a killed run, resumed
        link.check_run(setup.run)
    record = StimulusProgram(setup, link=link, keys=PsychopyKeys(), journal=journal).run()
    link.close()

:func:`prepare_run` does everything that can fail before the run starts: it loads and checks
the trial list, builds the :class:`~stimulus.timeline.Timeline`, checks the design's responses
and refuses to overwrite a recorded run. :meth:`StimulusProgram.run` then opens the window,
loads every image, shows "waiting for the scanner" until the first trigger (time zero), and
runs one frame loop until the timeline ends (or the quit key). Each frame it

1. polls the keys (non-blocking): triggers are logged, buttons become responses;
2. polls the engine link (non-blocking) and keeps each result with the time it arrived;
3. finds the segment the coming flip falls in; when that is a new segment, schedules with
   ``win.callOnFlip`` the stamping of its onset (right after the flip that first shows it),
   the sending of the trial's :class:`~rtrecon.wire.EventMessage` (for its main event) and
   the virtual participant's view;
4. draws it (a feedback segment draws each of its results as soon as it has arrived, and marks
   the flip that first shows it); with ``feedback.screen = "operator"`` feedback goes to a
   second window instead, which also shows the latest result when the operator presses
   ``feedback.demand_key``;
5. flips.

Nothing in the loop waits on the network or on a result, so a slow or missing result never
delays a frame. All files are written when the run ends, also when it is aborted
(:class:`~stimulus.records.RunRecord`); a segment with an event is never skipped, even when
the process stalled past it (it is then shown late, for at least one frame).

A replay's time scale: ``speed`` S (with a virtual participant only) plays the timeline S
times faster than the scanner, so that it keeps pace with the bridge replaying volumes at S × the
TR pace. The timeline and every time recorded or sent stay in scanner seconds since the first
trigger: a clock interval ``d`` is ``d × S`` scanner seconds. Speed 1 is the scanner's own pace.

Resuming a killed run. Everything is journaled as it happens
(:class:`~stimulus.records.RunJournal`). A program started again on a run whose journal holds a
first trigger but no end (and whose events file was never written) does not wait for a trigger:

- time zero is the journaled first trigger (``time.monotonic()``, the same clock in every
  process of the machine), so the run goes on at the current scanner time, as if the program
  had never stopped;
- the events, responses, triggers, flips, results and their ``shown`` times recorded before the
  kill are read back; results the engine sent while the program was down come when the link
  reconnects (the engine's sender keeps them until they are acknowledged), and a result is
  journaled before it is acknowledged, so none is lost;
- the segments journaled as shown are not shown or sent again (the engine's link also drops a
  resent trial key); the segment under way starts on the first frame (its onset is that frame:
  later than planned); segments that began and ended while the program was down were never
  seen, so they are not sent, and their trials are logged as missed (:attr:`StimulusProgram.missed`);
- the virtual participant's scanner goes on with the next trigger due.
"""

from __future__ import annotations

import logging
import statistics
from bisect import bisect_right
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtrecon.config import SessionConfig, StimulusSection
from rtrecon.wire import EventMessage, TrialResultMessage

from .feedback import FeedbackPanel, ReceivedResult
from .link import Link
from .participant import VirtualParticipant
from .records import EventRecord, RunJournal, RunPaths, RunRecord, result_from_entry
from .screen import TaskScreen, open_window
from .timeline import Segment, Timeline, build_timeline
from .trials import Task, Trial, TrialListError, load_trials
from .trigger import KeyInput, KeyPress, MergedKeys, ScannerTrigger, psychopy_time

__all__ = ["RunSetup", "Frame", "StimulusProgram", "prepare_run", "task_of"]

log = logging.getLogger(__name__)


def task_of(task_label: str) -> Task:
    """The task routine a BIDS task label runs: ``imagery`` if the label says so, else perception."""
    return "imagery" if "imagery" in task_label.lower() else "perception"


@dataclass(frozen=True)
class RunSetup:
    """A run checked and planned before it starts."""

    task: Task
    trials: list[Trial]
    trials_file: Path
    timeline: Timeline
    settings: StimulusSection
    paths: RunPaths
    session_label: str
    run: int


def _check_responses(trials_file: Path, trials: list[Trial], task: Task, settings: StimulusSection) -> None:
    if task == "perception":
        allowed = set(settings.perception.response_keys)
    elif settings.imagery.vividness:
        allowed = set(settings.imagery.vividness_keys)
    else:
        allowed = set()
    problems = [
        (t.line, f"response {t.response!r} is not one of {sorted(allowed)}" if allowed else f"response {t.response!r} given but this task takes no responses")
        for t in trials
        if t.response and t.response not in allowed
    ]
    if problems:
        raise TrialListError(trials_file, problems)


def prepare_run(
    config: SessionConfig,
    run: int,
    *,
    trials_file: str | Path | None = None,
    task: Task | None = None,
    overwrite: bool = False,
    live_feedback: bool = False,
) -> RunSetup:
    """Check everything run ``run`` needs; raises TrialListError, FileExistsError or ValueError naming the cause.

    The settings are the config's ``[stimulus]`` table; the trial list is ``trials_file``, else
    the run's entry in ``stimulus.trial_lists``; the task routine is ``task``, else the one the
    session's task label names (:func:`task_of`). ``live_feedback``: the run shows results as they
    arrive (:class:`StimulusProgram`), so no feedback periods are scheduled.
    """
    if run < 1:
        raise ValueError(f"run number {run} must be 1 or more")
    settings = config.stimulus
    fb = settings.feedback
    if fb.when == "demand" and fb.screen != "operator":
        raise ValueError('stimulus.feedback: when = "demand" needs screen = "operator" (a result shown on demand must not hide the participant\'s task)')
    if trials_file is None:
        if run > len(settings.trial_lists):
            raise ValueError(f"no trial list for run {run}: stimulus.trial_lists has {len(settings.trial_lists)} (or give one)")
        trials_file = settings.trial_lists[run - 1]
    trials_file = Path(trials_file)
    sess = config.session
    task = task or task_of(sess.task)
    trials = load_trials(trials_file, task)
    _check_responses(trials_file, trials, task, settings)
    timeline = build_timeline(task, trials, settings, trials_file, feedback_periods=not live_feedback)
    paths = RunPaths(sess.output_dir, sess.subject, sess.session, sess.task, run)
    if not overwrite:
        paths.check_free()
    return RunSetup(task, trials, trials_file, timeline, settings, paths, f"sub-{sess.subject}_ses-{sess.session}", run)


@dataclass(frozen=True)
class Frame:
    """What a frame is about to show (passed to ``on_frame`` before its flip).

    ``index`` is the frame's position in :attr:`RunRecord.flips`, which receives its flip time.
    """

    index: int
    segment: Segment
    win: Any
    results_drawn: tuple[int, ...]


class _Quit(Exception):
    pass


class _OperatorView:
    """The operator's window: feedback periods, and the latest result when asked for.

    It is redrawn and flipped only when its content changes, so that between changes it costs
    the participant's frames nothing.
    """

    def __init__(self, win: Any, panel: FeedbackPanel, window_s: float):
        self.win = win
        self.panel = panel
        self.window_s = window_s
        self._state: tuple[Any, ...] | None = None
        self._demand: tuple[tuple[int, ...], float] | None = None  # (trials, until)

    def demand(self, results: dict[int, ReceivedResult], t: float) -> None:
        """Show the most recent result for ``window_s`` from run time ``t``."""
        latest = max(results.values(), key=lambda r: r.received, default=None)
        if latest is None:
            log.info("feedback asked for, but no result has arrived yet")
        else:
            self._demand = ((latest.message.trial,), t + self.window_s)

    def update(self, index: int, segment: Segment, t: float, results: dict[int, ReceivedResult], on_shown: Callable[[int], None]) -> None:
        if self._demand is not None and t >= self._demand[1]:
            self._demand = None
        group = segment.feedback_trials if segment.phase == "feedback" else self._demand[0] if self._demand else ()
        arrived = tuple((i, results[i].message.release) for i in group if i in results)  # a newer release redraws
        state = (index, group, arrived) if group else None
        if state == self._state:
            return
        self._state = state
        if group:
            for i in self.panel.draw(group, results):
                if results[i].shown is None:
                    self.win.callOnFlip(on_shown, i)
        self.win.flip()


class StimulusProgram:
    """Runs one :class:`RunSetup` (see the module docstring).

    ``keys`` are the trigger and button sources (a virtual ``participant`` is polled too);
    ``win`` an open window to reuse (else one is made from the settings and closed at the end);
    ``on_frame`` is called before each flip of the run, e.g. to capture the back buffer.

    ``speed`` S plays the timeline S times faster than the scanner (a replay; only with a
    virtual participant, whose triggers then come every TR / S): every time recorded and sent
    stays in scanner seconds since the first trigger (elapsed clock time × S). ``journal``
    keeps the run on disk as it happens (default: a journal of the run's own; give it when the
    link's ``on_result`` writes to it); a run whose journal shows it started and did not end is
    resumed (see the module docstring). ``live_feedback`` draws the result of each trial that asks
    for feedback over the task as soon as it arrives, for ``feedback.window_s`` (scanner seconds)
    or until the next one, for designs without feedback periods (a replay of NSD's timing; the
    setup comes from ``prepare_run(..., live_feedback=True)``); ``results_timeout_s`` keeps the
    program on (fixation, live feedback) after the timeline's end until every trial that asks
    for feedback has its result shown, or no result came for that many seconds.
    """

    def __init__(
        self,
        setup: RunSetup,
        *,
        link: Link,
        keys: KeyInput | None = None,
        participant: VirtualParticipant | None = None,
        win: Any = None,
        on_frame: Callable[[Frame], None] | None = None,
        speed: float = 1.0,
        journal: RunJournal | None = None,
        live_feedback: bool = False,
        results_timeout_s: float = 0.0,
    ):
        if keys is None and participant is None:
            raise ValueError("give keys, a virtual participant, or both")
        if speed <= 0:
            raise ValueError(f"speed {speed} must be positive")
        if speed != 1.0 and (participant is None or participant.speed != speed):
            raise ValueError(f"speed {speed:g} replays a run faster than the scanner: it needs a virtual participant "
                             "at the same speed (a person and a real scanner run at speed 1)")
        self.setup = setup
        self.link = link
        self.participant = participant
        sources = [s for s in (keys, participant) if s is not None]
        self.keys: KeyInput = sources[0] if len(sources) == 1 else MergedKeys(sources)
        self.win = win
        self.on_frame = on_frame
        self.speed = speed
        self.journal = journal if journal is not None else RunJournal(setup.paths, clock=psychopy_time)
        self.live_feedback = live_feedback
        self.results_timeout_s = results_timeout_s
        started = self.journal.started
        if started is not None and abs(float(started.get("speed", 1.0)) - speed) > 1e-9:
            raise ValueError(f"{self.journal.path}: run {setup.run} was started at speed {started.get('speed')}, "
                             f"not {speed:g}: resume it at that speed")
        trig = setup.settings.trigger
        self.trigger = ScannerTrigger(frozenset(trig.keys), trig.tr)
        self.record = RunRecord(setup.paths, setup.trials_file, speed=speed)
        self.resumed = False
        self.missed: list[int] = []
        self._open: EventRecord | None = None
        self._events_by_trial: dict[int, list[EventRecord]] = {}
        self._event_index: dict[int, EventRecord] = {}
        self._shown: list[tuple[float, Segment]] = []
        self._demand_pressed = False
        self._current = -1
        self._triggers_logged = 0
        self._flip_batch: list[float] = []
        self._live: tuple[int, float] | None = None  # (trial, until run time)
        self._live_queue: deque[int] = deque()  # arrived, not yet drawn (live feedback)
        self._pace_s = 0.0

    # -- called right after a flip (win.callOnFlip) -------------------------------------------
    def _on_onset(self, index: int) -> None:
        segment = self.setup.timeline.segments[index]
        now = psychopy_time()
        onset = self.record.run_time(now)
        self.journal.post({"t": "onset", "segment": index, "onset": onset})
        self._start_segment(index, onset, now)
        if segment.main and segment.trial is not None:
            trial = segment.trial
            self.link.send_event(
                EventMessage(
                    session=self.setup.session_label,
                    run=self.setup.run,
                    trial=trial.index,
                    onset=onset,
                    duration=segment.duration,
                    trial_type=segment.event_type,
                    stimulus=trial.stimulus,
                    feedback=trial.feedback,
                    stamps={"shown": time.time()},
                )
            )
        if self.participant is not None:
            self.participant.observe(segment, now)

    def _start_segment(self, index: int, onset: float, clock_time: float) -> None:
        """Book-keeping of a segment's first frame (also when a resumed run reads it back)."""
        segment = self.setup.timeline.segments[index]
        if self._open is not None:
            self._open.duration = onset - self._open.onset
            self._open = None
        self._shown.append((clock_time, segment))
        if segment.event_type:
            ev = EventRecord(segment, onset)
            self.record.events.append(ev)
            self._event_index[index] = ev
            self._open = ev
            trial = segment.trial
            if trial is not None:
                self._events_by_trial.setdefault(trial.index, []).append(ev)

    def _on_shown(self, trial_index: int) -> None:
        result = self.record.results[trial_index]
        if result.shown is None:
            result.shown = psychopy_time()
            self.journal.post({"t": "shown", "trial": trial_index, "shown": self.record.run_time(result.shown),
                               "shown_wall": result.shown + self.record.wall_offset})

    # -- per frame ------------------------------------------------------------------------------
    def _poll_keys(self) -> None:
        others = self.trigger.feed(self.keys.poll())
        if self.trigger.started and self.record.zero is not None:
            for t in self.trigger.times[max(self._triggers_logged, 1):]:
                self.journal.post({"t": "trigger", "time": self.record.run_time(t)})
            self._triggers_logged = len(self.trigger.times)
        for press in others:
            if press.key == self.setup.settings.quit_key:
                raise _Quit
            if press.key == self.setup.settings.feedback.demand_key and self.setup.settings.feedback.screen == "operator":
                self._demand_pressed = True
                continue
            # A press belongs to what was on screen when it was made, even if the screen
            # changed before it was polled.
            shown = bisect_right(self._shown, press.time, key=lambda item: item[0])
            if shown:
                self._respond(self._shown[shown - 1][1], press)

    def _respond(self, segment: Segment, press: KeyPress) -> None:
        label = segment.responses.get(press.key)
        trial = segment.trial
        if label is None or trial is None:
            return
        takers = [ev for ev in self._events_by_trial.get(trial.index, []) if ev.segment.responses]
        if not takers or takers[-1].response:
            return
        ev = takers[-1]
        ev.response = label
        ev.response_time = self.record.run_time(press.time) - ev.onset
        index = next(i for i, e in self._event_index.items() if e is ev)
        self.journal.post({"t": "response", "segment": index, "response": label, "response_time": ev.response_time})

    def _accept(self, message: TrialResultMessage) -> bool:
        if message.session != self.setup.session_label or message.run != self.setup.run:
            log.warning("ignored a result for %s run %d (this is %s run %d)", message.session, message.run, self.setup.session_label, self.setup.run)
        elif not 0 <= message.trial < len(self.setup.trials):
            log.warning("ignored a result for trial %d, which this run does not have", message.trial)
        elif message.trial in self.record.results and message.release <= self.record.results[message.trial].message.release:
            # A trial is released several times, each refining the last: only a newer one replaces it.
            log.warning("ignored release %d of trial %d (release %d is in hand)", message.release, message.trial,
                        self.record.results[message.trial].message.release)
        else:
            return True
        return False

    def _poll_results(self, panel: FeedbackPanel) -> None:
        for message, received in self.link.poll_results():
            if self._accept(message):
                result = ReceivedResult(message, received)
                self.record.results[message.trial] = result
                panel.add(message.trial, result)
                if self.live_feedback and self.setup.trials[message.trial].feedback and message.trial not in self._live_queue:
                    self._live_queue.append(message.trial)

    # -- a resumed run -------------------------------------------------------------------------
    def _restore(self, start: dict[str, Any]) -> None:
        """Read back what a killed program of this run recorded (see the module docstring)."""
        offset = self.journal.clock_offset
        zero = float(start["zero_monotonic"]) - offset
        self.trigger.times.append(zero)
        self.record.zero = zero
        self.record.wall_offset = time.time() - psychopy_time()
        folder = self.setup.paths.folder
        segments = self.setup.timeline.segments
        for entry in self.journal.previous:
            kind = entry.get("t")
            if kind == "onset":
                index = int(entry["segment"])
                self._start_segment(index, float(entry["onset"]), self.record.clock_time(float(entry["onset"])))
                self._current = max(self._current, index)
            elif kind == "response" and int(entry["segment"]) in self._event_index:
                ev = self._event_index[int(entry["segment"])]
                ev.response, ev.response_time = entry["response"], entry["response_time"]
            elif kind == "trigger":
                self.trigger.times.append(self.record.clock_time(float(entry["time"])))
            elif kind == "flips":
                self.record.flips.extend(entry["times"])
            elif kind == "result":
                message = result_from_entry(entry, folder)
                if self._accept(message):
                    self.record.results[message.trial] = ReceivedResult(message, float(entry["received_monotonic"]) - offset)
                    if self.live_feedback and self.setup.trials[message.trial].feedback and message.trial not in self._live_queue:
                        self._live_queue.append(message.trial)
            elif kind == "shown" and int(entry["trial"]) in self.record.results:
                self.record.results[int(entry["trial"])].shown = self.record.clock_time(float(entry["shown"]))
                if int(entry["trial"]) in self._live_queue:
                    self._live_queue.remove(int(entry["trial"]))
        self._triggers_logged = len(self.trigger.times)
        now = self.record.run_time(psychopy_time())
        upto = self.setup.timeline.index_at(now)
        self.missed = [segments[i].trial.index for i in range(self._current + 1, min(upto, len(segments)))
                       if segments[i].main and segments[i].trial is not None]
        if self.missed:
            log.warning("run %d resumed at %.1f s: trial(s) %s came while the program was down and were not shown",
                        self.setup.run, now, ", ".join(map(str, self.missed)))
        # the segment under way now starts on the first frame (late: it began while the program was down)
        self._current = max(self._current, upto - 1)
        if self.participant is not None:
            seen = {s.trial.stimulus for s, ev in ((e.segment, e) for e in self.record.events) if s.phase == "image" and s.trial is not None}
            answered = {ev.trial for ev in self.record.events if ev.response and ev.trial is not None}
            self.participant.resume(zero, seen, answered)
        self.resumed = True
        log.info("run %d resumed at %.1f s after the first trigger (%d events, %d results kept)",
                 self.setup.run, now, len(self.record.events), len(self.record.results))

    def run(self) -> RunRecord:
        """Run the task; returns what was recorded (also written to disk)."""
        settings = self.setup.settings
        start = self.journal.started
        own_window = self.win is None
        win = self.win if self.win is not None else open_window(settings.window, title="rtrecon stimulus")
        operator_win = None
        period = win.monitorFramePeriod or 1 / 60
        try:
            screen = TaskScreen(win, settings, self.setup.trials)
            if settings.feedback.screen == "operator":
                operator_win = open_window(settings.window, title="rtrecon operator", screen=settings.feedback.operator_screen, size=settings.feedback.operator_size, operator=True)
            groups = [s.feedback_trials for s in self.setup.timeline.segments if s.feedback_trials]
            if operator_win is not None or self.live_feedback:  # any trial's result may be shown outside a period
                grouped = {i for g in groups for i in g}
                groups += [(t.index,) for t in self.setup.trials if t.index not in grouped]
            panel = FeedbackPanel(operator_win or win, settings.feedback, self.setup.trials, groups)
            operator = _OperatorView(operator_win, panel, settings.feedback.window_s) if operator_win is not None else None
            try:
                if start is not None:
                    self._restore(start)
                    for index, result in self.record.results.items():
                        panel.add(index, result)
                    period = self._measure_period(win, screen)
                else:
                    period = self._wait_for_trigger(win, screen)
                self._loop(win, screen, panel, operator, period)
            except _Quit:
                self.record.aborted = True
                log.warning("run aborted with the quit key")
            if self._open is not None:
                self._open.duration = (self.record.flips[-1] if self.record.flips else self._open.onset) - self._open.onset
        finally:
            if self.trigger.started:
                self.record.zero = self.trigger.zero
                self._post_flips()
                self.record.write(self.trigger, period)
                self.journal.post({"t": "end", "aborted": self.record.aborted})
            self.journal.close()
            if operator_win is not None:
                operator_win.close()
                if not own_window:  # closing a window leaves no GL context current: give the caller's back
                    win.winHandle.switch_to()
            if own_window:
                win.close()
        return self.record

    def _frame_period(self, flips: list[float], win: Any) -> float:
        """The display's frame period from consecutive flips; without vsync (flips far faster than any
        display, e.g. under Xvfb) the nominal one, which the loop then paces itself to, so that it
        does not spin a core the other processes need."""
        if len(flips) <= 10:
            return win.monitorFramePeriod or 1 / 60
        measured = statistics.median(b - a for a, b in zip(flips, flips[1:]))
        if measured < 0.0025:
            self._pace_s = win.monitorFramePeriod or 1 / 60
            return self._pace_s
        return measured

    def _pace(self, last_flip: float) -> None:
        if self._pace_s:
            wait = last_flip + self._pace_s - psychopy_time()
            if wait > 0.001:
                time.sleep(wait - 0.0005)

    def _measure_period(self, win: Any, screen: TaskScreen) -> float:
        """A resumed run has no waiting screen: measure the frame period on a few fixation frames."""
        flips = []
        for _ in range(12):
            screen.fixation.draw()
            flips.append(win.flip())
        return self._frame_period(flips, win)

    def _wait_for_trigger(self, win: Any, screen: TaskScreen) -> float:
        """Show the waiting screen until the first trigger; returns the frame period.

        The period is the median interval of the waiting screen's flips (the display's refresh,
        with vsync), or PsychoPy's nominal one when the trigger came too soon to measure it.
        """
        timeout = self.setup.settings.trigger.timeout_s
        self.keys.poll()  # keys pressed before the waiting screen are stale, triggers included
        if self.participant is not None:
            self.participant.start()
        log.info("waiting for the scanner")
        deadline = psychopy_time() + timeout
        flips: list[float] = []
        while not self.trigger.started:
            self._poll_keys()
            if self.trigger.started:
                break
            if psychopy_time() > deadline:
                raise TimeoutError(f"no scanner trigger ({', '.join(self.trigger.keys)}) within {timeout} s")
            screen.draw_waiting()
            flips.append(win.flip())
            if len(flips) == 11:
                self._frame_period(flips, win)
            self._pace(flips[-1])
        self.record.zero = self.trigger.zero
        self.record.wall_offset = time.time() - psychopy_time()
        self._triggers_logged = 1
        self.journal.begin({"t": "start", "zero_monotonic": self.trigger.zero + self.journal.clock_offset, "speed": self.speed,
                             "wall_offset": self.record.wall_offset, "run": self.setup.run, "session": self.setup.session_label})
        return self._frame_period(flips, win)

    def _post_flips(self) -> None:
        if self._flip_batch:
            self.journal.post({"t": "flips", "times": self._flip_batch})
            self._flip_batch = []

    def _next_index(self, t: float) -> int:
        """The segment a flip at run time ``t`` shows: never skips one with an event (a stalled
        process shows it late, for a frame, rather than not at all)."""
        segments = self.setup.timeline.segments
        index = max(self.setup.timeline.index_at(t), self._current)
        for i in range(self._current + 1, min(index, len(segments))):
            if segments[i].event_type:
                return i
        return index

    def _live_result(self, t: float) -> int | None:
        """The trial whose result live feedback draws on a frame at run time ``t``.

        Results are drawn in arrival order, each for at least one frame (so that each is seen,
        and its ``shown`` time is a real flip), then until ``feedback.window_s`` after it first
        showed or the next one is drawn.
        """
        live = self._live
        if self._live_queue and (live is None or self.record.results[live[0]].shown is not None):
            trial = self._live_queue.popleft()
            self._live = live = (trial, t + self.setup.settings.feedback.window_s)
        if live is None or (t >= live[1] and self.record.results[live[0]].shown is not None):
            return None
        return live[0]

    def _waiting_for_results(self, last_result: float) -> bool:
        """After the timeline: results still owed to trials that asked for feedback, and coming."""
        if self.results_timeout_s <= 0 or psychopy_time() - last_result > self.results_timeout_s:
            return False
        results = self.record.results
        owed = [t.index for t in self.setup.trials if t.feedback and t.index not in self.missed]
        return any(i not in results or results[i].shown is None for i in owed)

    def _loop(self, win: Any, screen: TaskScreen, panel: FeedbackPanel, operator: _OperatorView | None, period: float) -> None:
        segments = self.setup.timeline.segments
        end = self.setup.timeline.end
        after = Segment(end, float("inf"), "fixation")
        intervals: deque[float] = deque([period], maxlen=30)
        last_flip = psychopy_time()
        last_result = last_flip
        ended: float | None = None
        while True:
            # The coming flip is one (measured) frame after the last one; a segment starts on
            # the flip nearest its planned onset, so onsets err by at most half a frame.
            interval = statistics.median(intervals)
            t_next = self.record.run_time(last_flip + interval)
            index = self._next_index(t_next + interval * self.speed / 2)
            self._poll_keys()
            n_results = len(self.record.results)
            self._poll_results(panel)
            if len(self.record.results) != n_results:
                last_result = psychopy_time()
            if index >= len(segments):
                if ended is None:
                    ended = psychopy_time()
                if not self._waiting_for_results(max(last_result, ended)):
                    break
                segment = after
            else:
                segment = segments[index]
                if index != self._current:
                    # The onset is stamped first (its callback only queues its I/O), then a sound cue
                    # starts: opening the audio stream can take milliseconds the onset must not include.
                    win.callOnFlip(self._on_onset, index)
                    screen.schedule(segment)
                    self._current = index
            drawn: tuple[int, ...] = ()
            if operator is None:
                screen.draw(segment)
                if segment.phase == "feedback":
                    drawn = tuple(panel.draw(segment.feedback_trials, self.record.results))
                elif self.live_feedback:
                    live = self._live_result(t_next)
                    if live is not None:
                        drawn = tuple(panel.draw((live,), self.record.results))
                for i in drawn:
                    if self.record.results[i].shown is None:
                        win.callOnFlip(self._on_shown, i)
            else:
                screen.draw(segment if segment.phase != "feedback" else Segment(segment.start, segment.stop, "fixation"))
                if self._demand_pressed:
                    self._demand_pressed = False
                    operator.demand(self.record.results, t_next)
                operator.update(index, segment, t_next, self.record.results, self._on_shown)
            if self.on_frame is not None:
                self.on_frame(Frame(len(self.record.flips), segment, win, drawn))
            flip = win.flip()
            intervals.append(flip - last_flip)
            last_flip = flip
            self.record.flips.append(self.record.run_time(flip))
            self._flip_batch.append(self.record.flips[-1])
            if len(self._flip_batch) >= 120:
                self._post_flips()
            self._pace(flip)
