"""Key input and the scanner trigger.

Everything the program hears from outside (the scanner's trigger pulses, the participant's
buttons) arrives as :class:`KeyPress` values from a :class:`KeyInput`: an object with a
non-blocking ``poll()`` that returns the presses since the last call, each stamped on PsychoPy's
clock (``psychopy.core.getTime``, monotonic seconds). Sources:

- :class:`PsychopyKeys`: the window's keyboard through ``psychopy.event`` (``hardware.keyboard``
  is unreliable without psychtoolbox, so it is not used);
- :class:`SerialKeys`: bytes from a serial port (a trigger box, a button box), each byte a key;
  any pyserial URL works (``loop://`` in tests);
- :class:`ScheduledKeys`: presses at given times (a simulated scanner);
- :class:`MergedKeys`: several sources polled together.

:class:`ScannerTrigger` separates triggers from other keys: the first trigger is time zero of
the run (ARCHITECTURE.md's clock); later ones are logged with their time since the first, and
:meth:`ScannerTrigger.drift` compares them with the expected TR.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

__all__ = [
    "KeyPress",
    "KeyInput",
    "PsychopyKeys",
    "SerialKeys",
    "ScheduledKeys",
    "MergedKeys",
    "ScannerTrigger",
    "TriggerDrift",
    "psychopy_time",
]


@dataclass(frozen=True)
class KeyPress:
    """A key (or serial byte, as a one-character string) and when it came, on PsychoPy's clock."""

    key: str
    time: float


class KeyInput(Protocol):
    """A source of key presses; ``poll`` never blocks."""

    def poll(self) -> list[KeyPress]:
        """The presses that came since the last call, oldest first."""
        ...


def psychopy_time() -> float:
    """Now on PsychoPy's clock (the clock key and flip times are stamped on)."""
    from psychopy import core

    return core.getTime()


class PsychopyKeys:
    """Keys typed into the PsychoPy window (``psychopy.event.getKeys`` with timestamps)."""

    def poll(self) -> list[KeyPress]:
        from psychopy import event

        return [KeyPress(str(key), float(t)) for key, t in event.getKeys(timeStamped=True)]


class SerialKeys:
    """Bytes read from a serial port, without waiting; each byte is a key.

    ``port`` is a device (``/dev/ttyUSB0``, ``COM3``) or any pyserial URL. A trigger box that
    sends ``'5'`` per volume is thus the same as the keyboard's ``'5'``.
    """

    def __init__(self, port: str, baudrate: int = 115200, *, clock: Callable[[], float] = psychopy_time):
        import serial

        try:
            self.serial = serial.serial_for_url(port, baudrate=baudrate, timeout=0)
        except (serial.SerialException, ValueError) as exc:
            raise OSError(f"serial port {port}: cannot be opened: {exc}") from exc
        self._clock = clock

    def poll(self) -> list[KeyPress]:
        waiting = self.serial.in_waiting
        if not waiting:
            return []
        now = self._clock()
        data = self.serial.read(waiting)
        return [KeyPress(chr(byte), now) for byte in data]

    def close(self) -> None:
        self.serial.close()


class ScheduledKeys:
    """Presses at planned clock times, reported once the clock has passed them (a simulated scanner).

    ``presses`` may grow while running (:meth:`add`), so a virtual participant can schedule its
    answers as the trials appear.
    """

    def __init__(self, presses: Iterable[KeyPress] = (), *, clock: Callable[[], float] = psychopy_time):
        self._pending: list[KeyPress] = sorted(presses, key=lambda p: p.time)
        self._clock = clock

    def add(self, press: KeyPress) -> None:
        insort(self._pending, press, key=lambda p: p.time)

    def poll(self) -> list[KeyPress]:
        now = self._clock()
        due = 0
        while due < len(self._pending) and self._pending[due].time <= now:
            due += 1
        out, self._pending = self._pending[:due], self._pending[due:]
        return out

    @classmethod
    def scanner(cls, start: float, tr: float, n_volumes: int, key: str = "5", *, clock: Callable[[], float] = psychopy_time) -> "ScheduledKeys":
        """Trigger pulses of a scanner that starts at clock time ``start``."""
        return cls((KeyPress(key, start + i * tr) for i in range(n_volumes)), clock=clock)


class MergedKeys:
    """Several key sources polled as one, in time order."""

    def __init__(self, sources: Sequence[KeyInput]):
        self.sources = list(sources)

    def poll(self) -> list[KeyPress]:
        presses = [press for source in self.sources for press in source.poll()]
        return sorted(presses, key=lambda p: p.time)


@dataclass(frozen=True)
class TriggerDrift:
    """Observed trigger timing against the expected TR (seconds)."""

    n_triggers: int
    tr_expected: float | None
    tr_observed: float | None
    max_abs_deviation: float | None


@dataclass
class ScannerTrigger:
    """Splits trigger presses from other keys and keeps the run's time zero.

    ``times`` are the triggers' clock times; ``run_times`` the same in seconds since the first.
    """

    keys: frozenset[str] = frozenset({"5"})
    tr: float | None = None
    times: list[float] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return bool(self.times)

    @property
    def zero(self) -> float:
        """Clock time of the first trigger."""
        if not self.times:
            raise RuntimeError("no trigger yet")
        return self.times[0]

    @property
    def run_times(self) -> list[float]:
        return [t - self.times[0] for t in self.times]

    def feed(self, presses: Iterable[KeyPress]) -> list[KeyPress]:
        """Take the triggers out of ``presses``; return the other keys."""
        others: list[KeyPress] = []
        for press in presses:
            if press.key in self.keys:
                self.times.append(press.time)
            else:
                others.append(press)
        return others

    def drift(self) -> TriggerDrift:
        """TR from a line fit through the trigger times, and each trigger's worst deviation from it.

        With an expected TR, deviations are measured against ``i * tr`` instead, which shows
        both drift and missed triggers.
        """
        n = len(self.times)
        if n < 2:
            return TriggerDrift(n, self.tr, None, None)
        t = np.asarray(self.run_times)
        slope, intercept = np.polyfit(np.arange(n), t, 1)
        expected = np.arange(n) * (self.tr if self.tr is not None else slope) + (0.0 if self.tr is not None else intercept)
        return TriggerDrift(n, self.tr, float(slope), float(np.max(np.abs(t - expected))))
