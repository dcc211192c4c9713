"""Follow a scanner's export folder as the scanner writes it.

:class:`FolderWatcher` is a :class:`~scanner_bridge.sources.VolumeSource`::

    with FolderWatcher("/mnt/scanner/export", missing_timeout_s=10) as source:
        for event in source:
            ...

It watches the folder *recursively* (XA interoperability exports put each volume in its own
subfolder) in one of two modes:

``"inotify"``
    a file is read when the kernel reports that its writer closed it (``IN_CLOSE_WRITE``) or
    renamed it into the folder (``IN_MOVED_TO``). The watcher's own thread reads the inotify
    descriptor (inotify_simple), so a close reaches the reader without passing through other
    threads (through watchdog's observer it took 1.3 ms of the bridge's 5 ms). A new subfolder
    gets its watch as soon as it is created, and the files already in it are read at once (a
    file still being written fails the completeness check and is retried). A file created with
    no close event following (written through a memory map, say) is read once its size has
    stayed the same for ``retry_delay_s``. If the kernel's event queue overflows, the folder is
    rescanned, so nothing is missed.
``"poll"``
    a rescan every ``poll_interval_s``. inotify sees nothing on network shares (NFS, SMB/CIFS,
    sshfs, ...) because the writes happen on another machine, so ``"auto"`` (the default) picks
    polling when ``/proc/mounts`` says the folder is on one of :data:`NETWORK_FILESYSTEMS`, and
    inotify otherwise (and polling if inotify cannot start, e.g. no watches left).

A file is taken only once :func:`scanner_bridge.dicom_file.read_dicom` finds it complete: on
:class:`~scanner_bridge.dicom_file.IncompleteDicomError` it is tried again after ``retry_delay_s``,
up to ``max_retries`` times without the file growing, then rejected as truncated. Rejected files
are logged (logger ``scanner_bridge.watcher``, WARNING) with their path and the reason, and come
out as :class:`~scanner_bridge.assembly.FileRejected`; missing volumes are logged there too.
Ordering by acquisition number, duplicate removal, run assignment (a new series starts a new
run) and missing-volume reports are the :class:`~scanner_bridge.assembly.VolumeAssembler`'s; the
watcher feeds it and asks it for timeouts regularly, so a missing volume is reported even when
no more files come.

Closing the watcher stops the watch, but files completely written by then are still taken
(one last look at the folder, without retries) before the assembler is flushed.

Files already in the folder at start are read first (oldest first, as the scanner wrote them, so
that a restarted bridge numbers runs as before) unless ``skip_existing`` (meant for old runs:
the skipped volumes of a run still going on are reported missing after the timeout).
:attr:`FolderWatcher.ready` is set once the watch is up. Names starting with a dot are ignored
(rsync and other copy tools write such temporaries, then rename them).
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from inotify_simple import INotify, flags

from scanner_bridge.assembly import FileRejected, VolumeAssembler
from scanner_bridge.dicom_file import IncompleteDicomError
from scanner_bridge.sources import SourceEvent, VolumeSource, log_problem

__all__ = [
    "NETWORK_FILESYSTEMS",
    "WatchMode",
    "FolderWatcher",
    "filesystem_type",
    "choose_watch_mode",
]

logger = logging.getLogger(__name__)

WatchMode = Literal["auto", "inotify", "poll"]

#: Filesystem types (as /proc/mounts names them) on which inotify misses remote writes.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph",
        "glusterfs", "lustre", "gpfs", "beegfs", "davfs", "fuse.sshfs", "fuse.rclone",
        "fuse.glusterfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.davfs2", "vboxsf", "prl_fs", "vmhgfs",
        "fuse.vmhgfs-fuse",
    }
)


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def filesystem_type(path: str | os.PathLike[str], mounts: str | os.PathLike[str] = "/proc/mounts") -> str | None:
    """The type of the filesystem holding ``path`` (``"ext4"``, ``"nfs4"``, ...), from the mount table.

    ``None`` when the mount table cannot be read (not Linux).
    """
    target = os.path.realpath(path)
    try:
        lines = Path(mounts).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = _unescape_mount_field(parts[1])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        # The longest matching mount point wins; on ties the later mount hides the earlier one.
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, parts[2]
    return best_type


def choose_watch_mode(
    path: str | os.PathLike[str], mode: WatchMode = "auto", mounts: str | os.PathLike[str] = "/proc/mounts"
) -> Literal["inotify", "poll"]:
    """Resolve ``"auto"``: polling on network filesystems and outside Linux, inotify otherwise."""
    if mode != "auto":
        return mode
    if not sys.platform.startswith("linux"):
        return "poll"
    fstype = filesystem_type(path, mounts)
    if fstype is None or fstype in NETWORK_FILESYSTEMS:
        return "poll"
    return "inotify"


@dataclass
class _Pending:
    due: float
    attempts: int = 0
    size: int = -1
    # Seen only as created: read it once its size holds still (its close event may never come).
    await_stable: bool = False


class _Inotify:
    """inotify watches on a folder tree, read by the thread that calls :meth:`read`.

    Raises :class:`OSError` when inotify cannot start or a watch cannot be added (no inotify, or
    no watches left: ``fs.inotify.max_user_watches``).
    """

    _FILE_EVENTS = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE

    def __init__(self, root: Path) -> None:
        self._inotify = INotify()
        self._folders: dict[int, str] = {}
        try:
            self.add_tree(str(root))
        except OSError:
            self._inotify.close()
            raise

    def fileno(self) -> int:
        return self._inotify.fileno()

    def close(self) -> None:
        self._inotify.close()

    def add_tree(self, folder: str) -> list[str]:
        """Watch ``folder`` and every folder below it; returns the files already in them (written
        before their watch existed, so no close event will name them)."""
        files: list[str] = []
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                wd = self._inotify.add_watch(current, self._FILE_EVENTS | flags.ONLYDIR)
                entries = list(os.scandir(current))
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed (or replaced by a file) before we got to it
            self._folders[wd] = current
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file():
                    files.append(entry.path)
        return files

    def read(self) -> list[tuple[str, str]] | None:
        """The ("closed" | "created", path) pairs waiting, without blocking; ``None`` if events were
        lost (the kernel's queue overflowed): the caller must rescan."""
        found: list[tuple[str, str]] = []
        overflow = False
        for event in self._inotify.read(timeout=0):
            if event.mask & flags.Q_OVERFLOW:
                overflow = True
                continue
            if event.mask & flags.IGNORED:
                self._folders.pop(event.wd, None)  # its folder was removed
                continue
            folder = self._folders.get(event.wd)
            if folder is None or not event.name:
                continue
            path = os.path.join(folder, event.name)
            if event.mask & flags.ISDIR:
                if event.mask & (flags.CREATE | flags.MOVED_TO):
                    # Read now (a scanner writes a series' first file right after making its
                    # folder): one still being written fails the completeness check and is
                    # retried, and its close, now watched, is reported too.
                    found += [("closed", f) for f in self.add_tree(path)]
            elif event.mask & (flags.CLOSE_WRITE | flags.MOVED_TO):
                found.append(("closed", path))
            elif event.mask & flags.CREATE:
                found.append(("created", path))
        return None if overflow else found


class FolderWatcher(VolumeSource):
    """A live scanner export folder as a :class:`~scanner_bridge.sources.VolumeSource`.

    Parameters
    ----------
    directory
        The export folder (watched recursively). It must exist.
    mode
        ``"auto"``, ``"inotify"`` or ``"poll"`` (see the module docstring).
    poll_interval_s
        Rescan period in poll mode, and the longest the watcher sleeps in inotify mode.
    missing_timeout_s
        How long a gap in the acquisition numbers may stay open before the volume is reported missing.
    skip_existing
        Ignore files already in the folder at start.
    retry_delay_s, max_retries
        Retry schedule for files that are not complete yet; retries while a file grows are free.
    idle_exit_s
        End the stream once no file has come for this long and nothing is pending (``None``: never).
    assembler
        The :class:`~scanner_bridge.assembly.VolumeAssembler` to feed (one is made if omitted).
    clock
        Monotonic seconds, for the retry schedule, idleness and the missing-volume timeout.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        mode: WatchMode = "auto",
        poll_interval_s: float = 0.05,
        missing_timeout_s: float = 10.0,
        skip_existing: bool = False,
        retry_delay_s: float = 0.05,
        max_retries: int = 40,
        idle_exit_s: float | None = None,
        assembler: VolumeAssembler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise NotADirectoryError(f"{self.directory}: the export folder does not exist")
        self.mode = choose_watch_mode(self.directory, mode)
        self.poll_interval_s = poll_interval_s
        self.skip_existing = skip_existing
        self.retry_delay_s = retry_delay_s
        self.max_retries = max_retries
        self.idle_exit_s = idle_exit_s
        self.assembler = assembler or VolumeAssembler(missing_timeout_s=missing_timeout_s, clock=clock)
        self._clock = clock
        self._inotify: _Inotify | None = None
        # close() may come from another thread while this one waits: a byte on this pipe wakes it.
        self._wake_read, self._wake_write = os.pipe()
        self._wake_lock = threading.Lock()
        self._wake_open = True
        self._stop = threading.Event()
        self._pending: dict[str, _Pending] = {}
        self._taken: set[str] = set()
        self._polled: dict[str, tuple[int, int]] = {}
        self._iterated = False
        #: Set once the watch is up and the files present at start are listed: what is written
        #: from then on is new.
        self.ready = threading.Event()

    def close(self) -> None:
        self._stop.set()
        with self._wake_lock:
            # Once the iteration has ended the pipe is closed, and its numbers may be another file's.
            if self._wake_open:
                os.write(self._wake_write, b"x")

    def __iter__(self) -> Iterator[SourceEvent]:
        if self._iterated:
            raise RuntimeError("a FolderWatcher is iterated once")
        self._iterated = True
        if self.mode == "inotify":
            self._start_inotify()
        try:
            self._initial_scan()
            self.ready.set()
            last_activity = self._clock()
            next_poll = self._clock() + self.poll_interval_s
            while not self._stop.is_set():
                now = self._clock()
                if self.mode == "poll" and now >= next_poll:
                    self._scan()
                    next_poll = now + self.poll_interval_s
                for path in self._due(now):
                    last_activity = self._clock()
                    yield from self._take(path)
                for event in self.assembler.check_timeouts():
                    log_problem(logger, event)
                    yield event
                if (
                    self.idle_exit_s is not None
                    and not self._pending
                    and self._clock() - last_activity >= self.idle_exit_s
                ):
                    break
                self._wait(next_poll)
        finally:
            if self._inotify is not None:
                self._read_inotify()
                self._inotify.close()
                self._inotify = None
            with self._wake_lock:
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_open = False
        # A last look, so that whatever was completely written before close() is taken, even if
        # its event had not reached us yet.
        self._scan()
        for path in list(self._pending):
            yield from self._take(path, last_look=True)
        for event in self.assembler.finish():
            log_problem(logger, event)
            yield event

    # -- discovering files -------------------------------------------------------------------

    def _start_inotify(self) -> None:
        try:
            self._inotify = _Inotify(self.directory)
        except OSError as exc:
            logger.warning("%s: inotify unavailable (%s); polling every %.3f s", self.directory, exc, self.poll_interval_s)
            self.mode = "poll"

    def _initial_scan(self) -> None:
        existing = self._walk()
        if self.skip_existing:
            self._taken.update(existing)
            self._polled.update(existing)
            return
        # Oldest first: the order the scanner wrote them, so runs are numbered as they were live.
        now = self._clock()
        for path, (mtime, size) in sorted(existing.items(), key=lambda item: (item[1][0], item[0])):
            self._polled[path] = (mtime, size)
            self._pending[path] = _Pending(due=now, size=size)

    def _scan(self) -> None:
        now = self._clock()
        for path, stamp in self._walk(skip=self._taken).items():
            if self._polled.get(path) == stamp:
                continue
            self._polled[path] = stamp
            entry = self._pending.get(path)
            if entry is None:
                self._pending[path] = _Pending(due=now, size=stamp[1])
            elif stamp[1] != entry.size:
                # Still growing: try again now, and the retry does not count.
                entry.due, entry.size, entry.attempts = now, stamp[1], 0

    def _walk(self, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple[int, int]]:
        """(mtime, size) of every file below the folder, except those in ``skip`` (not even
        stat'ed: on a network share each stat is a round trip)."""
        found: dict[str, tuple[int, int]] = {}
        stack = [str(self.directory)]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue  # a folder removed while we walk
            for entry in entries:
                if entry.name.startswith(".") or entry.path in skip:
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file():
                        st = entry.stat()
                        found[entry.path] = (st.st_mtime_ns, st.st_size)
                except OSError:
                    continue
        return found

    def _read_inotify(self) -> None:
        if self._inotify is None:
            return
        try:
            found = self._inotify.read()
        except OSError as exc:  # e.g. no watches left for a new subfolder
            logger.warning("%s: inotify failed (%s); polling every %.3f s from now on", self.directory, exc, self.poll_interval_s)
            self._inotify.close()
            self._inotify, self.mode = None, "poll"
            self._scan()
            return
        if found is None:
            logger.warning("%s: inotify lost events (its queue overflowed); rescanning the folder", self.directory)
            self._scan()
            return
        now = self._clock()
        for kind, path in found:
            self._note(kind, path, now)

    def _note(self, kind: str, path: str, now: float) -> None:
        if path in self._taken or os.path.basename(path).startswith("."):
            return
        entry = self._pending.get(path)
        if kind == "closed":
            if entry is None:
                self._pending[path] = _Pending(due=now)
            else:
                entry.due, entry.attempts, entry.await_stable = now, 0, False
        elif entry is None:
            self._pending[path] = _Pending(due=now + self.retry_delay_s, size=_size(path), await_stable=True)

    def _due(self, now: float) -> list[str]:
        self._read_inotify()
        return [path for path, entry in self._pending.items() if entry.due <= now]

    def _wait(self, next_poll: float) -> None:
        wake = next_poll if self.mode == "poll" else self._clock() + self.poll_interval_s
        if self._pending:
            wake = min(wake, min(entry.due for entry in self._pending.values()))
        timeout = max(0.0, wake - self._clock())
        waiting_on = [self._wake_read] if self._inotify is None else [self._wake_read, self._inotify]
        ready, _, _ = select.select(waiting_on, [], [], timeout)
        if self._inotify is not None and self._inotify in ready:
            self._read_inotify()

    # -- taking a file -----------------------------------------------------------------------

    def _take(self, path: str, *, last_look: bool = False) -> Iterator[SourceEvent]:
        entry = self._pending[path]
        if not os.path.exists(path):
            # Removed before we read it (a scanner's temporary file): nothing to take.
            del self._pending[path]
            return
        if entry.await_stable and not last_look:
            size = _size(path)
            if size != entry.size:
                entry.size, entry.due = size, self._clock() + self.retry_delay_s
                return
        try:
            events = self.assembler.add_file(Path(path))
        except IncompleteDicomError as exc:
            size = _size(path)
            if size != entry.size:
                entry.size, entry.attempts = size, 0
            entry.attempts += 1
            if entry.attempts <= self.max_retries and not last_look:
                entry.due = self._clock() + self.retry_delay_s
                return
            del self._pending[path]
            self._taken.add(path)
            if last_look:
                reason = f"still incomplete when the watch was closed: {exc.reason}"
            else:
                reason = f"still incomplete after {self.max_retries} retries {self.retry_delay_s:g} s apart: {exc.reason}"
            event = FileRejected(origin=path, reason=reason)
            log_problem(logger, event)
            yield event
            return
        del self._pending[path]
        self._taken.add(path)
        for event in events:
            log_problem(logger, event)
            yield event


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1
