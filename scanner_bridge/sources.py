"""The one interface every scanner-side volume source implements.

A source is an iterable of *source events* plus :meth:`VolumeSource.close`::

    with FolderWatcher(export_dir) as source:      # or DicomNode(...), NiftiReplaySource(...)
        for event in source:
            if isinstance(event, VolumeReady):
                ...

The events are the assembler's (:mod:`scanner_bridge.assembly`), whatever the source:

- :class:`RunStarted` ``(run, series, description)``: the first volume of a new run follows;
- :class:`VolumeReady` ``(run, volume)``: an :class:`~scanner_bridge.volume.AcquiredVolume`;
- :class:`VolumeMissing` ``(run, index, series, reason)``: a volume never came, the stream goes on;
- :class:`FileRejected` ``(origin, reason)``: a file or dataset could not be used.

Sources log what goes wrong (:func:`log_problem`: a rejected file with its name and the reason, a
missing volume) at WARNING on their own logger, so the operator sees it whoever consumes the stream.

Iterating blocks until the next event and ends when the source is exhausted (a replay reached its
last volume, a watcher stayed idle for its ``idle_exit_s``) or when :meth:`close` was called, from
any thread or a signal handler; the volumes still held by the assembler are flushed first. A source
is iterated once.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from types import TracebackType
from typing import TypeAlias

from scanner_bridge.assembly import FileRejected, RunStarted, VolumeMissing, VolumeReady

__all__ = ["SourceEvent", "VolumeSource", "log_problem", "RunStarted", "VolumeReady", "VolumeMissing", "FileRejected"]

SourceEvent: TypeAlias = RunStarted | VolumeReady | VolumeMissing | FileRejected


def log_problem(logger: logging.Logger, event: SourceEvent) -> None:
    """Log a :class:`FileRejected` or :class:`VolumeMissing` at WARNING (other events: nothing)."""
    if isinstance(event, FileRejected):
        logger.warning("rejected %s: %s", event.origin, event.reason)
    elif isinstance(event, VolumeMissing):
        logger.warning("run %d: volume %d missing: %s", event.run, event.index, event.reason)


class VolumeSource(ABC):
    """An iterator of :data:`SourceEvent` plus :meth:`close`; usable as a context manager."""

    @abstractmethod
    def __iter__(self) -> Iterator[SourceEvent]:
        """Yield events as they happen until the source ends or is closed."""

    @abstractmethod
    def close(self) -> None:
        """Ask the source to stop: the iteration flushes what it holds and ends. Thread-safe, idempotent."""

    def __enter__(self) -> VolumeSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
