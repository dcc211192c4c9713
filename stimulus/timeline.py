"""A run's plan: contiguous segments in seconds since the first trigger, built before the run.

Each task turns its trials into :class:`Segment` values (:func:`perception_segments`,
:func:`imagery_segments`); :func:`build_timeline` adds the feedback periods the session
config's ``[stimulus]`` table asks for, fills every gap with fixation, and checks that nothing overlaps, raising
:class:`~stimulus.trials.TrialListError` with the trial list's line when trials given with
``onset`` collide. The frame loop then only looks up which segment the next flip falls in.

Phases and what they show:

============  =========================================================  =================
phase         screen                                                     task event
============  =========================================================  =================
fixation      fixation dot                                               no
image         the trial's image with the fixation dot                    trial's type
gap           fixation dot                                               no
cue           the cue word or thumbnail                                  ``cue``
imagery       fixation on the blank background                           trial's type
rest          fixation dot                                               no
vividness     the vividness question                                     ``vividness``
feedback      reconstruction / retrieved images / score, as they arrive  ``feedback``
              (fixation when feedback goes to the operator's window)
============  =========================================================  =================

Feedback periods follow each trial that asks for one (``feedback.when = "trial"``), each block
with such trials (``"block"``), or take the design's free stretches (``"slot"``, and the program's
live feedback on the participant's screen): each stretch of fixation outside any trial, after the
first trial and at least ``feedback.slot_min_s`` long, begins with a feedback period of up to
``feedback.window_s`` that shows the results waiting then (see :mod:`stimulus.policy`). With
``"demand"`` and ``"live"`` (the operator's window) none is scheduled. So feedback never covers a
stimulus, a cue or a response period: those are the trials' own segments.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from rtrecon.contract.config import StimulusSection

from .trials import Task, Trial, TrialListError

__all__ = ["Segment", "Timeline", "perception_segments", "imagery_segments", "build_timeline"]

_NO_KEYS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Segment:
    """One stretch of the run.

    ``event_type`` is the BIDS ``trial_type`` its onset is logged and sent as ('' for none);
    ``main`` marks the event a trial's response time counts from; ``responses`` maps the keys
    accepted during the segment to the response they stand for; ``feedback_trials`` are the
    trials whose results a feedback segment shows.
    """

    start: float
    stop: float
    phase: str
    trial: Trial | None = None
    event_type: str = ""
    main: bool = False
    responses: Mapping[str, str] = field(default_factory=lambda: _NO_KEYS)
    feedback_trials: tuple[int, ...] = ()

    @property
    def duration(self) -> float:
        return self.stop - self.start


@dataclass(frozen=True)
class Timeline:
    """Contiguous segments covering ``[0, end)``."""

    segments: tuple[Segment, ...]

    @cached_property
    def _starts(self) -> list[float]:
        return [s.start for s in self.segments]

    @property
    def end(self) -> float:
        return self.segments[-1].stop if self.segments else 0.0

    def index_at(self, t: float) -> int:
        """Index of the segment that contains run time ``t`` (``len(segments)`` past the end)."""
        if t >= self.end:
            return len(self.segments)
        return max(bisect_right(self._starts, t) - 1, 0)

    def events(self) -> list[Segment]:
        return [s for s in self.segments if s.event_type]


def _place(trial: Trial, t: float, path: Path | None) -> float:
    if trial.onset is None:
        return t
    if trial.onset < t - 1e-9:
        raise TrialListError(path or Path("<trials>"), [(trial.line, f"onset {trial.onset} s overlaps the previous trial or feedback period, which lasts until {t:.3f} s")])
    return trial.onset


def perception_segments(trials: Sequence[Trial], settings: StimulusSection, start: float, path: Path | None = None) -> list[list[Segment]]:
    """Per trial: the image, then the gap; recognition buttons count during both."""
    cfg = settings.perception
    keys = MappingProxyType({key: label for label, key in cfg.response_keys.items()})
    out, t = [], start
    for trial in trials:
        t = _place(trial, t, path)
        image = Segment(t, t + cfg.image_s, "image", trial, trial.trial_type, True, keys)
        t = image.stop
        trial_segments = [image]
        if cfg.gap_s > 0:
            trial_segments.append(Segment(t, t + cfg.gap_s, "gap", trial, responses=keys))
            t += cfg.gap_s
        out.append(trial_segments)
    return out


def imagery_segments(trials: Sequence[Trial], settings: StimulusSection, start: float, path: Path | None = None) -> list[list[Segment]]:
    """Per trial: cue, imagery, optional vividness rating, rest."""
    cfg = settings.imagery
    rating = MappingProxyType({key: key for key in cfg.vividness_keys})
    out, t = [], start
    for trial in trials:
        t = _place(trial, t, path)
        cue = Segment(t, t + cfg.cue_s, "cue", trial, "cue")
        imagery = Segment(cue.stop, cue.stop + cfg.imagery_s, "imagery", trial, trial.trial_type, True)
        trial_segments = [cue, imagery]
        t = imagery.stop
        if cfg.vividness:
            trial_segments.append(Segment(t, t + cfg.vividness_s, "vividness", trial, "vividness", responses=rating))
            t += cfg.vividness_s
        if cfg.rest_s > 0:
            trial_segments.append(Segment(t, t + cfg.rest_s, "rest", trial))
            t += cfg.rest_s
        out.append(trial_segments)
    return out


def build_timeline(task: Task, trials: Sequence[Trial], settings: StimulusSection, path: Path | None = None,
                   *, policy: str | None = None) -> Timeline:
    """The whole run: lead-in, trials with their feedback periods, lead-out; gaps hold fixation.

    Trials without ``onset`` follow each other (each after the previous trial and its feedback);
    trials with one start there, and one that would overlap is an error naming its line.
    ``policy`` overrides ``feedback.when`` (the program's live feedback on the participant's
    screen plans ``"slot"``).
    """
    build = {"perception": perception_segments, "imagery": imagery_segments}[task]
    fb = settings.feedback
    when = policy or fb.when
    segments: list[Segment] = []
    t = settings.lead_in_s
    block_members: list[int] = []
    for i, trial in enumerate(trials):
        placed = build([trial], settings, max(t, 0.0), path)[0]
        segments.extend(placed)
        t = placed[-1].stop
        if when == "trial" and trial.feedback:
            wanted: tuple[int, ...] = (trial.index,)
        else:
            if trial.feedback:
                block_members.append(trial.index)
            last_of_block = i + 1 == len(trials) or trials[i + 1].block != trial.block
            wanted = tuple(block_members) if when == "block" and last_of_block else ()
            if last_of_block:
                block_members = []
        if wanted:
            segments.append(Segment(t, t + fb.window_s, "feedback", trial, "feedback", feedback_trials=wanted))
            t += fb.window_s
    t += settings.lead_out_s
    slots = when == "slot" and any(trial.feedback for trial in trials)
    filled: list[Segment] = []
    cursor = 0.0
    for seg in segments:
        if seg.start > cursor + 1e-9:
            filled.extend(_free(cursor, seg.start, slots and bool(filled), fb.window_s, fb.slot_min_s))
        filled.append(seg)
        cursor = seg.stop
    if t > cursor + 1e-9:
        filled.extend(_free(cursor, t, slots and bool(filled), fb.window_s, fb.slot_min_s))
    return Timeline(tuple(filled))


def _free(start: float, stop: float, slot: bool, window_s: float, min_s: float) -> list[Segment]:
    """A stretch outside every trial: fixation, opened by a feedback slot when it is one."""
    if not slot or stop - start < min_s - 1e-9:
        return [Segment(start, stop, "fixation")]
    end = min(start + window_s, stop)
    out = [Segment(start, end, "feedback", event_type="feedback")]
    if stop > end + 1e-9:
        out.append(Segment(end, stop, "fixation"))
    return out
