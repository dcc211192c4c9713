"""The console's ZeroMQ links: the engine's status feed in, the operator's controls out.

:class:`EngineFeed` connects a :class:`~rtrecon.contract.transport.StatusSubscriber` to the session's
``[network] status`` endpoint (the engine binds it; with ``[security] keys_dir`` the link is
CURVE-encrypted and the console uses the ``console`` role's key pair if the keys folder has one,
else the ``engine`` role's, as it usually runs on the engine's machine) and hands every
message it receives -- the engine's per-volume status, its link health once a heartbeat, the
copies of its trial results, the stimulus PC's word of when each was shown -- to ``deliver``,
from the feed's thread. The console's ASGI app
passes a ``deliver`` that moves the message onto its event loop.

ZeroMQ re-dials by itself: when the engine restarts and binds the endpoint again, messages
flow again with nothing to do here; what was published while nobody listened is read back from
the store (:mod:`rtrecon.console.folder`).

:func:`open_operator_feed` binds ``[network] operator``, where the console publishes the
operator's controls (:class:`~rtrecon.contract.wire.OperatorMessage`) for the stimulus program
(:mod:`stimulus.operator` subscribes), with the same keys as the status feed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from rtrecon.contract.keys import CurveKeys, load_curve
from rtrecon.contract.transport import StatusPublisher, StatusSubscriber
from rtrecon.contract.wire import ShownMessage, StatusMessage, TrialResultMessage

__all__ = ["EngineFeed", "console_curve", "open_operator_feed"]

log = logging.getLogger(__name__)


def console_curve(keys_dir: Path | None) -> CurveKeys | None:
    """The console's CURVE keys in ``keys_dir`` (None: the links are not encrypted)."""
    if keys_dir is None:
        return None
    role = "console" if (Path(keys_dir) / "private" / "console.key_secret").is_file() else "engine"
    return load_curve(keys_dir, role)


class EngineFeed:
    """Receives the engine's status feed at ``endpoint`` on a thread; ``deliver(message)`` per message."""

    def __init__(
        self,
        endpoint: str,
        deliver: Callable[[StatusMessage | TrialResultMessage | ShownMessage], None],
        *,
        curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.deliver = deliver
        self.curve = curve
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-feed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        with StatusSubscriber(self.endpoint, curve=self.curve, server_role="engine", name="console",
                              kinds=(StatusMessage, TrialResultMessage, ShownMessage)) as feed:
            log.info("console: subscribed to the engine's status feed at %s", self.endpoint)
            while not self._stop.is_set():
                message = feed.recv(timeout_s=0.2)
                if message is not None:
                    self.deliver(message)


def open_operator_feed(endpoint: str, curve: CurveKeys | None = None) -> StatusPublisher | None:
    """The PUB socket of the operator's controls bound at ``endpoint``; None (with a warning) if
    another program holds it (a second console): its controls are then recorded, not sent."""
    try:
        return StatusPublisher(endpoint, curve=curve, name="console")
    except zmq.ZMQError as exc:
        log.warning("console: cannot bind %s for the operator's controls (%s): they are recorded but not "
                    "sent to the stimulus program", endpoint, exc)
        return None
