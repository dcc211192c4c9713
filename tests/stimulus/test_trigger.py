from __future__ import annotations

import subprocess

import pytest

from stimulus.trigger import KeyPress, MergedKeys, ScannerTrigger, ScheduledKeys, SerialKeys


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
    subprocess.run(["xdotool", "key", "--window", str(win.winHandle._window), "5", "2"], check=True, timeout=10)
    presses: list[KeyPress] = []
    for _ in range(200):
        win.flip()
        presses += keys.poll()
        if len(presses) >= 2:
            break
    after = core.getTime()
    assert [p.key for p in presses] == ["5", "2"]
    assert all(before <= p.time <= after for p in presses)
