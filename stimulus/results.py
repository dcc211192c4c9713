"""A run's results, from their arrival to the screen: accepted, kept, their textures made, drawn, their flips marked.

:class:`ResultHandler` is the stimulus program's feedback handling. Results from the engine link
(:meth:`ResultHandler.poll`) or read back from a killed run's journal (:meth:`ResultHandler.receive`)
are accepted when they belong to this run and are newer than the release of their trial in hand,
scored against their pairmates (the engine's CPD when it sent one, else scored here), and kept in the :class:`~stimulus.records.RunRecord`. Their
textures are made only where no stimulus is drawn (:meth:`ResultHandler.hand_over`). On each
frame :meth:`ResultHandler.draw` draws what the feedback :mod:`~stimulus.policy` chooses
(:class:`~stimulus.feedback.FeedbackPanel` draws it) on the participant's window, or hands it to
the :class:`~stimulus.operator_view.OperatorView`, and journals the flip that first shows each
result and each feedback row. While the operator has paused feedback (:meth:`ResultHandler.pause`)
results are still received and kept, but no feedback period draws one: what it would have drawn
is recorded as paused (:meth:`~stimulus.policy.FeedbackPolicy.withhold`). Nothing here waits on the network: a missing result never delays a
frame.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from rtrecon.contract.wire import ShownMessage, TrialResultMessage

from .feedback import FeedbackPanel, ReceivedResult
from .link import Link
from .operator_view import OperatorView
from .pairmates import PairmateScorer
from .policy import FeedbackPolicy, FeedbackShow
from .records import RunJournal, RunRecord
from .timeline import Segment
from .trials import Trial
from .trigger import psychopy_time

__all__ = ["ResultHandler"]

log = logging.getLogger(__name__)


class ResultHandler:
    """The results of run ``run`` of ``session``, kept in ``record.results`` (see the module docstring).

    ``panel`` draws them on the participant's window, or on ``operator``'s when there is one;
    ``policy`` chooses a feedback period's trials; ``live`` (live feedback) hands each feedback
    trial's result to the operator's window as it arrives. Feedback rows and ``shown`` times are
    journaled to ``journal``, and each ``shown`` goes back to the engine as a
    :class:`~rtrecon.contract.wire.ShownMessage` through ``report_shown`` (the link's ``send_shown``).
    """

    def __init__(self, session: str, run: int, trials: Sequence[Trial], *, record: RunRecord, journal: RunJournal,
                 policy: FeedbackPolicy, panel: FeedbackPanel, operator: OperatorView | None = None,
                 pairmates: PairmateScorer | None = None, live: bool = False,
                 report_shown: Callable[[ShownMessage], None] | None = None):
        self.session = session
        self.run = run
        self.trials = trials
        self.record = record
        self.journal = journal
        self.policy = policy
        self.panel = panel
        self.operator = operator
        self.pairmates = pairmates
        self.live = live
        self.report_shown = report_shown
        self.paused = False
        self._handover: deque[int] = deque()  # results received, their textures not yet made

    # -- arrival ----------------------------------------------------------------------------------
    def poll(self, link: Link) -> bool:
        """Take the results ``link`` has received (never waits); True when one of them was kept."""
        kept = False
        for message, received in link.poll_results():
            kept = self.receive(message, received) or kept
        return kept

    def receive(self, message: TrialResultMessage, received: float) -> bool:
        """A result received at clock time ``received``: kept if accepted; True then."""
        if not self._accept(message):
            return False
        self._keep(message, received)
        if self.live and self.operator is not None and self.trials[message.trial].feedback:
            self.operator.arrived(message.trial)
        return True

    def _accept(self, message: TrialResultMessage) -> bool:
        if message.session != self.session or message.run != self.run:
            log.warning("ignored a result for %s run %d (this is %s run %d)", message.session, message.run, self.session, self.run)
        elif not 0 <= message.trial < len(self.trials):
            log.warning("ignored a result for trial %d, which this run does not have", message.trial)
        elif message.trial in self.record.results and message.release <= self.record.results[message.trial].message.release:
            log.warning("ignored a result for trial %d: release %d, and release %d is here", message.trial,
                        message.release, self.record.results[message.trial].message.release)
        else:
            return True
        return False

    def _keep(self, message: TrialResultMessage, received: float) -> None:
        """A result accepted: scored, kept (replacing an older release), its textures to be made."""
        pairs = self.pairmates
        cpd = message.cpd
        if cpd is None and pairs is not None:
            cpd = pairs.score(message.trial, message.embedding)
        self.record.results[message.trial] = ReceivedResult(message, received, cpd=cpd)
        self._handover.append(message.trial)

    # -- textures ---------------------------------------------------------------------------------
    def hand_over(self, segment: Segment, t_next: float, interval_s: float) -> None:
        """Make received results' textures, only where no stimulus is drawn: in a feedback period
        or on the end screen all at once (they are shown now), else one a frame, on a fixation,
        gap or rest frame at least three frames (``interval_s`` scanner seconds each) from the
        next segment (so no stimulus onset waits)."""
        if not self._handover:
            return
        if segment.phase in ("feedback", "end"):
            n = len(self._handover)
        elif self.operator is not None or (
                segment.phase in ("fixation", "gap", "rest") and segment.stop - t_next > 3 * interval_s):
            n = 1  # the operator's window may show any result at any time (on demand, live): its textures can't wait
        else:
            return
        for _ in range(n):
            trial = self._handover.popleft()
            self.panel.add(trial, self.record.results[trial])

    def hand_over_all(self) -> None:
        """Make every received result's textures now (before a resumed run's first frame: no stimulus waits)."""
        while self._handover:
            trial = self._handover.popleft()
            self.panel.add(trial, self.record.results[trial])

    # -- the screen -------------------------------------------------------------------------------
    def draw(self, win: Any, index: int, segment: Segment, t_next: float) -> tuple[int, ...]:
        """Draw frame ``index``'s results (``segment`` at run time ``t_next``) after the task is drawn;
        returns the trials drawn on the participant's window ``win``.

        On a feedback period or the end screen the policy's trials are drawn as each arrives; the
        flip that first shows a result is marked (``shown``) and the period's feedback rows are
        journaled. With an operator's window, the results go there instead (with what the
        operator asked for and live results), never on ``win``.
        """
        results = self.record.results
        group = self.policy.group(index, segment, results, t_next) if segment.phase in ("feedback", "end") else ()
        if self.paused and group:
            withheld = tuple(i for i in group if i in results and self.panel.ready(i))
            if withheld:
                win.callOnFlip(self._on_feedback_withheld, index, withheld)
            group = ()
        if self.operator is not None:
            on_operator = self.operator.frame(index, group, t_next, results, self._on_shown)
            if group and on_operator:
                self._on_feedback_drawn(index, tuple(on_operator))
            return ()
        drawn: tuple[int, ...] = ()
        if group:
            drawn = tuple(self.panel.draw(group, results))
            if drawn:
                win.callOnFlip(self._on_feedback_drawn, index, drawn)
        for i in drawn:
            if results[i].shown is None:
                win.callOnFlip(self._on_shown, i)
        return drawn

    def pause(self, paused: bool, t: float | None) -> None:
        """The operator paused (or resumed) feedback at run time ``t`` (None: before the first trigger)."""
        if self.paused and not paused and t is not None:
            self.policy.resumed(t)
        self.paused = paused

    def _on_feedback_withheld(self, period: int, trials: tuple[int, ...]) -> None:
        self.policy.withhold(period, trials, self.record.results, self.record.run_time(psychopy_time()))

    def _on_shown(self, trial_index: int) -> None:
        result = self.record.results[trial_index]
        if result.shown is None:
            result.shown = psychopy_time()
            shown, wall = self.record.run_time(result.shown), result.shown + self.record.wall_offset
            self.journal.post({"t": "shown", "trial": trial_index, "release": result.message.release,
                               "shown": shown, "shown_wall": wall})
            if self.report_shown is not None:
                m = result.message
                self.report_shown(ShownMessage(session=m.session, run=m.run, trial=m.trial, release=m.release,
                                               sequence=m.sequence, shown=shown, shown_wall=wall,
                                               received_to_shown_s=max(result.shown - result.received, 0.0)))

    def _on_feedback_drawn(self, period: int, trials: tuple[int, ...]) -> None:
        onset = self.record.run_time(psychopy_time())
        for show in self.policy.drawn(period, trials, self.record.results, onset):
            self.journal.post({"t": "feedback", "period": show.period, "trial": show.trial, "release": show.release, "onset": show.onset})

    # -- a resumed run ----------------------------------------------------------------------------
    def restore_feedback(self, show: FeedbackShow) -> None:
        """A feedback row a killed program of this run journaled."""
        self.policy.restore(show)

    def restore_shown(self, trial: int, release: int, shown: float) -> None:
        """``trial``'s ``release`` was shown at run time ``shown`` before the kill (ignored if another release is kept)."""
        result = self.record.results.get(trial)
        if result is not None and release == result.message.release:
            result.shown = self.record.clock_time(float(shown))
            if self.operator is not None:
                self.operator.shown(trial)

    # -- after the timeline -----------------------------------------------------------------------
    def owed(self, missed: Sequence[int]) -> bool:
        """Results the end screen still owes (:meth:`FeedbackPolicy.owed`); with live feedback on the
        operator's window, every feedback trial's not yet shown (``missed`` trials owe nothing)."""
        if self.live and self.operator is not None:
            results = self.record.results
            owed = [t.index for t in self.trials if t.feedback and t.index not in missed]
            return any(i not in results or results[i].shown is None for i in owed)
        return bool(self.policy.owed(self.record.results, missed))
