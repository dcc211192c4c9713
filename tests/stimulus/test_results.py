"""stimulus.results: which results are kept, when their textures are made, what a frame draws and journals."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.config import StimulusSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.feedback import FeedbackPanel
from stimulus.operator_view import OperatorView
from stimulus.policy import FeedbackPolicy
from stimulus.records import RunJournal, RunPaths, RunRecord, read_journal
from stimulus.results import ResultHandler
from stimulus.timeline import Segment, Timeline, build_timeline
from stimulus.trials import Trial
from stimulus.trigger import psychopy_time

SESSION = "sub-01_ses-01"


def message(trial: int, release: int = 0, session: str = SESSION, run: int = 1) -> TrialResultMessage:
    image = np.zeros((8, 8, 3), np.uint8) + np.array((0, 0, 255), np.uint8)
    return TrialResultMessage(session=session, run=run, trial=trial, release=release, image=image, scores=[0.5])


class Link:
    """Hands over the results given to it, once."""

    def __init__(self) -> None:
        self.waiting: list[tuple[TrialResultMessage, float]] = []

    def poll_results(self) -> list[tuple[TrialResultMessage, float]]:
        taken, self.waiting = self.waiting, []
        return taken


@dataclass
class Plan:
    """A two-trial run with a feedback period after each trial."""

    settings: StimulusSection
    trials: list[Trial]
    timeline: Timeline
    paths: RunPaths


@pytest.fixture
def plan(make_image, tmp_path: Path) -> Plan:
    settings = StimulusSection.model_validate({"perception": {"image_s": 1.0, "gap_s": 1.0}, "lead_in_s": 1.0,
                                               "feedback": {"when": "trial", "window_s": 2.0, "top_k": 0, "score_bar": False}})
    trials = [Trial(index=i, line=i + 2, trial_type="image", feedback=True,
                    stim_file=make_image(tmp_path / f"{i}.png", (255, 0, 0))) for i in range(2)]
    return Plan(settings, trials, build_timeline("perception", trials, settings), RunPaths(tmp_path / "out", "01", "01", "task", 1))


_journals: list[RunJournal] = []


@pytest.fixture(autouse=True)
def _close_journals():
    """Close the journals the test's handlers opened (joining their writer threads) when it ends."""
    yield
    while _journals:
        _journals.pop().close()


def handler_of(plan: Plan, win, *, operator: bool = False, live: bool = False) -> ResultHandler:
    record = RunRecord(plan.paths, speed=1.0)
    record.zero = psychopy_time()
    feedback = plan.settings.feedback
    panel = FeedbackPanel(win, feedback, plan.trials)
    view = OperatorView(win, panel, feedback.window_s) if operator else None
    _journals.append(journal := RunJournal(plan.paths, clock=psychopy_time))
    return ResultHandler(SESSION, 1, plan.trials, record=record, journal=journal,
                         policy=FeedbackPolicy(feedback, plan.trials, plan.timeline), panel=panel, operator=view, live=live)


def index_of(segments, phase: str, trial: int) -> int:
    return next(i for i, s in enumerate(segments) if s.phase == phase and s.trial is not None and s.trial.index == trial)


def test_only_this_runs_newer_results_are_kept(plan: Plan, win):
    handler = handler_of(plan, win)
    assert handler.receive(message(0), 1.0)
    for other in (message(1, session="sub-02_ses-01"), message(1, run=2), message(5), message(0), message(0, release=-1)):
        assert not handler.receive(other, 2.0)  # another session, run or trial, or no newer release
    assert set(handler.record.results) == {0}
    assert handler.receive(message(0, release=1), 3.0)
    kept = handler.record.results[0]
    assert kept.message.release == 1 and kept.received == 3.0 and kept.cpd is None


def test_the_engines_cpd_is_kept_and_a_local_score_only_fills_in_where_it_sent_none(plan: Plan, win):
    class Scorer:  # stands for stimulus.pairmates.PairmateScorer (tested in test_pairmates)
        def score(self, trial, embedding):
            return -0.5

    handler = handler_of(plan, win)
    handler.pairmates = Scorer()
    from dataclasses import replace

    assert handler.receive(replace(message(0), pairmate="b", cpd=0.25), 1.0)
    assert handler.receive(message(1), 1.0)
    assert handler.record.results[0].cpd == 0.25 and handler.record.results[1].cpd == -0.5


def test_textures_are_made_only_where_no_stimulus_waits(plan: Plan, win):
    handler = handler_of(plan, win)
    segments = plan.timeline.segments
    image = index_of(segments, "image", 0)
    handler.receive(message(0), 1.0)
    handler.receive(message(1), 1.0)
    handler.hand_over(segments[image], segments[image].start, 1 / 60)
    assert not handler.panel.ready(0)  # the control: never during an image
    gap = segments[image + 1]
    assert gap.phase == "gap"
    handler.hand_over(gap, gap.stop - 3 / 60, 1 / 60)  # three frames from the next segment: too close
    assert not handler.panel.ready(0)
    handler.hand_over(gap, gap.start, 1 / 60)  # one a frame
    assert handler.panel.ready(0) and not handler.panel.ready(1)
    handler.hand_over(Segment(9.0, float("inf"), "end"), 9.0, 1 / 60)  # the end screen: all at once
    assert handler.panel.ready(1)


def test_a_feedback_period_draws_marks_the_flip_and_journals(plan: Plan, win):
    handler = handler_of(plan, win)
    segments = plan.timeline.segments
    link = Link()
    assert not handler.poll(link)
    link.waiting = [(message(0), psychopy_time())]
    assert handler.poll(link)
    period = index_of(segments, "feedback", 0)
    segment = segments[period]
    handler.hand_over(segment, segment.start, 1 / 60)
    image = index_of(segments, "image", 0)
    assert handler.draw(win, image, segments[image], 1.5) == ()  # the control: not in the image
    assert handler.draw(win, period, segment, segment.start) == (0,)
    assert handler.record.results[0].shown is None  # marked by the flip that shows it
    win.flip()
    assert handler.record.results[0].shown is not None
    handler.journal.close()
    lines = read_journal(handler.journal.path)
    assert [(e["t"], e["trial"]) for e in lines] == [("feedback", 0), ("shown", 0)]
    assert lines[1]["release"] == 0 and lines[0]["period"] == period
    assert handler.owed([])  # trial 1's result is still owed (arrived or not) ...
    assert not handler.owed([1])  # ... unless its trial was missed


def test_with_an_operator_window_results_go_there_and_live_ones_as_they_arrive(plan: Plan, win):
    handler = handler_of(plan, win, operator=True, live=True)
    segments = plan.timeline.segments
    handler.receive(message(1), psychopy_time())
    handler.hand_over_all()
    image = index_of(segments, "image", 0)
    # trial 1's result is drawn on the operator's window (which flips at once) during trial 0's image
    assert handler.draw(win, image, segments[image], 1.5) == ()
    assert handler.record.results[1].shown is not None
    assert handler.owed([])  # trial 0's result has not been shown yet
    assert not handler.owed([0])  # unless it was missed
