from __future__ import annotations

from pathlib import Path

import pytest

from rtrecon.contract.config import StimulusSection
from stimulus.participant import VirtualParticipant
from stimulus.timeline import build_timeline
from stimulus.trials import Trial


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_scanner_triggers_every_tr_after_start():
    clock = Clock()
    vp = VirtualParticipant(tr=2.0, n_volumes=3, start_delay_s=0.5, clock=clock)
    assert vp.poll() == []
    vp.start()
    clock.t = 100.4
    assert vp.poll() == []
    clock.t = 103.0
    assert [(p.key, p.time) for p in vp.poll()] == [("5", 100.5), ("5", 102.5)]
    clock.t = 200.0
    assert [p.time for p in vp.poll()] == [104.5]


def test_answers_new_then_old_from_the_design():
    clock = Clock()
    trials = [
        Trial(index=0, line=2, trial_type="image", stim_file=Path("a.png"), stim_id="7"),
        Trial(index=1, line=3, trial_type="image", stim_file=Path("b.png"), stim_id="8", response="old"),
        Trial(index=2, line=4, trial_type="image", stim_file=Path("a.png"), stim_id="7"),
    ]
    tl = build_timeline("perception", trials, StimulusSection())
    vp = VirtualParticipant(response_time_s=0.4, clock=clock)
    for seg in tl.segments:
        vp.observe(seg, 100.0 + seg.start)
    assert vp.answers == {0: "new", 1: "old", 2: "old"}
    clock.t = 1000.0
    presses = vp.poll()
    assert [(p.key, round(p.time, 6)) for p in presses] == [("1", 100.4), ("2", 104.4), ("2", 108.4)]


def test_vividness_rating_and_a_response_the_keys_do_not_offer():
    settings = StimulusSection.model_validate({"imagery": {"vividness": True}})
    trials = [Trial(index=0, line=2, trial_type="imagery", cue="cat"), Trial(index=1, line=3, trial_type="imagery", cue="dog", response="9")]
    tl = build_timeline("imagery", trials, settings)
    vp = VirtualParticipant(clock=Clock())
    rating = [s for s in tl.segments if s.phase == "vividness"]
    vp.observe(rating[0], 100.0)
    assert vp.answers == {0: "3"}
    with pytest.raises(ValueError, match=r"trial 1 \(line 3\): response .9. is not one of"):
        vp.observe(rating[1], 110.0)


def test_at_speed_the_scanner_and_the_answers_come_faster():
    clock = Clock()
    vp = VirtualParticipant(tr=2.0, n_volumes=3, start_delay_s=0.5, response_time_s=0.4, speed=4.0, clock=clock)
    vp.start()
    clock.t = 101.5
    assert [p.time for p in vp.poll()] == [100.5, 101.0, 101.5]  # every TR / speed
    trials = [Trial(index=0, line=2, trial_type="image", stim_file=Path("a.png"), stim_id="7")]
    image = build_timeline("perception", trials, StimulusSection()).segments[0]
    vp.observe(image, 102.0)
    clock.t = 102.09
    assert vp.poll() == []
    clock.t = 102.1
    assert [(p.key, p.time) for p in vp.poll()] == [("1", 102.1)]  # 0.4 scanner seconds = 0.1 s


def test_start_file_and_resume(tmp_path: Path):
    clock = Clock()
    go = tmp_path / "go"
    vp = VirtualParticipant(tr=1.0, n_volumes=100, start_delay_s=0.0, start_file=go, clock=clock)
    vp.start()
    clock.t = 150.0
    assert vp.poll() == []  # no start file: the scanner has not started
    go.touch()
    assert [p.time for p in vp.poll()] == [150.0]
    clock.t = 151.0
    assert [p.time for p in vp.poll()] == [151.0]
    # a restarted program: the scanner goes on from the run's first trigger, with the next one due
    again = VirtualParticipant(tr=2.0, speed=2.0, clock=clock)
    clock.t = 160.25
    again.resume(zero=150.0, seen={"7"}, answered={0})
    assert again.poll() == []
    clock.t = 161.0
    assert [p.time for p in again.poll()] == [161.0]
    trials = [Trial(index=0, line=2, trial_type="image", stim_file=Path("a.png"), stim_id="7"),
              Trial(index=1, line=3, trial_type="image", stim_file=Path("a.png"), stim_id="7")]
    segments = build_timeline("perception", trials, StimulusSection()).segments
    again.observe(segments[0], 161.0)  # answered before the kill: not again
    again.observe(segments[2], 161.0)
    assert again.answers == {1: "old"}  # the image was seen before the kill
