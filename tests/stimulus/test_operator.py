"""stimulus.operator: the operator's controls from the console, over a real PUB/SUB link."""

from __future__ import annotations

import time

from rtrecon.contract.keys import init_keys, load_curve
from rtrecon.contract.transport import StatusPublisher
from rtrecon.contract.wire import OperatorMessage
from rtrecon.testing import scaled
from stimulus.operator import OperatorControls, console_role

SESSION = "sub-01_ses-01"


def _until(controls: OperatorControls, publisher: StatusPublisher, message: OperatorMessage, wait_s: float = 15.0):
    """Publish ``message`` once a tenth of a second, as the console does each heartbeat, until it is the state."""
    deadline = time.monotonic() + scaled(wait_s)
    while time.monotonic() < deadline:
        publisher.publish(message)
        time.sleep(0.1)
        if controls.poll() == message:
            return controls.state
    return controls.poll()


def test_the_latest_state_of_this_session(tmp_path):
    endpoint = f"ipc://{tmp_path}/operator"
    with StatusPublisher(endpoint, name="console") as publisher, OperatorControls(endpoint, SESSION) as controls:
        assert controls.poll() == OperatorMessage(session=SESSION)  # before the console says anything: defaults
        paused = OperatorMessage(session=SESSION, feedback_paused=True, bad_trials={1: [3]}, sent_time=1.0)
        assert _until(controls, publisher, paused) == paused
        # another session's controls are not this program's
        publisher.publish(OperatorMessage(session="sub-02_ses-01", ended_runs=[1]))
        ended = OperatorMessage(session=SESSION, ended_runs=[1], sent_time=2.0)
        publisher.publish(ended)
        deadline = time.monotonic() + scaled(5.0)
        while controls.poll() != ended and time.monotonic() < deadline:  # PUB/SUB keeps order: the other session's came first
            time.sleep(0.01)
        assert controls.poll() == ended and 1 in controls.state.ended_runs and not controls.state.feedback_paused


def test_an_encrypted_link_pins_the_consoles_key(tmp_path):
    endpoint = f"ipc://{tmp_path}/operator"
    keys = init_keys(tmp_path / "keys", roles=("bridge", "engine", "stimulus"))
    assert console_role(keys) == "engine"  # a key folder made before the console had a key pair
    assert console_role(init_keys(tmp_path / "current")) == "console"
    assert console_role(init_keys(tmp_path / "with_console", roles=("engine", "console", "stimulus"))) == "console"
    other = init_keys(tmp_path / "other")
    paused = OperatorMessage(session=SESSION, feedback_paused=True)
    with StatusPublisher(endpoint, curve=load_curve(keys, "engine"), name="console") as publisher:
        with OperatorControls(endpoint, SESSION, curve=load_curve(keys, "stimulus"), server_role=console_role(keys)) as ok:
            assert _until(ok, publisher, paused) == paused
        # the control: a program with another session's keys hears nothing
        with OperatorControls(endpoint, SESSION, curve=load_curve(other, "stimulus")) as refused:
            assert _until(refused, publisher, paused, wait_s=1.5) == OperatorMessage(session=SESSION)
