"""The stimulus program: one run of a task, locked to the scanner's trigger.

Usage::

    from rtrecon.config import load_config
    from stimulus.app import StimulusProgram, prepare_run
    from stimulus.link import EngineLink
    from stimulus.trigger import PsychopyKeys, psychopy_time

    config = load_config("session.toml")          # its [stimulus] table holds the settings
    setup = prepare_run(config, run=1)            # run 1's trial list: stimulus.trial_lists[0]
    link = EngineLink(config.network.events, config.network.results, setup.session_label,
                      setup.paths.link_dir / "event_spool", setup.paths.link_dir / "results.json",
                      clock=psychopy_time)
    link.check_run(setup.run)
    record = StimulusProgram(setup, link=link, keys=PsychopyKeys()).run()
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
(:class:`~stimulus.records.RunRecord`).
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
from rtrecon.wire import EventMessage

from .feedback import FeedbackPanel, ReceivedResult
from .link import Link
from .participant import VirtualParticipant
from .records import EventRecord, RunPaths, RunRecord
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
) -> RunSetup:
    """Check everything run ``run`` needs; raises TrialListError, FileExistsError or ValueError naming the cause.

    The settings are the config's ``[stimulus]`` table; the trial list is ``trials_file``, else
    the run's entry in ``stimulus.trial_lists``; the task routine is ``task``, else the one the
    session's task label names (:func:`task_of`).
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
    timeline = build_timeline(task, trials, settings, trials_file)
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
        arrived = tuple(i for i in group if i in results)
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
    ):
        if keys is None and participant is None:
            raise ValueError("give keys, a virtual participant, or both")
        self.setup = setup
        self.link = link
        self.participant = participant
        sources = [s for s in (keys, participant) if s is not None]
        self.keys: KeyInput = sources[0] if len(sources) == 1 else MergedKeys(sources)
        self.win = win
        self.on_frame = on_frame
        trig = setup.settings.trigger
        self.trigger = ScannerTrigger(frozenset(trig.keys), trig.tr)
        self.record = RunRecord(setup.paths, setup.trials_file)
        self._open: EventRecord | None = None
        self._events_by_trial: dict[int, list[EventRecord]] = {}
        self._shown: list[tuple[float, Segment]] = []
        self._demand_pressed = False

    # -- called right after a flip (win.callOnFlip) -------------------------------------------
    def _on_onset(self, segment: Segment) -> None:
        now = psychopy_time()
        onset = now - self.trigger.zero
        if self._open is not None:
            self._open.duration = onset - self._open.onset
            self._open = None
        self._shown.append((now, segment))
        if segment.event_type:
            ev = EventRecord(segment, onset)
            self.record.events.append(ev)
            self._open = ev
            trial = segment.trial
            if trial is not None:
                self._events_by_trial.setdefault(trial.index, []).append(ev)
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

    def _on_shown(self, trial_index: int) -> None:
        result = self.record.results[trial_index]
        if result.shown is None:
            result.shown = psychopy_time()

    # -- per frame ------------------------------------------------------------------------------
    def _poll_keys(self) -> None:
        others = self.trigger.feed(self.keys.poll())
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
        ev.response_time = press.time - self.trigger.zero - ev.onset

    def _poll_results(self, panel: FeedbackPanel) -> None:
        for message, received in self.link.poll_results():
            if message.session != self.setup.session_label or message.run != self.setup.run:
                log.warning("ignored a result for %s run %d (this is %s run %d)", message.session, message.run, self.setup.session_label, self.setup.run)
            elif not 0 <= message.trial < len(self.setup.trials):
                log.warning("ignored a result for trial %d, which this run does not have", message.trial)
            elif message.trial in self.record.results:
                log.warning("ignored a second result for trial %d", message.trial)
            else:
                result = ReceivedResult(message, received)
                self.record.results[message.trial] = result
                panel.add(message.trial, result)

    def run(self) -> RunRecord:
        """Run the task; returns what was recorded (also written to disk)."""
        settings = self.setup.settings
        own_window = self.win is None
        win = self.win if self.win is not None else open_window(settings.window, title="rtrecon stimulus")
        operator_win = None
        try:
            screen = TaskScreen(win, settings, self.setup.trials)
            if settings.feedback.screen == "operator":
                operator_win = open_window(settings.window, title="rtrecon operator", screen=settings.feedback.operator_screen, size=settings.feedback.operator_size, operator=True)
            groups = [s.feedback_trials for s in self.setup.timeline.segments if s.feedback_trials]
            if operator_win is not None:  # any trial's result may be asked for on demand
                grouped = {i for g in groups for i in g}
                groups += [(t.index,) for t in self.setup.trials if t.index not in grouped]
            panel = FeedbackPanel(operator_win or win, settings.feedback, self.setup.trials, groups)
            operator = _OperatorView(operator_win, panel, settings.feedback.window_s) if operator_win is not None else None
            period = win.monitorFramePeriod or 1 / 60
            try:
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
                self.record.write(self.trigger, period)
            if operator_win is not None:
                operator_win.close()
            if own_window:
                win.close()
        return self.record

    def _wait_for_trigger(self, win: Any, screen: TaskScreen) -> float:
        """Show the waiting screen until the first trigger; returns the frame period.

        The period is the median interval of the waiting screen's flips (the display's refresh,
        with vsync), or PsychoPy's nominal one when the trigger came too soon to measure it.
        """
        timeout = self.setup.settings.trigger.timeout_s
        self.keys.poll()  # keys pressed before the waiting screen are stale, triggers included
        if self.participant is not None:
            self.participant.start()
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
        self.record.zero = self.trigger.zero
        self.record.wall_offset = time.time() - psychopy_time()
        if len(flips) > 10:
            return statistics.median(b - a for a, b in zip(flips, flips[1:]))
        return win.monitorFramePeriod or 1 / 60

    def _loop(self, win: Any, screen: TaskScreen, panel: FeedbackPanel, operator: _OperatorView | None, period: float) -> None:
        segments = self.setup.timeline.segments
        zero = self.trigger.zero
        intervals: deque[float] = deque([period], maxlen=30)
        last_flip = psychopy_time()
        current = -1
        while True:
            # The coming flip is one (measured) frame after the last one; a segment starts on
            # the flip nearest its planned onset, so onsets err by at most half a frame.
            interval = min(statistics.median(intervals), period)
            t_next = last_flip - zero + interval
            index = max(self.setup.timeline.index_at(t_next + interval / 2), current)
            self._poll_keys()
            self._poll_results(panel)
            if index >= len(segments):
                break
            segment = segments[index]
            if index != current:
                win.callOnFlip(self._on_onset, segment)
                current = index
            drawn: tuple[int, ...] = ()
            if operator is None:
                screen.draw(segment)
                if segment.phase == "feedback":
                    drawn = tuple(panel.draw(segment.feedback_trials, self.record.results))
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
            self.record.flips.append(flip - zero)
