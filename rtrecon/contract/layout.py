"""The session's on-disk layout: one owner for every name the processes write, and one durable write.

After nilearn's ``create_bids_filename`` and RT-Cloud's ``makeBidsFileName``: the session id
(``sub-S_ses-E``, also the name of the ZeroMQ links), the BIDS stem of a run (``run-RR``, two
digits, the same in the engine's store, the stimulus records and the demo), and the three trees
a session writes under its output folder::

    sub-S/ses-E/func/STEM_bold.nii.gz ...                       raw, as the scanner delivered it
    derivatives/rtrecon/sub-S/ses-E/func/STEM_desc-*.tsv ...    what the engine computed
    sourcedata/stimulus/sub-S/ses-E/func/STEM_events.tsv ...    what the stimulus PC recorded
    sourcedata/console/sub-S/ses-E/sub-S_ses-E_console-events.jsonl   the operator's controls

:func:`atomic_write` is the one "write then rename" of the project: the bytes go to a temporary
file beside the target, are fsynced, renamed over the target and the folder is fsynced, so that a
crash (of the process or of the machine) leaves either the old file or the new one, never a torn one.

This module is part of the contract between the processes: it imports only the standard library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = ["session_id", "SessionLayout", "atomic_file", "atomic_write", "fsync_dir", "safe_filename"]

# Characters that cannot appear in a file name on NTFS (Windows stimulus PCs) or that a shell or
# URL would mangle; ids such as "nsd:123" name gallery thumbnails.
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def session_id(subject: str, session: str) -> str:
    """``sub-<subject>_ses-<session>``: the session's BIDS prefix and the name of its links."""
    return f"sub-{subject}_ses-{session}"


def safe_filename(name: str) -> str:
    """``name`` made valid on every file system the processes run on (``nsd:123`` → ``nsd_123``)."""
    safe = _UNSAFE.sub("_", name).rstrip(". ")
    if not safe:
        raise ValueError(f"{name!r} leaves no usable file name")
    return safe


@dataclass(frozen=True)
class SessionLayout:
    """Every path of one session under ``root`` (the session's output folder)."""

    root: Path
    subject: str
    session: str
    task: str

    def __post_init__(self) -> None:
        for key in ("subject", "session", "task"):
            value = getattr(self, key)
            if not value or not re.fullmatch(r"[A-Za-z0-9]+", value):
                raise ValueError(f"BIDS {key} label must be letters and digits only, got {value!r}")
        object.__setattr__(self, "root", Path(self.root))

    @property
    def session_id(self) -> str:
        return session_id(self.subject, self.session)

    def stem(self, run: int) -> str:
        """The BIDS stem of run ``run``: ``sub-S_ses-E_task-T_run-RR``."""
        if run < 0:
            raise ValueError(f"run numbers are not negative, got {run}")
        return f"{self.session_id}_task-{self.task}_run-{run:02d}"

    @property
    def func_dir(self) -> Path:
        """The raw BIDS folder (volumes, sidecars, events as the engine received them)."""
        return self.root / f"sub-{self.subject}" / f"ses-{self.session}" / "func"

    @property
    def derivatives_dir(self) -> Path:
        """The engine's derivatives (confounds, timings, betas, decoded results)."""
        return self.root / "derivatives" / "rtrecon" / f"sub-{self.subject}" / f"ses-{self.session}" / "func"

    def sourcedata_dir(self, source: str) -> Path:
        """What process ``source`` recorded of the session (``stimulus``, ``console``)."""
        return self.root / "sourcedata" / source / f"sub-{self.subject}" / f"ses-{self.session}"

    @property
    def stimulus_session_dir(self) -> Path:
        """The stimulus PC's records of the session (sourcedata: what it presented and measured)."""
        return self.sourcedata_dir("stimulus")

    @property
    def stimulus_dir(self) -> Path:
        return self.stimulus_session_dir / "func"

    def raw(self, run: int, suffix: str) -> Path:
        """``func_dir / STEM_suffix`` (``suffix`` e.g. ``bold.nii.gz``, ``events.tsv``)."""
        return self.func_dir / f"{self.stem(run)}_{suffix}"

    def derivative(self, run: int, suffix: str) -> Path:
        """``derivatives_dir / STEM_suffix`` (``suffix`` e.g. ``desc-confounds_timeseries.tsv``)."""
        return self.derivatives_dir / f"{self.stem(run)}_{suffix}"

    def session_derivative(self, suffix: str) -> Path:
        """A derivative of the whole session (the reference, the ROI mask): ``sub-S_ses-E_suffix``."""
        return self.derivatives_dir / f"{self.session_id}_{suffix}"

    def stimulus(self, run: int, suffix: str) -> Path:
        """``stimulus_dir / STEM_suffix`` (the stimulus PC's events, journal, trial table)."""
        return self.stimulus_dir / f"{self.stem(run)}_{suffix}"


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename in it survives a power cut (a no-op where folders cannot be
    opened, as on Windows, whose rename is durable once the file is flushed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (PermissionError, IsADirectoryError):
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path, *, durable: bool = True, mode: int = 0o666) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an error (the streaming
    form of :func:`atomic_write`, for writers that take a file: ``np.savez``, ``gzip``).

    ``mode``: the permissions it is created with (less the umask), from its first byte on
    (``0o600`` for a secret key: never readable by others, even briefly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write(path: str | Path, data: bytes | str, *, durable: bool = True, mode: int = 0o666) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never a torn one.

    ``durable``: fsync the file and its folder before returning (what is acknowledged to a peer);
    without it the rename is still atomic but the bytes may be lost at a power cut (derivatives
    that can be recomputed). ``mode``: as for :func:`atomic_file`.
    """
    with atomic_file(path, durable=durable, mode=mode) as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return Path(path)
