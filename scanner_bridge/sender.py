"""Send what a volume source produces to the engine: source events → wire messages → transport.

::

    from rtrecon.contract.transport import ReliableSender, volume_key
    from scanner_bridge.sender import BridgeSender
    from scanner_bridge.watcher import FolderWatcher

    with ReliableSender("tcp://engine:5555", "sub-01_ses-01", "spool/bridge") as link:
        report = BridgeSender(link).run(FolderWatcher("/mnt/scanner/export"))

:func:`volume_message` is the one place where scanner data becomes wire data, and it copies an
explicit list of fields: voxels, affine, the run and index, the TR, slice times and acquisition
time. Nothing else of the DICOM headers (names, IDs, dates, institutions, UIDs, descriptions)
nor the local ``series`` key or file names of an :class:`~scanner_bridge.volume.AcquiredVolume`
exists in a :class:`~rtrecon.contract.wire.VolumeMessage`, so none of it can cross the wire or reach the
sender's spool.

:meth:`BridgeSender.run` iterates the source in a background thread (a watcher blocks between
files) while the calling thread owns the ZeroMQ link, polling it between events so heartbeats and
acknowledgements flow. Each volume carries ``stamps`` (``time.time()`` seconds): ``written`` (the
newest modification time of its source files, when they are files), ``read`` (the source
handed it over) and ``sent``. A :class:`~scanner_bridge.assembly.VolumeMissing` becomes a
:class:`~rtrecon.contract.wire.VolumeMissingMessage`; when the source ends, each run gets a
:class:`~rtrecon.contract.wire.RunEndMessage` and the sender waits for the
receiver to acknowledge everything, for as long as acknowledgements keep coming (it gives up
after ``drain_timeout_s`` without one). While items wait, it warns (once per silence) when nothing
has been acknowledged for ``ack_warn_trs`` TRs: "sent" alone does not mean an engine got it.
Items already in the spool from before a restart (the
restarted watcher reads the export folder again) are recognised by their key and skipped: the
transport resends what the receiver lacks.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rtrecon.contract.transport import ReliableSender, volume_key
from rtrecon.contract.wire import Message, RunEndMessage, VolumeMessage, VolumeMissingMessage, WireError, validate
from scanner_bridge.assembly import FileRejected, RunStarted, VolumeMissing, VolumeReady
from scanner_bridge.sources import SourceEvent, VolumeSource
from scanner_bridge.volume import AcquiredVolume

__all__ = ["BridgeSender", "SendReport", "volume_message", "written_time"]

logger = logging.getLogger(__name__)

_END = object()


def written_time(volume: AcquiredVolume) -> float | None:
    """When the last of the volume's files was written (newest mtime), if they are files."""
    times = []
    for path in volume.source_files:
        try:
            times.append(os.stat(path).st_mtime)
        except (OSError, TypeError, ValueError):
            continue
    return max(times) if times else None


def volume_message(session: str, run: int, volume: AcquiredVolume, stamps: dict[str, float] | None = None) -> VolumeMessage:
    """The wire message of one volume: voxels, geometry and acquisition timing, nothing else."""
    return VolumeMessage(
        session=session,
        run=run,
        index=volume.index,
        tr=float(volume.tr),
        voxels=volume.voxels,
        affine=volume.affine,
        slice_times=None if volume.slice_times is None else [float(t) for t in volume.slice_times],
        acquisition_time=None if volume.acquisition_time is None else float(volume.acquisition_time),
        stamps=dict(stamps or {}),
    )


@dataclass
class SendReport:
    """What one :meth:`BridgeSender.run` did."""

    volumes: int = 0
    missing: int = 0
    rejected: int = 0
    already_spooled: int = 0
    run_ends: int = 0
    ack_warnings: int = 0
    max_lead: int = 0  # the most items sent and not yet acknowledged
    all_acknowledged: bool = False
    runs: dict[int, int] = field(default_factory=dict)  # run -> number of volumes (last index + 1)


class BridgeSender:
    """Forwards a :class:`~scanner_bridge.sources.VolumeSource` over a :class:`~rtrecon.contract.transport.ReliableSender`.

    ``on_event(event, message)`` is called in the link's thread after each event was handled
    (``message`` is what was sent, ``None`` for events that send nothing or were already spooled),
    for progress displays.
    """

    def __init__(
        self,
        link: ReliableSender,
        *,
        poll_s: float = 0.05,
        drain_timeout_s: float = 30.0,
        on_event: Callable[[SourceEvent, Message | None], None] | None = None,
        ack_warn_trs: float = 5.0,
    ) -> None:
        self.link = link
        self.ack_warn_trs = ack_warn_trs
        self._tr = 2.0  # until a volume says
        self._acked_seen: dict[int, int] = {}
        self._waiting_since: float | None = None
        self._warned = False
        self.session = link.session
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self.on_event = on_event
        self.report = SendReport()

    def run(self, source: VolumeSource) -> SendReport:
        """Forward every event of ``source`` until it ends, then end the runs and drain the link."""
        inbox: queue.SimpleQueue = queue.SimpleQueue()

        def pump() -> None:
            try:
                for event in source:
                    inbox.put((event, time.time()))
            except BaseException as exc:  # re-raised in the link's thread
                inbox.put(exc)
            finally:
                inbox.put(_END)

        thread = threading.Thread(target=pump, name="bridge-source", daemon=True)
        thread.start()
        try:
            while True:
                self._watch_acks()
                try:
                    item = inbox.get(timeout=self.poll_s)
                except queue.Empty:
                    self.link.poll()
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                event, read_time = item
                message = self.handle(event, read_time)
                self.link.poll()
                if self.on_event is not None:
                    self.on_event(event, message)
        finally:
            source.close()
            thread.join(timeout=10)
        for run, n_volumes in sorted(self.report.runs.items()):
            if self._send(RunEndMessage(session=self.session, run=run, n_volumes=n_volumes)) is not None:
                self.report.run_ends += 1
        # the wait ends when the receiver stops making progress, not at a fixed time after the last
        # volume: an engine that is still catching up (a replay faster than it decodes) is no failure
        deadline = time.monotonic() + self.drain_timeout_s
        pending = self.link.pending
        while self.link.pending and time.monotonic() < deadline:
            self.link.poll(min(0.05, max(0.0, deadline - time.monotonic())))
            self._watch_acks()
            if self.link.pending < pending:
                pending = self.link.pending
                deadline = time.monotonic() + self.drain_timeout_s
        self.report.all_acknowledged = self.link.pending == 0
        self.report.max_lead = self.link.max_lead
        if not self.report.all_acknowledged:
            logger.warning("%d item(s) not acknowledged (none for the last %.0f s); they stay in the spool",
                           self.link.pending, self.drain_timeout_s)
        return self.report

    def handle(self, event: SourceEvent, read_time: float | None = None) -> Message | None:
        """Send what ``event`` calls for; returns the message sent (None if nothing was)."""
        if isinstance(event, VolumeReady):
            volume = event.volume
            stamps = {"read": time.time() if read_time is None else read_time}
            written = written_time(volume)
            if written is not None:
                stamps["written"] = written
            self._count(event.run, volume.index)
            stamps["sent"] = time.time()
            message = volume_message(self.session, event.run, volume, stamps)
            if volume.tr > 0 and volume.tr == volume.tr:  # a NaN TR is refused below
                self._tr = float(volume.tr)
            try:
                validate(message)
            except WireError as exc:
                # An impossible volume (NaN TR, NaN affine, ...) goes on the link as missing, with why.
                logger.warning("run %d volume %d refused before sending: %s", event.run, volume.index, exc)
                return self.handle(VolumeMissing(event.run, volume.index, volume.series, f"refused by the bridge: {exc}"))
            sent = self._send(message)
            if sent is not None:
                self.report.volumes += 1
            return sent
        if isinstance(event, VolumeMissing):
            self._count(event.run, event.index)
            message = self._send(VolumeMissingMessage(session=self.session, run=event.run, index=event.index, reason=event.reason))
            if message is not None:
                self.report.missing += 1
            return message
        if isinstance(event, RunStarted):
            return None
        if isinstance(event, FileRejected):
            self.report.rejected += 1
            return None
        raise TypeError(f"not a source event: {event!r}")

    def _watch_acks(self) -> None:
        """Warn once per silence when items wait and nothing was acknowledged for ``ack_warn_trs`` TRs."""
        now = time.monotonic()
        acked = self.link.acked
        if not self.link.pending or acked != self._acked_seen:
            self._acked_seen = acked
            self._waiting_since = now if self.link.pending else None
            self._warned = False
            return
        if self._waiting_since is None:
            self._waiting_since = now
        silent = now - self._waiting_since
        if not self._warned and silent >= self.ack_warn_trs * self._tr:
            self._warned = True
            self.report.ack_warnings += 1
            logger.warning("nothing acknowledged for %.1f s (%g TRs) with %d item(s) waiting: is the engine running "
                           "and listening on %s?", silent, self.ack_warn_trs, self.link.pending, self.link.endpoint)

    def _count(self, run: int, index: int) -> None:
        self.report.runs[run] = max(self.report.runs.get(run, 0), index + 1)

    def _send(self, message: Message) -> Message | None:
        # The only key conflict a bridge meets: an item spooled before a restart, read again.
        run, key = volume_key(message)
        if key <= self.link.spooled.get(run, -1):
            self.report.already_spooled += 1
            logger.debug("run %d item %d was spooled before a restart; not sent again", run, key)
            return None
        self.link.send(message)
        return message
