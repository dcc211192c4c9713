"""What each feedback period shows, and the late-result rules, on a planned timeline (no window)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.config import StimulusSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.feedback import ReceivedResult
from stimulus.policy import FeedbackPolicy
from stimulus.timeline import build_timeline
from stimulus.trials import Trial


def trials(n: int, feedback: bool = True) -> list[Trial]:
    return [Trial(index=i, line=i + 2, trial_type="image", stim_file=Path(f"{i}.png"), feedback=feedback) for i in range(n)]


def result(trial: int, received: float, release: int = 0) -> ReceivedResult:
    return ReceivedResult(TrialResultMessage(session="s", run=1, trial=trial, release=release, image=np.zeros((2, 2, 3), np.uint8)), received)


def plan(when: str, late: str, n: int = 3):
    settings = StimulusSection.model_validate({"perception": {"image_s": 1.0, "gap_s": 0.0},
                                               "feedback": {"when": when, "late": late, "window_s": 2.0, "slot_trials": 2}})
    ts = trials(n)
    timeline = build_timeline("perception", ts, settings)
    return FeedbackPolicy(settings.feedback, ts, timeline, queue=when == "slot"), timeline


def periods(timeline) -> list[int]:
    return [i for i, s in enumerate(timeline.segments) if s.phase == "feedback"]


@pytest.mark.parametrize("late", ["next", "end", "skip"])
def test_a_result_that_misses_its_period(late: str):
    policy, timeline = plan("trial", late)
    p0, p1, p2 = periods(timeline)
    end = policy.end_index
    results: dict[int, ReceivedResult] = {}
    seg = timeline.segments
    assert policy.group(p0, seg[p0], results) == (0,)  # laid out, drawn only once it is there
    results[1] = result(1, 0.0)
    policy.drawn(p1, (1,), results, 4.0)
    results[0] = result(0, 5.0)  # trial 0's arrives after its own period ended
    # the next period shows it beside its own trial with "next"; "end" and "skip" keep it off
    assert policy.group(p2, seg[p2], results) == ((2, 0) if late == "next" else (2,))
    if late == "next":
        policy.drawn(p2, (0,), results, 7.0)
    assert policy.owed(results) == {"next": [2], "end": [0, 2], "skip": []}[late]
    results[2] = result(2, 9.0)  # after the timeline: the end screen
    expected = {"next": (2,), "end": (0, 2), "skip": ()}[late]
    assert policy.group(end, None, results, 10.0) == expected
    if expected:
        policy.drawn(end, expected, results, 10.0)
    onsets = {p0: 1.0, p1: 4.0, p2: 7.0, end: 10.0}
    rows = sorted((r["onset"], r["trial"], r["feedback_status"]) for r in policy.rows(onsets, 12.0))
    late_rows = {"next": [(7.0, 0, "late"), (10.0, 2, "late")], "end": [(10.0, 0, "late"), (10.0, 2, "late")], "skip": []}[late]
    assert rows == sorted([(1.0, 0, "missing"), (4.0, 1, "shown"), (7.0, 2, "missing")] + late_rows)


def test_slots_take_the_queue_oldest_first_and_a_newer_release_gets_its_own_row():
    settings = StimulusSection.model_validate({"perception": {"image_s": 1.0, "gap_s": 0.0},
                                               "feedback": {"when": "slot", "window_s": 2.0, "slot_trials": 2, "slot_min_s": 1.5}})
    ts = [Trial(index=i, line=i + 2, trial_type="image", stim_file=Path("a.png"), onset=o, feedback=True)
          for i, o in enumerate((0.0, 1.0, 2.0, 6.0))]
    timeline = build_timeline("perception", ts, settings)
    policy = FeedbackPolicy(settings.feedback, ts, timeline, queue=True)
    (slot,) = periods(timeline)
    assert (timeline.segments[slot].start, timeline.segments[slot].stop) == (3.0, 5.0)
    results = {2: result(2, 1.0), 0: result(0, 2.0), 1: result(1, 2.5)}
    assert policy.group(slot, timeline.segments[slot], results) == (2, 0)  # oldest arrival first, two fit
    policy.drawn(slot, (2, 0), results, 3.0)
    results[0] = result(0, 3.5, release=1)  # a newer release of a trial on screen: drawn in place
    assert policy.group(slot, timeline.segments[slot], results) == (2, 0)
    policy.drawn(slot, (2, 0), results, 3.6)
    rows = policy.rows({slot: 3.0, slot + 1: 5.0}, 9.0)
    assert [(r["trial"], r["release"], r["onset"], round(r["duration"], 6)) for r in rows] == [
        (2, 0, 3.0, 2.0), (0, 0, 3.0, 0.6), (0, 1, 3.6, 1.4)]
    assert policy.owed(results) == [1, 3]  # trial 1 waits for the end screen (or the next slot); 3 not come yet
    assert policy.group(policy.end_index, None, results, 9.0) == (1,)
