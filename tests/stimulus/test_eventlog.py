"""stimulus.eventlog: segments booked as shown, responses given to what was on screen, no event skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtrecon.contract.config import StimulusSection
from stimulus.eventlog import EventLog
from stimulus.records import RunPaths, RunRecord
from stimulus.timeline import build_timeline
from stimulus.trials import Trial
from stimulus.trigger import KeyPress


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    settings = StimulusSection.model_validate({"perception": {"image_s": 1.0, "gap_s": 1.0}, "lead_in_s": 1.0})
    trials = [Trial(index=i, line=i + 2, trial_type="image", stim_file=Path(f"{i}.png")) for i in range(2)]
    timeline = build_timeline("perception", trials, settings)
    record = RunRecord(RunPaths(tmp_path, "01", "01", "task", 1))
    record.zero = 100.0
    return EventLog(timeline, record)


def phases(log: EventLog) -> list[str]:
    return [s.phase for s in log.timeline.segments]


def test_segments_shown_become_events_with_measured_onsets_and_durations(log: EventLog):
    assert phases(log)[:3] == ["fixation", "image", "gap"]
    log.start(0, 0.0, 100.0)
    log.start(1, 1.02, 101.02)  # the image, a frame late
    log.start(2, 2.0, 102.0)
    (image,) = log.record.events  # fixation and gap have no event
    assert image.onset == 1.02 and image.duration == pytest.approx(0.98) and image.trial == 0
    assert log.onsets == {0: 0.0, 1: 1.02, 2: 2.0}
    log.start(3, 3.0, 103.0)
    log.close(3.5)
    assert log.record.events[-1].duration == pytest.approx(0.5)


def test_a_press_answers_what_was_on_screen_when_it_was_made(log: EventLog):
    key = next(iter(log.timeline.segments[1].responses))
    assert log.respond(KeyPress(key, 100.5)) is None  # the control: nothing shown yet
    log.start(0, 0.0, 100.0)
    log.start(1, 1.0, 101.0)
    log.start(2, 2.0, 102.0)
    assert log.respond(KeyPress(key, 100.5)) is None  # the fixation takes no response
    # polled during the gap, made during the image: the image's response, timed from its onset
    index, event = log.respond(KeyPress(key, 101.4))
    assert index == 1 and event.response == log.timeline.segments[1].responses[key]
    assert event.response_time == pytest.approx(0.4)
    assert log.respond(KeyPress(key, 101.6)) is None  # a trial answers once
    assert log.respond(KeyPress("not-a-response-key", 101.5)) is None


def test_restored_responses_go_to_their_segment_only(log: EventLog):
    log.start(1, 1.0, 101.0)
    log.restore_response(1, "old", 0.3)
    log.restore_response(0, "new", 0.1)  # a segment without an event: ignored
    assert [(e.response, e.response_time) for e in log.record.events] == [("old", 0.3)]


def test_next_index_never_skips_a_segment_with_an_event(log: EventLog):
    segments = log.timeline.segments
    assert log.next_index(0.5) == 0
    log.current = 0
    # a process stalled to the second gap: the first image is still shown (late), then the rest
    stalled = segments[4].start + 0.1
    assert log.next_index(stalled) == 1
    log.current = 1
    assert log.next_index(stalled) == 3  # the gap between has no event: skipped
    log.current = 4
    assert log.next_index(segments[2].start) == 4  # never back
    assert log.next_index(log.timeline.end + 1) == len(segments)
