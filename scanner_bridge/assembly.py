"""Volume assembly: DICOM files in any order in, whole volumes in run order out.

The scanner (or the network, or a copy) delivers files in whatever order; the engine needs
volumes, each exactly once, in acquisition order. :class:`VolumeAssembler` is fed one
dataset at a time (:meth:`~VolumeAssembler.add_dataset`, :meth:`~VolumeAssembler.add_file`)
and answers with events:

* :class:`RunStarted` the first time a run's file is seen. Runs are numbered 1, 2, ... in the
  order they appear. A run is what its reader's ``run_key`` groups: a series, except for the
  Siemens XA interoperability export, whose per-volume series are one run.
* :class:`VolumeReady` when a volume is complete and every earlier volume of its run has been
  released: volumes leave strictly in index order, a complete volume waits for earlier ones.
* :class:`VolumeMissing` for a volume given up: by :meth:`~VolumeAssembler.check_timeouts`,
  when later volumes have been arriving for ``missing_timeout_s`` while it is still incomplete,
  and by :meth:`~VolumeAssembler.finish` at the end of the stream. What follows it is released.
* :class:`FileRejected` for a file that cannot be used: not DICOM or corrupt, an unsupported
  format, or one that does not fit its run (another matrix or orientation, a slice number
  beyond the volume, a volume already reported missing). Exact duplicates (same
  SOPInstanceUID, or a second file for a place already filled) are ignored silently.

The number of files a volume needs comes from the headers (see the readers), so a volume is
released the moment its last file arrives. Each file is decoded when it arrives, so that the
cost at a volume's completion is only stacking its slices; no DICOM header is kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from pydicom.dataset import Dataset

from scanner_bridge.dicom_file import InvalidDicomError, read_dicom
from scanner_bridge.readers import FORMAT_TAGS, ReaderError, SeriesReader, Slice, build_volume, header_stamp, reader_for
from scanner_bridge.volume import AcquiredVolume

__all__ = [
    "AssemblyEvent",
    "FileRejected",
    "RunStarted",
    "VolumeAssembler",
    "VolumeMissing",
    "VolumeReady",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VolumeReady:
    run: int
    volume: AcquiredVolume


@dataclass(frozen=True)
class VolumeMissing:
    run: int
    index: int
    series: str
    reason: str


@dataclass(frozen=True)
class FileRejected:
    origin: str
    reason: str


@dataclass(frozen=True)
class RunStarted:
    """A new run. ``description`` is a non-identifying label (series description or protocol)
    for local logs; ``acquisition`` holds non-identifying acquisition parameters (BIDS names:
    Manufacturer, EchoTime, FlipAngle, ...) for sidecars."""

    run: int
    series: str
    description: str
    acquisition: Mapping[str, float | str] = field(default_factory=dict)


AssemblyEvent = Union[VolumeReady, VolumeMissing, FileRejected, RunStarted]


@dataclass
class _Pending:
    """A volume being assembled: its files' slices by place, and when its first file came."""

    first_seen: float
    slots: dict[int, list[Slice]] = field(default_factory=dict)
    sources: dict[int, Path] = field(default_factory=dict)
    acquisition_time: float | None = None
    done: AcquiredVolume | None = None
    error: str | None = None  # why its files, all there, do not make a volume


@dataclass
class _Run:
    number: int
    key: str
    reader: SeriesReader
    next_index: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    # Released indices: True when released as a volume, False when reported missing.
    released: dict[int, bool] = field(default_factory=dict)


class VolumeAssembler:
    """Groups DICOM files into volumes and releases them per run, in order (module docstring).

    ``clock`` (seconds, monotonic) times the missing-volume timeout; tests pass a fake one.
    """

    def __init__(self, missing_timeout_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        if missing_timeout_s < 0:
            raise ValueError(f"missing_timeout_s must be >= 0, got {missing_timeout_s}")
        self.missing_timeout_s = missing_timeout_s
        self._clock = clock
        self._runs: dict[str, _Run] = {}
        self._seen_instances: set[str] = set()
        # The last file's format elements and reader: the next file is almost always alike.
        self._last_format: tuple[tuple[object, ...], type[SeriesReader]] | None = None

    def add_file(self, path: Path) -> list[AssemblyEvent]:
        """Read one file and add it. An incomplete file raises
        :class:`~scanner_bridge.dicom_file.IncompleteDicomError` (retry it later); an invalid one
        is answered with :class:`FileRejected`."""
        try:
            ds = read_dicom(path)
        except InvalidDicomError as exc:
            return [self._reject(str(path), exc.reason)]
        return self.add_dataset(ds, str(path))

    def add_dataset(self, ds: Dataset, origin: str) -> list[AssemblyEvent]:
        """Add one dataset (``origin``: its file path or network peer, for messages and
        ``source_files``)."""
        events: list[AssemblyEvent] = []
        try:
            reader_class = self._reader_class(ds)
            key = reader_class.run_key(ds)
            run = self._runs.get(key)
            if run is None:
                reader = reader_class(ds)
                run = _Run(number=len(self._runs) + 1, key=key, reader=reader)
                self._runs[key] = run
                events.append(RunStarted(run.number, key, reader.description, reader.acquisition_fields(ds)))
                log.info("run %d started: %s (%s)", run.number, reader.description, reader.format_name)
            uid = str(ds.get("SOPInstanceUID", ""))
            if uid and uid in self._seen_instances:
                return events
            placed = self._place(run, ds, origin)
            events.extend(placed)
            if uid and not any(isinstance(e, FileRejected) for e in placed):
                self._seen_instances.add(uid)
        except InvalidDicomError as exc:
            events.append(self._reject(origin, exc.reason))
        except ReaderError as exc:
            events.append(self._reject(origin, str(exc)))
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            # A required header element is absent or malformed (pydicom raises these).
            events.append(self._reject(origin, f"unusable header: {exc}"))
        return events

    def _reader_class(self, ds: Dataset) -> type[SeriesReader]:
        stamp = header_stamp(ds, FORMAT_TAGS)
        if self._last_format is not None and self._last_format[0] == stamp:
            return self._last_format[1]
        reader_class = reader_for(ds)
        self._last_format = (stamp, reader_class)
        return reader_class

    def check_timeouts(self) -> list[AssemblyEvent]:
        """Give up on each run's next volume once later volumes have been arriving for
        ``missing_timeout_s`` while it is still incomplete, and release what follows."""
        now = self._clock()
        events: list[AssemblyEvent] = []
        for run in self._runs.values():
            while True:
                later = [p.first_seen for i, p in run.pending.items() if i > run.next_index]
                if not later or now - min(later) < self.missing_timeout_s:
                    break
                events.append(self._give_up(run, run.next_index))
                events.extend(self._release_ready(run))
        return events

    def finish(self) -> list[AssemblyEvent]:
        """End of stream: release every remaining volume; incomplete ones as missing."""
        events: list[AssemblyEvent] = []
        for run in self._runs.values():
            while run.pending:
                if run.next_index in run.pending and run.pending[run.next_index].done is not None:
                    events.extend(self._release_ready(run))
                else:
                    events.append(self._give_up(run, run.next_index))
                    events.extend(self._release_ready(run))
        return events

    def _place(self, run: _Run, ds: Dataset, origin: str) -> list[AssemblyEvent]:
        reader = run.reader
        mismatch = reader.mismatch(ds)
        if mismatch is not None:
            return [self._reject(origin, mismatch)]
        index, slot = reader.volume_index(ds), reader.slot(ds)
        if index < 0:
            return [self._reject(origin, f"volume number {index + 1} is not positive")]
        if not 0 <= slot < reader.files_per_volume:
            return [self._reject(origin, f"place {slot + 1} in its volume is outside the {reader.files_per_volume} the headers announce")]
        if index in run.released:
            if run.released[index]:
                return []  # the volume went out complete: this is a copy of one of its files
            return [self._reject(origin, f"volume {index} of run {run.number} arrived after it was reported missing")]
        pending = run.pending.get(index)
        if pending is not None and slot in pending.slots:
            return []
        slices = reader.slices(ds, origin)
        if pending is None:
            pending = run.pending[index] = _Pending(first_seen=self._clock())
        pending.slots[slot] = slices
        pending.sources[slot] = Path(origin)
        acquired = reader.acquisition_time(ds)
        if acquired is not None and (pending.acquisition_time is None or acquired < pending.acquisition_time):
            pending.acquisition_time = acquired
        if len(pending.slots) == reader.files_per_volume:
            try:
                pending.done = build_volume(
                    series=run.key,
                    index=index,
                    slices=[s for k in sorted(pending.slots) for s in pending.slots[k]],
                    geometry=reader.reference_geometry,
                    keep_order=reader.keeps_stack_order,
                    tr=reader.tr,
                    acquisition_time=pending.acquisition_time,
                    source_files=[pending.sources[k] for k in sorted(pending.sources)],
                )
            except ReaderError as exc:
                # The volume is given up in its turn (timeout or finish) with this reason.
                pending.error = f"its files do not make a volume: {exc}"
                return [self._reject(origin, pending.error)]
            pending.slots.clear()
        return self._release_ready(run)

    def _release_ready(self, run: _Run) -> list[AssemblyEvent]:
        events: list[AssemblyEvent] = []
        while (pending := run.pending.get(run.next_index)) is not None and pending.done is not None:
            del run.pending[run.next_index]
            run.released[run.next_index] = True
            events.append(VolumeReady(run.number, pending.done))
            run.next_index += 1
        return events

    def _give_up(self, run: _Run, index: int) -> VolumeMissing:
        pending = run.pending.pop(index, None)
        if pending is None:
            reason = "no file of this volume arrived"
        elif pending.error is not None:
            reason = pending.error
        else:
            reason = f"incomplete: {len(pending.slots)} of {run.reader.files_per_volume} files arrived"
        run.released[index] = False
        run.next_index = index + 1
        log.debug("run %d: volume %d missing (%s)", run.number, index, reason)
        return VolumeMissing(run.number, index, run.key, reason)

    def _reject(self, origin: str, reason: str) -> FileRejected:
        log.debug("rejected %s: %s", origin, reason)
        return FileRejected(origin, reason)
