"""Replay one run of the Natural Scenes Dataset (real or synthetic) as if it were being acquired.

:class:`NsdReplaySource` is a :class:`~scanner_bridge.sources.VolumeSource` over NSD's own
layout (``nsddata_timeseries/ppdata/subjAA/<space>/timeseries/timeseries_sessionBB_runCC.nii.gz``
and its ``design/design_sessionBB_runCC.tsv``): one ``RunStarted``, then volume ``i`` at
``i × TR / speed`` seconds, with NSD's exact TR (1.333171 s for func1pt8mm, 0.999878 s for func1mm;
the files' headers are not trusted for it). Following NSD's instructions, the last volume (which
has no design row) is not replayed, so the run has as many volumes as design rows.

The run's events are what a virtual participant saw: :attr:`NsdReplaySource.events` lists one
:class:`NsdTrial` per design onset (trial slot, onset = row × TR, 3-s duration, 1-based 73k id),
and :meth:`NsdReplaySource.event_messages` turns them into :class:`rtrecon.contract.wire.EventMessage` s
(``trial_type="image"``, ``stimulus="nsd:<73k id>"``) for the stimulus link::

    source = NsdReplaySource(root, subject=1, session=1, run=1, speed=2.0)
    for message in source.event_messages(session="sub-01_ses-01"): ...
    for event in source: ...                     # RunStarted, VolumeReady × 225

The layout is read directly (the scanner side imports nothing from ``rtrecon`` but the wire and
config modules); ``rtrecon.data.nsd`` is the full reader with its checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtrecon.contract.wire import EventMessage
from scanner_bridge.replay import NiftiReplaySource, ReplayError
from scanner_bridge.sources import SourceEvent, VolumeSource

__all__ = ["NSD_SPACES", "NsdReplaySource", "NsdTrial"]

#: Exact TR (s) and design rows per 4-s trial of NSD's preprocessed spaces.
NSD_SPACES = {"func1pt8mm": (1.333171, 3), "func1mm": (0.999878, 4)}
STIM_S = 3.0


@dataclass(frozen=True)
class NsdTrial:
    """One image onset: ``trial`` is the 0-based slot in the run (0-74), ``onset`` seconds from
    the run's first volume, ``image_id`` the 1-based 73k id (``imgBrick[image_id - 1]``)."""

    trial: int
    onset: float
    duration: float
    image_id: int


class NsdReplaySource(VolumeSource):
    """Stream run ``run`` of ``session`` of ``subject`` from the NSD root ``root``.

    ``speed`` scales the pace (2.0: twice as fast as the scanner); ``fast`` yields the volumes
    without waiting. ``link_run`` is the run number on the link (default: ``run``).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        subject: int,
        session: int,
        run: int,
        *,
        space: str = "func1pt8mm",
        speed: float = 1.0,
        fast: bool = False,
        link_run: int | None = None,
    ) -> None:
        if space not in NSD_SPACES:
            raise ReplayError(f"unknown NSD space {space!r} (choose from {', '.join(NSD_SPACES)})")
        self.root = Path(root)
        self.tr, rows_per_trial = NSD_SPACES[space]
        base = self.root / "nsddata_timeseries" / "ppdata" / f"subj{subject:02d}" / space
        self.timeseries_path = base / "timeseries" / f"timeseries_session{session:02d}_run{run:02d}.nii.gz"
        self.design_path = base / "design" / f"design_session{session:02d}_run{run:02d}.tsv"
        if not self.timeseries_path.is_file():
            raise ReplayError(f"{self.timeseries_path}: no such file (expected NSD's time series of subject {subject}, "
                              f"session {session}, run {run} under {self.root})")
        design = self._read_design()
        self._replay = NiftiReplaySource(self.timeseries_path, speed=speed, fast=fast, tr=self.tr,
                                         run=run if link_run is None else link_run, stop=len(design))
        if self._replay.n_volumes != len(design) + 1:
            raise ReplayError(f"{self.design_path}: {len(design)} rows, expected one fewer than the "
                              f"{self._replay.n_volumes} volumes of {self.timeseries_path.name}")
        rows = np.flatnonzero(design)
        self.events = [
            NsdTrial(trial=int(round(r / rows_per_trial)), onset=float(r * self.tr), duration=STIM_S, image_id=int(design[r]))
            for r in rows
        ]
        self.n_volumes = len(design)

    def _read_design(self) -> np.ndarray:
        try:
            values = np.loadtxt(self.design_path, ndmin=1)
        except FileNotFoundError as exc:
            raise ReplayError(f"{self.design_path}: no such file (expected NSD's design for this run)") from exc
        except ValueError as exc:
            raise ReplayError(f"{self.design_path}: expected one integer column ({exc})") from exc
        if values.ndim != 1 or values.size == 0 or np.any(values < 0) or np.any(values != np.round(values)):
            raise ReplayError(f"{self.design_path}: expected one column of 73k ids (1-based) and zeros")
        return values.astype(np.int64)

    def event_messages(self, session: str) -> list[EventMessage]:
        """The run's image onsets as wire events of session ``session``."""
        return [
            EventMessage(session=session, run=self._replay.run, trial=t.trial, onset=t.onset, duration=t.duration,
                         trial_type="image", stimulus=f"nsd:{t.image_id}")
            for t in self.events
        ]

    def close(self) -> None:
        self._replay.close()

    def __iter__(self) -> Iterator[SourceEvent]:
        return iter(self._replay)
