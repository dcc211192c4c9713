from __future__ import annotations

from pathlib import Path

import pytest

from rtrecon.config import StimulusSection
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
