from __future__ import annotations

from pathlib import Path

import pytest

from rtrecon.contract.config import StimulusSection
from stimulus.timeline import build_timeline
from stimulus.trials import Trial, TrialListError


def settings(**kw) -> StimulusSection:
    return StimulusSection.model_validate(kw)


def spans(timeline):
    return [(round(s.start, 6), round(s.stop, 6), s.phase, s.trial.index if s.trial else None) for s in timeline.segments]


def test_perception_back_to_back_with_lead_in_and_out():
    trials = [Trial(index=i, line=i + 2, trial_type="image", stim_file=Path(f"{i}.png")) for i in range(2)]
    tl = build_timeline("perception", trials, settings(lead_in_s=2, lead_out_s=1))
    assert spans(tl) == [
        (0, 2, "fixation", None),
        (2, 5, "image", 0),
        (5, 6, "gap", 0),
        (6, 9, "image", 1),
        (9, 10, "gap", 1),
        (10, 11, "fixation", None),
    ]
    assert tl.end == 11
    images = [s for s in tl.segments if s.phase == "image"]
    assert all(s.main and s.event_type == "image" and dict(s.responses) == {"1": "new", "2": "old"} for s in images)
    assert [s.phase for s in tl.events()] == ["image", "image"]
    assert [tl.index_at(t) for t in (0, 1.99, 2, 5.5, 10.99, 11, 50)] == [0, 0, 1, 2, 5, 6, 6]


def test_imagery_with_vividness_and_given_onsets():
    trials = [Trial(index=0, line=2, trial_type="imagery", cue="cat", onset=1.0), Trial(index=1, line=3, trial_type="imagery", cue="dog", onset=20.0)]
    tl = build_timeline("imagery", trials, settings(imagery={"cue_s": 1, "imagery_s": 4, "rest_s": 2, "vividness": True, "vividness_s": 2}))
    assert spans(tl)[:6] == [
        (0, 1, "fixation", None),
        (1, 2, "cue", 0),
        (2, 6, "imagery", 0),
        (6, 8, "vividness", 0),
        (8, 10, "rest", 0),
        (10, 20, "fixation", None),
    ]
    assert [(s.phase, s.event_type, s.main) for s in tl.events()[:3]] == [("cue", "cue", False), ("imagery", "imagery", True), ("vividness", "vividness", False)]
    assert dict(tl.segments[3].responses) == {"1": "1", "2": "2", "3": "3", "4": "4"}


def test_feedback_after_trials_and_after_blocks():
    trials = [
        Trial(index=0, line=2, trial_type="image", stim_file=Path("a.png"), block="A", feedback=True),
        Trial(index=1, line=3, trial_type="image", stim_file=Path("b.png"), block="A", feedback=True),
        Trial(index=2, line=4, trial_type="image", stim_file=Path("c.png"), block="B", feedback=False),
    ]
    cfg = {"perception": {"image_s": 1, "gap_s": 0}, "feedback": {"window_s": 5}}
    per_trial = build_timeline("perception", trials, settings(**cfg))
    assert [(s.phase, s.feedback_trials) for s in per_trial.segments] == [
        ("image", ()), ("feedback", (0,)), ("image", ()), ("feedback", (1,)), ("image", ())
    ]
    per_block = build_timeline("perception", trials, settings(**{**cfg, "feedback": {"window_s": 5, "when": "block"}}))
    assert spans(per_block) == [(0, 1, "image", 0), (1, 2, "image", 1), (2, 7, "feedback", 1), (7, 8, "image", 2)]
    assert per_block.segments[2].feedback_trials == (0, 1)
    # feedback on the operator's window only (live, demand): no periods, so the trials keep their places
    live = build_timeline("perception", trials, settings(**cfg), policy="none")
    assert spans(live) == [(0, 1, "image", 0), (1, 2, "image", 1), (2, 3, "image", 2)]


def test_slots_are_the_designs_free_stretches_never_a_trials_own_segments():
    # NSD-like: 3 s image, 0.9 s gap, a trial every 4 s, slot 2 blank (its stretch is 4.1 s)
    onsets = [1.0, 5.0, 13.0, 17.0]
    trials = [Trial(index=i, line=i + 2, trial_type="image", stim_file=Path(f"{i}.png"), onset=o, feedback=True)
              for i, o in enumerate(onsets)]
    cfg = settings(perception={"image_s": 3.0, "gap_s": 0.9}, lead_out_s=3.0,
                   feedback={"when": "slot", "window_s": 4.0, "slot_min_s": 2.0})
    tl = build_timeline("perception", trials, cfg)
    slots = [(round(s.start, 6), round(s.stop, 6)) for s in tl.segments if s.phase == "feedback"]
    # the lead-in (before any trial) and the 0.1 s stretches are not slots; the blank trial and the lead-out are
    assert slots == [(8.9, 12.9), (20.9, 23.9)]
    assert all(s.feedback_trials == () and s.event_type == "feedback" for s in tl.segments if s.phase == "feedback")
    for seg in tl.segments:
        if seg.phase == "feedback":
            assert all(t.stop <= seg.start + 1e-9 or t.start >= seg.stop - 1e-9 for t in tl.segments if t.trial is not None)
    # no trial asks for feedback: no slots
    quiet = [Trial(index=t.index, line=t.line, trial_type="image", stim_file=t.stim_file, onset=t.onset) for t in trials]
    assert not [s for s in build_timeline("perception", quiet, cfg).segments if s.phase == "feedback"]
    # the same design with a feedback period after each trial does not fit: the check says where
    with pytest.raises(TrialListError, match=r"line 3: onset 5.0 s overlaps"):
        build_timeline("perception", trials, settings(perception={"image_s": 3.0, "gap_s": 0.9}, feedback={"window_s": 4.0}), Path("run.tsv"))


def test_an_onset_that_overlaps_names_its_line():
    trials = [
        Trial(index=0, line=2, trial_type="image", stim_file=Path("a.png"), onset=0.0, feedback=True),
        Trial(index=1, line=3, trial_type="image", stim_file=Path("b.png"), onset=6.0),
    ]
    with pytest.raises(TrialListError, match=r"run.tsv, line 3: onset 6.0 s overlaps .* until 12.000 s"):
        build_timeline("perception", trials, settings(feedback={"window_s": 8}), Path("run.tsv"))
