from __future__ import annotations

import logging
import sys
import threading
import time

import pytest

from rtrecon.contract import children
from rtrecon.contract.config import TriggerSection
from rtrecon.testing import scaled
from stimulus.trigger import ButtonBoxKeys, KeyPress, MergedKeys, ParallelPortKeys, ScannerTrigger, ScheduledKeys, SerialKeys, hardware_keys


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_first_trigger_is_time_zero_and_later_ones_are_logged():
    trig = ScannerTrigger(frozenset({"5"}), tr=2.0)
    others = trig.feed([KeyPress("1", 9.0), KeyPress("5", 10.0), KeyPress("2", 10.5)])
    assert [p.key for p in others] == ["1", "2"]
    assert trig.started and trig.zero == 10.0
    trig.feed([KeyPress("5", 12.0), KeyPress("5", 14.05), KeyPress("5", 16.0)])
    assert trig.run_times == pytest.approx([0.0, 2.0, 4.05, 6.0])
    drift = trig.drift()
    assert drift.n_triggers == 4 and drift.tr_expected == 2.0
    assert drift.tr_observed == pytest.approx(2.0, abs=0.02)
    assert drift.max_abs_deviation == pytest.approx(0.05)


def test_drift_without_a_tr_fits_a_line():
    trig = ScannerTrigger()
    with pytest.raises(RuntimeError):
        trig.zero
    trig.feed([KeyPress("5", 1.0 + 1.01 * i) for i in range(5)])
    drift = trig.drift()
    assert drift.tr_observed == pytest.approx(1.01) and drift.max_abs_deviation == pytest.approx(0.0, abs=1e-9)


def test_scheduled_and_merged_keys_come_in_time_order():
    clock = Clock()
    scanner = ScheduledKeys.scanner(start=1.0, tr=0.5, n_volumes=3, clock=clock)
    buttons = ScheduledKeys([KeyPress("2", 1.2)], clock=clock)
    merged = MergedKeys([scanner, buttons])
    assert merged.poll() == []
    clock.t = 1.6
    assert [(p.key, p.time) for p in merged.poll()] == [("5", 1.0), ("2", 1.2), ("5", 1.5)]
    buttons.add(KeyPress("1", 1.7))
    clock.t = 5.0
    assert [(p.key, p.time) for p in merged.poll()] == [("1", 1.7), ("5", 2.0)]


def test_serial_bytes_are_keys():
    clock = Clock()
    keys = SerialKeys("loop://", clock=clock)
    try:
        assert keys.poll() == []
        keys.serial.write(b"5a5")
        clock.t = 3.0
        assert [(p.key, p.time) for p in keys.poll()] == [("5", 3.0), ("a", 3.0), ("5", 3.0)]
    finally:
        keys.close()
    with pytest.raises(OSError, match="nosuch://"):
        SerialKeys("nosuch://x")


def test_keyboard_keys_from_the_window(win):
    from psychopy import core

    from stimulus.trigger import PsychopyKeys

    keys = PsychopyKeys()
    win.flip()
    keys.poll()
    before = core.getTime()
    children.run(["xdotool", "key", "--window", str(win.winHandle._window), "5", "2"], check=True, timeout=scaled(10))
    presses: list[KeyPress] = []
    for _ in range(200):
        win.flip()
        presses += keys.poll()
        if len(presses) >= 2:
            break
    after = core.getTime()
    assert [p.key for p in presses] == ["5", "2"]
    assert all(before <= p.time <= after for p in presses)


class ScriptedPins:
    """Stands in for the parallel port at its lowest layer, PsychoPy's ``readPin``: each read of a
    pin returns the next level of its script, then the last one for ever."""

    def __init__(self, scripts: dict[int, list[int]]):
        self.scripts = {pin: list(levels) for pin, levels in scripts.items()}
        self.lengths = {pin: len(levels) for pin, levels in scripts.items()}
        self.reads = {pin: 0 for pin in scripts}
        self.lock = threading.Lock()

    def readPin(self, pin: int) -> int:
        with self.lock:
            levels = self.scripts[pin]
            self.reads[pin] += 1
            return levels.pop(0) if len(levels) > 1 else levels[0]

    def done(self) -> bool:
        """Every pin was read once more after its script ended, so the press of each scripted
        level, made in the same pass as its read, is queued."""
        with self.lock:
            return all(self.reads[pin] > n for pin, n in self.lengths.items())


class Counter:
    """A clock that ticks once per reading: presses get increasing, distinct times."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def drain(keys, port: ScriptedPins) -> list[KeyPress]:
    presses: list[KeyPress] = []
    deadline = time.monotonic() + scaled(10)
    while not port.done() and time.monotonic() < deadline:
        presses += keys.poll()
        time.sleep(0.001)
    return presses + keys.poll()


def test_parallel_port_pulses_are_keys():
    # pin 10: high at start (not a press), then two one-read pulses (4th and 7th reads after the
    # first); pin 12: one long pulse from the 3rd
    port = ScriptedPins({10: [1, 1, 0, 0, 1, 0, 0, 1, 0], 12: [0, 0, 0, 1, 1, 1, 1, 1, 0]})
    keys = ParallelPortKeys("test", {"5": 10, "1": 12}, port=port, clock=Counter(), interval=0.0001)
    try:
        presses = drain(keys, port)
    finally:
        keys.close()
    assert [p.key for p in presses] == ["1", "5", "5"]
    assert [p.time for p in presses] == sorted({p.time for p in presses})

    falling = ScriptedPins({11: [1, 0, 1, 1, 0, 1]})  # an active-low input: each drop is a press
    keys = ParallelPortKeys("test", {"5": 11}, edge="falling", port=falling, interval=0.0001)
    try:
        assert [p.key for p in drain(keys, falling)] == ["5", "5"]
    finally:
        keys.close()


def test_a_failing_parallel_port_is_reported():
    class Unplugged:
        def readPin(self, pin: int) -> int:
            raise OSError("device disconnected")

    with pytest.raises(OSError, match="parallel port test: reading failed: device disconnected"):
        ParallelPortKeys("test", {"5": 10}, port=Unplugged())

    class Dies(ScriptedPins):
        def readPin(self, pin: int) -> int:
            if self.reads[pin] >= 3:
                raise OSError("device disconnected")
            return super().readPin(pin)

    keys = ParallelPortKeys("/dev/parport7", {"5": 10}, port=Dies({10: [0]}), interval=0.0001)
    try:
        deadline = time.monotonic() + scaled(10)
        with pytest.raises(OSError, match=r"parallel port /dev/parport7: reading failed: device disconnected"):
            while time.monotonic() < deadline:
                keys.poll()
                time.sleep(0.001)
    finally:
        keys.close()
    # psychopy.parallel itself, through pyparallel, on a port this machine does not have
    with pytest.raises(OSError, match=r"parallel port /dev/no-such-parport: cannot be opened"):
        hardware_keys(TriggerSection(source="parallel", parallel_port="/dev/no-such-parport"))


def scripted_button_box() -> type:
    """A PsychoPy button group whose device sends the messages queued in ``wire`` (its lowest
    layer): ``(time, channel, pressed)``; PsychoPy's own response queue does the rest. Made in a
    function: importing ``psychopy.hardware.button`` needs a display."""
    from psychopy.hardware.button import BaseButtonGroup, ButtonResponse

    class ScriptedButtonBox(BaseButtonGroup):
        def __init__(self, channels: int = 3):
            super().__init__(channels=channels)
            self.wire: list[tuple[float, int, bool]] = []

        def dispatchMessages(self) -> None:
            while self.wire:
                self.receiveMessage(self.parseMessage(self.wire.pop(0)))

        def parseMessage(self, message: tuple[float, int, bool]) -> ButtonResponse:
            t, channel, pressed = message
            return ButtonResponse(t=t, value=pressed, channel=channel)

        def resetTimer(self, clock=None) -> None:
            return None

        @staticmethod
        def getAvailableDevices() -> list[dict]:
            return []

        def isSameDevice(self, other) -> bool:
            return other is self

    return ScriptedButtonBox


def test_button_box_presses_are_keys(xvfb, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    from psychopy.hardware import DeviceManager

    # PsychoPy's DeviceManager makes devices from an import path: give the class one
    monkeypatch.setattr(sys.modules[__name__], "ScriptedButtonBox", scripted_button_box(), raising=False)
    settings = TriggerSection(
        source="buttonbox",
        buttonbox_class=f"{__name__}:ScriptedButtonBox",
        buttonbox_args={"channels": 4},
        buttonbox_keys=("5", "1", "2"),
    )
    keys = hardware_keys(settings)
    assert isinstance(keys, ButtonBoxKeys) and keys.device.channels == 4
    assert keys.device in DeviceManager.devices.values()
    try:
        assert keys.poll() == []
        keys.device.wire += [(10.0, 0, True), (10.05, 0, False), (10.2, 2, True), (10.1, 1, True), (10.3, 3, True), (10.4, 2, False)]
        with caplog.at_level(logging.WARNING, logger="stimulus.trigger"):
            presses = keys.poll()
        assert [(p.key, p.time) for p in presses] == [("5", 10.0), ("1", 10.1), ("2", 10.2)]
        assert "channel 3, which has no key" in caplog.text
        assert keys.poll() == [] and keys.device.responses == []
    finally:
        keys.close()
    assert keys.device not in DeviceManager.devices.values()
    with pytest.raises(OSError, match="button box no_such_plugin.Box: cannot be opened"):
        hardware_keys(TriggerSection(source="buttonbox", buttonbox_class="no_such_plugin.Box", buttonbox_keys=("5",)))


def test_hardware_keys_follow_the_config():
    assert hardware_keys(TriggerSection()) is None
    serial = hardware_keys(TriggerSection(source="serial", serial_port="loop://"))
    try:
        assert isinstance(serial, SerialKeys)
    finally:
        serial.close()
