"""A virtual participant (and scanner), so that replay and the demo run the real stimulus program.

:class:`VirtualParticipant` is a :class:`~stimulus.trigger.KeyInput`: the program polls it like
the keyboard. It plays two roles:

- the scanner: once the program starts waiting (:meth:`VirtualParticipant.start`), it sends
  the trigger key every ``tr`` seconds from ``start_delay_s`` on -- or from ``start_delay_s``
  after ``start_file`` appears, so that a supervisor can start it with another process (the
  demo: with the bridge's first volume) -- and in a resumed run from its first trigger on
  (:meth:`VirtualParticipant.resume`);
- the participant: told of each segment's first frame (:meth:`VirtualParticipant.observe`),
  it answers segments that take responses ``response_time_s`` later (at most halfway through
  the segment), from the design: the
  trial list's ``response`` column when given, else for perception ``old`` when the image was
  already shown in this run and ``new`` when not, else for a vividness rating the middle key.

``tr`` and ``response_time_s`` are scanner seconds; at ``speed`` S (a replay S times faster than
the scanner) both pass S times faster on the clock, like the program's timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .timeline import Segment
from .trigger import KeyPress, ScheduledKeys, psychopy_time

__all__ = ["VirtualParticipant"]


class VirtualParticipant:
    """Presses the trigger like a scanner and answers like a participant who follows the design."""

    def __init__(
        self,
        *,
        tr: float = 1.0,
        n_volumes: int = 10_000,
        trigger_key: str = "5",
        start_delay_s: float = 0.2,
        response_time_s: float = 0.5,
        speed: float = 1.0,
        start_file: str | Path | None = None,
        clock: Callable[[], float] = psychopy_time,
    ):
        if tr <= 0 or response_time_s < 0 or speed <= 0:
            raise ValueError("tr and speed must be positive and response_time_s non-negative")
        self.speed = speed
        self.start_file = None if start_file is None else Path(start_file)
        self.tr = tr
        self.n_volumes = n_volumes
        self.trigger_key = trigger_key
        self.start_delay_s = start_delay_s
        self.response_time_s = response_time_s
        self._clock = clock
        self._keys = ScheduledKeys(clock=clock)
        self._seen: set[str] = set()
        self._answered: set[tuple[int, str]] = set()
        self.answers: dict[int, str] = {}
        self._first_trigger: float | None = None
        self._waiting = False
        self._triggers_sent = 0

    def start(self) -> None:
        """The program is waiting for the scanner: the first trigger comes ``start_delay_s`` from now
        (with a ``start_file``: ``start_delay_s`` after that file appears)."""
        self._first_trigger = None if self.start_file is not None else self._clock() + self.start_delay_s
        self._waiting = True
        self._triggers_sent = 0

    def resume(self, zero: float, seen: set[str] | None = None, answered: set[int] | None = None) -> None:
        """Go on with a run whose first trigger came at clock time ``zero`` (a restarted program).

        The scanner goes on with the next trigger due; ``seen`` are the stimuli already shown and
        ``answered`` the trials already answered (perception's new/old answers depend on them).
        """
        self._first_trigger = zero
        period = self.tr / self.speed
        self._triggers_sent = min(self.n_volumes, max(0, int((self._clock() - zero) // period) + 1))
        self._seen |= seen or set()
        for trial in answered or ():
            self._answered.add((trial, "image"))

    def answer(self, segment: Segment) -> str:
        """The response label the design calls for in ``segment``."""
        trial = segment.trial
        if trial is None or not segment.responses:
            raise ValueError(f"a {segment.phase} segment without a trial or responses has no answer")
        labels = list(dict.fromkeys(segment.responses.values()))
        if trial.response:
            return trial.response
        if segment.phase in ("image", "gap") and {"new", "old"} <= set(labels):
            return "old" if trial.stimulus in self._seen else "new"
        return labels[len(labels) // 2]

    def observe(self, segment: Segment, clock_time: float) -> None:
        """``segment`` was first shown at ``clock_time``: answer it if it asks for an answer."""
        trial = segment.trial
        if trial is None or not segment.responses or (trial.index, segment.phase) in self._answered:
            return
        if segment.phase == "gap" and any(index == trial.index for index, _ in self._answered):
            return
        self._answered.add((trial.index, segment.phase))
        label = self.answer(segment)
        keys = [key for key, value in segment.responses.items() if value == label]
        if not keys:
            raise ValueError(f"trial {trial.index} (line {trial.line}): response {label!r} is not one of {sorted(set(segment.responses.values()))}")
        self.answers[trial.index] = label
        if segment.phase == "image":
            self._seen.add(trial.stimulus)
        # Never later than halfway through the segment, so that a short (test or demo) design
        # still gets each answer inside its own trial.
        self._keys.add(KeyPress(keys[0], clock_time + min(self.response_time_s, segment.duration / 2) / self.speed))

    def poll(self) -> list[KeyPress]:
        presses = []
        if self._first_trigger is None and self._waiting and self.start_file is not None and self.start_file.exists():
            self._first_trigger = self._clock() + self.start_delay_s
        if self._first_trigger is not None:
            now = self._clock()
            while self._triggers_sent < self.n_volumes and (t := self._first_trigger + self._triggers_sent * self.tr / self.speed) <= now:
                presses.append(KeyPress(self.trigger_key, t))
                self._triggers_sent += 1
        return sorted(presses + self._keys.poll(), key=lambda p: p.time)
