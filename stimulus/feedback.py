"""The feedback display: what the engine decoded, drawn as soon as it arrives.

:class:`FeedbackPanel` draws, for the trials a feedback period covers, whichever of these the
session config asks for (``[stimulus.feedback]``):

- the reconstruction (``TrialResultMessage.image``), with the seen or cued image beside it
  (``show_target``);
- the top-k retrieved images (``retrieved`` ids looked up as ``<id>.png``/``.jpg`` in
  ``gallery_dir``, the id written as :func:`rtrecon.contract.layout.safe_filename` makes it, valid on
  NTFS: ``nsd:123`` is ``nsd_123.png``, else among the trial list's ``stim_id``/file names; an id without an image
  is written as text);
- a bar for the score (``scores[0]``, the engine's score of its best answer) or, with
  ``bar_value = "cpd"``, the trial's pairmate distinctiveness (:mod:`stimulus.pairmates`),
  scaled to ``score_range``.

One trial: target and reconstruction side by side, retrieved images below, the bar at the
bottom. Several trials (block feedback): one column per trial (target above reconstruction)
and a bar for the mean score. Nothing of a trial is drawn until its result has arrived, so the
participant never sees the target alone. Textures are made once per result (per release), on
a frame that shows no stimulus; every later frame only draws. Which period shows which trial is
:mod:`stimulus.policy`'s choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.contract.config import FeedbackSection
from rtrecon.contract.layout import safe_filename
from rtrecon.contract.wire import TrialResultMessage

from .trials import Trial

__all__ = ["ReceivedResult", "FeedbackPanel"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ReceivedResult:
    """A result with the clock times it was received and first shown (None: never shown), and its
    pairmate distinctiveness (None: the trial has no pairmate, or no embeddings were given)."""

    message: TrialResultMessage
    received: float
    shown: float | None = None
    cpd: float | None = None

    @property
    def score(self) -> float | None:
        return float(self.message.scores[0]) if self.message.scores else None


class FeedbackPanel:
    """Draws feedback periods into ``win`` (a PsychoPy window, pixel units).

    The seen/cued image of every trial that may be shown is loaded at construction (before the
    first trigger); a result's reconstruction and retrieved images when it is handed over
    (:meth:`add`, which the program calls on a frame without a stimulus); a period's frames only
    draw, placing each trial's images in its column (one trial: the large single layout).
    """

    def __init__(self, win: Any, settings: FeedbackSection, trials: Sequence[Trial]):
        from psychopy import visual

        self._visual = visual
        self.win = win
        self.settings = settings
        self.trials = list(trials)
        self._by_id = {t.stim_id: t.stim_file for t in trials if t.stim_id and t.stim_file is not None}
        self._by_name = {t.stim_file.stem: t.stim_file for t in trials if t.stim_file is not None}
        w, h = win.size
        self._w, self._h = float(w), float(h)
        self._targets: dict[int, Any] = {}
        self._recons: dict[int, Any] = {}
        self._thumbs: dict[int, list[Any]] = {}
        self._native: dict[int, tuple[float, float]] = {}  # id(stim) -> its image's size in pixels
        if settings.show_target:
            for trial in self.trials:
                if trial.stim_file is not None:
                    self._targets[trial.index] = self._image(str(trial.stim_file))
        bar_w, bar_h = 0.6 * self._w, 0.04 * self._h
        self._bar_y = -0.42 * self._h
        self._bar_outline = visual.Rect(win, width=bar_w, height=bar_h, pos=(0, self._bar_y), units="pix", lineColor="white", fillColor=None, lineWidth=2)
        self._bar_fill = visual.Rect(win, width=bar_w, height=bar_h, pos=(0, self._bar_y), units="pix", lineColor=None, fillColor=(-0.2, 0.8, -0.2))
        self._bar_width = bar_w
        self._bar_key: tuple[Any, ...] = ()
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
        name = safe_filename(stim_id) if stim_id.strip(". ") else None
        if gallery is not None and name is not None:
            for suffix in _IMAGE_SUFFIXES:
                candidate = gallery / f"{name}{suffix}"
                if candidate.is_file():
                    return candidate
        return self._by_id.get(stim_id) or self._by_name.get(stim_id)

    def _image(self, image: Any) -> Any:
        stim = self._visual.ImageStim(self.win, image=image, units="pix", interpolate=True)
        self._native[id(stim)] = tuple(float(v) for v in stim.size)
        return stim

    def _place(self, stim: Any, size: float, pos: tuple[float, float]) -> None:
        width, height = self._native[id(stim)]
        scale = size / max(width, height)
        if tuple(stim.pos) != pos:
            stim.pos = pos
        stim.size = (width * scale, height * scale)

    def add(self, trial_index: int, result: ReceivedResult) -> None:
        """Make the textures of a result (a newer release of a trial replaces the older's)."""
        cfg, h = self.settings, self._h
        msg = result.message
        if cfg.show_image and msg.image is not None:
            from PIL import Image

            self._recons[trial_index] = self._image(Image.fromarray(np.asarray(msg.image, dtype=np.uint8)))
        thumbs: list[Any] = []
        for stim_id in msg.retrieved[: cfg.top_k]:
            path = self.gallery_file(stim_id)
            if path is None:
                thumbs.append(self._visual.TextStim(self.win, text=stim_id, units="pix", height=0.03 * h, color="white"))
            else:
                thumbs.append(self._image(str(path)))
        self._thumbs[trial_index] = thumbs

    def ready(self, trial_index: int) -> bool:
        """Whether a result of the trial has been handed over (:meth:`add`)."""
        return trial_index in self._thumbs

    def _value(self, result: ReceivedResult) -> float | None:
        return result.cpd if self.settings.bar_value == "cpd" else result.score

    def _update_bar(self, arrived: tuple[int, ...], results: Mapping[int, ReceivedResult]) -> bool:
        values = [v for i in arrived if (v := self._value(results[i])) is not None]
        if not self.settings.score_bar or not values:
            return False
        key = (arrived, tuple(values))
        if key != self._bar_key:
            self._bar_key = key
            lo, hi = self.settings.score_range
            fraction = float(np.clip((np.mean(values) - lo) / (hi - lo), 0.0, 1.0))
            width = max(fraction * self._bar_width, 1.0)
            self._bar_fill.width = width
            self._bar_fill.pos = (-self._bar_width / 2 + width / 2, self._bar_y)
        return True

    def draw(self, group: tuple[int, ...], results: Mapping[int, ReceivedResult]) -> list[int]:
        """Draw the feedback of ``group`` (one column per trial) from the results handed over so
        far; returns the trials drawn. Nothing of a trial is drawn before its result."""
        arrived = tuple(i for i in group if i in results and self.ready(i))
        h = self._h
        for col, i in enumerate(group):
            if i not in arrived:
                continue
            target_pos, recon_pos, size, single = self._slot(col, len(group))
            if i in self._targets:
                self._place(self._targets[i], size, target_pos)
                self._targets[i].draw()
            if i in self._recons:
                self._place(self._recons[i], size, recon_pos)
                self._recons[i].draw()
            if single:
                thumbs = self._thumbs[i]
                thumb, step = 0.16 * h, 0.18 * h
                x0 = -step * (len(thumbs) - 1) / 2
                for k, stim in enumerate(thumbs):
                    pos = (x0 + k * step, -0.2 * h)
                    if id(stim) in self._native:
                        self._place(stim, thumb, pos)
                    else:
                        stim.pos = pos
                    stim.draw()
        if self._update_bar(arrived, results):
            self._bar_fill.draw()
            self._bar_outline.draw()
        return list(arrived)
