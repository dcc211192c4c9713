"""Key input and the scanner trigger.

Everything the program hears from outside (the scanner's trigger pulses, the participant's
buttons) arrives as :class:`KeyPress` values from a :class:`KeyInput`: an object with a
non-blocking ``poll()`` that returns the presses since the last call, each stamped on PsychoPy's
clock (``psychopy.core.getTime``, monotonic seconds). Sources:

- :class:`PsychopyKeys`: the window's keyboard through ``psychopy.event`` (``hardware.keyboard``
  is unreliable without psychtoolbox, so it is not used);
- :class:`SerialKeys`: bytes from a serial port (a trigger box, a button box), each byte a key;
  any pyserial URL works (``loop://`` in tests);
- :class:`ParallelPortKeys`: TTL pulses on parallel-port input pins (``psychopy.parallel``), each
  pulse a key, read by a thread fast enough to catch pulses shorter than a frame;
- :class:`ButtonBoxKeys`: a PsychoPy button box (a ``psychopy.hardware.button`` button group,
  e.g. from a vendor's PsychoPy plugin, made through PsychoPy's ``DeviceManager``), each
  button a key;
- :class:`ScheduledKeys`: presses at given times (a simulated scanner);
- :class:`MergedKeys`: several sources polled together.

:func:`hardware_keys` opens the source that the session config's ``[stimulus.trigger] source``
names besides the keyboard (the program always listens to the keyboard too, for the quit key).

:class:`ScannerTrigger` separates triggers from other keys: the first trigger is time zero of
the run (ARCHITECTURE.md's clock); later ones are logged with their time since the first, and
:meth:`ScannerTrigger.drift` compares them with the expected TR.
"""

from __future__ import annotations

import logging
import threading
from bisect import insort
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from rtrecon.contract.config import TriggerSection

__all__ = [
    "KeyPress",
    "KeyInput",
    "PsychopyKeys",
    "SerialKeys",
    "ParallelPortKeys",
    "ButtonBoxKeys",
    "HardwareKeys",
    "hardware_keys",
    "ScheduledKeys",
    "MergedKeys",
    "ScannerTrigger",
    "TriggerDrift",
    "psychopy_time",
]

log = logging.getLogger(__name__)


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


class ParallelPortKeys:
    """Pulses on parallel-port input pins, each one a key press.

    ``pins`` maps each key to the input pin its pulses arrive on (status pins 10, 11, 12, 13,
    15; data pins 2-9 on a bidirectional port). A scanner's trigger pulse can last a few
    milliseconds, shorter than a frame, so a thread reads the pins every ``interval`` seconds
    and stamps each ``edge`` (low to high for ``"rising"``) on ``clock``; :meth:`poll` hands
    over the presses since the last call. A pin already active when the port is opened is not a
    press. ``port`` is any object with PsychoPy's ``readPin(pin)``; by default
    ``psychopy.parallel.ParallelPort(address)`` (``/dev/parport0`` on Linux, through pyparallel;
    an address such as ``0x0378`` on Windows). A failing read (a port unplugged) is raised by the
    next :meth:`poll`, never lost in the thread.
    """

    def __init__(
        self,
        address: str,
        pins: Mapping[str, int],
        *,
        edge: Literal["rising", "falling"] = "rising",
        interval: float = 0.0005,
        clock: Callable[[], float] = psychopy_time,
        port: Any = None,
    ):
        if not pins:
            raise ValueError("parallel port: no pins to read")
        self.address = address
        self.port = port if port is not None else self._open(address)
        self._pins = dict(pins)
        self._active = 1 if edge == "rising" else 0
        self._interval = interval
        self._clock = clock
        self._presses: deque[KeyPress] = deque()
        self._error: BaseException | None = None
        self._stop = threading.Event()
        try:
            self._last = {key: self._level(pin) for key, pin in self._pins.items()}
        except Exception as exc:
            raise OSError(f"parallel port {address}: reading failed: {exc}") from exc
        self._thread = threading.Thread(target=self._watch, name=f"parallel port {address}", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(address: str) -> Any:
        try:
            from psychopy import parallel

            return parallel.ParallelPort(address=int(address, 16) if address.lower().startswith("0x") else address)
        except Exception as exc:  # pyparallel and the OS drivers raise their own kinds
            raise OSError(f"parallel port {address}: cannot be opened: {exc}") from exc

    def _level(self, pin: int) -> int:
        return 1 if self.port.readPin(pin) else 0

    def _watch(self) -> None:
        try:
            while not self._stop.wait(self._interval):
                for key, pin in self._pins.items():
                    level = self._level(pin)
                    if level != self._last[key]:
                        self._last[key] = level
                        if level == self._active:
                            self._presses.append(KeyPress(key, self._clock()))
        except Exception as exc:  # handed to the frame loop by poll()
            self._error = exc

    def poll(self) -> list[KeyPress]:
        out = []
        while self._presses:
            out.append(self._presses.popleft())
        if not out and self._error is not None:
            raise OSError(f"parallel port {self.address}: reading failed: {self._error}") from self._error
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class ButtonBoxKeys:
    """Presses from a PsychoPy button group, button (channel) ``i`` being ``keys[i]``.

    ``device`` is a ``psychopy.hardware.button.BaseButtonGroup`` (or anything with its
    ``getResponses``), whose responses PsychoPy stamps on its default clock, the one
    :func:`psychopy_time` reads. Releases are dropped; a press on a channel without a key is
    logged and dropped. :meth:`open` makes the device through PsychoPy's ``DeviceManager``.
    """

    def __init__(self, device: Any, keys: Sequence[str]):
        self.device = device
        self.keys = tuple(keys)

    @classmethod
    def open(cls, device_class: str, keys: Sequence[str], **kwargs: Any) -> "ButtonBoxKeys":
        """A button box of PsychoPy class ``device_class`` (import path, e.g. a plugin's), made with ``kwargs``."""
        try:
            from psychopy.hardware import DeviceManager

            device = DeviceManager.addDevice(device_class, f"rtrecon button box ({device_class})", **kwargs)
        except Exception as exc:  # PsychoPy wraps a failed device in its own error kinds
            raise OSError(f"button box {device_class}: cannot be opened: {exc}") from exc
        return cls(device, keys)

    def poll(self) -> list[KeyPress]:
        presses = []
        for response in self.device.getResponses(state=None, clear=True):
            if not response.value:
                continue
            if isinstance(response.channel, int) and 0 <= response.channel < len(self.keys):
                presses.append(KeyPress(self.keys[response.channel], float(response.t)))
            else:
                log.warning("button box: a press on channel %r, which has no key (buttonbox_keys gives %d)", response.channel, len(self.keys))
        return sorted(presses, key=lambda p: p.time)

    def close(self) -> None:
        """Let go of the device (PsychoPy's DeviceManager keeps it otherwise)."""
        from psychopy.hardware import DeviceManager

        for name, device in list(DeviceManager.devices.items()):
            if device is self.device:
                DeviceManager.removeDevice(name)


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


class HardwareKeys(KeyInput, Protocol):
    """A key source that holds a device, to be closed when the run ends."""

    def close(self) -> None:
        ...


def hardware_keys(settings: TriggerSection) -> HardwareKeys | None:
    """The trigger/button device ``settings.source`` names (None for ``"keyboard"``).

    Raises OSError naming the device when it cannot be opened, before the run starts.
    """
    if settings.source == "serial":
        return SerialKeys(settings.serial_port, settings.serial_baudrate)
    if settings.source == "parallel":
        return ParallelPortKeys(settings.parallel_port, settings.parallel_pins, edge=settings.parallel_edge, interval=settings.parallel_interval_s)
    if settings.source == "buttonbox":
        return ButtonBoxKeys.open(settings.buttonbox_class, settings.buttonbox_keys, **settings.buttonbox_args)
    return None


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
