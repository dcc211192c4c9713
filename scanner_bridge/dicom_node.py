"""A DICOM storage node (C-STORE SCP) for scanners that push images instead of writing a share.

:class:`DicomNode` is a :class:`~scanner_bridge.sources.VolumeSource`. It listens as soon as it
is made (``port=0`` picks a free port, read it from :attr:`DicomNode.port`), accepts C-STORE of
MR images (classic, enhanced and legacy-converted enhanced: :data:`MR_STORAGE_CLASSES`) in every
transfer syntax pynetdicom knows (JPEG-lossless mosaics included) and C-ECHO, and feeds each received dataset to the same
:class:`~scanner_bridge.assembly.VolumeAssembler` the folder watcher uses::

    with DicomNode(ae_title="RTRECON", port=11112) as node:
        for event in node:
            ...

Configure the scanner (or a PACS forward rule) to send to that AE title, host and port.
Associations must call this node's AE title; ``allowed_callers`` restricts which calling AE
titles may connect. Datasets are handed from pynetdicom's association threads to the iterating
thread through a queue, so the assembler needs no locks; a dataset the assembler rejects is
logged (logger ``scanner_bridge.dicom_node``, WARNING, with the reason) and comes out as a
:class:`~scanner_bridge.assembly.FileRejected`.

With ``store_dir`` every received object is written there (fsynced, atomically renamed) before
the store is acknowledged, and a node started again on the same folder first re-reads what it
holds, so a crash or restart of the bridge loses nothing the scanner was told was stored (a
scanner cannot be asked again for what it already sent). The folder holds full DICOM headers:
it stays on the scanner side and is the bridge's to clean after the session. Without
``store_dir`` the store is acknowledged once the dataset is queued in memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydicom import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, evt
from pynetdicom.sop_class import (
    EnhancedMRImageStorage,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
    Verification,
)

from rtrecon.contract.layout import atomic_file
from scanner_bridge.assembly import VolumeAssembler
from scanner_bridge.sources import SourceEvent, VolumeSource, log_problem

__all__ = ["DicomNode", "MR_STORAGE_CLASSES"]

logger = logging.getLogger(__name__)

_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700

#: The storage SOP classes accepted: fMRI volumes come as one of these. (Offering every storage
#: class would also slow each association's negotiation several-fold.)
MR_STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)


class DicomNode(VolumeSource):
    """A C-STORE storage SCP as a volume source.

    Parameters
    ----------
    ae_title
        This node's AE title (what the scanner calls).
    host, port
        Where to listen (``port=0``: any free port, see :attr:`port`); by default only this
        machine can connect: give the address of the network card the scanner reaches.
    allowed_callers
        Calling AE titles admitted; an association from any other is rejected and logged
        (``None``: any, with a warning; ``rtrecon bridge receive`` always gives a list).
    missing_timeout_s
        How long a gap in the acquisition numbers may stay open before the volume is reported missing.
    idle_exit_s
        End the stream once no dataset has come for this long (``None``: never).
    tick_s
        How often timeouts are checked while nothing arrives.
    store_dir
        Where each received object is persisted before it is acknowledged (``None``: memory only).
    """

    def __init__(
        self,
        ae_title: str = "RTRECON",
        host: str = "127.0.0.1",
        port: int = 11112,
        *,
        allowed_callers: Sequence[str] | None = None,
        missing_timeout_s: float = 10.0,
        idle_exit_s: float | None = None,
        tick_s: float = 0.1,
        assembler: VolumeAssembler | None = None,
        clock: Callable[[], float] = time.monotonic,
        store_dir: Path | None = None,
    ) -> None:
        self.ae_title = ae_title
        self.store_dir = Path(store_dir) if store_dir is not None else None
        if self.store_dir is not None:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        self.idle_exit_s = idle_exit_s
        self.tick_s = tick_s
        self.assembler = assembler or VolumeAssembler(missing_timeout_s=missing_timeout_s, clock=clock)
        self._clock = clock
        self._inbox: queue.SimpleQueue[tuple[Dataset, str] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._iterated = False
        self._shutdown_lock = threading.Lock()
        self.received = 0

        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        if allowed_callers is not None:
            ae.require_calling_aet = list(allowed_callers)
        else:
            logger.warning("DICOM node %s admits any calling AE title", ae_title)
        self.allowed_callers = None if allowed_callers is None else tuple(allowed_callers)
        for sop_class in MR_STORAGE_CLASSES:
            ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._ae = ae
        self._server = ae.start_server((host, port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._on_store), (evt.EVT_REQUESTED, self._on_request)])
        self.host, self.port = self._server.server_address[:2]
        logger.info("DICOM node %s listening on %s:%d", ae_title, self.host, self.port)

    def _on_request(self, event: evt.Event) -> None:
        # pynetdicom rejects the association itself; this tells the operator who was turned away.
        request = event.assoc.requestor
        # The requestor's ae_title is filled in after this event; the request itself has it.
        calling = str(getattr(request.primitive, "calling_ae_title", "") or request.ae_title).strip()
        if self.allowed_callers is not None and calling not in self.allowed_callers:
            logger.warning("DICOM node %s refused an association from %s@%s (allowed: %s)",
                           self.ae_title, calling, request.address, ", ".join(self.allowed_callers))

    def _on_store(self, event: evt.Event) -> int:
        # Runs in an association thread: only decode and queue.
        ds = event.dataset
        ds.file_meta = event.file_meta
        requestor = event.assoc.requestor
        origin = f"C-STORE from {requestor.ae_title}@{requestor.address}: {ds.get('SOPInstanceUID', '?')}"
        if self.store_dir is not None:
            try:
                origin = str(self._persist(ds))
            except OSError as exc:
                logger.error("could not persist %s in %s: %s; the store is refused", origin, self.store_dir, exc)
                return _OUT_OF_RESOURCES
        self._inbox.put((ds, origin))
        return _SUCCESS

    def _persist(self, ds: Dataset) -> Path:
        uid = str(ds.get("SOPInstanceUID", "")) or f"noinstance-{time.time_ns()}"
        path = self.store_dir / f"{uid}.dcm"  # type: ignore[operator]
        with atomic_file(path) as fh:  # durable, folder included: the scanner is told it is stored
            ds.save_as(fh, enforce_file_format=True)
        return path

    def _stored(self) -> Iterator[SourceEvent]:
        """What an earlier node on the same store acknowledged, read again in order of arrival."""
        if self.store_dir is None:
            return
        for partial in self.store_dir.glob(".*.dcm.*tmp"):
            partial.unlink()  # never acknowledged: the scanner retries it
        for path in sorted(self.store_dir.glob("*.dcm"), key=lambda p: p.stat().st_mtime_ns):
            yield from self._logged(self.assembler.add_file(path))

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._inbox.put(None)
        if not self._iterated:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._shutdown_lock:
            if self._server is not None:
                self._server.shutdown()
                self._server = None

    def __iter__(self) -> Iterator[SourceEvent]:
        if self._iterated:
            raise RuntimeError("a DicomNode is iterated once")
        self._iterated = True
        yield from self._stored()
        last_activity = self._clock()
        try:
            while not self._stop.is_set():
                try:
                    item = self._inbox.get(timeout=self.tick_s)
                except queue.Empty:
                    item = None
                if item is not None:
                    ds, origin = item
                    self.received += 1
                    last_activity = self._clock()
                    yield from self._logged(self.assembler.add_dataset(ds, origin))
                yield from self._logged(self.assembler.check_timeouts())
                if self.idle_exit_s is not None and self._clock() - last_activity >= self.idle_exit_s:
                    break
        finally:
            self._shutdown()
        # Stores that completed before the shutdown still count.
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self.received += 1
                yield from self._logged(self.assembler.add_dataset(*item))
        yield from self._logged(self.assembler.finish())

    @staticmethod
    def _logged(events: list[SourceEvent]) -> Iterator[SourceEvent]:
        for event in events:
            log_problem(logger, event)
            yield event
