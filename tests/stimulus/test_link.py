from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.transport import ReliableReceiver, ReliableSender, result_key, trial_key
from rtrecon.contract.wire import EventMessage, TrialResultMessage
from rtrecon.testing import scaled
from stimulus.link import EngineLink, OfflineLink

SESSION = "sub-01_ses-01"


def event(trial: int, onset: float) -> EventMessage:
    return EventMessage(session=SESSION, run=1, trial=trial, onset=onset, duration=3.0, trial_type="image", stimulus=f"s{trial}")


def pump(until: Callable[[], bool], *peers, timeout_s: float = 10.0) -> None:
    """Drive the engine-side peers until ``until()`` holds."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not until():
        assert time.monotonic() < deadline, "timed out waiting for the link"
        for peer in peers:
            peer()


@pytest.fixture
def endpoints(tmp_path: Path) -> tuple[str, str]:
    return f"ipc://{tmp_path}/events", f"ipc://{tmp_path}/results"


def test_events_out_results_in(tmp_path: Path, endpoints):
    events, results = endpoints
    got: list[EventMessage] = []
    clock_value = [42.0]
    link = EngineLink(events, results, SESSION, tmp_path / "spool", tmp_path / "state.json", clock=lambda: clock_value[0], heartbeat_s=scaled(0.2))
    with ReliableReceiver(events, SESSION, key=trial_key, heartbeat_s=scaled(0.2)) as rx, ReliableSender(results, SESSION, tmp_path / "engine_spool", key=result_key, heartbeat_s=scaled(0.2), name="engine") as tx:

        def engine() -> None:
            msg = rx.recv(0.01)
            if msg is not None:
                got.append(msg)
                rx.ack(msg)
            tx.poll(0.0)

        link.send_event(event(0, 0.5))
        link.send_event(event(1, 4.5))
        pump(lambda: len(got) == 2, engine)
        assert [(m.trial, m.onset, m.stimulus) for m in got] == [(0, 0.5, "s0"), (1, 4.5, "s1")]

        image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
        tx.send(TrialResultMessage(session=SESSION, run=1, trial=1, image=image, retrieved=["9", "3"], scores=[0.8, 0.1], sequence=4))
        received: list = []
        pump(lambda: bool(received.extend(link.poll_results()) or received), engine)
        (result, arrived), = received
        assert result.trial == 1 and result.retrieved == ["9", "3"] and np.array_equal(result.image, image)
        assert arrived == 42.0
        pump(lambda: tx.pending == 0, engine)
    link.close()
    assert json.loads((tmp_path / "state.json").read_text()) == {"1": 4}  # the last result's sequence
    assert OfflineLink().poll_results() == []


def test_events_wait_for_a_late_engine_and_runs_are_not_sent_twice(tmp_path: Path, endpoints):
    events, results = endpoints
    link = EngineLink(events, results, SESSION, tmp_path / "spool", tmp_path / "state.json", heartbeat_s=scaled(0.2), close_timeout_s=0.2)
    link.send_event(event(0, 1.0))  # no engine yet: spooled, never blocks
    assert link.poll_results() == []
    link.close()  # gives up after close_timeout_s; the event stays spooled

    link = EngineLink(events, results, SESSION, tmp_path / "spool", tmp_path / "state.json", heartbeat_s=scaled(0.2))
    with pytest.raises(ValueError, match="run 1 of sub-01_ses-01 was already sent"):
        link.check_run(1)
    link.check_run(2)
    got: list[EventMessage] = []
    with ReliableReceiver(events, SESSION, key=trial_key, heartbeat_s=scaled(0.2)) as rx:

        def engine() -> None:
            msg = rx.recv(0.01)
            if msg is not None:
                got.append(msg)
                rx.ack(msg)

        pump(lambda: link.unacked == 0 and len(got) == 1, engine)
        link.close()
    assert got[0].onset == 1.0


def test_an_endpoint_in_use_is_an_error(tmp_path: Path, endpoints):
    events, _ = endpoints
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = f"tcp://127.0.0.1:{port}"
    with ReliableReceiver(results, SESSION, key=result_key):
        with pytest.raises(OSError, match="engine link"):
            EngineLink(events, results, SESSION, tmp_path / "spool", tmp_path / "state.json")


def test_a_result_is_kept_before_it_is_acknowledged(tmp_path: Path, endpoints):
    events, results = endpoints
    kept: list[tuple[int, float]] = []
    failing = [True]

    def keep(message: TrialResultMessage, received: float) -> None:
        if failing[0]:
            raise OSError("disk full")
        kept.append((message.trial, received))

    link = EngineLink(events, results, SESSION, tmp_path / "spool", tmp_path / "state.json", clock=lambda: 7.0,
                      heartbeat_s=scaled(0.2), on_result=keep)
    with ReliableSender(results, SESSION, tmp_path / "engine_spool", key=result_key, heartbeat_s=scaled(0.2), name="engine") as tx:
        tx.send(TrialResultMessage(session=SESSION, run=1, trial=0))
        deadline = time.monotonic() + scaled(1.5)
        while time.monotonic() < deadline:
            tx.poll(0.01)
        # shown at once, but not kept: not acknowledged, so the engine still holds it
        assert tx.pending == 1 and not (tmp_path / "state.json").exists()
        assert [(m.trial, t) for m, t in link.poll_results()] == [(0, 7.0)]
    link.close()

    failing[0] = False  # the program restarted: the engine's sender resends what was never acknowledged
    link = EngineLink(events, results, SESSION, tmp_path / "spool", tmp_path / "state.json", clock=lambda: 8.0,
                      heartbeat_s=scaled(0.2), on_result=keep)
    with ReliableSender(results, SESSION, tmp_path / "engine_spool", key=result_key, heartbeat_s=scaled(0.2), name="engine") as tx:
        received: list = []
        pump(lambda: bool(received.extend(link.poll_results()) or received) and tx.pending == 0, lambda: tx.poll(0.01))
    link.close()
    assert kept == [(0, 8.0)] and [(m.trial, t) for m, t in received] == [(0, 8.0)]
