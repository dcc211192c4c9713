"""stimulus.resume: a killed run's journal read back into a new program's state, and what it missed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.config import StimulusSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.eventlog import EventLog
from stimulus.feedback import FeedbackPanel
from stimulus.policy import FeedbackPolicy
from stimulus.records import RunJournal, RunPaths, RunRecord
from stimulus.results import ResultHandler
from stimulus.resume import check_speed, resume_run
from stimulus.timeline import build_timeline
from stimulus.trials import Trial
from stimulus.trigger import ScannerTrigger, psychopy_time

SESSION = "sub-01_ses-01"
DOWN_AT = 15.0  # the new program starts this many scanner seconds after the first trigger


def test_a_killed_run_goes_on_where_the_scanner_is(win, make_image, tmp_path: Path):
    # image 0 at 1-2 s, gap to 12 s, image 1 at 12-13 s, gap to 23 s: the program dies during the
    # first gap and comes back during the second, so trial 1 came and went while it was down
    settings = StimulusSection.model_validate({"perception": {"image_s": 1.0, "gap_s": 10.0}, "lead_in_s": 1.0,
                                               "feedback": {"top_k": 0, "score_bar": False}})
    trials = [Trial(index=i, line=i + 2, trial_type="image", stim_file=make_image(tmp_path / f"{i}.png", (255, 0, 0)))
              for i in range(3)]
    timeline = build_timeline("perception", trials, settings)
    phases = [s.phase for s in timeline.segments]
    assert phases[:5] == ["fixation", "image", "gap", "image", "gap"]
    paths = RunPaths(tmp_path / "out", "01", "01", "task", 1)

    # the first life, as its journal has it (the system's monotonic clock: offset 0)
    first = RunJournal(paths)
    zero = time.monotonic() - DOWN_AT
    first.begin({"t": "start", "zero_monotonic": zero, "speed": 1.0, "wall_offset": 0.0, "run": 1, "session": SESSION})
    key = next(iter(timeline.segments[1].responses))
    for entry in ({"t": "onset", "segment": 0, "onset": 0.01}, {"t": "onset", "segment": 1, "onset": 1.01},
                  {"t": "trigger", "time": 1.0}, {"t": "response", "segment": 1, "response": timeline.segments[1].responses[key],
                                                  "response_time": 0.4},
                  {"t": "onset", "segment": 2, "onset": 2.01}, {"t": "flips", "times": [0.01, 1.01, 2.01]},
                  {"t": "operator", "action": "feedback_paused", "time": 2.5},
                  {"t": "operator", "action": "trial_marked_bad", "time": 3.0, "trial": 0}):
        first.append(entry)
    image = np.zeros((8, 8, 3), np.uint8)
    first.record_result(TrialResultMessage(session=SESSION, run=1, trial=0, image=image, scores=[0.5]), zero + 5.0)
    first.record_result(TrialResultMessage(session=SESSION, run=1, trial=0, release=1, image=image, scores=[0.6]), zero + 6.0)
    first.append({"t": "shown", "trial": 0, "release": 0, "shown": 5.5})  # release 0 shown; release 1 never was
    first.close()

    journal = RunJournal(paths, clock=psychopy_time)  # the program's clock, as StimulusProgram's
    start = journal.started
    assert start is not None
    check_speed(journal, 1, 1.0)
    with pytest.raises(ValueError, match="was started at speed 1.0, not 2: resume it at that speed"):
        check_speed(journal, 1, 2.0)

    record = RunRecord(paths, speed=1.0)
    events = EventLog(timeline, record)
    trigger = ScannerTrigger(frozenset({"5"}))
    results = ResultHandler(SESSION, 1, trials, record=record, journal=journal,
                            policy=FeedbackPolicy(settings.feedback, trials, timeline),
                            panel=FeedbackPanel(win, settings.feedback, trials))
    missed = resume_run(start, journal, run=1, timeline=timeline, record=record, trigger=trigger, events=events, results=results)

    clock_zero = zero - journal.clock_offset
    assert record.zero == pytest.approx(clock_zero) and trigger.times == [pytest.approx(clock_zero), pytest.approx(clock_zero + 1.0)]
    assert missed == [1]
    # image 1 is passed over, not shown late; the gap under way starts on the first frame
    assert events.current == 3 and events.next_index(DOWN_AT + 0.1) == 4
    assert events.onsets == {0: 0.01, 1: 1.01, 2: 2.01}
    (shown_image,) = record.events
    assert shown_image.trial == 0 and shown_image.response_time == 0.4 and shown_image.duration == pytest.approx(1.0)
    assert record.flips == [0.01, 1.01, 2.01]
    # the operator's controls the first life followed stay in the run's records
    assert record.operator_actions == [{"action": "feedback_paused", "time": 2.5},
                                       {"action": "trial_marked_bad", "time": 3.0, "trial": 0}]
    kept = record.results[0]
    assert kept.message.release == 1 and kept.received == pytest.approx(clock_zero + 6.0) and kept.shown is None
    results.hand_over_all()
    assert results.panel.ready(0)
    journal.close()
