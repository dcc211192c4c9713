"""The stimulus program's link to the engine: task events out, trial results in, never blocking a frame.

Both directions are :mod:`rtrecon.contract.transport` reliable links: events keyed by trial
(:func:`~rtrecon.contract.transport.trial_key`), results by their sequence (:func:`~rtrecon.contract.transport.result_key`:
the engine releases a trial several times, each release a result of its own). Events go out through a
:class:`~rtrecon.contract.transport.ReliableSender` connected to ``network.events`` (spooled to disk
before sending, resent after a restart or a dropped link); results come in through a
:class:`~rtrecon.contract.transport.ReliableReceiver` bound at ``network.results``.

A spool write is an fsync and a link may stall, so neither may happen in the frame loop.
:class:`EngineLink` therefore runs both transport objects in one background thread (ZeroMQ
sockets belong to one thread) and talks to the frame loop through two in-memory queues:

- :meth:`EngineLink.send_event` puts an :class:`~rtrecon.contract.wire.EventMessage` on the out-queue
  and returns at once;
- :meth:`EngineLink.poll_results` takes the results that have arrived, each with the clock time
  the link thread received it, without waiting.
- :meth:`EngineLink.send_shown` queues a :class:`~rtrecon.contract.wire.ShownMessage` (the flip that
  first showed a result), which the link thread sends back to the engine on the results link
  (best effort: the run's journal and records keep every shown time).

Results are acknowledged as soon as they are received -- after ``on_result`` has kept them
(the program's :meth:`~stimulus.records.RunJournal.record_result` writes them to disk, so an
acknowledged result survives a kill) -- and the last result received per run is kept in
``state_file`` (JSON), so that a restarted program is not sent old results again.
Keys must increase within a run, so a trial sends one event: its main event (the image, the
imagery period), not its cue, rating or feedback period, which are in the run's events file.

:class:`OfflineLink` has the same methods for runs without an engine.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rtrecon.contract.layout import atomic_write
from rtrecon.contract.transport import ReliableReceiver, ReliableSender, result_key, trial_key
from rtrecon.contract.wire import EventMessage, ShownMessage, TrialResultMessage

__all__ = ["Link", "EngineLink", "OfflineLink"]

log = logging.getLogger(__name__)


class Link(Protocol):
    """What the frame loop needs from a link."""

    def send_event(self, message: EventMessage) -> None: ...

    def poll_results(self) -> list[tuple[TrialResultMessage, float]]: ...

    def send_shown(self, message: ShownMessage) -> None: ...

    def close(self) -> None: ...


class EngineLink:
    """Reliable links to the engine, driven by a background thread (see the module docstring).

    ``spool_dir`` holds the events spool; ``clock`` stamps when results arrive (PsychoPy's
    clock in the program); ``curve`` comes from :func:`rtrecon.contract.keys.load_curve` for the
    ``stimulus`` role; ``on_result(message, received)`` is called in the link's thread with
    each result before it is acknowledged (an exception there leaves it unacknowledged: the
    engine sends it again). Raises OSError when a link cannot be set up (endpoint in use, spool
    locked by another program).
    """

    def __init__(
        self,
        events: str,
        results: str,
        session: str,
        spool_dir: str | Path,
        state_file: str | Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        curve: Any = None,
        heartbeat_s: float = 1.0,
        close_timeout_s: float = 5.0,
        on_result: Callable[[TrialResultMessage, float], None] | None = None,
    ):
        self.session = session
        self._clock = clock
        self._on_result = on_result
        self._state_file = Path(state_file)
        self._close_timeout_s = close_timeout_s
        self._out: queue.SimpleQueue[EventMessage] = queue.SimpleQueue()
        self._shown: queue.SimpleQueue[ShownMessage] = queue.SimpleQueue()
        self._in: queue.SimpleQueue[tuple[TrialResultMessage, float]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.sent_runs: dict[int, int] = {}
        self.unacked = 0
        args = (events, results, Path(spool_dir), curve, heartbeat_s)
        self._thread = threading.Thread(target=self._main, args=args, name="rtrecon-engine-link", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise OSError(f"engine link: {self._error}") from self._error

    def _load_state(self) -> dict[int, int]:
        try:
            return {int(run): int(key) for run, key in json.loads(self._state_file.read_text()).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: unreadable results state (%s); old results may be sent again", self._state_file, exc)
            return {}

    def _save_state(self, persisted: dict[int, int]) -> None:
        atomic_write(self._state_file, json.dumps(persisted))

    def _main(self, events: str, results: str, spool: Path, curve: Any, heartbeat_s: float) -> None:
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            sender = ReliableSender(events, self.session, spool, key=trial_key, curve=curve, server_role="engine", heartbeat_s=heartbeat_s, name="stimulus")
            try:
                receiver = ReliableReceiver(results, self.session, self._load_state(), key=result_key, curve=curve, heartbeat_s=heartbeat_s, name="stimulus")
            except BaseException:
                sender.close()
                raise
        except Exception as exc:  # reported to the constructor, which raises it
            self._error = exc
            self._ready.set()
            return
        self.sent_runs = sender.spooled
        self._ready.set()
        try:
            self._serve(sender, receiver)
        finally:
            sender.close()
            receiver.close()

    def _serve(self, sender: ReliableSender, receiver: ReliableReceiver) -> None:
        deadline: float | None = None
        while True:
            while True:
                try:
                    message = self._out.get_nowait()
                except queue.Empty:
                    break
                try:
                    sender.send(message)
                except ValueError as exc:
                    log.error("event not sent: %s", exc)
            sender.poll(0.0)
            while True:
                try:
                    receiver.notify(self._shown.get_nowait())
                except queue.Empty:
                    break
                except ValueError as exc:
                    log.error("shown time not sent: %s", exc)
            result = receiver.recv(timeout_s=0.005)
            if isinstance(result, TrialResultMessage):
                received = self._clock()
                # to the screen at once; kept on disk (an fsync) before it is acknowledged
                self._in.put((result, received))
                if self._on_result is not None:
                    try:
                        self._on_result(result, received)
                    except Exception as exc:  # not kept: not acknowledged, so the engine resends it
                        log.error("result for trial %d of run %d not kept: %s", result.trial, result.run, exc)
                        continue
                receiver.ack(result)
                self._save_state(receiver.persisted)
            elif result is not None:
                log.warning("ignored a %s message on the results link", result.KIND)
            self.unacked = sender.pending
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + self._close_timeout_s
                if (self._out.empty() and not sender.pending) or time.monotonic() > deadline:
                    if sender.pending:
                        log.warning("%d event(s) not yet acknowledged by the engine; they stay spooled and are resent next time", sender.pending)
                    return

    def check_run(self, run: int) -> None:
        """Refuse (ValueError) a run number whose events were already sent in this session."""
        if run in self.sent_runs:
            raise ValueError(f"run {run} of {self.session} was already sent to the engine; use a new run number")

    def send_event(self, message: EventMessage) -> None:
        """Queue ``message`` for the engine; returns at once."""
        self._out.put(message)

    def send_shown(self, message: ShownMessage) -> None:
        """Tell the engine when a result was first shown (best effort, on the results link); returns at once."""
        self._shown.put(message)

    def poll_results(self) -> list[tuple[TrialResultMessage, float]]:
        """The results received since the last call, with their arrival times; never waits."""
        out = []
        while True:
            try:
                out.append(self._in.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Wait (at most ``close_timeout_s``) for the engine to acknowledge the events, then close."""
        self._stop.set()
        self._thread.join()


class OfflineLink:
    """No engine: events go nowhere (the program records them itself), no result ever comes."""

    def send_event(self, message: EventMessage) -> None:
        return None

    def poll_results(self) -> list[tuple[TrialResultMessage, float]]:
        return []

    def send_shown(self, message: ShownMessage) -> None:
        return None

    def close(self) -> None:
        return None
