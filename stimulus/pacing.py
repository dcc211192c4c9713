"""The frame clock of a run: the replay's speed, the wait for the first trigger, the frame period, the coming flip.

:class:`Pacer` keeps a run's time. ``speed`` S plays the timeline S times faster than the scanner
(a replay, with a virtual participant only): a clock interval ``d`` is ``d × S`` scanner seconds
(:meth:`Pacer.scanner_s`). Before the run it shows the waiting screen until the first trigger
(:meth:`Pacer.wait_for_trigger`), or, for a resumed run, a few fixation frames
(:meth:`Pacer.measure_period`), and measures the display's frame period on those flips. During the
run it predicts the coming flip from the median of the last 30 frame intervals
(:meth:`Pacer.coming_flip`) and, without vsync (flips far faster than any display, e.g. under
Xvfb), sleeps to the nominal frame period after each flip, so that the loop does not spin a core
the other processes need (:meth:`Pacer.flipped`).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .participant import VirtualParticipant
from .screen import TaskScreen
from .trigger import ScannerTrigger, psychopy_time

__all__ = ["Pacer"]

log = logging.getLogger(__name__)


class Pacer:
    """A run's frame clock at ``speed`` (see the module docstring).

    Raises ValueError when ``speed`` is not positive, or is not 1 without a ``participant`` at the
    same speed (a person and a real scanner run at speed 1).
    """

    def __init__(self, speed: float, participant: VirtualParticipant | None):
        if speed <= 0:
            raise ValueError(f"speed {speed} must be positive")
        if speed != 1.0 and (participant is None or participant.speed != speed):
            raise ValueError(f"speed {speed:g} replays a run faster than the scanner: it needs a virtual participant "
                             "at the same speed (a person and a real scanner run at speed 1)")
        self.speed = speed
        self._pace_s = 0.0
        self._intervals: deque[float] = deque(maxlen=30)
        self.last_flip = 0.0

    def scanner_s(self, clock_s: float) -> float:
        """A clock interval in scanner seconds."""
        return clock_s * self.speed

    def frame_period(self, flips: list[float], win: Any) -> float:
        """The display's frame period from consecutive flips; without vsync the nominal one, which
        :meth:`flipped` then paces the loop to."""
        if len(flips) <= 10:
            return win.monitorFramePeriod or 1 / 60
        measured = statistics.median(b - a for a, b in zip(flips, flips[1:]))
        if measured < 0.0025:
            self._pace_s = win.monitorFramePeriod or 1 / 60
            return self._pace_s
        return measured

    def pace(self, last_flip: float) -> None:
        """Without vsync: sleep until a frame period after ``last_flip``."""
        if self._pace_s:
            wait = last_flip + self._pace_s - psychopy_time()
            if wait > 0.001:
                time.sleep(wait - 0.0005)

    def measure_period(self, win: Any, screen: TaskScreen) -> float:
        """A resumed run has no waiting screen: measure the frame period on a few fixation frames."""
        flips = []
        for _ in range(12):
            screen.fixation.draw()
            flips.append(win.flip())
        return self.frame_period(flips, win)

    def wait_for_trigger(self, win: Any, screen: TaskScreen, trigger: ScannerTrigger, poll_keys: Callable[[], None],
                         timeout: float) -> float:
        """Show the waiting screen until ``trigger`` has started (``poll_keys`` feeds it); returns the frame period.

        The period is the median interval of the waiting screen's flips (the display's refresh,
        with vsync), or PsychoPy's nominal one when the trigger came too soon to measure it.
        Raises TimeoutError when no trigger came within ``timeout`` seconds.
        """
        log.info("waiting for the scanner")
        deadline = psychopy_time() + timeout
        flips: list[float] = []
        while not trigger.started:
            poll_keys()
            if trigger.started:
                break
            if psychopy_time() > deadline:
                raise TimeoutError(f"no scanner trigger ({', '.join(trigger.keys)}) within {timeout} s")
            screen.draw_waiting()
            flips.append(win.flip())
            if len(flips) == 11:
                self.frame_period(flips, win)
            self.pace(flips[-1])
        return self.frame_period(flips, win)

    def start(self, period: float) -> None:
        """Start the run's frames: the first coming flip is ``period`` from now."""
        self._intervals = deque([period], maxlen=30)
        self.last_flip = psychopy_time()

    def coming_flip(self) -> tuple[float, float]:
        """The program clock time of the coming flip and the frame interval it is predicted with.

        The coming flip is one (measured) frame after the last one.
        """
        interval = statistics.median(self._intervals)
        return self.last_flip + interval, interval

    def flipped(self, flip: float) -> None:
        """A frame flipped at ``flip``: measure its interval, then pace to the next."""
        self._intervals.append(flip - self.last_flip)
        self.last_flip = flip
        self.pace(flip)
