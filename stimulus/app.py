"""The stimulus program: one run of a task, locked to the scanner's trigger.

Usage::

    from rtrecon.contract.config import load_config
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

1. polls the keys (non-blocking): triggers are logged, buttons become responses; and the
   operator's controls from the console, when given (:class:`~stimulus.operator.OperatorControls`):
   pausing feedback stops every feedback period drawing (results are still received and kept;
   what a period would have shown gets a ``paused`` feedback row), the run's "end run" ends it as
   the quit key does (every record written), and each control followed (paused, resumed, a trial
   marked or unmarked bad, the run ended) is journaled and listed in the events sidecar's
   ``OperatorActions``;
2. polls the engine link (non-blocking) and keeps each result with the time it arrived;
3. finds the segment the coming flip falls in; when that is a new segment, schedules with
   ``win.callOnFlip`` the stamping of its onset (right after the flip that first shows it),
   the sending of the trial's :class:`~rtrecon.contract.wire.EventMessage` (for its main event) and
   the virtual participant's view;
4. makes the textures of results received, only on a frame without a stimulus (a feedback
   period, the end screen, or a fixation, gap or rest frame at least three frames before the
   next segment), so that no stimulus onset waits on a result;
5. draws it: a feedback period (:mod:`stimulus.policy` chooses its trials: its own, late ones,
   or the queue in a slot) draws each result as soon as it is there and marks the flip that
   first shows it; nothing else ever draws a result on the participant's screen. With
   ``feedback.screen = "operator"`` feedback goes to a second window instead, which also shows
   the latest result when the operator presses ``feedback.demand_key`` (and each one as it
   arrives, with live feedback);
6. flips.

After the timeline comes the end-of-run screen, for ``feedback.end_screen_s`` and, with
``results_timeout_s``, while results still owed come (shown below it). Every image is loaded
before the first trigger; nothing in the loop waits on the network or on a result, so a slow or
missing result never delays a frame. Each stimulus's planned and measured onset and duration are
in the events file; a run whose stimuli slipped more than a frame says so when it ends (log and
the events sidecar's ``StimulusTiming``). All files are written when the run ends, also when it is aborted
(:class:`~stimulus.records.RunRecord`); a segment with an event is never skipped, even when
the process stalled past it (it is then shown late, for at least one frame).

:class:`StimulusProgram` holds the frame loop and what happens on a flip (onsets, events sent);
the rest is in its own modules:

- :mod:`stimulus.pacing`: the replay's speed, the wait for the first trigger, the frame period
  and the time of the coming flip (:class:`~stimulus.pacing.Pacer`);
- :mod:`stimulus.eventlog`: the segments as shown, their event rows and the responses
  (:class:`~stimulus.eventlog.EventLog`);
- :mod:`stimulus.results`: feedback handling, each result from its arrival to the flip that shows
  it (:class:`~stimulus.results.ResultHandler`; :mod:`stimulus.policy` chooses, :mod:`stimulus.feedback` draws);
- :mod:`stimulus.operator_view`: the operator's window (:class:`~stimulus.operator_view.OperatorView`);
- :mod:`stimulus.resume`: a killed run's journal read back (:func:`~stimulus.resume.resume_run`).

A replay's time scale: ``speed`` S (with a virtual participant only) plays the timeline S
times faster than the scanner, so that it keeps pace with the bridge replaying volumes at S × the
TR pace. The timeline and every time recorded or sent stay in scanner seconds since the first
trigger: a clock interval ``d`` is ``d × S`` scanner seconds. Speed 1 is the scanner's own pace.

Resuming a killed run (:mod:`stimulus.resume`). Everything is journaled as it happens
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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtrecon.contract.config import SessionConfig, StimulusSection
from rtrecon.contract.wire import EventMessage

from .eventlog import EventLog
from .feedback import FeedbackPanel
from .link import Link
from .operator import OperatorControls
from .operator_view import OperatorView
from .pacing import Pacer
from .pairmates import PairmateScorer
from .participant import VirtualParticipant
from .policy import FeedbackPolicy
from .records import RunJournal, RunPaths, RunRecord, bad_trials
from .results import ResultHandler
from .resume import check_speed, resume_run
from .screen import TaskScreen, open_window
from .timeline import Segment, Timeline, build_timeline
from .trials import Task, Trial, TrialListError, load_trials
from .trigger import KeyInput, MergedKeys, ScannerTrigger, psychopy_time

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
    pairmates: PairmateScorer | None = None
    feedback: str = "trial"  # the policy planned: feedback.when, or "slot" / "none" for live feedback


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
    arrive (:class:`StimulusProgram`): on the participant's screen in the design's free stretches
    (``feedback.when = "slot"``), on the operator's window over nothing (no periods are scheduled).
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
    policy = ("slot" if fb.screen == "participant" else "none") if live_feedback else fb.when
    timeline = build_timeline(task, trials, settings, trials_file, policy=policy)
    pairmates = None
    if any(t.pairmate for t in trials) and fb.embeddings is not None:
        pairmates = PairmateScorer(fb.embeddings, trials, trials_file)
    if fb.bar_value == "cpd" and not any(t.pairmate for t in trials):
        raise ValueError(f'{trials_file}: bar_value = "cpd" needs a pairmate column (the stim_id of each trial\'s pairmate)')
    paths = RunPaths(sess.output_dir, sess.subject, sess.session, sess.task, run)
    if not overwrite:
        paths.check_free()
    return RunSetup(task, trials, trials_file, timeline, settings, paths, paths.layout.session_id, run, pairmates, policy)


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
    """The run ends now: ``by`` the quit key or the operator."""

    def __init__(self, by: str) -> None:
        super().__init__(by)
        self.by = by


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
    resumed (see the module docstring). ``live_feedback`` (the setup from ``prepare_run(...,
    live_feedback=True)``) shows each result as it arrives: on the participant's screen in the
    next of the design's free stretches (slots), on the operator's window at once, for
    ``feedback.window_s`` (scanner seconds) or until the next one; ``results_timeout_s`` keeps the
    end screen on until every result still owed is shown, or no result came for that many seconds.
    ``controls``: the operator's controls from the console, polled each frame (step 1 of the
    module docstring); without them nothing the console does reaches the run.
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
        controls: OperatorControls | None = None,
    ):
        if keys is None and participant is None:
            raise ValueError("give keys, a virtual participant, or both")
        self.pacer = Pacer(speed, participant)
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
        self.controls = controls
        self.results: ResultHandler | None = None
        self._bad: set[int] = set()
        check_speed(self.journal, setup.run, speed)
        trig = setup.settings.trigger
        self.trigger = ScannerTrigger(frozenset(trig.keys), trig.tr)
        self.record = RunRecord(setup.paths, setup.trials_file, speed=speed)
        self.events = EventLog(setup.timeline, self.record)
        self.policy = FeedbackPolicy(setup.settings.feedback, setup.trials, setup.timeline, queue=setup.feedback == "slot")
        self.operator: OperatorView | None = None
        self.resumed = False
        self.missed: list[int] = []
        self._triggers_logged = 0
        self._flip_batch: list[float] = []

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
            panel = FeedbackPanel(operator_win or win, settings.feedback, self.setup.trials)
            if operator_win is not None:
                self.operator = OperatorView(operator_win, panel, settings.feedback.window_s)
            results = ResultHandler(self.setup.session_label, self.setup.run, self.setup.trials, record=self.record,
                                    journal=self.journal, policy=self.policy, panel=panel, operator=self.operator,
                                    pairmates=self.setup.pairmates, live=self.live_feedback,
                                    report_shown=self.link.send_shown)
            self.results = results
            try:
                if start is not None:
                    self._resume(start, results)
                    period = self.pacer.measure_period(win, screen)
                else:
                    period = self._wait_for_trigger(win, screen)
                self._loop(win, screen, results, period)
            except _Quit as quit_:
                self.record.aborted = True
                self.record.ended_by = quit_.by
                log.warning("run ended by the operator" if quit_.by == "operator" else "run aborted with the quit key")
            self.events.close(self.record.flips[-1] if self.record.flips else None)
        finally:
            if self.trigger.started:
                self.record.zero = self.trigger.zero
                self._post_flips()
                last = self.record.flips[-1] if self.record.flips else 0.0
                self.record.feedback_rows = self.policy.rows(self.events.onsets, last)
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

    # -- the frame loop ---------------------------------------------------------------------------
    def _loop(self, win: Any, screen: TaskScreen, results: ResultHandler, period: float) -> None:
        """One frame per pass, the module docstring's steps 1-6, until the end screen is over."""
        segments = self.setup.timeline.segments
        end_screen = Segment(self.setup.timeline.end, float("inf"), "end")
        self.pacer.start(period)
        last_result = self.pacer.last_flip
        ended: float | None = None
        while True:
            # A segment starts on the flip nearest its planned onset, so onsets err by at most half a frame.
            flip_at, interval = self.pacer.coming_flip()
            t_next = self.record.run_time(flip_at)
            index = self.events.next_index(t_next + self.pacer.scanner_s(interval) / 2)
            self._poll_keys()
            if results.poll(self.link):
                last_result = psychopy_time()
            if index >= len(segments):
                if ended is None:
                    ended = psychopy_time()
                    win.callOnFlip(self._on_end_screen)
                if self._end_screen_over(results, ended, last_result):
                    break
                segment, index = end_screen, len(segments)
            else:
                segment = segments[index]
                if index != self.events.current:
                    self._begin(win, screen, index, segment)
            results.hand_over(segment, t_next, self.pacer.scanner_s(interval))
            drawn = self._draw(win, screen, results, index, segment, t_next)
            if self.on_frame is not None:
                self.on_frame(Frame(len(self.record.flips), segment, win, drawn))
            self._flip(win)

    def _poll_keys(self) -> None:
        """Triggers are journaled, the quit key ends the run, the demand key goes to the operator's
        window, and every other press answers what was on screen when it was made."""
        others = self.trigger.feed(self.keys.poll())
        if self.trigger.started and self.record.zero is not None:
            for t in self.trigger.times[max(self._triggers_logged, 1):]:
                self.journal.post({"t": "trigger", "time": self.record.run_time(t)})
            self._triggers_logged = len(self.trigger.times)
        if self.controls is not None:
            self._follow_operator()
        for press in others:
            if press.key == self.setup.settings.quit_key:
                raise _Quit("quit_key")
            if press.key == self.setup.settings.feedback.demand_key and self.operator is not None:
                self.operator.press_demand()
                continue
            answered = self.events.respond(press)
            if answered is not None:
                index, ev = answered
                self.journal.post({"t": "response", "segment": index, "response": ev.response, "response_time": ev.response_time})

    def _follow_operator(self) -> None:
        """Follow what changed in the console's controls since the last frame, recording each action."""
        state = self.controls.poll()
        results = self.results
        now = self.record.run_time(psychopy_time())
        if results is not None and state.feedback_paused != results.paused:
            results.pause(state.feedback_paused, now)
            self._operator_action("feedback_paused" if state.feedback_paused else "feedback_resumed", now)
        bad = set(state.bad_trials.get(self.setup.run, ()))
        for trial in sorted(bad - self._bad):
            self._operator_action("trial_marked_bad", now, trial=trial)
        for trial in sorted(self._bad - bad):
            self._operator_action("trial_unmarked_bad", now, trial=trial)
        self._bad = bad
        if self.setup.run in state.ended_runs:
            self._operator_action("run_ended", now)
            raise _Quit("operator")

    def _operator_action(self, action: str, t: float | None, **fields: Any) -> None:
        entry = {"action": action, "time": t, **fields}
        log.info("operator: %s%s", action.replace("_", " "), f" (trial {fields['trial']})" if fields else "")
        self.record.operator_actions.append(entry)
        if self.record.zero is not None:  # before the first trigger the journal is not begun
            self.journal.post({"t": "operator", **entry})

    def _end_screen_over(self, results: ResultHandler, ended: float, last_result: float) -> bool:
        """After the timeline the end screen stays ``feedback.end_screen_s``, then, with
        ``results_timeout_s``, while results it still owes (:meth:`ResultHandler.owed`) keep coming."""
        if self.pacer.scanner_s(psychopy_time() - ended) < self.setup.settings.feedback.end_screen_s:
            return False
        if self.results_timeout_s <= 0 or psychopy_time() - max(last_result, ended) > self.results_timeout_s:
            return True
        return not results.owed(self.missed)

    def _begin(self, win: Any, screen: TaskScreen, index: int, segment: Segment) -> None:
        """The coming flip first shows segment ``index``."""
        # The onset is stamped first (its callback only queues its I/O), then a sound cue
        # starts: opening the audio stream can take milliseconds the onset must not include.
        win.callOnFlip(self._on_onset, index)
        screen.schedule(segment)
        self.events.current = index

    def _draw(self, win: Any, screen: TaskScreen, results: ResultHandler, index: int, segment: Segment, t_next: float) -> tuple[int, ...]:
        """Draw the task, then the results; returns the trials drawn on the participant's window."""
        if self.operator is not None and segment.phase == "feedback":
            screen.draw(Segment(segment.start, segment.stop, "fixation"))  # feedback goes to the operator's window
        else:
            screen.draw(segment)
        return results.draw(win, index, segment, t_next)

    def _flip(self, win: Any) -> None:
        flip = win.flip()
        self.record.flips.append(self.record.run_time(flip))
        self._flip_batch.append(self.record.flips[-1])
        if len(self._flip_batch) >= 120:
            self._post_flips()
        self.pacer.flipped(flip)

    # -- called right after a flip (win.callOnFlip) -------------------------------------------
    def _on_onset(self, index: int) -> None:
        segment = self.setup.timeline.segments[index]
        now = psychopy_time()
        onset = self.record.run_time(now)
        self.journal.post({"t": "onset", "segment": index, "onset": onset})
        self.events.start(index, onset, now)
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
                    pairmate=trial.pairmate,
                    feedback=trial.feedback,
                    stamps={"shown": time.time()},
                )
            )
        if self.participant is not None:
            self.participant.observe(segment, now)

    def _on_end_screen(self) -> None:
        onset = self.record.run_time(psychopy_time())
        self.events.onsets[len(self.setup.timeline.segments)] = onset
        self.journal.post({"t": "end_screen", "onset": onset})

    # -- before the first frame -----------------------------------------------------------------
    def _wait_for_trigger(self, win: Any, screen: TaskScreen) -> float:
        """Show the waiting screen until the first trigger (time zero, journaled); returns the frame period."""
        self.keys.poll()  # keys pressed before the waiting screen are stale, triggers included
        if self.participant is not None:
            self.participant.start()
        period = self.pacer.wait_for_trigger(win, screen, self.trigger, self._poll_keys, self.setup.settings.trigger.timeout_s)
        self.record.zero = self.trigger.zero
        self.record.wall_offset = self.journal.wall_offset
        self._triggers_logged = 1
        self.journal.begin({"t": "start", "zero_monotonic": self.trigger.zero + self.journal.clock_offset, "speed": self.speed,
                             "wall_offset": self.record.wall_offset, "run": self.setup.run, "session": self.setup.session_label})
        return period

    def _resume(self, start: dict[str, Any], results: ResultHandler) -> None:
        """Go on with a killed run (:func:`~stimulus.resume.resume_run`); results' textures are made now."""
        self.missed = resume_run(start, self.journal, run=self.setup.run, timeline=self.setup.timeline, record=self.record,
                                 trigger=self.trigger, events=self.events, results=results, participant=self.participant)
        self._triggers_logged = len(self.trigger.times)
        self.resumed = True
        # the controls as the killed program left them, so the console's next heartbeat is no new action
        actions = self.record.operator_actions
        self._bad = bad_trials(actions)
        pauses = [a["action"] for a in actions if a["action"] in ("feedback_paused", "feedback_resumed")]
        results.pause(bool(pauses) and pauses[-1] == "feedback_paused", None)
        results.hand_over_all()  # before the first frame: no stimulus waits on them

    def _post_flips(self) -> None:
        if self._flip_batch:
            self.journal.post({"t": "flips", "times": self._flip_batch})
            self._flip_batch = []
