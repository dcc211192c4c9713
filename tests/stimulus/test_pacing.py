"""stimulus.pacing: the replay's speed, the frame period from flips, the wait for the first trigger, the coming flip.

The display is a stand-in whose flips return scripted times (a real display's depend on the
machine), and ``time.sleep`` is recorded instead of slept.
"""

from __future__ import annotations

import pytest

import stimulus.pacing as pacing
from stimulus.pacing import Pacer
from stimulus.participant import VirtualParticipant
from stimulus.trigger import ScannerTrigger


class Display:
    """Flips ``step`` seconds apart from ``start``; draws nothing."""

    monitorFramePeriod = 1 / 60

    def __init__(self, step: float, start: float = 10.0):
        self.t = start
        self.step = step
        self.flips = 0
        self.waiting = 0
        self.fixation = self  # the screen's fixation dot and the screen itself

    def flip(self) -> float:
        self.t += self.step
        self.flips += 1
        return self.t

    def draw(self) -> None:
        pass

    def draw_waiting(self) -> None:
        self.waiting += 1


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The program clock pacing reads (settable), and the sleeps it asks for in ``clock[1:]``."""
    state = [0.0]
    monkeypatch.setattr(pacing, "psychopy_time", lambda: state[0])
    monkeypatch.setattr(pacing.time, "sleep", lambda s: state.append(s))
    return state


def test_speed_is_positive_and_needs_a_virtual_participant_at_that_speed():
    assert Pacer(1.0, None).scanner_s(0.5) == 0.5
    assert Pacer(4.0, VirtualParticipant(tr=1.0, speed=4.0)).scanner_s(0.5) == 2.0
    with pytest.raises(ValueError, match="must be positive"):
        Pacer(0.0, None)
    with pytest.raises(ValueError, match="needs a virtual participant"):
        Pacer(2.0, None)
    with pytest.raises(ValueError, match="needs a virtual participant"):
        Pacer(2.0, VirtualParticipant(tr=1.0, speed=3.0))


def test_frame_period_is_the_median_flip_interval_with_vsync(clock):
    pacer = Pacer(1.0, None)
    display = Display(1 / 120)
    flips = [display.flip() for _ in range(20)]
    flips[5] += 0.05  # one slow frame does not move the median
    assert pacer.frame_period(flips, display) == pytest.approx(1 / 120)
    assert pacer.frame_period(flips[:10], display) == display.monitorFramePeriod  # too few flips: nominal
    pacer.pace(clock[0])
    assert clock[1:] == []  # with vsync the display paces the loop


def test_without_vsync_the_loop_paces_itself_to_the_nominal_period(clock):
    pacer = Pacer(1.0, None)
    display = Display(0.0005)  # Xvfb-like: flips return at once
    flips = [display.flip() for _ in range(20)]
    assert pacer.frame_period(flips, display) == display.monitorFramePeriod
    clock[0] = 5.0
    pacer.pace(5.0 - 0.002)  # the last flip was 2 ms ago: sleep the rest of the frame
    assert clock[1:] == [pytest.approx(1 / 60 - 0.002 - 0.0005)]


def test_wait_for_trigger_shows_the_waiting_screen_until_the_trigger(clock):
    pacer = Pacer(1.0, None)
    display = Display(1 / 60)
    trigger = ScannerTrigger(frozenset({"5"}))

    def poll_keys() -> None:
        if display.flips == 15:
            trigger.times.append(display.t)

    assert pacer.wait_for_trigger(display, display, trigger, poll_keys, timeout=10.0) == pytest.approx(1 / 60)
    assert display.waiting == 15 and trigger.started


def test_wait_for_trigger_times_out(clock):
    pacer = Pacer(1.0, None)
    display = Display(1 / 60)

    def poll_keys() -> None:
        clock[0] += 1.0

    with pytest.raises(TimeoutError, match=r"no scanner trigger \(5\) within 3"):
        pacer.wait_for_trigger(display, display, ScannerTrigger(frozenset({"5"})), poll_keys, timeout=3.0)


def test_a_resumed_run_measures_the_period_on_fixation_frames(clock):
    display = Display(1 / 75)
    assert Pacer(1.0, None).measure_period(display, display) == pytest.approx(1 / 75)
    assert display.flips == 12


def test_the_coming_flip_is_a_median_frame_after_the_last(clock):
    pacer = Pacer(2.0, VirtualParticipant(tr=1.0, speed=2.0))
    clock[0] = 1.0
    pacer.start(0.02)
    assert pacer.coming_flip() == (pytest.approx(1.02), 0.02)
    for flip in (1.01, 1.02, 1.03, 1.10):  # one long frame among 10 ms ones
        pacer.flipped(flip)
    assert pacer.coming_flip() == (pytest.approx(1.11), pytest.approx(0.01))
    assert pacer.scanner_s(0.01) == pytest.approx(0.02)
