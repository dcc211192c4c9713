"""ZeroMQ links between rtrecon's processes: reliable item streams and a best-effort status feed.

Reliable links (volumes bridge → engine, events stimulus → engine, results engine → stimulus)
--------------------------------------------------------------------------------------------
The **receiver binds**, the **sender connects**. Both are plain objects driven by their owner's
loop (no threads; use each object from one thread), and no call blocks longer than the timeout it
is given (``send`` takes the time of a file write and fsync)::

    from rtrecon.contract.transport import ReliableReceiver, ReliableSender, trial_key, volume_key

    # engine: ``persisted`` is what its session store already holds (run -> last key, -1: none)
    with ReliableReceiver("tcp://*:5555", "sub-01_ses-01", store.persisted()) as rx:
        while running:
            msg = rx.recv(timeout_s=0.1)        # None when nothing came
            if msg is not None:
                store.write(msg)                # persist first ...
                rx.ack(msg)                     # ... then acknowledge

    # bridge
    with ReliableSender("tcp://engine:5555", "sub-01_ses-01", "spool/bridge") as tx:
        for volume in source:
            tx.send(volume)                     # spooled to disk, then sent when the link is up
            tx.poll()                           # call often (≥ once per heartbeat): I/O happens here
        tx.wait_acked(timeout_s=30)

API (all keyword arguments after ``*`` are optional)::

    ReliableSender(endpoint, session, spool_dir, *, key=volume_key, curve=None,
                   server_role="engine", heartbeat_s=1.0, liveness=3, name="bridge", max_in_flight=None)
        .send(message) -> (run, key)      spool (atomic rename + fsync), queue, send; never blocks
        .poll(timeout_s=0.0) -> None      do the link's I/O for up to timeout_s
        .wait_acked(timeout_s) -> bool    poll until every spooled item is acknowledged
        .pending -> int                   spooled items not yet acknowledged
        .spooled -> dict[int, int]        run -> last key spooled (a restarted owner resumes after it)
        .acked -> dict[int, int]          run -> last acknowledged key (-1: none)
        .refused -> dict[(run, key), str] items the receiver refused, and why (they count as acked)
        .notices() -> list[Message]       the receiver's notices since the last call (ShownMessage)
        .lead -> int, .max_lead -> int    items sent and not yet acknowledged (now, at most so far)
        .connected -> bool                the receiver has answered and is alive
        .peer_alive -> bool               heard from the receiver within liveness × heartbeat_s
        .close(); context manager

    ReliableReceiver(endpoint, session, persisted=None, *, key=volume_key, curve=None,
                     heartbeat_s=1.0, liveness=3, name="engine", max_message_bytes=64 MiB,
                     max_key_jump=None, client_roles=None)
        .recv(timeout_s=0.0) -> Message | None   next item in order; control traffic handled inside
        .ack(message) -> None             the application has persisted ``message``
        .refuse(message, reason) -> None  the application cannot use ``message``: acknowledged with the reason
        .notify(message) -> None          a notice to the sender (a ShownMessage), best effort as a heartbeat
        .persisted -> dict[int, int]      run -> last key acknowledged (constructor's + acks)
        .peer_alive -> bool               heard from the sender within liveness × heartbeat_s
        .peer_lead -> (int, int) | None   the sender's lead and its bound, from its heartbeats
        .close(); context manager

    StatusPublisher(endpoint, *, curve=None, name="engine")        binds a PUB socket
        .publish(message) -> bool         False if it could not be queued (never blocks)
    StatusSubscriber(endpoint, *, curve=None, server_role="engine", name="dashboard",
                     kinds=(StatusMessage, TrialResultMessage))
        .recv(timeout_s=0.0) -> Message | None   the next message of one of ``kinds``

    volume_key(msg) -> (run, key)   VolumeMessage / VolumeMissingMessage: index; RunEndMessage: n_volumes
    trial_key(msg) -> (run, key)    EventMessage: trial
    result_key(msg) -> (run, key)   TrialResultMessage: sequence (each release of a trial is an item)

Every item has a **key** within its run (``key=`` picks it from the message: the volume index,
the trial number); keys must increase within a run in sending order, but need not be
consecutive. Each item goes on the wire as a :class:`~rtrecon.contract.wire.SequenceMessage` frame
(session, run, key, the key of the run's previous item ``prev``, and a session-wide ``seq``)
followed by the item's own frames.

Resume. The sender writes every item to ``spool_dir/<session>/<seq>.frames`` (its encoded frames,
written then atomically renamed) *before* sending it, fsyncs it before ``send`` returns, and keeps
it for the session (never delete a spool mid-session; one sender per spool, enforced by a lock).
A restarted sender reloads everything it ever sent (``spooled`` tells its owner where to resume
its source; a last file torn by a machine crash is dropped with a warning, so the owner resends
it). The sender transmits nothing until the receiver has answered its
:class:`~rtrecon.contract.wire.HelloMessage` with its own, which lists for every run the last key the
receiver has persisted; the sender then (re)sends, in order, every spooled item after those
(the receiver's word is final: a receiver that lost its store gets everything again). Hellos
are numbered, so a late answer to an old Hello does not trigger a second resend. The receiver
answers every Hello and also greets, unasked, any sender connection it has not heard before (a
restarted sender, a reconnected link), so a sender learns about a restarted receiver from the
first message that reaches it. The receiver delivers an item only if its ``prev`` is the last
key it delivered for that run (so it sees a gap even in non-consecutive keys), drops items at or
below that key as duplicates (re-acknowledging those already persisted, in case the ack was
lost), and drops items after a gap, which the resend that follows every Hello fills. Acks are
cumulative per run: ``ack`` may be called in any order, and the receiver acknowledges the longest
persisted prefix of what it delivered. Hence nothing is lost or duplicated when either side is
killed and restarted, or the link drops.

The receiving application's store must report, per run, the key of the last item it persisted
(on the volume link a run end's key is ``n_volumes``, so a run whose end is persisted reports
``n_volumes``), and must cover every run of the session it holds (a run left out is resent).

Heartbeats. Each end sends a :class:`~rtrecon.contract.wire.HeartbeatMessage` every ``heartbeat_s`` while
it is polled (a sender's says its ``lead`` and bound, the receiver's ``peer_lead``, which the engine
reports in its status); an end that has heard nothing for ``liveness × heartbeat_s`` reports the peer dead
(``peer_alive`` False, a warning logged); a sender then stops sending and says Hello until the
receiver answers. ZeroMQ's own ZMTP heartbeats are set too, so a dead TCP connection is dropped
and re-dialled. The owner must therefore call ``poll``/``recv`` at least once per heartbeat.

Bad traffic. A frame that does not decode (not JSON, unknown kind or version, wrong sizes, ...),
an item of another session, or one whose key disagrees with its sequence frame is logged as a
warning naming the peer (its address and name) and the reason, dropped, and the link goes on.
An item of the current sender whose sequence frame is sound but whose payload is not (it does
not decode, :func:`~rtrecon.contract.wire.validate` refuses it, its key jumps more than ``max_key_jump``)
is refused: acknowledged with the reason (:class:`~rtrecon.contract.wire.AckMessage` ``refused``,
``reason``), so that it is not resent forever and the sender can tell its operator. Frames
larger than ``max_message_bytes`` are refused by libzmq before they are read.

Handshakes. A connecting end whose handshake fails (a peer with the other encryption setting
held the port: libzmq then stops re-dialling for good) logs it once and re-dials every
heartbeat until the right peer answers.

One sender per link: two senders would interleave their sequences and each be resent to forever.

Status feed: :class:`StatusPublisher` (binds) and :class:`StatusSubscriber` (connects) carry
:class:`~rtrecon.contract.wire.StatusMessage` with PUB/SUB: no acknowledgement, no spool; a slow or absent
subscriber misses messages, and the publisher never waits. The engine also publishes a copy of
each :class:`~rtrecon.contract.wire.TrialResultMessage` it sends (without its embedding) on this feed, for
the operator console: the results link itself is point-to-point to the stimulus PC. The console
publishes its :class:`~rtrecon.contract.wire.OperatorMessage` to the stimulus program the same way
(``kinds=(OperatorMessage,)`` on the subscriber).

Encryption: pass ``curve=load_curve(keys_dir, role)`` (:mod:`rtrecon.contract.keys`) to every end; the
binding end admits only known public keys, the connecting end names the ``server_role`` whose
key it pins.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.monitor

from rtrecon.contract.keys import CurveKeys
from rtrecon.contract.layout import atomic_file, fsync_dir
from rtrecon.contract.wire import (
    AckMessage,
    EventMessage,
    HeartbeatMessage,
    HelloMessage,
    Message,
    RunEndMessage,
    SequenceMessage,
    ShownMessage,
    StatusMessage,
    TrialResultMessage,
    VolumeMessage,
    VolumeMissingMessage,
    WireError,
    decode,
    encode,
    validate,
)

__all__ = [
    "Key",
    "KeyFunc",
    "volume_key",
    "trial_key",
    "result_key",
    "ReliableSender",
    "ReliableReceiver",
    "StatusPublisher",
    "StatusSubscriber",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "link_clients",
]

log = logging.getLogger(__name__)

Key = tuple[int, int]
KeyFunc = Callable[[Message], Key]

#: Largest frame a reliable receiver reads unless told otherwise: a 256×256×128 float64 volume.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
#: Largest frame a sender or status subscriber reads (control and status messages are small).
CONTROL_MAX_MESSAGE_BYTES = 1 << 20

_SPOOL_MAGIC = b"RTRSPL1\n"
_SPOOL_SUFFIX = ".frames"


#: What a reliable receiver may send back to its sender besides acks and heartbeats.
_NOTICES = (ShownMessage,)
_MAX_NOTICES = 1000


def volume_key(message: Message) -> Key:
    """(run, key) of an item on the volume link: a volume's index; a run end sits at ``n_volumes``."""
    if isinstance(message, (VolumeMessage, VolumeMissingMessage)):
        return message.run, message.index
    if isinstance(message, RunEndMessage):
        return message.run, message.n_volumes
    raise TypeError(f"a {message.KIND} message does not travel on a volume link")


def trial_key(message: Message) -> Key:
    """(run, key) of an item on the event link: its trial number (so one event per trial)."""
    if isinstance(message, EventMessage):
        return message.run, message.trial
    raise TypeError(f"a {message.KIND} message does not travel on an event link")


def result_key(message: Message) -> Key:
    """(run, key) of an item on the result link: the result's ``sequence`` (a trial is released several times)."""
    if isinstance(message, TrialResultMessage):
        return message.run, message.sequence
    raise TypeError(f"a {message.KIND} message does not travel on a result link")


_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol error: security mechanism mismatch",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "authentication refused",
}
_HANDSHAKE_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_HANDSHAKE_FAILURES)


def link_clients(server_role: str, key: KeyFunc) -> tuple[str, ...] | None:
    """The roles whose keys a reliable receiver of ``server_role`` admits on the link of ``key``.

    The volume link admits the bridge, the event link (served by the engine) the stimulus program,
    the result link (served by the stimulus program) the engine. None (every known role) for a
    pairing the session does not define.
    """
    if key is volume_key:
        return ("bridge",)
    if key is trial_key:
        return ("stimulus",) if server_role == "engine" else None
    if key is result_key:
        return ("engine",) if server_role == "stimulus" else None
    return None


def _peer_address(frame: zmq.Frame) -> str:
    try:
        return frame.get("Peer-Address") or "?"
    except zmq.ZMQError:
        return "?"


class _Link:
    """A socket in its own context (a CURVE authenticator is per context) and the heartbeat clock."""

    _PEER = "peer"  # what the other end is called in the log

    def __init__(
        self,
        socket_type: int,
        endpoint: str,
        *,
        bind: bool,
        curve: CurveKeys | None,
        server_role: str | None,
        heartbeat_s: float,
        liveness: float,
        name: str,
        max_message_bytes: int | None = None,
        client_roles: Sequence[str] | None = None,
    ) -> None:
        if heartbeat_s <= 0 or liveness < 1:
            raise ValueError(f"{name}: heartbeat_s must be > 0 and liveness ≥ 1 (got {heartbeat_s}, {liveness})")
        self.name = name
        self.endpoint = endpoint
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self._context = zmq.Context()
        self._auth = None
        self._monitor: zmq.Socket | None = None
        self._bind = bind
        self._handshake_failed = False
        self._next_redial = 0.0
        self._socket = self._context.socket(socket_type)
        try:
            self._socket.linger = 200
            ivl = max(1, int(heartbeat_s * 1000))
            self._socket.heartbeat_ivl = ivl
            self._socket.heartbeat_timeout = int(ivl * liveness)
            self._socket.heartbeat_ttl = int(ivl * liveness)
            if max_message_bytes is not None:
                # libzmq drops the connection of a peer whose frame is larger, before reading it.
                self._socket.maxmsgsize = int(max_message_bytes)
            if curve is not None:
                if bind:
                    self._auth = curve.apply_server(self._socket, self._context, name, client_roles)
                else:
                    curve.apply_client(self._socket, server_role or "")
            if bind:
                self._socket.bind(endpoint)
            else:
                # libzmq gives up on an endpoint whose handshake failed for good (a peer without
                # the same encryption held the port): the monitor sees it, and the link re-dials.
                self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_EVENTS)
                self._socket.connect(endpoint)
        except Exception:
            self.close()
            raise
        self._last_heard: float | None = None
        self._next_heartbeat = 0.0
        self._reported_dead = False

    def _heard(self) -> None:
        self._last_heard = time.monotonic()
        self._reported_dead = False

    def _alive(self) -> bool:
        """Whether the peer was heard within ``liveness × heartbeat_s``; warns once when it falls silent."""
        if self._last_heard is None:
            return False
        silent = time.monotonic() - self._last_heard
        alive = silent <= self.heartbeat_s * self.liveness
        if not alive and not self._reported_dead:
            self._reported_dead = True
            log.warning("%s: %s on %s silent for %.1f s: considered dead", self.name, self._PEER, self.endpoint, silent)
        return alive

    def _wait(self, deadline: float, events: int) -> int:
        """Poll the socket until the deadline or the next heartbeat, whichever is first."""
        self._watch_handshakes()
        wait = max(0.0, min(deadline, self._next_heartbeat) - time.monotonic())
        return self._socket.poll(int(wait * 1000), events)

    def _watch_handshakes(self) -> None:
        """Re-dial after a failed handshake (at most once per heartbeat), telling the operator once."""
        if self._monitor is None:
            return
        while self._monitor.poll(0):
            event = zmq.utils.monitor.recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self._handshake_failed:
                    log.warning("%s: handshake with %s succeeded: the link is back", self.name, self.endpoint)
                self._handshake_failed = False
                continue
            if not self._handshake_failed:
                log.warning(
                    "%s: handshake with %s failed (%s): the peer there does not use the same encryption "
                    "(CURVE keys on one side only, or another program on the port); re-dialling until the right peer answers",
                    self.name, self.endpoint, _HANDSHAKE_FAILURES.get(event["event"], event["event"]),
                )
            self._handshake_failed = True
        now = time.monotonic()
        if self._handshake_failed and now >= self._next_redial:
            self._next_redial = now + self.heartbeat_s
            try:
                self._socket.disconnect(self.endpoint)
            except zmq.ZMQError:
                pass  # already dropped by libzmq
            self._socket.connect(self.endpoint)

    def close(self) -> None:
        """Close the socket and its context (idempotent)."""
        if self._monitor is not None:
            if not self._socket.closed:
                self._socket.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None and not self._socket.closed:
            self._socket.close()
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if not self._context.closed:
            self._context.term()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


@dataclass(frozen=True)
class _Item:
    seq: int
    run: int
    key: int
    path: Path


def _write_spool(path: Path, frames: list[bytes]) -> None:
    """Write atomically (a killed process leaves the whole file or none); :func:`_sync` makes it durable."""
    header = _SPOOL_MAGIC + struct.pack(f"<I{len(frames)}Q", len(frames), *(len(f) for f in frames))
    # Not durable here: send() sends first and fsyncs after (see there), with _sync.
    with atomic_file(path, durable=False) as fh:
        fh.write(header)
        for frame in frames:
            fh.write(frame)


def _lock_exclusive(fd: int) -> None:
    """Lock the open file ``fd`` for this sender until it is closed; BlockingIOError if another holds it.

    ``fcntl`` exists on POSIX only: imported here so that the module, hence the stimulus program
    and its link, also start on Windows, where ``msvcrt`` locks the file's first byte instead.
    """
    try:
        import fcntl
    except ImportError:
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as exc:  # Windows says "permission denied" for a byte another handle locked
            raise BlockingIOError(str(exc)) from exc
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _sync(path: Path) -> None:
    """fsync a spool file and its folder, so that it survives a power cut too."""
    fd = os.open(path, os.O_RDWR)  # Windows fsyncs only a handle open for writing
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _read_spool(path: Path, first_only: bool = False) -> list[bytes]:
    with open(path, "rb") as fh:
        if fh.read(len(_SPOOL_MAGIC)) != _SPOOL_MAGIC:
            raise WireError(f"{path}: not a spooled message")
        (count,) = struct.unpack("<I", fh.read(4))
        raw = fh.read(8 * count)
        if count < 2 or len(raw) != 8 * count:
            raise WireError(f"{path}: truncated spool header")
        lengths = struct.unpack(f"<{count}Q", raw)
        frames = []
        for length in lengths[:1] if first_only else lengths:
            frame = fh.read(length)
            if len(frame) != length:
                raise WireError(f"{path}: truncated ({len(frame)} of {length} bytes)")
            frames.append(frame)
        return frames


class ReliableSender(_Link):
    """The sending end of a reliable link (DEALER, connects to ``endpoint``).

    ``spool_dir`` is this link's spool (one per sender): items live in ``spool_dir/<session>/``.
    With ``max_in_flight``, at most that many items are on the wire unacknowledged (backpressure:
    the rest wait in the spool, so a fast source cannot flood the receiver's memory); ``lead``
    and ``max_lead`` report how far ahead of the receiver the sender is.
    A sender started on a spool that already holds items of ``session`` (a restart) reloads them
    and resends whatever the receiver has not persisted. ``key`` maps an item to (run, key).
    With ``curve``, the receiver must be the CURVE server of role ``server_role``.
    """

    _PEER = "receiver"
    _CACHE_MAX = 64  # frames kept in memory for first transmission; resends read the spool

    def __init__(
        self,
        endpoint: str,
        session: str,
        spool_dir: str | Path,
        *,
        key: KeyFunc = volume_key,
        curve: CurveKeys | None = None,
        server_role: str = "engine",
        heartbeat_s: float = 1.0,
        liveness: float = 3,
        name: str = "bridge",
        max_in_flight: int | None = None,
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"{name}: max_in_flight must be ≥ 1 (got {max_in_flight})")
        self.max_in_flight = max_in_flight
        self.max_lead = 0  # the most items seen sent and not yet acknowledged
        self.session = session
        self._key = key
        self._spool = Path(spool_dir) / re.sub(r"[^A-Za-z0-9._-]", "_", session)
        self._items: list[_Item] = []
        self._last_key: dict[int, int] = {}
        self._lock: int | None = None
        super().__init__(
            zmq.DEALER, endpoint, bind=False, curve=curve, server_role=server_role,
            heartbeat_s=heartbeat_s, liveness=liveness, name=name, max_message_bytes=CONTROL_MAX_MESSAGE_BYTES,
        )
        try:
            # Without IMMEDIATE, ZeroMQ would queue items on a pipe to a receiver not yet connected.
            self._socket.immediate = True
            self._spool.mkdir(parents=True, exist_ok=True)
            self._lock = os.open(self._spool / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _lock_exclusive(self._lock)
            except BlockingIOError:
                raise RuntimeError(f"{self._spool}: spool in use by another sender (one sender per spool)") from None
            self._load_spool()
        except BaseException:
            self.close()
            raise
        self._acked: dict[int, int] = {}
        self._refused: dict[tuple[int, int], str] = {}
        self._queue: deque[_Item] = deque()
        self._cache: dict[int, list[bytes]] = {}
        self._notices: list[Message] = []
        self._connected = False
        self._attempt = 0  # Hellos sent so far
        self._answered = 0  # answers to Hellos up to this attempt are stale once connected

    def _load_spool(self) -> None:
        for stale in self._spool.glob(f".*{_SPOOL_SUFFIX}.*tmp"):
            # A write cut short by a crash: its send() never returned, so the item was never sent.
            log.warning("%s: removing the incomplete spool file %s", self.name, stale)
            stale.unlink()
        paths = sorted(self._spool.glob(f"*{_SPOOL_SUFFIX}"))
        for path in paths:
            try:
                head = decode(_read_spool(path, first_only=True))
            except (WireError, struct.error) as exc:
                if path == paths[-1]:
                    # send() fsyncs each file before the next is written, so only the last can be
                    # torn (by an OS crash); its owner resends it from the source after `spooled`.
                    log.warning("%s: removing the torn last spool file %s: %s", self.name, path, exc)
                    path.unlink()
                    break
                raise WireError(f"{path}: corrupt spool file: {exc}") from exc
            if not isinstance(head, SequenceMessage) or head.session != self.session:
                raise WireError(f"{path}: not an item of session {self.session!r}")
            last = self._last_key.get(head.run, -1)
            if head.prev != last or head.seq != len(self._items) or path.stem != f"{head.seq:010d}":
                raise WireError(f"{path}: out of sequence (seq {head.seq}, run {head.run}, prev {head.prev}, expected {last})")
            self._items.append(_Item(head.seq, head.run, head.key, path))
            self._last_key[head.run] = head.key

    def close(self) -> None:
        """Close the link and release the spool (idempotent); the spool's items stay on disk."""
        super().close()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    @property
    def pending(self) -> int:
        """Spooled items not yet acknowledged by the receiver."""
        return sum(1 for item in self._items if item.key > self._acked.get(item.run, -1))

    @property
    def spooled(self) -> dict[int, int]:
        """run -> last key spooled: a restarted sender's owner resumes its source after these."""
        return dict(self._last_key)

    @property
    def acked(self) -> dict[int, int]:
        """run -> last key the receiver has acknowledged (as far as this sender knows)."""
        return dict(self._acked)

    @property
    def lead(self) -> int:
        """Items sent and not yet acknowledged while connected (at most ``max_in_flight``)."""
        return max(0, self.pending - len(self._queue)) if self._connected else 0

    @property
    def refused(self) -> dict[tuple[int, int], str]:
        """(run, key) -> why the receiver refused that item (it counts as acknowledged)."""
        return dict(self._refused)

    @property
    def connected(self) -> bool:
        """The receiver has answered a Hello and is alive: items are being sent."""
        return self._connected and self._alive()

    @property
    def peer_alive(self) -> bool:
        """The receiver was heard within ``liveness × heartbeat_s`` (a warning is logged when it falls silent)."""
        return self._alive()

    def send(self, message: Message) -> Key:
        """Spool ``message`` and queue it for sending; returns its (run, key).

        Raises :class:`ValueError` if it is of another session, has a negative key, or a key not
        above the last one sent in its run.
        """
        try:
            run, key = self._key(message)
        except TypeError as exc:
            raise ValueError(f"{self.name}: {exc}") from exc
        if getattr(message, "session", self.session) != self.session:
            raise ValueError(f"{self.name}: message of session {message.session!r} on a link of {self.session!r}")
        prev = self._last_key.get(run, -1)
        if key < 0:
            raise ValueError(f"{self.name}: key {key} of run {run} is negative")
        if key <= prev:
            raise ValueError(f"{self.name}: key {key} of run {run} comes after key {prev}: keys must increase within a run")
        seq = len(self._items)
        frames = encode(SequenceMessage(session=self.session, run=run, key=key, prev=prev, seq=seq)) + encode(message)
        path = self._spool / f"{seq:010d}{_SPOOL_SUFFIX}"
        _write_spool(path, frames)
        item = _Item(seq, run, key, path)
        self._items.append(item)
        self._last_key[run] = key
        if self._connected:
            self._queue.append(item)
            if len(self._cache) < self._CACHE_MAX:
                self._cache[seq] = frames
        # Sent before the fsync, which would delay it by milliseconds: the renamed file already
        # survives a crash of this process, and the fsync covers a crash of the machine.
        self._pump()
        _sync(path)
        return run, key

    def poll(self, timeout_s: float = 0.0) -> None:
        """Handle the receiver's messages, send heartbeats and queued items, for up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._pump()
            # Writable only matters while an item may go out: held at max_in_flight, a writable socket
            # would end every wait at once and spin a core until the deadline (the demo's bridge spent
            # 12 s of CPU that way, beside an engine decoding on the same two cores).
            may_send = self._queue and self._connected and (self.max_in_flight is None or self.lead < self.max_in_flight)
            events = zmq.POLLIN | (zmq.POLLOUT if may_send else 0)
            ready = self._wait(deadline, events)
            if ready & zmq.POLLIN:
                self._drain()
            if time.monotonic() >= deadline:
                self._pump()
                return

    def notices(self) -> list[Message]:
        """The notices the receiver sent since the last call (:meth:`ReliableReceiver.notify`), oldest first."""
        out, self._notices = self._notices, []
        return out

    def wait_acked(self, timeout_s: float) -> bool:
        """Poll until every spooled item is acknowledged (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.poll(min(remaining, 0.05))
        return True

    def _drain(self) -> None:
        # Bounded, so that a peer flooding the socket cannot hold poll() past its timeout for long.
        for _ in range(1000):
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            peer = _peer_address(frames[0])
            try:
                message = decode([f.bytes for f in frames])
            except WireError as exc:
                log.warning("%s: dropped a message from receiver %s: %s", self.name, peer, exc)
                continue
            if isinstance(message, HelloMessage):
                self._on_hello(message, peer)
            elif isinstance(message, AckMessage):
                if message.session != self.session:
                    log.warning("%s: dropped an ack of session %r from %s", self.name, message.session, peer)
                    continue
                self._heard()
                if message.refused >= 0 and (message.run, message.refused) not in self._refused:
                    self._refused[(message.run, message.refused)] = message.reason
                    log.warning("%s: receiver %s refused item %d of run %d: %s",
                                self.name, peer, message.refused, message.run, message.reason)
                if message.index > self._acked.get(message.run, -1):
                    self._acked[message.run] = message.index
            elif isinstance(message, HeartbeatMessage):
                self._heard()
            elif isinstance(message, _NOTICES) and getattr(message, "session", None) == self.session:
                self._heard()
                self._notices = [*self._notices[-(_MAX_NOTICES - 1):], message]  # bounded if never read
            else:
                log.warning("%s: dropped an unexpected %s message from receiver %s", self.name, message.KIND, peer)

    def _on_hello(self, hello: HelloMessage, peer: str) -> None:
        if hello.session != self.session:
            log.warning(
                "%s: receiver %s (%s) is in session %r, not %r: not sending to it",
                self.name, hello.peer, peer, hello.session, self.session,
            )
            return
        self._heard()
        if self._connected and 0 < hello.attempt <= self._answered:
            # A late answer to a Hello sent before the link came up: what it says is already done.
            return
        if not self._connected:
            self._answered = self._attempt
        # The receiver's word is final, even below earlier acks: it may have lost its store.
        self._acked = {run: key for run, key in hello.persisted.items()}
        self._queue = deque(item for item in self._items if item.key > self._acked.get(item.run, -1))
        queued = {item.seq for item in self._queue}
        self._cache = {seq: frames for seq, frames in self._cache.items() if seq in queued}
        if not self._connected or self._queue:
            log.info("%s: receiver %s (%s) persisted %s; sending %d item(s)", self.name, hello.peer, peer, dict(hello.persisted), len(self._queue))
        self._connected = True

    def _pump(self) -> None:
        now = time.monotonic()
        if self._connected and not self._alive():
            self._connected = False
            self._queue.clear()
            self._cache.clear()
        if now >= self._next_heartbeat:
            beat: Message = (
                HeartbeatMessage(peer=self.name, sent_time=time.time(), lead=self.lead, lead_bound=self.max_in_flight or 0)
                if self._connected
                else HelloMessage(peer=self.name, session=self.session, attempt=self._attempt + 1)
            )
            try:
                self._socket.send_multipart(encode(beat), zmq.NOBLOCK)
                self._next_heartbeat = now + self.heartbeat_s
                if isinstance(beat, HelloMessage):
                    self._attempt += 1
            except zmq.Again:
                # No connection yet: retry at the next poll, so the Hello goes out as soon as one is up.
                self._next_heartbeat = now + min(self.heartbeat_s, 0.05)
        lead = self.lead if self._connected and self._queue else 0
        while self._connected and self._queue:
            if self.max_in_flight is not None and lead >= self.max_in_flight:
                return
            item = self._queue[0]
            frames = self._cache.get(item.seq) or _read_spool(item.path)
            try:
                self._socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                return
            self._queue.popleft()
            self._cache.pop(item.seq, None)
            lead += 1
            self.max_lead = max(self.max_lead, lead)


@dataclass
class _Delivered:
    key: int
    persisted: bool = False
    refused: str = ""


class ReliableReceiver(_Link):
    """The receiving end of a reliable link (ROUTER, binds ``endpoint``).

    ``persisted`` maps each run of ``session`` the application already holds to the last key
    it persisted (a restarted receiver passes what its store holds; runs left out have none).
    ``recv`` returns items in order, once each (their arrays are views of the received frames,
    not copies); call ``ack`` for each after persisting it, or ``refuse`` for one that cannot be.

    An item whose sequence frame is sound but whose payload is not (it does not decode, or
    :func:`~rtrecon.contract.wire.validate` refuses it), or whose key is more than ``max_key_jump`` above
    the run's last item (None: no bound), is refused here: logged, never returned, and
    acknowledged to the sender with the reason, so the link goes on. Frames larger than
    ``max_message_bytes`` are refused by ZeroMQ itself (the sender's connection is dropped).
    """

    _PEER = "sender"

    def __init__(
        self,
        endpoint: str,
        session: str,
        persisted: Mapping[int, int] | None = None,
        *,
        key: KeyFunc = volume_key,
        curve: CurveKeys | None = None,
        heartbeat_s: float = 1.0,
        liveness: float = 3,
        name: str = "engine",
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        max_key_jump: int | None = None,
        client_roles: Sequence[str] | None = None,
    ) -> None:
        if max_key_jump is not None and max_key_jump < 1:
            raise ValueError(f"{name}: max_key_jump must be ≥ 1 (got {max_key_jump})")
        super().__init__(
            zmq.ROUTER, endpoint, bind=True, curve=curve, server_role=None,
            heartbeat_s=heartbeat_s, liveness=liveness, name=name, max_message_bytes=max_message_bytes,
            client_roles=client_roles if client_roles is not None or curve is None else link_clients(curve.role, key),
        )
        self.session = session
        self.max_key_jump = max_key_jump
        self._key = key
        self._persisted: dict[int, int] = {int(r): int(k) for r, k in (persisted or {}).items()}
        self._delivered: dict[int, int] = dict(self._persisted)
        # The last key delivered to the application, per run: key jumps are measured from it.
        self._accepted: dict[int, int] = dict(self._persisted)
        self._unacked: dict[int, deque[_Delivered]] = {}
        self._peer: bytes | None = None
        self._peer_name = "?"
        self._peer_lead: tuple[int, int] | None = None

    @property
    def peer_alive(self) -> bool:
        """The sender was heard within ``liveness × heartbeat_s`` (a warning is logged when it falls silent)."""
        return self._alive()

    @property
    def peer_lead(self) -> tuple[int, int] | None:
        """(items the sender has sent and not yet had acknowledged, its bound; 0: unbounded), as its
        latest heartbeat said; None until a heartbeat said it, or while the sender is silent."""
        return self._peer_lead if self._alive() else None

    @property
    def persisted(self) -> dict[int, int]:
        """run -> last key persisted (given at start, then acknowledged)."""
        return dict(self._persisted)

    def recv(self, timeout_s: float = 0.0) -> Message | None:
        """The next item, in order and never twice, or None if none came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._beat()
            if self._wait(deadline, zmq.POLLIN):
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    continue
                message = self._handle(frames)
                if message is not None:
                    return message
            if time.monotonic() >= deadline:
                return None

    def ack(self, message: Message) -> None:
        """``message`` (returned by :meth:`recv`) is persisted: acknowledge it to the sender."""
        self._done(*self._key(message), "")

    def refuse(self, message: Message, reason: str) -> None:
        """``message`` (returned by :meth:`recv`) cannot be used: acknowledge it with ``reason``.

        The sender stops resending it and logs the reason; the link goes on with the next item.
        """
        run, key = self._key(message)
        log.warning("%s: refused item %d of run %d from %s: %s", self.name, key, run, self._peer_name, reason)
        self._done(run, key, reason or "refused")

    def notify(self, message: Message) -> None:
        """Send a notice (a :class:`~rtrecon.contract.wire.ShownMessage`) to the sender, best effort: like a
        heartbeat, it is lost if no sender is connected (``ValueError`` for another kind, or one that
        :func:`~rtrecon.contract.wire.validate` refuses)."""
        if not isinstance(message, _NOTICES):
            raise ValueError(f"{self.name}: a {message.KIND} message is not a notice")
        validate(message)
        self._send_to_peer(message)

    def _done(self, run: int, key: int, refused: str) -> None:
        for entry in self._unacked.get(run, ()):
            if entry.key == key:
                entry.persisted = True
                entry.refused = refused
                break
        else:
            if key <= self._persisted.get(run, -1):
                return
            raise ValueError(f"{self.name}: item {key} of run {run} was not delivered by this receiver")
        queue = self._unacked[run]
        last, refused_key, reason = None, -1, ""
        while queue and queue[0].persisted:
            entry = queue.popleft()
            last = entry.key
            if entry.refused:
                refused_key, reason = entry.key, entry.refused
        if last is not None:
            self._persisted[run] = last
            self._send_to_peer(AckMessage(session=self.session, run=run, index=last, refused=refused_key, reason=reason[:500]))

    def _send_to_peer(self, message: Message) -> None:
        if self._peer is None:
            return
        try:
            self._socket.send_multipart([self._peer, *encode(message)], zmq.NOBLOCK)
        except zmq.Again:
            # A lost ack or heartbeat is repaired: the sender resends, and a duplicate is re-acked.
            pass

    def _beat(self) -> None:
        self._alive()
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_s
            self._send_to_peer(HeartbeatMessage(peer=self.name, sent_time=time.time()))

    def _hello(self, attempt: int = 0) -> None:
        self._send_to_peer(HelloMessage(peer=self.name, session=self.session, persisted=dict(self._persisted), attempt=attempt))

    def _handle(self, frames: list[zmq.Frame]) -> Message | None:
        identity = frames[0].bytes
        address = _peer_address(frames[1]) if len(frames) > 1 else "?"
        peer = f"{self._peer_name if identity == self._peer else 'a peer'} at {address}"
        try:
            if len(frames) < 2:
                raise WireError("empty message")
            head = decode([frames[1].bytes])
            if not isinstance(head, SequenceMessage) and len(frames) > 2:
                raise WireError(f"a {head.KIND} message came with {len(frames) - 2} extra frame(s)")
        except WireError as exc:
            log.warning("%s: dropped a message from %s: %s", self.name, peer, exc)
            return None
        payload: Message | str | None = None
        if isinstance(head, SequenceMessage):
            try:
                # The item's arrays are read in place from the received frames (no copy of the voxels).
                payload = decode([f.buffer for f in frames[2:]])
            except WireError as exc:
                payload = str(exc)  # a sound place in the sequence holding a bad item: refused there
        if isinstance(head, HelloMessage):
            if head.session != self.session:
                log.warning("%s: sender %s at %s is in session %r, not %r: ignored", self.name, head.peer, address, head.session, self.session)
                return None
            if identity != self._peer:
                log.info("%s: sender %s at %s says hello; persisted %s", self.name, head.peer, address, self._persisted)
            self._adopt(identity, head.peer, greet=False)
            self._hello(head.attempt)
            return None
        if isinstance(head, HeartbeatMessage):
            self._adopt(identity, head.peer, greet=True)
            self._peer_lead = (head.lead, head.lead_bound) if head.lead >= 0 else None
            return None
        if not isinstance(head, SequenceMessage):
            log.warning("%s: dropped an unexpected %s message from %s", self.name, head.KIND, peer)
            return None
        return self._on_item(identity, head, payload, peer)

    def _adopt(self, identity: bytes, name: str | None, *, greet: bool) -> None:
        """Make ``identity`` the current sender; greet a connection not heard before."""
        self._heard()
        if identity != self._peer:
            self._peer = identity
            if greet:
                self._hello()
        if name:
            self._peer_name = name

    def _on_item(self, identity: bytes, head: SequenceMessage, payload: Message | str, peer: str) -> Message | None:
        if head.session != self.session or getattr(payload, "session", self.session) != self.session:
            log.warning("%s: dropped an item of session %r from %s (this link is %r)", self.name, head.session, peer, self.session)
            return None
        run, key = head.run, head.key
        problem = payload if isinstance(payload, str) else None
        if problem is None:
            try:
                item_key = self._key(payload)
            except TypeError as exc:
                problem = str(exc)
            else:
                if item_key != (run, key):
                    log.warning("%s: dropped an item from %s: its sequence frame says run %d key %d, the %s says run %d key %d",
                                self.name, peer, run, key, payload.KIND, *item_key)
                    return None
        if problem is not None and identity != self._peer:
            # Only the sender that opened the link may have a bad item refused (which takes its
            # key): from anyone else it is dropped, so a stray peer cannot use up the real keys.
            log.warning("%s: dropped an item from %s: %s", self.name, peer, problem)
            return None
        self._adopt(identity, None, greet=True)
        last = self._delivered.get(run, -1)
        if key <= last:
            if key <= self._persisted.get(run, -1):
                # Its ack was lost (or went to a connection now gone): say it again.
                self._send_to_peer(AckMessage(session=self.session, run=run, index=self._persisted[run]))
            return None
        if head.prev != last:
            log.debug("%s: item %d of run %d follows %d, not %d: dropped until resent", self.name, key, run, head.prev, last)
            return None
        accepted = self._accepted.get(run, -1)
        if problem is None and self.max_key_jump is not None and key - accepted > self.max_key_jump:
            problem = f"key {key} jumps from {accepted} (more than {self.max_key_jump} ahead)"
        self._delivered[run] = key
        self._unacked.setdefault(run, deque()).append(_Delivered(key))
        if problem is not None:
            log.warning("%s: refused item %d of run %d from %s: %s", self.name, key, run, peer, problem)
            self._done(run, key, problem)
            return None
        self._accepted[run] = key
        return payload  # type: ignore[return-value]


class StatusPublisher(_Link):
    """Publishes :class:`~rtrecon.contract.wire.StatusMessage` on a PUB socket bound to ``endpoint``."""

    def __init__(self, endpoint: str, *, curve: CurveKeys | None = None, name: str = "engine") -> None:
        super().__init__(zmq.PUB, endpoint, bind=True, curve=curve, server_role=None, heartbeat_s=1.0, liveness=3, name=name)

    def publish(self, message: Message) -> bool:
        """Queue ``message`` for every subscriber; False if it could not be (never blocks)."""
        try:
            self._socket.send_multipart(encode(message), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True


class StatusSubscriber(_Link):
    """Receives the messages of ``kinds`` (default: the status feed's status and trial results) from
    a :class:`StatusPublisher` at ``endpoint``; others are dropped with a warning."""

    def __init__(
        self,
        endpoint: str,
        *,
        curve: CurveKeys | None = None,
        server_role: str = "engine",
        name: str = "dashboard",
        kinds: tuple[type[Message], ...] = (StatusMessage, TrialResultMessage),
    ) -> None:
        super().__init__(zmq.SUB, endpoint, bind=False, curve=curve, server_role=server_role, heartbeat_s=1.0, liveness=3,
                         name=name, max_message_bytes=CONTROL_MAX_MESSAGE_BYTES)
        self._socket.subscribe(b"")
        self.kinds = kinds

    def recv(self, timeout_s: float = 0.0) -> Message | None:
        """The next message of one of ``kinds``, or None if none came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._watch_handshakes()
            remaining = max(0.0, deadline - time.monotonic())
            if not self._socket.poll(int(min(remaining, 0.1) * 1000), zmq.POLLIN):
                if time.monotonic() >= deadline:
                    return None
                continue
            frames = self._socket.recv_multipart(copy=False)
            try:
                message = decode([f.bytes for f in frames])
            except WireError as exc:
                log.warning("%s: dropped a message from %s at %s: %s", self.name, self.endpoint, _peer_address(frames[0]), exc)
                continue
            if isinstance(message, self.kinds):
                return message
            log.warning("%s: dropped a %s message on the feed %s", self.name, message.KIND, self.endpoint)
