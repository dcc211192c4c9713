"""The participant's screen: the window, and what each phase of a perception or imagery run draws.

:func:`open_window` makes the PsychoPy window from the session config's
``[stimulus.window]`` (pixel units, frame intervals recorded for the timing statistics). :class:`TaskScreen` loads every image a run
needs before the first trigger (a texture made mid-run would cost frames) and draws a
:class:`~stimulus.timeline.Segment`:

- ``image``: the trial's image, scaled to ``image_size`` of the window height, keeping its
  aspect, with the fixation dot on top (NSD);
- ``cue``: the cue word, or the cue image as a thumbnail (half the image size); a sound cue
  shows the fixation dot (or its cue word, if it has one) while its sound plays
  (:mod:`stimulus.sound`: decoded and its output opened here, before the first trigger;
  :meth:`TaskScreen.schedule` starts it at the cue's first flip);
- ``vividness``: the question and the rating keys;
- ``end``: the end-of-run screen (after the timeline: the scanner has stopped), with the results
  still owed below it as they arrive;
- ``feedback``: the :class:`~stimulus.feedback.FeedbackPanel` (on this screen, or on the
  operator's window when ``feedback.screen = "operator"``);
- every other phase: the fixation dot on the background.

PsychoPy is imported when a window is made, not at module import, so that trial lists can be
checked on a machine without a display. A run without sound cues never touches the audio output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtrecon.contract.config import StimulusSection, WindowSection

from .sound import SoundCues
from .timeline import Segment
from .trials import Trial

__all__ = ["open_window", "TaskScreen"]


def open_window(settings: WindowSection, *, title: str = "rtrecon", screen: int | None = None, size: tuple[int, int] | None = None, operator: bool = False) -> Any:
    """A PsychoPy window in pixel units with frame intervals recorded.

    ``operator=True`` makes the operator's window instead: never fullscreen, and without vsync,
    so that its (rare) flips never wait for a refresh and cost the participant's window a frame.
    """
    from psychopy import visual

    fullscreen = settings.fullscreen and not operator
    win = visual.Window(
        size=size or settings.size,
        fullscr=fullscreen,
        screen=settings.screen if screen is None else screen,
        color=settings.background,
        colorSpace="rgb",
        units="pix",
        allowGUI=not fullscreen,
        winType="pyglet",
        checkTiming=False,
        title=title,
    )
    if operator:
        win.winHandle.set_vsync(False)
    else:
        win.recordFrameIntervals = True
    if fullscreen:
        win.mouseVisible = False
    return win


class TaskScreen:
    """Draws the segments of one run into ``win``, and starts their sound cues.

    ``sounds`` holds the run's :class:`~stimulus.sound.SoundCues` (None when it has none);
    making a screen for a run with sound cues raises :class:`~stimulus.sound.SoundError` when
    the configured audio output is missing.
    """

    def __init__(self, win: Any, settings: StimulusSection, trials: Sequence[Trial]):
        from psychopy import visual

        self.win = win
        self.settings = settings
        height = float(win.size[1])
        self._image_height = settings.window.image_size * height
        radius = settings.window.fixation_size / 2
        self.fixation = visual.Circle(win, radius=radius, units="pix", fillColor="white", lineColor="black", lineWidth=1, edges=24)
        self.waiting = visual.TextStim(win, text="Waiting for the scanner...", units="pix", height=0.04 * height, color="white")
        self._images: dict[str, Any] = {}
        self._cues: dict[int, Any] = {}
        for trial in trials:
            if trial.stim_file is not None:
                self._image(trial.stim_file, self._image_height)
            if trial.cue_kind == "image":
                self._cues[trial.index] = self._image(trial.cue_file, self._image_height / 2)
            elif trial.cue:
                self._cues[trial.index] = visual.TextStim(win, text=trial.cue, units="pix", height=0.08 * height, color="white")
        keys = "   ".join(settings.imagery.vividness_keys)
        self.vividness = visual.TextStim(win, text=f"How vivid was it?\n\n{keys}", units="pix", height=0.05 * height, color="white")
        self.end = visual.TextStim(win, text="End of the run. Thank you!", units="pix", pos=(0, 0.44 * height), height=0.045 * height,
                                   color="white", wrapWidth=float(win.size[0]))
        # The first draw of a stimulus uploads its texture and builds its shaders; doing it
        # now keeps that cost out of the run's frames.
        for stim in (self.fixation, self.waiting, self.vividness, self.end, *self._images.values(), *self._cues.values()):
            stim.draw()
        win.clearBuffer()
        has_sound = any(trial.cue_kind == "sound" for trial in trials)
        self.sounds: SoundCues | None = SoundCues(settings.sound, trials) if has_sound else None

    def _image(self, path: Any, height: float) -> Any:
        from psychopy import visual

        key = f"{path}@{height:.1f}"
        if key not in self._images:
            stim = visual.ImageStim(self.win, image=str(path), units="pix", interpolate=True)
            w, h = stim.size
            stim.size = (w * height / h, height)
            self._images[key] = stim
        return self._images[key]

    def schedule(self, segment: Segment) -> None:
        """Call once when ``segment`` is about to be first shown, before that flip: a sound cue
        starts right after the flip (``win.callOnFlip``)."""
        if self.sounds is not None:
            self.sounds.schedule(self.win, segment)

    def draw_waiting(self) -> None:
        self.waiting.draw()

    def draw(self, segment: Segment) -> None:
        """Draw ``segment``'s participant-screen content (feedback is drawn by the caller)."""
        trial = segment.trial
        if segment.phase == "image" and trial is not None and trial.stim_file is not None:
            self._image(trial.stim_file, self._image_height).draw()
        elif segment.phase == "cue" and trial is not None and trial.index in self._cues:
            self._cues[trial.index].draw()
            return
        elif segment.phase == "vividness":
            self.vividness.draw()
            return
        elif segment.phase == "end":
            self.end.draw()
            return
        self.fixation.draw()
