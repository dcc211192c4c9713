"""The feedback display: what the engine decoded, drawn as soon as it arrives.

:class:`FeedbackPanel` draws, for the trials a feedback period covers, whichever of these the
session config asks for (``[stimulus.feedback]``):

- the reconstruction (``TrialResultMessage.image``), with the seen or cued image beside it
  (``show_target``);
- the top-k retrieved images (``retrieved`` ids looked up as ``<id>.png``/``.jpg`` in
  ``gallery_dir``, else among the trial list's ``stim_id``/file names; an id without an image
  is written as text);
- a bar for the score (``scores[0]``, the engine's score of its best answer, e.g. a
  pairmate-distinctiveness value), scaled to ``score_range``.

One trial: target and reconstruction side by side, retrieved images below, the bar at the
bottom. Several trials (block feedback): one column per trial (target above reconstruction)
and a bar for the mean score. Nothing of a trial is drawn until its result has arrived, so the
participant never sees the target alone. Textures are made once per result, on the frame the
result arrives; every later frame only draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.config import FeedbackSection
from rtrecon.wire import TrialResultMessage

from .trials import Trial

__all__ = ["ReceivedResult", "FeedbackPanel"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ReceivedResult:
    """A result with the clock times it was received and first shown (None: never shown)."""

    message: TrialResultMessage
    received: float
    shown: float | None = None

    @property
    def score(self) -> float | None:
        return float(self.message.scores[0]) if self.message.scores else None


class FeedbackPanel:
    """Draws the feedback periods of a run into ``win`` (a PsychoPy window, pixel units).

    ``groups`` are the trials each feedback period shows (from the timeline), which fixes the
    layout in advance: the seen/cued images are loaded at construction, a result's
    reconstruction and retrieved images when the result arrives (:meth:`add`), so the frames
    of a feedback period only draw.
    """

    def __init__(self, win: Any, settings: FeedbackSection, trials: Sequence[Trial], groups: Sequence[tuple[int, ...]]):
        from psychopy import visual

        self._visual = visual
        self.win = win
        self.settings = settings
        self.trials = list(trials)
        self._by_id = {t.stim_id: t.stim_file for t in trials if t.stim_id and t.stim_file is not None}
        self._by_name = {t.stim_file.stem: t.stim_file for t in trials if t.stim_file is not None}
        w, h = win.size
        self._w, self._h = float(w), float(h)
        self._slots: dict[int, tuple[tuple[float, float], tuple[float, float], float, bool]] = {}
        for group in groups:
            for col, index in enumerate(group):
                self._slots[index] = self._slot(col, len(group))
        self._stims: dict[int, list[Any]] = {}
        self._targets: dict[int, Any] = {}
        for index, (target_pos, _, size, _) in self._slots.items():
            trial = self.trials[index]
            if settings.show_target and trial.stim_file is not None:
                self._targets[index] = self._image(str(trial.stim_file), size, target_pos)
        bar_w, bar_h = 0.6 * self._w, 0.04 * self._h
        self._bar_y = -0.42 * self._h
        self._bar_outline = visual.Rect(win, width=bar_w, height=bar_h, pos=(0, self._bar_y), units="pix", lineColor="white", fillColor=None, lineWidth=2)
        self._bar_fill = visual.Rect(win, width=bar_w, height=bar_h, pos=(0, self._bar_y), units="pix", lineColor=None, fillColor=(-0.2, 0.8, -0.2))
        self._bar_width = bar_w
        self._bar_key: tuple[tuple[int, ...], list[float]] | None = None
        for stim in (*self._targets.values(), self._bar_outline, self._bar_fill):
            stim.draw()
        win.clearBuffer()

    def _slot(self, col: int, n: int) -> tuple[tuple[float, float], tuple[float, float], float, bool]:
        """(target position, reconstruction position, image size, single-trial layout)."""
        h = self._h
        if n == 1:
            size, gap, y = 0.38 * h, 0.03 * h, 0.14 * h
            both = self.settings.show_target and self.settings.show_image
            x = (size + gap) / 2 if both else 0.0
            return (-x, y), (x, y), size, True
        width = self._w / n
        x = -self._w / 2 + width * (col + 0.5)
        return (x, 0.2 * h), (x, -0.14 * h), min(0.3 * h, 0.9 * width), False

    def gallery_file(self, stim_id: str) -> Path | None:
        """The image for a retrieved id, or None when none is found."""
        gallery = self.settings.gallery_dir
        if gallery is not None:
            for suffix in _IMAGE_SUFFIXES:
                candidate = gallery / f"{stim_id}{suffix}"
                if candidate.is_file():
                    return candidate
        return self._by_id.get(stim_id) or self._by_name.get(stim_id)

    def _image(self, image: Any, size: float, pos: tuple[float, float]) -> Any:
        stim = self._visual.ImageStim(self.win, image=image, units="pix", pos=pos, interpolate=True)
        width, height = stim.size
        scale = size / max(width, height)
        stim.size = (width * scale, height * scale)
        return stim

    def add(self, trial_index: int, result: ReceivedResult) -> None:
        """Make the textures of a result that a feedback period will show (others are ignored)."""
        if trial_index not in self._slots:
            return
        cfg, h = self.settings, self._h
        _, recon_pos, size, single = self._slots[trial_index]
        msg = result.message
        stims: list[Any] = []
        if trial_index in self._targets:
            stims.append(self._targets[trial_index])
        if cfg.show_image and msg.image is not None:
            from PIL import Image

            stims.append(self._image(Image.fromarray(np.asarray(msg.image, dtype=np.uint8)), size, recon_pos))
        if single and cfg.top_k:
            ids = msg.retrieved[: cfg.top_k]
            thumb = 0.16 * h
            step = thumb + 0.02 * h
            x0 = -step * (len(ids) - 1) / 2
            for k, stim_id in enumerate(ids):
                pos = (x0 + k * step, -0.2 * h)
                path = self.gallery_file(stim_id)
                if path is None:
                    stims.append(self._visual.TextStim(self.win, text=stim_id, pos=pos, units="pix", height=0.03 * h, color="white"))
                else:
                    stims.append(self._image(str(path), thumb, pos))
        self._stims[trial_index] = stims

    def _update_bar(self, arrived: tuple[int, ...], results: Mapping[int, ReceivedResult]) -> bool:
        scores = [s for i in arrived if (s := results[i].score) is not None]
        if not self.settings.score_bar or not scores:
            return False
        if (arrived, scores) != self._bar_key:  # a newer release of a trial brings a new score
            self._bar_key = (arrived, scores)
            lo, hi = self.settings.score_range
            fraction = float(np.clip((np.mean(scores) - lo) / (hi - lo), 0.0, 1.0))
            width = max(fraction * self._bar_width, 1.0)
            self._bar_fill.width = width
            self._bar_fill.pos = (-self._bar_width / 2 + width / 2, self._bar_y)
        return True

    def draw(self, group: tuple[int, ...], results: Mapping[int, ReceivedResult]) -> list[int]:
        """Draw the feedback of ``group`` from the results received so far; returns the trials drawn."""
        arrived = tuple(i for i in group if i in results and i in self._stims)
        for i in arrived:
            for stim in self._stims[i]:
                stim.draw()
        if self._update_bar(arrived, results):
            self._bar_fill.draw()
            self._bar_outline.draw()
        return list(arrived)
