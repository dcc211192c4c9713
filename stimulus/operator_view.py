"""The operator's window (``[stimulus.feedback] screen = "operator"``): results shown beside the task, never over it.

With feedback on the operator's screen the participant's window shows the task alone (a feedback
period is a fixation there) and :class:`OperatorView` draws results on a second window: a
feedback period's trials while it lasts, else the latest result for ``feedback.window_s`` after
the operator presses ``feedback.demand_key``, else, with live feedback, each result as it arrives
(:meth:`OperatorView.arrived`), in arrival order. It is redrawn and flipped only when its content
changes, so that between changes it costs the participant's frames nothing.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from .feedback import FeedbackPanel, ReceivedResult

__all__ = ["OperatorView"]

log = logging.getLogger(__name__)


class OperatorView:
    """The operator's window ``win``, drawing results with ``panel`` (see the module docstring)."""

    def __init__(self, win: Any, panel: FeedbackPanel, window_s: float):
        self.win = win
        self.panel = panel
        self.window_s = window_s
        self._state: tuple[Any, ...] | None = None
        self._demand: tuple[tuple[int, ...], float] | None = None  # (trials, until)
        self._demand_pressed = False
        self._live: tuple[int, float] | None = None  # (trial, until run time)
        self._live_queue: deque[int] = deque()  # arrived, not yet drawn (live feedback)

    def press_demand(self) -> None:
        """The operator pressed the demand key: the next frame shows the latest result."""
        self._demand_pressed = True

    def arrived(self, trial: int) -> None:
        """Live feedback: ``trial``'s result arrived; it is drawn after those before it."""
        self._live_queue.append(trial)

    def shown(self, trial: int) -> None:
        """``trial``'s result was shown already (a resumed run): live feedback does not draw it again."""
        if trial in self._live_queue:
            self._live_queue.remove(trial)

    def frame(self, index: int, period: tuple[int, ...], t: float, results: Mapping[int, ReceivedResult],
              on_shown: Callable[[int], None]) -> list[int]:
        """The operator's part of the participant's frame ``index`` at run time ``t``: ``period`` (a
        feedback period's trials), else the demanded result, else the live one; returns the trials
        drawn when the window was redrawn."""
        if self._demand_pressed:
            self._demand_pressed = False
            self.demand(results, t)
        live = self._live_result(t, results) if not period else None
        return self.update(index, period or ((live,) if live is not None else ()), t, results, on_shown)

    def demand(self, results: Mapping[int, ReceivedResult], t: float) -> None:
        """Show the most recent result for ``window_s`` from run time ``t``."""
        latest = max(results.values(), key=lambda r: r.received, default=None)
        if latest is None:
            log.info("feedback asked for, but no result has arrived yet")
        else:
            self._demand = ((latest.message.trial,), t + self.window_s)

    def _live_result(self, t: float, results: Mapping[int, ReceivedResult]) -> int | None:
        """The trial whose result live feedback draws on a frame at run time ``t``.

        Results are drawn in arrival order, each for at least one frame (so that each is seen,
        and its ``shown`` time is a real flip), then until ``window_s`` after it first showed or
        the next one is drawn.
        """
        live = self._live
        if self._live_queue and (live is None or results[live[0]].shown is not None):
            trial = self._live_queue.popleft()
            self._live = live = (trial, t + self.window_s)
        if live is None or (t >= live[1] and results[live[0]].shown is not None):
            return None
        return live[0]

    def update(self, index: int, period: tuple[int, ...], t: float, results: Mapping[int, ReceivedResult],
               on_shown: Callable[[int], None]) -> list[int]:
        """Show ``period`` (a feedback period's trials), else the demanded result; returns the trials
        drawn when the window was redrawn (it flips at once)."""
        if self._demand is not None and t >= self._demand[1]:
            self._demand = None
        group = period or (self._demand[0] if self._demand else ())
        arrived = tuple((i, results[i].message.release) for i in group if i in results and self.panel.ready(i))
        state = (index, group, arrived) if group else None
        if state == self._state:
            return []
        self._state = state
        drawn = self.panel.draw(group, results) if group else []
        for i in drawn:
            if results[i].shown is None:
                self.win.callOnFlip(on_shown, i)
        self.win.flip()
        return drawn
