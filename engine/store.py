"""The session store: a BIDS folder written as volumes and events arrive, readable after a crash.

Layout under ``root`` (BIDS names; ``RR`` is the run number of the wire messages, two digits, as :class:`rtrecon.contract.layout.SessionLayout` spells it)::

    sub-XX/ses-YY/func/sub-XX_ses-YY_task-T_run-RR_bold.nii      while the run is live
    sub-XX/ses-YY/func/sub-XX_ses-YY_task-T_run-RR_bold.nii.gz   once it has ended (compressed in the background)
    sub-XX/ses-YY/func/sub-XX_ses-YY_task-T_run-RR_bold.json     sidecar (TR, slice timing)
    sub-XX/ses-YY/func/sub-XX_ses-YY_task-T_run-RR_events.tsv
    derivatives/rtrecon/sub-XX/ses-YY/func/<run prefix>_desc-confounds_timeseries.tsv
    derivatives/rtrecon/sub-XX/ses-YY/func/<run prefix>_desc-<name>.tsv / .npz  (timings, betas)
    derivatives/rtrecon/sub-XX/ses-YY/func/<run prefix>_desc-runend.json     the run has ended
    derivatives/rtrecon/sub-XX/ses-YY/func/<run prefix>_desc-realigned.bin   checkpoint: each volume's realignment

Crash safety. A live run's NIfTI is uncompressed: a volume's bytes are appended and fsynced
*before* the header's volume count is rewritten (and fsynced), so the header never counts a
volume that is not whole on disk; reopening truncates any bytes past the counted volumes (a
write the crash interrupted). Table rows end with a newline and are fsynced one by one; a
partial last line is dropped on reopening. Whole files (sidecars, ``.npz``, the compressed run)
are written with :func:`rtrecon.contract.layout.atomic_write` (temporary name, fsync, rename, folder fsync). Hence :meth:`SessionStore.n_volumes` is
exactly what was persisted, the number the engine acknowledges to the bridge.

A run's checkpoint (:class:`RealignmentLog`) holds, per realigned volume, what realignment gave
(motion parameters, iterations, the ROI voxels on the reference grid), so that a restarted engine
rebuilds its state without realigning the stored volumes again. It is derived data: records are
flushed, not fsynced, each carries a CRC, and a record that did not survive a crash is recomputed.

A volume that never came or could not be used is stored as zeros so that indices stay those of
the acquisition; :meth:`SessionStore.volume` then returns ``None`` for it.
"""

from __future__ import annotations

import gzip
import json
import zlib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from rtrecon.contract.layout import SessionLayout, atomic_file, atomic_write, fsync_dir
from rtrecon.contract.wire import EventMessage, WireError, validate

__all__ = ["SessionStore", "AppendTable", "RealignmentLog"]

_HEADER_BYTES = 352  # NIfTI-1 header + the 4 extension bytes: data start right after


log = logging.getLogger(__name__)

_warned_rows: set[tuple[Path, int]] = set()


def _event_row_problem(path: Path, line: int, row: Mapping[str, str]) -> str | None:
    """Why an events row cannot be used (None: it can), warned once per row."""
    try:
        if row.get("engine_volumes", "n/a") != "n/a":
            int(row["engine_volumes"])
        response_time = None if row["response_time"] == "n/a" else float(row["response_time"])
        validate(EventMessage(session="", run=0, trial=int(row["trial"]), onset=float(row["onset"]),
                              duration=float(row["duration"]), trial_type=row["trial_type"], response_time=response_time))
        return None
    except (KeyError, TypeError, ValueError, WireError) as exc:
        problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, WireError) else str(exc)
    if (path, line) not in _warned_rows:
        _warned_rows.add((path, line))
        log.warning("%s line %d: event skipped, it cannot be used (%s)", path, line, problem)
    return problem


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value)) if np.isfinite(value) else "n/a"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value).replace("\t", " ").replace("\n", " ")


class AppendTable:
    """A TSV file grown one row at a time; a torn last line is dropped on opening.

    ``durable`` rows are fsynced before :meth:`append` returns (what is acknowledged to a peer);
    derivative tables, which a restarted engine recomputes, are only flushed.
    """

    def __init__(self, path: Path, columns: Sequence[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.durable = durable
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            raw = self.path.read_bytes()
            whole = raw[: raw.rfind(b"\n") + 1]
            if len(whole) != len(raw):
                with open(self.path, "r+b") as f:
                    f.truncate(len(whole))
                    os.fsync(f.fileno())
            if not whole:
                self._write_header()
            else:
                header = whole.split(b"\n", 1)[0].decode().split("\t")
                if header != self.columns:
                    raise ValueError(f"{self.path}: columns {header} differ from the expected {self.columns}")
        else:
            self._write_header()
        self._n_rows = max(0, self.path.read_bytes().count(b"\n") - 1)

    def _write_header(self) -> None:
        atomic_write(self.path, ("\t".join(self.columns) + "\n").encode())

    def append(self, row: Mapping[str, Any]) -> None:
        line = "\t".join(_format(row.get(c)) for c in self.columns) + "\n"
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            if self.durable:
                os.fdatasync(f.fileno())
        self._n_rows += 1

    def rows(self) -> list[dict[str, str]]:
        lines = self.path.read_text().splitlines()[1:]
        return [dict(zip(self.columns, line.split("\t"))) for line in lines]

    def __len__(self) -> int:
        return self._n_rows


class RealignmentLog:
    """One run's realignment checkpoint: a record per realigned volume, appended in volume order.

    A record is a little-endian float64 head (volume index, iterations, the 6 motion parameters,
    the CRC-32 of the rest) followed by the ``n_roi`` ROI voxels as float32. Opening keeps the
    leading records that are whole, with a valid CRC and increasing indices, and truncates the
    rest (a write a crash interrupted, or a block lost with the page cache), so appends follow.
    Records are flushed, not fsynced: a lost one is recomputed from the stored volume.
    """

    _HEAD = 9

    def __init__(self, path: Path, n_roi: int) -> None:
        self.path = Path(path)
        self.n_roi = int(n_roi)
        self.record_bytes = self._HEAD * 8 + self.n_roi * 4
        self._records: dict[int, tuple[np.ndarray, int, np.ndarray]] = {}
        raw = self.path.read_bytes() if self.path.exists() else b""
        good = 0
        last = -1
        for start in range(0, len(raw) - self.record_bytes + 1, self.record_bytes):
            record = raw[start : start + self.record_bytes]
            head = np.frombuffer(record, "<f8", self._HEAD)
            if zlib.crc32(record[: 8 * 8] + record[self._HEAD * 8 :]) != head[8] or not head[0] > last:
                break
            last = int(head[0])
            roi = np.frombuffer(record, "<f4", offset=self._HEAD * 8).astype(np.float64)
            self._records[last] = (head[2:8].copy(), int(head[1]), roi)
            good = start + self.record_bytes
        if good != len(raw):
            log.warning("%s: %d bytes past the last whole record dropped", self.path, len(raw) - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)
        self._last = last

    def get(self, index: int) -> tuple[np.ndarray, int, np.ndarray] | None:
        """Volume ``index``'s (params, iterations, ROI voxels as float64), or None if not recorded."""
        return self._records.get(index)

    def forget(self) -> None:
        """Drop the records read at opening (once recovery has used them): memory stays flat."""
        self._records.clear()

    def append(self, index: int, params: np.ndarray, iterations: int, roi: np.ndarray) -> bool:
        """Record volume ``index``; False (nothing written) if its ROI voxels are not exactly float32,
        as a record must give back exactly what realignment gave."""
        roi32 = np.asarray(roi, dtype="<f4")
        if index <= self._last or roi32.shape != (self.n_roi,) or not np.array_equal(roi32, roi):
            return False
        body = np.asarray([index, iterations, *np.asarray(params, dtype=np.float64)], dtype="<f8").tobytes()
        data = roi32.tobytes()
        crc = np.asarray([zlib.crc32(body + data)], dtype="<f8").tobytes()
        with open(self.path, "ab") as f:
            f.write(body + crc + data)
        self._last = index
        return True


class _LiveRun:
    """A run's 4D NIfTI being appended to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            header = nib.Nifti1Header.from_fileobj(f)
        self.header = header
        self.shape = tuple(int(n) for n in header.get_data_shape()[:3])
        self.dtype = header.get_data_dtype()
        self.volume_bytes = int(np.prod(self.shape)) * self.dtype.itemsize
        shape = header.get_data_shape()
        self.n = int(shape[3]) if len(shape) > 3 else 1
        expected = _HEADER_BYTES + self.n * self.volume_bytes
        if path.stat().st_size < expected:
            raise OSError(f"{path}: header counts {self.n} volumes but the file is shorter")
        if path.stat().st_size > expected:  # a write the crash interrupted
            with open(path, "r+b") as f:
                f.truncate(expected)
                os.fsync(f.fileno())

    @classmethod
    def create(cls, path: Path, volume: np.ndarray, affine: np.ndarray, tr: float) -> _LiveRun:
        header = nib.Nifti1Header()
        header.set_data_dtype(volume.dtype)
        header.set_data_shape((*volume.shape, 0))
        header.set_qform(affine, code=1)
        header.set_sform(affine, code=1)
        header.set_xyzt_units("mm", "sec")
        zooms = list(header.get_zooms())
        zooms[3] = tr
        header.set_zooms(zooms)
        header["vox_offset"] = _HEADER_BYTES
        atomic_write(path, header.binaryblock + b"\x00" * 4)
        return cls(path)

    def append(self, volume: np.ndarray) -> None:
        data = np.asarray(volume, dtype=self.dtype.newbyteorder("<")).tobytes(order="F")
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.pwrite(fd, data, _HEADER_BYTES + self.n * self.volume_bytes)
            os.fdatasync(fd)  # the data are on disk before the header counts them
            self.header.set_data_shape((*self.shape, self.n + 1))
            os.pwrite(fd, self.header.binaryblock, 0)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self.n += 1

    def read(self, index: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(_HEADER_BYTES + index * self.volume_bytes)
            raw = f.read(self.volume_bytes)
        return np.frombuffer(raw, dtype=self.dtype.newbyteorder("<")).reshape(self.shape, order="F")


class SessionStore:
    """One subject's session under ``root`` in BIDS layout (see the module docstring)."""

    # BIDS columns, then how many volumes of the run were stored when the event was: the
    # engine replays events and volumes in their arrival order from it.
    EVENT_COLUMNS = (
        "onset", "duration", "trial_type", "trial", "stimulus", "pairmate", "response", "response_time", "feedback",
        "engine_volumes",
    )

    def __init__(self, root: str | Path, subject: str, session: str, task: str) -> None:
        self.layout = SessionLayout(root, subject, session, task)
        self.root = self.layout.root
        self.subject, self.session, self.task = subject, session, task
        self.func = self.layout.func_dir
        self.derivatives = self.layout.derivatives_dir
        self.func.mkdir(parents=True, exist_ok=True)
        self.derivatives.mkdir(parents=True, exist_ok=True)
        self._write_dataset_descriptions()
        self._live: dict[int, _LiveRun] = {}
        self._events: dict[int, AppendTable] = {}
        self._geometry: dict[int, tuple[np.ndarray, float]] = {}

    def _write_dataset_descriptions(self) -> None:
        for folder, extra in ((self.root, {}), (self.root / "derivatives" / "rtrecon", {"DatasetType": "derivative", "GeneratedBy": [{"Name": "rtrecon engine"}]})):
            path = folder / "dataset_description.json"
            if not path.exists():
                atomic_write(path, json.dumps({"Name": "rtrecon session", "BIDSVersion": "1.9.0", **extra}, indent=2).encode())

    # -- names ---------------------------------------------------------------------------------
    def prefix(self, run: int) -> str:
        return self.layout.stem(run)

    def bold_path(self, run: int, *, live: bool | None = None) -> Path:
        """The run's NIfTI: ``.nii`` while live, ``.nii.gz`` once ended (``live=None``: whichever exists)."""
        nii = self.func / f"{self.prefix(run)}_bold.nii"
        if live is None:
            live = not (self.func / f"{self.prefix(run)}_bold.nii.gz").exists()
        return nii if live else nii.with_suffix(".nii.gz")

    def derivative_path(self, run: int, desc: str, ext: str = ".tsv") -> Path:
        return self.derivatives / f"{self.prefix(run)}_desc-{desc}{ext}"

    # -- runs ----------------------------------------------------------------------------------
    def runs(self) -> list[int]:
        """Runs with at least one stored volume or event, in order."""
        found = set()
        for path in self.func.glob(f"{self.layout.session_id}_task-{self.task}_run-*_*"):
            label = path.name.split("_run-")[1].split("_")[0]
            if label.isdigit():
                found.add(int(label))
        return sorted(found)

    def _live_run(self, run: int) -> _LiveRun | None:
        live = self._live.get(run)
        if live is None:
            try:
                live = self._live[run] = _LiveRun(self.bold_path(run, live=True))
            except FileNotFoundError:  # never started, or compressed since
                return None
        return live

    def n_volumes(self, run: int) -> int:
        """Volumes persisted for ``run`` (missing ones included as zeros)."""
        live = self._live_run(run)
        if live is not None:
            return live.n
        marker = self._end_marker(run)
        if marker.exists():
            return int(json.loads(marker.read_text())["n_volumes"])
        done = self.bold_path(run, live=False)
        return int(nib.load(done).shape[3]) if done.exists() else 0

    def is_ended(self, run: int) -> bool:
        return self._end_marker(run).exists() or self.bold_path(run, live=False).exists()

    def persisted(self) -> dict[int, int]:
        """Run -> last persisted key of the volume link, as the transport's receiver wants it:
        the last volume index (-1: none), or ``n_volumes`` once the run's end is persisted."""
        return {run: self.n_volumes(run) - (0 if self.is_ended(run) else 1) for run in self.runs()}

    def append_volume(
        self, run: int, volume: np.ndarray, affine: np.ndarray, tr: float, slice_times: Sequence[float] | None = None
    ) -> int:
        """Persist the next volume of ``run`` (fsynced); returns its index."""
        if self.is_ended(run):
            raise ValueError(f"run {run} has ended: {self.bold_path(run, live=False)} is final")
        live = self._live_run(run)
        volume = np.asarray(volume)
        if live is None:
            if not (np.isfinite(tr) and tr > 0):  # the run's TR is the scanner's, never a stand-in
                raise ValueError(f"run {run}: repetition time {tr} s is not a positive number")
            sidecar = {"RepetitionTime": float(tr), "TaskName": self.task}
            if slice_times is not None:
                sidecar["SliceTiming"] = [float(t) for t in slice_times]
            atomic_write(self.func / f"{self.prefix(run)}_bold.json", json.dumps(sidecar, indent=2).encode())
            live = self._live[run] = _LiveRun.create(self.bold_path(run, live=True), volume, affine, tr)
        elif volume.shape != live.shape:
            raise ValueError(f"volume shape {volume.shape} differs from run {run}'s {live.shape}")
        elif volume.dtype.newbyteorder("=") != live.dtype.newbyteorder("="):
            # A cast would wrap or round silently (3.2e6 stored as 32744 in an int16 run).
            raise ValueError(f"volume dtype {volume.dtype} differs from run {run}'s {live.dtype}")
        live.append(volume)
        return live.n - 1

    def volume_dtype(self, run: int) -> np.dtype | None:
        """The dtype of the run's stored volumes (None: none stored yet, or the run has ended)."""
        live = None if self.is_ended(run) else self._live_run(run)
        return None if live is None else live.dtype

    def append_missing(self, run: int) -> int:
        """Persist a zero volume in place of one that never came or could not be used."""
        live = self._live_run(run)
        if live is None:
            raise ValueError(f"run {run} has no volume yet: its geometry is unknown")
        live.append(np.zeros(live.shape, dtype=live.dtype))
        return live.n - 1

    def volume(self, run: int, index: int) -> np.ndarray | None:
        """Stored volume ``index`` of ``run`` (None if it was missing)."""
        live = self._live_run(run)
        if live is not None:
            if not 0 <= index < live.n:
                raise IndexError(f"run {run} has {live.n} volumes, not {index + 1}")
            data = live.read(index)
        else:
            data = np.asarray(nib.load(self.bold_path(run, live=False)).dataobj[..., index])
        return None if not data.any() else data

    def iter_volumes(self, run: int) -> Iterator[np.ndarray | None]:
        """Every stored volume of ``run`` in order (None where missing), reading the file once."""
        live = self._live_run(run)
        if live is not None:
            for index in range(live.n):
                data = live.read(index)
                yield data if data.any() else None
            return
        data = np.asarray(nib.load(self.bold_path(run, live=False)).dataobj)
        for index in range(data.shape[3]):
            yield data[..., index] if data[..., index].any() else None

    def geometry(self, run: int) -> tuple[np.ndarray, float]:
        """(affine, TR) of a stored run, exactly as stored: the affine as the NIfTI header holds it
        (float32, as any reader gets it back), the TR from the JSON sidecar (float64).

        The engine computes with these rather than with the float64 values of the messages, so that
        an engine restarted from the store computes the same numbers bit for bit.
        """
        cached = self._geometry.get(run)
        if cached is None:
            live = self._live_run(run)
            header = live.header if live is not None else nib.load(self.bold_path(run, live=False)).header
            sidecar = self.func / f"{self.prefix(run)}_bold.json"
            if sidecar.exists():
                tr = float(json.loads(sidecar.read_text())["RepetitionTime"])
            else:
                tr = float(header.get_zooms()[3])
            cached = self._geometry[run] = (header.get_best_affine(), tr)
        return cached[0].copy(), cached[1]

    def _end_marker(self, run: int) -> Path:
        return self.derivative_path(run, "runend", ".json")

    def end_run(self, run: int) -> Path:
        """Record (durably) that ``run`` is over; :meth:`compress_run` then makes its ``.nii.gz``."""
        n = self.n_volumes(run)
        if n == 0:
            raise ValueError(f"run {run} has no volume to end")
        marker = self._end_marker(run)
        atomic_write(marker, json.dumps({"n_volumes": n}).encode())
        return marker

    def uncompressed_ended_runs(self) -> list[int]:
        """Ended runs whose NIfTI is still the live ``.nii`` (a compression was interrupted)."""
        return [r for r in self.runs() if self._end_marker(r).exists() and self.bold_path(r, live=True).exists()]

    def compress_run(self, run: int) -> Path:
        """Compress an ended run's NIfTI to its final ``_bold.nii.gz`` (atomic); returns its path.

        Slow (seconds for a long run), so the engine runs it in the background; readers see the
        live ``.nii`` until the compressed file has replaced it.
        """
        live = self._live_run(run)
        final = self.bold_path(run, live=False)
        if live is None:
            if final.exists():
                return final
            raise ValueError(f"run {run} has no volume to compress")
        with open(live.path, "rb") as src, atomic_file(final) as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
        self._live.pop(run, None)
        live.path.unlink()
        fsync_dir(final.parent)
        return final

    # -- events --------------------------------------------------------------------------------
    def events_table(self, run: int) -> AppendTable:
        if run not in self._events:
            self._events[run] = AppendTable(self.func / f"{self.prefix(run)}_events.tsv", self.EVENT_COLUMNS)
        return self._events[run]

    def append_event(self, run: int, row: Mapping[str, Any]) -> None:
        self.events_table(run).append(row)

    def events(self, run: int) -> list[dict[str, str]]:
        """The run's usable event rows; a row no valid event could have written (an older
        version stored NaN or 'n/a' onsets) is skipped with a warning, so the session restarts."""
        path = self.func / f"{self.prefix(run)}_events.tsv"
        rows = self.events_table(run).rows() if path.exists() else []
        return [row for line, row in enumerate(rows, start=2) if _event_row_problem(path, line, row) is None]

    # -- derivatives ---------------------------------------------------------------------------
    def table(self, run: int, desc: str, columns: Sequence[str]) -> AppendTable:
        """A derivative table (recomputable, so rows are flushed, not fsynced)."""
        return AppendTable(self.derivative_path(run, desc), columns, durable=False)

    def realignment_log(self, run: int, n_roi: int) -> RealignmentLog:
        """The run's realignment checkpoint (see :class:`RealignmentLog`)."""
        return RealignmentLog(self.derivative_path(run, "realigned", ".bin"), n_roi)

    def save_arrays(self, run: int, desc: str, **arrays: np.ndarray) -> Path:
        path = self.derivative_path(run, desc, ".npz")
        with atomic_file(path) as f:
            np.savez(f, **arrays)
        return path

    def save_image(self, name: str, data: np.ndarray, affine: np.ndarray) -> Path:
        """A session-level derivative image (reference, masks), written atomically.

        Its affine is stored as float32: :meth:`load_image` gives back the values to compute with.
        """
        path = self.layout.session_derivative(f"{name}.nii.gz")
        # mtime=0: the same image gives the same bytes.
        atomic_write(path, gzip.compress(nib.Nifti1Image(data, affine).to_bytes(), compresslevel=6, mtime=0))
        return path

    def load_image(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        path = self.layout.session_derivative(f"{name}.nii.gz")
        if not path.exists():
            return None
        img = nib.load(path)
        return np.asarray(img.dataobj), img.affine

