"""The operator's controls from the console (``rtrecon console``), read without blocking a frame.

The console publishes the operator's standing controls (:class:`~rtrecon.contract.wire.OperatorMessage`:
feedback paused, runs ended by the operator, trials marked bad) on ``[network] operator`` at
each change and once a heartbeat. :class:`OperatorControls` subscribes to it and keeps the
latest state of this session; :meth:`OperatorControls.poll` takes what has arrived without
waiting (a ZeroMQ poll of 0 ms, so the frame loop may call it every frame)::

    controls = OperatorControls(config.network.operator, session_id)
    state = controls.poll()
    if state.feedback_paused: ...            # draw no feedback
    if run in state.ended_runs: ...          # end the run as with the quit key

Before the console has said anything (or with no console at all) the state is the default:
feedback on, no run ended. With ``[security] keys_dir`` the console is the CURVE server of its
own role (``console`` where the keys folder has that role, else ``engine``, as on the engine's
machine); :func:`console_role` names it from the public keys every machine has.
"""

from __future__ import annotations

from pathlib import Path

from rtrecon.contract.keys import CurveKeys
from rtrecon.contract.transport import StatusSubscriber
from rtrecon.contract.wire import OperatorMessage

__all__ = ["OperatorControls", "console_role"]


def console_role(keys_dir: str | Path) -> str:
    """The role whose key the console serves with: ``console`` if the keys folder has it, else ``engine``."""
    return "console" if (Path(keys_dir) / "public" / "console.key").is_file() else "engine"


class OperatorControls:
    """The latest operator controls of ``session`` published at ``endpoint`` (see the module docstring)."""

    def __init__(self, endpoint: str, session: str, *, curve: CurveKeys | None = None, server_role: str = "engine") -> None:
        self.session = session
        self.state = OperatorMessage(session=session)
        self._feed = StatusSubscriber(endpoint, curve=curve, server_role=server_role, name="stimulus-operator",
                                      kinds=(OperatorMessage,))

    def poll(self) -> OperatorMessage:
        """The latest state, after taking (without waiting) every message that has arrived."""
        while (message := self._feed.recv(timeout_s=0.0)) is not None:
            if message.session == self.session:
                self.state = message
        return self.state

    def close(self) -> None:
        self._feed.close()

    def __enter__(self) -> OperatorControls:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
