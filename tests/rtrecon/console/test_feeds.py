"""The console's subscription to the engine's status feed (real ZeroMQ sockets, CURVE too)."""

from __future__ import annotations

import queue
import time

import numpy as np

from rtrecon.console.feeds import EngineFeed, console_curve
from rtrecon.contract.keys import init_keys, load_curve
from rtrecon.contract.transport import StatusPublisher
from rtrecon.contract.wire import StatusMessage, TrialResultMessage
from rtrecon.testing import scaled


def _collect(endpoint: str, publisher: StatusPublisher, messages: list, curve=None, wait_s: float = 15.0) -> list:
    """Publish ``messages`` until the feed has them all (a PUB drops what it sends before the SUB joins)."""
    got: queue.Queue = queue.Queue()
    feed = EngineFeed(endpoint, got.put, curve=curve)
    feed.start()
    received: list = []
    deadline = time.monotonic() + scaled(wait_s)
    try:
        while time.monotonic() < deadline and len(received) < len(messages):
            received.clear()
            for message in messages:
                publisher.publish(message)
            time.sleep(0.1)
            while not got.empty():
                received.append(got.get())
            received = received[-len(messages):]
    finally:
        feed.stop()
    return received


def test_status_and_results_arrive_in_order(tmp_path):
    endpoint = f"ipc://{tmp_path}/status"
    status = StatusMessage(process="engine", state="running", metrics={"run": 1.0, "volume": 0.0})
    image = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    result = TrialResultMessage(session="sub-01_ses-01", run=1, trial=2, retrieved=["a", "b"], image=image,
                                release=1, release_s=16.0, final=True)
    with StatusPublisher(endpoint) as publisher:
        got = _collect(endpoint, publisher, [status, result])
    assert got[0] == status
    assert isinstance(got[1], TrialResultMessage) and (got[1].release, got[1].final) == (1, True)
    np.testing.assert_array_equal(got[1].image, image)


def test_an_encrypted_feed_needs_the_session_keys(tmp_path):
    endpoint = f"ipc://{tmp_path}/status"
    keys = init_keys(tmp_path / "keys")
    other = init_keys(tmp_path / "other")
    assert console_curve(None) is None
    assert console_curve(keys).role == "console"  # keys init makes the console's pair too
    older = init_keys(tmp_path / "older", roles=("bridge", "engine", "stimulus"))
    assert console_curve(older).role == "engine"  # no console key pair: the engine's, on the engine's machine
    init_keys(tmp_path / "with_console", roles=("engine", "console"))
    assert console_curve(tmp_path / "with_console").role == "console"
    status = StatusMessage(process="engine", state="links", metrics={"bridge_alive": 1.0})
    with StatusPublisher(endpoint, curve=load_curve(keys, "engine")) as publisher:
        assert _collect(endpoint, publisher, [status], curve=console_curve(keys)) == [status]
        # the control: keys of another session are refused by the engine's socket
        assert _collect(endpoint, publisher, [status], curve=console_curve(other), wait_s=1.5) == []
