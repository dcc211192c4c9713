"""A scanner that writes a real DICOM series into an export folder at TR pace, with the faults of
real exports.

Used by the tests, the demo and the latency benchmark::

    volumes = series_volumes(dicom_dir / "siemens_mosaic_ep2d_vd13" / "dicom")
    sim = ScannerSimulator(volumes, export_dir, tr=3.2, speed=8,
                           faults=Faults(partial={1}, duplicate={2}, swap={3}, corrupt_after=0))
    written = sim.run()                 # or sim.start() ... sim.join()

Volume ``i`` starts being written ``i × tr / speed`` seconds after the start. Each file's bytes
are read into memory first, so disk reads do not disturb the pace, and written straight to its
final name, as scanners do (a watcher sees it grow). Faults (:class:`Faults`):

- ``partial``: the volume's files are written half, flushed, paused ``partial_pause_s``, then finished;
- ``duplicate``: the volume is written a second time under another name, right after itself;
- ``swap``: volume ``i`` is written after volume ``i + 1`` (out-of-order arrival);
- ``missing``: the volume is never written;
- ``corrupt_after``: a file that is not DICOM (a DICOM preamble, then garbage) after that volume;
- ``foreign_after``: the ``foreign`` files (another series) after that volume.

Every file written is recorded as a :class:`WrittenFile` with the wall-clock time (``time.time()``,
comparable across processes of one machine) of its close, taken right before the close call
(after the last byte is written), which the latency benchmark uses as the start of the clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from scanner_bridge.assembly import VolumeAssembler, VolumeReady

__all__ = ["Faults", "WrittenFile", "ScannerSimulator", "series_volumes", "CORRUPT_BYTES"]

#: What a corrupt file holds: a DICOM preamble and magic, then bytes that parse as nothing.
CORRUPT_BYTES = b"\0" * 128 + b"DICM" + bytes(range(256)) * 8


def series_volumes(folder: str | os.PathLike[str]) -> list[list[Path]]:
    """The files of each volume of the single-run series in ``folder``, in acquisition order.

    Grouping and ordering come from the same assembler the bridge uses, so a simulated scan
    writes exactly the volumes a live one would. Files that are not DICOM images are left out.
    """
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    assembler = VolumeAssembler(missing_timeout_s=1e9)
    events = []
    for path in paths:
        events.extend(assembler.add_file(path))
    events.extend(assembler.finish())
    ready = sorted((e for e in events if isinstance(e, VolumeReady)), key=lambda e: (e.run, e.volume.index))
    if not ready:
        raise ValueError(f"{folder}: no DICOM volume found")
    if len({e.run for e in ready}) != 1:
        raise ValueError(f"{folder}: holds more than one run; pass the files of one series")
    return [sorted(Path(p) for p in e.volume.source_files) for e in ready]


@dataclass(frozen=True)
class Faults:
    """Which export faults to stage (volume numbers are 0-based positions in the series)."""

    partial: frozenset[int] = frozenset()
    duplicate: frozenset[int] = frozenset()
    swap: frozenset[int] = frozenset()
    missing: frozenset[int] = frozenset()
    corrupt_after: int | None = None
    foreign_after: int | None = None
    partial_pause_s: float = 0.2

    def __post_init__(self) -> None:
        for name in ("partial", "duplicate", "swap", "missing"):
            object.__setattr__(self, name, frozenset(getattr(self, name)))


@dataclass(frozen=True)
class WrittenFile:
    """One file the simulator wrote: ``kind`` is volume, duplicate, corrupt or foreign."""

    path: Path
    kind: str
    volume: int | None
    source: Path | None
    closed_at: float


@dataclass
class _Write:
    kind: str
    volume: int | None
    source: Path | None
    name: str
    data: bytes
    partial: bool = False


@dataclass
class ScannerSimulator:
    """Writes ``volumes`` (each a list of files) into ``export_dir`` at TR pace, with ``faults``.

    ``subfolders=True`` puts each volume in its own subfolder (``vol_0001/``, ...) as XA
    interoperability exports do. ``on_written`` is called (in the writing thread) after each file.
    """

    volumes: Sequence[Sequence[Path]]
    export_dir: Path
    tr: float
    speed: float = 1.0
    faults: Faults = field(default_factory=Faults)
    foreign: Sequence[Path] = ()
    subfolders: bool = False
    start_delay_s: float = 0.0
    on_written: Callable[[WrittenFile], None] | None = None
    written: list[WrittenFile] = field(default_factory=list, init=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def __post_init__(self) -> None:
        self.export_dir = Path(self.export_dir)
        if self.speed <= 0:
            raise ValueError(f"speed must be positive (got {self.speed})")
        if (self.faults.foreign_after is not None) and not self.foreign:
            raise ValueError("faults.foreign_after needs foreign files")

    def _schedule(self) -> list[list[_Write]]:
        """The writes of each TR slot, faults applied."""
        slots: list[list[_Write]] = []
        for index, files in enumerate(self.volumes):
            writes = []
            if index not in self.faults.missing:
                folder = f"vol_{index + 1:04d}/" if self.subfolders else ""
                for src in files:
                    data = Path(src).read_bytes()
                    writes.append(_Write("volume", index, src, folder + src.name, data, index in self.faults.partial))
                if index in self.faults.duplicate:
                    for src in files:
                        stem, dot, ext = src.name.partition(".")
                        name = f"{folder}{stem}_dup{dot}{ext}"
                        writes.append(_Write("duplicate", index, src, name, Path(src).read_bytes()))
            if index == self.faults.corrupt_after:
                writes.append(_Write("corrupt", None, None, f"corrupt_{index + 1:04d}.dcm", CORRUPT_BYTES))
            if index == self.faults.foreign_after:
                for src in self.foreign:
                    writes.append(_Write("foreign", None, src, f"foreign/{src.name}", Path(src).read_bytes()))
            slots.append(writes)
        for index in sorted(self.faults.swap):
            if index + 1 < len(slots):
                slots[index], slots[index + 1] = slots[index + 1], slots[index]
        return slots

    def run(self) -> list[WrittenFile]:
        """Write the whole series (blocking); returns what was written."""
        slots = self._schedule()
        self.export_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic() + self.start_delay_s
        for slot, writes in enumerate(slots):
            if self._stop.wait(max(0.0, t0 + slot * self.tr / self.speed - time.monotonic())):
                break
            for write in writes:
                self._write(write)
        return list(self.written)

    def _write(self, write: _Write) -> None:
        path = self.export_dir / write.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            if write.partial:
                half = len(write.data) // 2
                fh.write(write.data[:half])
                fh.flush()
                os.fsync(fh.fileno())
                time.sleep(self.faults.partial_pause_s)
                fh.write(write.data[half:])
            else:
                fh.write(write.data)
            fh.flush()
            # Stamped just before the close: a thread switch right after the close (which wakes
            # the watcher) must not make the latency measured from here look shorter.
            closing = time.time()
        record = WrittenFile(path, write.kind, write.volume, write.source, closing)
        self.written.append(record)
        if self.on_written is not None:
            self.on_written(record)

    def start(self) -> ScannerSimulator:
        """Run in a background thread; :meth:`join` waits for it."""
        self._thread = threading.Thread(target=self.run, name="scanner-simulator", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> list[WrittenFile]:
        if self._thread is not None:
            self._thread.join(timeout)
        return list(self.written)

    def stop(self) -> None:
        """Stop before the next TR slot."""
        self._stop.set()
