"""The console's subscription to the engine's status feed, on a thread of its own.

:class:`EngineFeed` connects a :class:`~rtrecon.transport.StatusSubscriber` to the session's
``[network] status`` endpoint (the engine binds it; with ``[security] keys_dir`` the link is
CURVE-encrypted and the console uses the ``console`` role's key pair if the keys folder has one,
else the ``engine`` role's, as it usually runs on the engine's machine) and hands every
message it receives -- the engine's per-volume status, its link health once a heartbeat, the
copies of its trial results -- to ``deliver``, from the feed's thread. The console's ASGI app
passes a ``deliver`` that moves the message onto its event loop.

ZeroMQ re-dials by itself: when the engine restarts and binds the endpoint again, messages
flow again with nothing to do here; what was published while nobody listened is read back from
the store (:mod:`rtrecon.console.folder`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from rtrecon.keys import CurveKeys, load_curve
from rtrecon.transport import StatusSubscriber
from rtrecon.wire import StatusMessage, TrialResultMessage

__all__ = ["EngineFeed", "console_curve"]

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
        deliver: Callable[[StatusMessage | TrialResultMessage], None],
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
        with StatusSubscriber(self.endpoint, curve=self.curve, server_role="engine", name="console") as feed:
            log.info("console: subscribed to the engine's status feed at %s", self.endpoint)
            while not self._stop.is_set():
                message = feed.recv(timeout_s=0.2)
                if message is not None:
                    self.deliver(message)
