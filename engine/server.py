"""The engine: receive → persist → acknowledge → realign → GLM → trial ready → publish.

:class:`Engine` is the per-message logic, with no sockets, so that tests and benchmarks feed it
messages directly; :func:`serve` connects it to the session's links (:mod:`rtrecon.contract.transport`):

* volumes (``VolumeMessage``, ``VolumeMissingMessage``, ``RunEndMessage``) from the bridge and
  events (``EventMessage``) from the stimulus PC arrive on reliable links whose receivers bind;
* each is written to the :class:`~engine.store.SessionStore` and only then acknowledged;
* a volume is realigned (:class:`~engine.motion.RigidRealigner`, warm-started from the previous
  volume), its ROI voxels go into the run's :class:`~engine.glm.IncrementalGLM`, and every trial
  with a release due (:class:`~engine.trials.ReleaseSchedule`: the volumes up to ``onset + d``
  have arrived, for each delay ``d`` of ``releases_s``) is released: its LSS (or LSA) beta,
  z-scored and repeat-averaged (:class:`~engine.trials.TrialNormaliser`), goes to the stimulus
  PC as a ``TrialResultMessage`` (``decoder="trial-beta"``, the z-scored beta in ``embedding``;
  ``release``, ``release_s``, ``final``; ``sequence``, its key on the results link) over a
  reliable link, and to any ``on_trial`` callback. Each release refines the last; at run end
  every trial gets a final release from the whole run;
* a ``StatusMessage`` per volume (motion, FD, stage latencies) goes to the dashboard feed, with a
  copy of each result sent and the stimulus PC's ``ShownMessage`` (the flip that first showed it,
  sent back on the results link).

With ``[engine.early]`` options on, each run starts by learning a noise pool and/or per-voxel HRFs
(:mod:`engine.early`) from the runs the engine has then (a training session folder, and the
session's ended runs: which ones is saved with the run, ``desc-earlyruns.npz``, so a restart
learns from the same); the pool's regressors of each volume join its confounds, and LSS releases
use the chosen HRFs (docs/early_estimates.md: measured, they do not help on the demo's world).

Outputs per run (BIDS derivatives, :class:`~engine.store.SessionStore`): the confounds
(``desc-confounds_timeseries.tsv``: the 6 motion parameters, FD, and ``xfm_00 .. xfm_23``, rows
0-2 of the 4x4 world (RAS mm) transform mapping a point of the reference to where the same
anatomy lies in the volume), the stage timings (``desc-volumetimings.tsv``,
``desc-trialtimings.tsv``: one row per release), the trials table (``desc-trials.tsv``: one row
per release sent, :data:`TRIAL_COLUMNS`, with the pairmate its event named and the decoded result's
CPD), each release's raw and z-scored beta
(``desc-trial<N>release<R>beta.npz``: ``beta``, ``z``) and the final LSA and LSS betas
(``desc-trialbetas.npz``: ``trials``, ``lsa``, ``lss``, their t maps ``lsa_t``, ``lss_t``, the
``noise_model`` and ``frames``, over the session's ``desc-roi_mask``).

Recovery. Everything the engine computes follows from what the store holds, processed in the
order it arrived (each event row records how many volumes of its run had been stored before it),
so :meth:`Engine.recover` replays the store and reaches the state it had when it was killed
(a volume's realignment comes from its run's checkpoint, :class:`~engine.store.RealignmentLog`,
written as it was realigned, so a restart neither reads nor realigns the volumes again; and what
the engine's state checkpoint, :mod:`engine.checkpoint`, written every ``checkpoint_volumes``
volumes and at each run's end, holds is not released again: ended runs are skipped and only the
volumes after it are replayed with their releases):
the same releases in the same order, hence the same ``sequence`` numbers; a release already in
the trials table is not sent again, and ``serve`` drops those the results link had spooled (sent
but not yet recorded when the engine died). The receivers are then opened with the store's
persisted keys and the senders resume from their spool. A run's final betas
(``desc-trialbetas.npz``, written at its end) are computed from statistics recomputed from the
stored rows, so they are bit-identical with or without a crash.
For that the live engine computes with exactly what the store holds: the run's affine as its
NIfTI header stores it (float32) and the TR of its sidecar (:meth:`SessionStore.geometry`), and
the reference as saved, never with the float64 geometry of the messages, which a restarted
engine does not have (that float32 rounding, ~1e-7 of the affine, moved a restarted demo
session's betas by ~1e-6 of their spread).

Bad input (a volume of the wrong shape or with NaNs, an out-of-order volume, an event for a run
that has ended or never started, a repeated trial number) is logged with the reason and the
session goes on: a volume that cannot be used is stored as missing (zeros), so the volume
indices keep matching the acquisition.

The reference is the first volume of the first run, or ``EngineSettings.reference``; the ROI is
``EngineSettings.roi_mask`` (resampled to the reference grid if needed) or the reference's brain
mask. Both are saved with the session's derivatives.

A run ends with its ``RunEndMessage``: every trial gets its final release, the final LSA and LSS
betas are saved, the end recorded, the message acknowledged, and the BIDS run gzipped in a background
thread (:meth:`Engine.join_background` waits for it) so that the next run is not held up.
With a ``[decoder]`` checkpoint in the config, :mod:`engine.decoding` decodes each released
trial on a thread of its own (:class:`~engine.decoding.BackgroundDecoder`), so volumes keep
being realigned and stored while an image is generated, and its result replaces the bare trial
beta on the results link. A release enters the run's trials table only once its result is sent: a
release still decoding when the engine is killed is decoded again after the restart, and a
stopping engine waits a few seconds for the ones in hand.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import pandas as pd
from engine.checkpoint import EngineCheckpoint, RunCheckpoint, settings_fingerprint
from engine.design import RunDesign
from engine.early import EarlyRun, HRFChoice, NoisePool
from engine.glm import IncrementalGLM
from engine.motion import PARAMETER_NAMES, MotionEstimate, RigidRealigner, brain_mask, framewise_displacement, rigid_matrix
from engine.store import RealignmentLog, SessionStore
from engine.timing import TRIAL_STAGES, VOLUME_STAGES, StageRecorder
from engine.trials import ReleaseSchedule, TrialBeta, TrialNormaliser
from rtrecon.contract.config import EngineSection, SessionConfig, load_config
from rtrecon.contract.layout import session_id as session_id_of
from rtrecon.contract.wire import (
    EventMessage,
    Message,
    RunEndMessage,
    StatusMessage,
    TrialResultMessage,
    VolumeMessage,
    VolumeMissingMessage,
)

if TYPE_CHECKING:  # torch is imported only when a session decodes
    from engine.decoding import BackgroundDecoder

__all__ = ["EngineSettings", "Engine", "CONFOUND_COLUMNS", "TRIAL_COLUMNS", "load_engine_config", "serve"]

log = logging.getLogger("engine")

# How long a stopping engine waits for the trials still decoding (the ones left are decoded again
# at the next start, so a stop is never held up for long).
_DRAIN_S = 10.0

# Rows 0-2 of each volume's 4x4 reference-to-volume world transform, row by row.
XFM_COLUMNS = [f"xfm_{row}{col}" for row in range(3) for col in range(4)]
CONFOUND_COLUMNS = ["volume", *PARAMETER_NAMES, "framewise_displacement", "iterations", "missing", *XFM_COLUMNS]
#: The run's trials table: one row per release sent, in the order they were released.
TRIAL_COLUMNS = ["trial", "release", "release_s", "final", "stimulus", "volumes", "method", "repeats", "pairmate", "cpd"]


#: The engine's settings are the session config's ``[engine]`` table.
EngineSettings = EngineSection


def load_engine_config(path: str | Path) -> tuple[SessionConfig, EngineSettings]:
    """The session config at ``path`` (paths resolved) and its ``[engine]`` settings."""
    config = load_config(path)
    return config, config.engine


@dataclass
class _Run:
    """One run's state."""

    number: int
    tr: float
    glm: IncrementalGLM | None  # None once the run has ended (unless [engine.early] learns from it)
    schedule: ReleaseSchedule
    stimuli: dict[int, str] = field(default_factory=dict)
    pairmates: dict[int, str] = field(default_factory=dict)  # trial -> its pairmate's stimulus id (events that name one)
    onsets: dict[int, float] = field(default_factory=dict)
    released: dict[int, int] = field(default_factory=dict)  # trial -> its newest release so far
    recorded: set[tuple[int, int]] = field(default_factory=set)  # (trial, release) in the trials table (sent before)
    undelivered: dict[int, dict[str, Any]] = field(default_factory=dict)  # sequence -> table row, released, not yet sent
    sequence: int = 0  # the next release's sequence number (its key on the results link)
    last_params: np.ndarray | None = None
    n_volumes: int = 0
    confounds: Any = None
    timings: Any = None
    trial_timings: Any = None
    trial_table: Any = None
    volume_recorder: StageRecorder = field(default_factory=lambda: StageRecorder(VOLUME_STAGES))
    trial_recorder: StageRecorder = field(default_factory=lambda: StageRecorder(TRIAL_STAGES, incoming=()))
    extra: list[np.ndarray] = field(default_factory=list)  # per GLM row: the noise-pool candidates outside the ROI
    pool: NoisePool | None = None  # [engine.early]: learned on earlier runs when this run started
    hrf: HRFChoice | None = None
    ended: bool = False


class Engine:
    """The engine's state machine over one session's store.

    ``publish_trial(result)`` and ``publish_status(status)`` send messages out (defaults: drop);
    ``on_trial(trial_beta)`` callbacks receive each release once: a restarted engine replaying its
    store does not hand them the releases it published before. With a ``decoder``
    (:class:`~engine.decoding.BackgroundDecoder`) a release is decoded on its thread, and its
    decoded result goes out instead of the bare beta when :meth:`poll` collects it.
    """

    def __init__(
        self,
        settings: EngineSettings,
        store: SessionStore,
        *,
        publish_trial: Callable[[TrialResultMessage], None] | None = None,
        publish_status: Callable[[StatusMessage], None] | None = None,
        on_trial: list[Callable[[TrialBeta], None]] | None = None,
        decoder: BackgroundDecoder | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.session_id = store.layout.session_id
        self.publish_trial = publish_trial or (lambda message: None)
        self.publish_status = publish_status or (lambda message: None)
        self.on_trial = list(on_trial or [])
        self.decoder = decoder
        self.realigner: RigidRealigner | None = None
        self.normaliser: TrialNormaliser | None = None
        self.runs: dict[int, _Run] = {}
        self._early_events: dict[int, list[EventMessage]] = {}  # runs whose first volume is yet to come
        self._background: list[threading.Thread] = []
        self._replaying = False
        self._checkpoints: dict[int, RealignmentLog] = {}  # run -> its realignment checkpoint
        self._pool_voxels: np.ndarray | None = None  # (4, n) brain voxels outside the ROI, noise-pool candidates
        self._training: list[EarlyRun] | None = None  # [engine.early] training_session, realigned once
        self._fast_forward = False  # recovering what the state checkpoint already holds: no releases
        self._since_checkpoint = 0  # volumes processed since the last state checkpoint
        self._saved_arrays: dict[str, np.ndarray] = {}  # the state checkpoint's arrays, while recovering
        self._synced_rows: dict[int, int] = {}  # run -> rows of its trials table fsynced for a checkpoint

    # -- recovery ------------------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild the state from the store (a fresh store: nothing to do).

        A volume with a record in its run's realignment checkpoint is not read or realigned again:
        the record gives exactly what realigning it gave, so the state (and every beta) is the same.
        With a state checkpoint (:mod:`engine.checkpoint`), what it covers is not released again:
        an ended run it covers is skipped, the live run's GLM is refilled from its records, and
        only the volumes after it are replayed with their releases.
        """
        saved = EngineCheckpoint.load(self._checkpoint_path(), settings_fingerprint(self.settings))
        if saved is not None and any(self.store.n_volumes(r) < c.volumes for r, c in saved.runs.items()):
            log.warning("%s: names volumes the store does not hold: the session is replayed in full", self._checkpoint_path())
            saved = None
        self._saved_arrays = saved.arrays if saved is not None else {}
        early = self.settings.early
        keeps_ended = early.session_runs and (early.noise_pool or early.hrf_library)  # _forget_signal keeps their GLM
        replayed = False
        self._replaying = True
        try:
            for run in self.store.runs():
                done = saved.runs.get(run) if saved is not None else None
                events = self.store.events(run)
                pending = sorted(events, key=lambda row: int(row["engine_volumes"]))
                n = self.store.n_volumes(run)
                affine, tr = self.store.geometry(run) if n else (None, None)
                if n and self.realigner is None and self.store.load_image("desc-reference_boldref") is not None:
                    self._ensure_realigner(run, None, affine)  # from the saved reference: the volume is not used
                    if saved is not None and saved.normaliser:
                        self.normaliser.restore(saved.normaliser, saved.arrays)
                if done is not None and done.ended and not keeps_ended and self.store.is_ended(run):
                    self._resume_ended(run, tr, done)
                    log.info("recovered run %d: %d volumes, ended (from the state checkpoint)", run, n)
                    continue
                checkpoint = self._checkpoint(run) if self.realigner is not None else None
                volumes = _VolumeReader(self.store, run)
                realigned = 0
                for index in range(n + 1):
                    if done is not None and index == done.volumes:
                        self._fast_forward = False
                        self._resume_releases(run, done)
                    else:
                        self._fast_forward = done is not None and index < done.volumes
                    replayed |= not self._fast_forward and index < n
                    while pending and int(pending[0]["engine_volumes"]) <= index:
                        self._use_event(run, _event_from_row(self.session_id, run, pending.pop(0)))
                    if index == n:
                        break
                    record = checkpoint.get(index) if checkpoint is not None else None
                    # The noise pool samples voxels beyond the ROI, which the checkpoint does not hold.
                    needs_volume = record is None or self.settings.early.noise_pool
                    volume = volumes.read(index) if needs_volume else None
                    if record is None and volume is None:
                        self._process_missing(run, index, "missing when stored")
                    else:
                        self._process_volume(run, index, volume, affine, tr, {}, record=record)
                        realigned += record is None
                self._fast_forward = False
                if checkpoint is not None:
                    checkpoint.forget()
                if self.store.is_ended(run):
                    if done is not None and done.ended:
                        self.runs[run].ended = True  # its final releases and betas are done
                    else:
                        replayed = True
                        self._finish_run(run)
                    self._forget_signal(run)
                if n:
                    log.info("recovered run %d: %d volumes (%d realigned again, %d released again), %d events", run, n,
                             realigned, n - (done.volumes if done is not None else 0), len(events))
        finally:
            self._replaying = False
            self._fast_forward = False
            self._saved_arrays = {}
        if replayed and self.realigner is not None:
            self._save_state()
        for run in self.store.uncompressed_ended_runs():
            self._compress_later(run)

    # -- state checkpoint (engine.checkpoint) ------------------------------------------------------
    def _checkpoint_path(self) -> Path:
        return self.store.layout.session_derivative("desc-enginestate.npz")

    def _save_state(self) -> None:
        """Write the state checkpoint (after the trials tables it vouches for are on disk)."""
        runs, column_arrays = {}, {}
        for number, state in self.runs.items():
            # Its rows are flushed one by one, not fsynced; the checkpoint says they were sent.
            if state.trial_table is not None and self._synced_rows.get(number) != len(state.trial_table):
                fd = os.open(state.trial_table.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._synced_rows[number] = len(state.trial_table)
            columns = []
            if state.glm is not None and not state.ended:
                for i, (trial, (rows, grid, cols)) in enumerate(state.glm.column_cache().items()):
                    columns.append([trial, rows, *grid])
                    column_arrays[f"run{number}_columns{i}"] = cols
            runs[number] = RunCheckpoint(state.n_volumes, state.ended, dict(state.released), state.sequence,
                                         {seq: dict(row) for seq, row in state.undelivered.items()}, columns)
        meta, arrays = self.normaliser.state() if self.normaliser is not None else ({}, {})
        arrays = {**arrays, **column_arrays}
        EngineCheckpoint(settings_fingerprint(self.settings), runs, meta, arrays).save(self._checkpoint_path())
        self._since_checkpoint = 0

    def _count_for_checkpoint(self) -> None:
        """A volume was processed live: checkpoint every ``checkpoint_volumes``."""
        if self._replaying:
            return
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.settings.checkpoint_volumes:
            self._save_state()

    def _resume_ended(self, run: int, tr: float, done: RunCheckpoint) -> None:
        """An ended run the checkpoint covers: its release state, nothing recomputed."""
        state = _Run(run, tr, None, ReleaseSchedule(self.settings.releases_s, tr, self.settings.glm.slice_time_ref),
                     ended=True, n_volumes=done.volumes)
        state.trial_timings = self.store.table(run, "trialtimings", ["trial", "release", *state.trial_recorder.columns("trial")[1:]])
        state.trial_table = self.store.table(run, "trials", TRIAL_COLUMNS)
        state.recorded = {(int(row["trial"]), int(row["release"])) for row in state.trial_table.rows()}
        for row in self.store.events(run):  # what each trial showed, for the releases sent again below
            event = _event_from_row(self.session_id, run, row)
            state.stimuli[event.trial] = event.stimulus
            if event.pairmate:
                state.pairmates[event.trial] = event.pairmate
        self.runs[run] = state
        self._resume_releases(run, done)

    def _resume_releases(self, run: int, done: RunCheckpoint) -> None:
        """Take the checkpoint's release state for ``run``; send again the releases it had not sent."""
        state = self.runs.get(run)
        if state is None:
            return
        state.released, state.sequence = dict(done.released), done.sequence
        if state.glm is not None and done.columns:
            state.glm.restore_column_cache({
                int(trial): (int(rows), (float(t0), float(step), int(start), int(stop)),
                             self._saved_arrays[f"run{run}_columns{i}"])
                for i, (trial, rows, t0, step, start, stop) in enumerate(done.columns)})
        for sequence, row in sorted(done.undelivered.items()):
            trial, release = int(row["trial"]), int(row["release"])
            if (trial, release) in state.recorded:
                continue
            with np.load(self.store.derivative_path(run, f"trial{trial}release{release}beta", ".npz")) as saved:
                beta, z = saved["beta"], saved["z"]
            released = TrialBeta(run, trial, row["stimulus"], beta, z, int(row["repeats"]), release=release,
                                 release_s=float(row["release_s"]), final=bool(row["final"]), sequence=sequence,
                                 pairmate=row.get("pairmate") or "")
            state.trial_recorder.mark(sequence, "ready")
            state.trial_recorder.mark(sequence, "betas")
            self._send_release(state, released, row)

    def _checkpoint(self, run: int) -> RealignmentLog:
        checkpoint = self._checkpoints.get(run)
        if checkpoint is None:
            assert self.realigner is not None
            checkpoint = self._checkpoints[run] = self.store.realignment_log(run, int(self.realigner.roi_mask.sum()))
        return checkpoint

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, message: Message, ack: Callable[[Message], None] | None = None) -> None:
        """Persist ``message``, acknowledge it (``ack``), then act on it. Never raises on bad input."""
        ack = ack or (lambda m: None)
        try:
            if isinstance(message, VolumeMessage):
                self._on_volume(message, ack)
            elif isinstance(message, VolumeMissingMessage):
                self._on_missing(message, ack)
            elif isinstance(message, EventMessage):
                self._on_event(message, ack)
            elif isinstance(message, RunEndMessage):
                self._on_run_end(message, ack)
            else:
                log.warning("ignored a %s message: the engine does not take them", message.KIND)
        except Exception:  # one bad message must not end a live session
            log.exception("failed on a %s message; the session goes on", message.KIND)

    def _on_volume(self, msg: VolumeMessage, ack: Callable[[Message], None]) -> None:
        run, index = msg.run, msg.index
        received = time.perf_counter()
        if self.store.is_ended(run):
            log.error("volume %d of run %d ignored: the run has ended", index, run)
            ack(msg)
            return
        expected = self.store.n_volumes(run)
        if index < expected:
            log.error("volume %d of run %d ignored: out of order (volume %d is the next expected)", index, run, expected)
            ack(msg)
            return
        for gap in range(expected, index):
            log.error("volume %d of run %d never came before volume %d: stored as missing", gap, run, index)
            self._store_missing(msg, gap, "never came")
        problem = self._volume_problem(msg)
        if problem is not None:
            log.error("volume %d of run %d is unusable (%s): stored as missing", index, run, problem)
            self._store_missing(msg, index, problem)
            ack(msg)
            return
        stored = self.store.append_volume(run, msg.voxels, msg.affine, msg.tr, msg.slice_times)
        ack(msg)
        # Compute with the geometry as stored (a float32 affine), which is all a restarted engine has.
        affine, tr = self.store.geometry(run)
        self._process_volume(run, stored, msg.voxels, affine, tr, msg.stamps, received)

    def _store_missing(self, msg: VolumeMessage, index: int, reason: str) -> None:
        """Store zeros for volume ``index`` (the geometry of the reference, else of ``msg``)."""
        if self.store.n_volumes(msg.run) > 0:
            self.store.append_missing(msg.run)
        else:
            if self.realigner is not None:
                shape, affine = self.realigner.shape, self.realigner.affine
            elif np.ndim(msg.voxels) == 3 and np.shape(msg.affine) == (4, 4):
                shape, affine = np.shape(msg.voxels), msg.affine
            else:
                log.error("run %d: nothing stored for volume %d, its geometry is unusable", msg.run, index)
                return
            dtype = np.asarray(msg.voxels).dtype if np.asarray(msg.voxels).dtype.kind in "iuf" else np.float32
            # No stand-in TR: the wire refuses TR <= 0, so this is the scanner's, and the run's
            # later volumes are compared with it (_volume_problem).
            self.store.append_volume(msg.run, np.zeros(shape, dtype), affine, msg.tr)
        self._process_missing(msg.run, index, reason)

    def _volume_problem(self, msg: VolumeMessage) -> str | None:
        voxels = np.asarray(msg.voxels)
        if voxels.ndim != 3:
            return f"{voxels.ndim}D voxels, expected 3D"
        if self.realigner is not None and voxels.shape != self.realigner.shape:
            return f"shape {voxels.shape} differs from the reference's {self.realigner.shape}"
        if not np.all(np.isfinite(voxels)):
            return "NaN or infinite voxels"
        if not np.any(voxels):
            return "all voxels are zero"
        if np.asarray(msg.affine).shape != (4, 4) or msg.tr <= 0:
            return "bad affine or TR"
        if self.store.n_volumes(msg.run) > 0:
            run_tr = self.store.geometry(msg.run)[1]
            if not math.isclose(msg.tr, run_tr, rel_tol=1e-6):
                return f"TR {msg.tr:g} s differs from the run's {run_tr:g} s"
        stored = self.store.volume_dtype(msg.run)
        if stored is not None and voxels.dtype.newbyteorder("=") != stored.newbyteorder("="):
            return f"dtype {voxels.dtype} differs from the run's {stored}"  # a cast would wrap or round
        return None

    def _on_missing(self, msg: VolumeMissingMessage, ack: Callable[[Message], None]) -> None:
        if self.store.is_ended(msg.run):
            log.error("missing-volume notice %d of run %d ignored: the run has ended", msg.index, msg.run)
        elif self.store.n_volumes(msg.run) != msg.index:
            log.error("missing-volume notice %d of run %d ignored: out of order", msg.index, msg.run)
        elif msg.index == 0:
            log.error("volume 0 of run %d never came (%s): the run starts at its first volume", msg.run, msg.reason)
        else:
            self.store.append_missing(msg.run)
            ack(msg)
            self._process_missing(msg.run, msg.index, msg.reason)
            return
        ack(msg)

    def _on_event(self, msg: EventMessage, ack: Callable[[Message], None]) -> None:
        started = [r for r in self.store.runs() if self.store.n_volumes(r) > 0]
        problem = None
        if msg.session != self.session_id:
            problem = f"session {msg.session!r} is not {self.session_id!r}"
        elif self.store.is_ended(msg.run):
            problem = f"run {msg.run} has ended"
        elif started and msg.run < max(started) and self.store.n_volumes(msg.run) == 0:
            problem = f"unknown run {msg.run} (never started; run {max(started)} is under way)"
        elif any(int(row["trial"]) == msg.trial for row in self.store.events(msg.run)):
            problem = f"trial {msg.trial} of run {msg.run} was already received"
        if problem is not None:
            log.error("event for trial %d ignored: %s", msg.trial, problem)
            ack(msg)
            return
        row = {
            "onset": msg.onset, "duration": msg.duration, "trial_type": msg.trial_type, "trial": msg.trial,
            "stimulus": msg.stimulus, "pairmate": msg.pairmate or None, "response": msg.response, "response_time": msg.response_time,
            "feedback": msg.feedback, "engine_volumes": self.store.n_volumes(msg.run),
        }
        self.store.append_event(msg.run, row)
        ack(msg)
        self._use_event(msg.run, msg)

    def _on_run_end(self, msg: RunEndMessage, ack: Callable[[Message], None]) -> None:
        if self.store.n_volumes(msg.run) == 0:
            log.error("end of run %d ignored: no volume of it was received", msg.run)
            ack(msg)
            return
        if self.store.is_ended(msg.run):
            ack(msg)
            return
        while self.store.n_volumes(msg.run) < msg.n_volumes:
            index = self.store.append_missing(msg.run)
            log.error("volume %d of run %d never came before the run ended: stored as missing", index, msg.run)
            self._process_missing(msg.run, index, "never came")
        self._finish_run(msg.run)
        self.store.end_run(msg.run)
        self._save_state()
        ack(msg)
        self._forget_signal(msg.run)
        self._compress_later(msg.run)

    def _forget_signal(self, run: int) -> None:
        """Free an ended run's GLM (its ROI signal): its final betas are saved and nothing solves it
        again, so a long session's memory does not grow by a run's signal per run. Kept when
        ``[engine.early]`` learns from the session's ended runs, which reads their signal."""
        early = self.settings.early
        if early.session_runs and (early.noise_pool or early.hrf_library):
            return
        state = self.runs.get(run)
        if state is not None:
            state.glm = None

    def _compress_later(self, run: int) -> None:
        """gzip the run's BIDS NIfTI in a thread: seconds of work that must not delay the next run."""
        thread = threading.Thread(target=self.store.compress_run, args=(run,), name=f"compress-run-{run}")
        thread.start()
        self._background.append(thread)

    def join_background(self, timeout_s: float | None = None) -> None:
        """Wait for background work (run compression) to finish."""
        for thread in self._background:
            thread.join(timeout_s)
        self._background = [t for t in self._background if t.is_alive()]

    # -- processing ----------------------------------------------------------------------------
    def _ensure_realigner(self, run: int, volume: np.ndarray | None, affine: np.ndarray) -> None:
        if self.realigner is not None:
            return
        saved = self.store.load_image("desc-reference_boldref")
        if saved is None:
            if self.settings.reference is not None:
                img = nib.load(self.settings.reference)
                reference = np.asarray(img.dataobj, dtype=np.float32)
                reference = reference[..., 0] if reference.ndim == 4 else reference
                ref_affine = img.affine
            else:
                reference, ref_affine = volume, affine
            # Save it, then use what was saved (a float32 affine): exactly what a restart reads back.
            self.store.save_image("desc-reference_boldref", np.asarray(reference, np.float32), ref_affine)
            saved = self.store.load_image("desc-reference_boldref")
            assert saved is not None
        reference, ref_affine = np.asarray(saved[0], dtype=np.float32), saved[1]
        roi = None
        saved_roi = self.store.load_image("desc-roi_mask")
        if saved_roi is not None:
            roi = saved_roi[0].astype(bool)
        elif self.settings.roi_mask is not None:
            roi = _roi_on_grid(self.settings.roi_mask, reference.shape, ref_affine)
        self.realigner = RigidRealigner(
            reference, ref_affine, roi_mask=roi,
            fwhm_mm=self.settings.realign_fwhm_mm, n_samples=self.settings.realign_samples,
            refine_above_mm=self.settings.realign_refine_above_mm, order=self.settings.resample_order,
        )
        if saved_roi is None:
            self.store.save_image("desc-roi_mask", self.realigner.roi_mask.astype(np.uint8), ref_affine)
        n_roi = int(self.realigner.roi_mask.sum())
        self.normaliser = TrialNormaliser(
            n_roi, stats=self.settings.zscore_stats, average_repeats=self.settings.average_repeats
        )
        if self.settings.early.noise_pool:
            # The ROI alone has few voxels the task does not drive: the pool also samples the brain beyond it.
            # The brain itself, not the realigner's dilated mask: voxels at its edge, interpolated from
            # the brain by motion estimates that the task's own signal nudges, made the task a "noise"
            # component (measured: first-release r 0.61 -> 0.32 in a world without shared noise).
            outside = np.argwhere(brain_mask(reference, ref_affine) & ~self.realigner.roi_mask)
            n = min(self.settings.early.pool_voxels, len(outside))
            outside = outside[np.unique(np.linspace(0, len(outside) - 1, n).round().astype(int))] if n else outside[:0]
            self._pool_voxels = np.c_[outside, np.ones(len(outside))].T
        log.info("reference %s, ROI of %d voxels", reference.shape, n_roi)

    def _run_state(self, run: int, tr: float) -> _Run:
        state = self.runs.get(run)
        if state is not None:
            return state
        assert self.realigner is not None
        design = RunDesign(tr, self.settings.planned_volumes, self.settings.glm)
        pool, hrf = self._fit_early(run)
        confounds = list(PARAMETER_NAMES) if self.settings.glm.motion_confounds else []
        confounds += pool.names if pool is not None else []
        glm = IncrementalGLM(design, int(self.realigner.roi_mask.sum()), confound_names=confounds)
        schedule = ReleaseSchedule(self.settings.releases_s, tr, self.settings.glm.slice_time_ref)
        state = _Run(run, tr, glm, schedule, pool=pool, hrf=hrf)
        state.confounds = self.store.table(run, "confounds_timeseries", CONFOUND_COLUMNS)
        state.timings = self.store.table(run, "volumetimings", state.volume_recorder.columns("volume"))
        state.trial_timings = self.store.table(run, "trialtimings", ["trial", "release", *state.trial_recorder.columns("trial")[1:]])
        state.trial_table = self.store.table(run, "trials", TRIAL_COLUMNS)
        state.recorded = {(int(row["trial"]), int(row["release"])) for row in state.trial_table.rows()}
        self.runs[run] = state
        for event in self._early_events.pop(run, []):
            self._use_event(run, event)
        return state

    def _use_event(self, run: int, msg: EventMessage) -> None:
        state = self.runs.get(run)
        if state is None:  # the run has not started: its first volume adds the event
            self._early_events.setdefault(run, []).append(msg)
            return
        if msg.trial in state.onsets:
            return
        state.glm.add_trial(msg.trial, msg.onset, msg.duration)
        state.onsets[msg.trial] = msg.onset
        state.stimuli[msg.trial] = msg.stimulus
        if msg.pairmate:
            state.pairmates[msg.trial] = msg.pairmate
        self._release_ready(state)

    def _process_volume(
        self, run: int, index: int, volume: np.ndarray | None, affine: np.ndarray, tr: float,
        stamps: dict[str, float], received: float | None = None,
        record: tuple[np.ndarray, int, np.ndarray] | None = None,
    ) -> None:
        """Realign ``volume`` and use it; a checkpoint ``record`` (params, iterations, ROI voxels) is
        that volume's realignment, recorded before: then ``volume`` is not needed."""
        self._ensure_realigner(run, volume, affine)
        assert self.realigner is not None
        state = self._run_state(run, tr)
        rec = state.volume_recorder
        rec.mark(index, "received", stamps, at=received)
        rec.mark(index, "persisted")
        if record is not None:
            estimate = MotionEstimate(record[0], record[2], record[1], converged=True)
        else:
            assert volume is not None
            estimate = self.realigner.realign(volume, affine, init=state.last_params)
            if not self._checkpoint(run).append(index, estimate.params, estimate.iterations, estimate.roi):
                log.debug("volume %d of run %d: no checkpoint record (a restart realigns it again)", index, run)
        rec.mark(index, "realigned")
        previous = state.last_params
        state.last_params = estimate.params
        fd = float("nan") if previous is None else float(framewise_displacement([previous, estimate.params])[1])
        confounds = list(estimate.params) if self.settings.glm.motion_confounds else []
        if self._pool_voxels is not None:
            extra = self.realigner.resample_voxels(volume, estimate.params, self._pool_voxels, affine)
            state.extra.append(extra)
            if state.pool is not None:
                confounds += list(state.pool.regressors(np.concatenate([estimate.roi, extra])))
        state.glm.add_volume(estimate.roi, confounds, frame=index)
        rec.mark(index, "glm_updated")
        latency_ms = rec.elapsed_ms(index, "glm_updated")
        state.n_volumes = index + 1
        xfm = rigid_matrix(estimate.params, self.realigner.center)[:3].ravel()
        self._write_volume_rows(state, index, estimate.params, fd, estimate.iterations, missing=False, xfm=xfm)
        self._release_ready(state)
        if not self._replaying:
            metrics = {"run": float(run), "volume": float(index), "framewise_displacement": fd,
                       "iterations": float(estimate.iterations),
                       "latency_ms": latency_ms,
                       "trials_decoding": float(self.decoder.pending if self.decoder is not None else 0)}
            metrics.update(dict(zip(PARAMETER_NAMES, map(float, estimate.params))))
            metrics.update(self.decoder.status() if self.decoder is not None else {})  # readiness, GPU memory
            self.publish_status(StatusMessage(process="engine", state="running",
                                              message=f"run {run} volume {index}", metrics=metrics, sent_time=time.time()))
        self._count_for_checkpoint()

    def _process_missing(self, run: int, index: int, reason: str) -> None:
        state = self.runs.get(run)
        if state is None:
            return
        state.n_volumes = index + 1
        self._write_volume_rows(state, index, np.full(6, np.nan), float("nan"), 0, missing=True, xfm=np.full(12, np.nan))
        self._release_ready(state)
        if not self._replaying:
            self.publish_status(StatusMessage(process="engine", state="warning",
                                              message=f"run {run} volume {index} missing: {reason}", sent_time=time.time()))
        self._count_for_checkpoint()

    def _write_volume_rows(
        self, state: _Run, index: int, params: np.ndarray, fd: float, iterations: int, missing: bool, xfm: np.ndarray,
    ) -> None:
        # Volumes missing before the run's state existed still get their (empty) rows.
        while len(state.confounds) < index:
            state.confounds.append({"volume": len(state.confounds), "missing": True})
        while len(state.timings) < index:
            state.timings.append({"volume": len(state.timings)})
        # Replays recompute rows already on disk: keep those (their timings are the live ones).
        if index >= len(state.confounds):
            state.confounds.append({"volume": index, **dict(zip(PARAMETER_NAMES, params)),
                                    "framewise_displacement": fd, "iterations": iterations, "missing": missing,
                                    **dict(zip(XFM_COLUMNS, xfm))})
        if index >= len(state.timings):
            state.timings.append(state.volume_recorder.row(index, "volume"))
        state.volume_recorder.forget(index)

    def _release_ready(self, state: _Run) -> None:
        """Release every trial with a release due now that ``state.n_volumes`` volumes have arrived."""
        if self._fast_forward:  # the state checkpoint holds what these releases did
            return
        last_frame = state.n_volumes - 1
        active = None
        for trial in sorted(state.onsets):
            release = state.schedule.due(state.onsets[trial], last_frame, state.released.get(trial, -1))
            if release is None:
                continue
            if active is None:
                active = set(state.glm.active_trials())
            if trial in active:
                self._release(state, trial, release, final=False)

    def _release(self, state: _Run, trial: int, release: int, final: bool) -> None:
        assert self.normaliser is not None
        sequence = state.sequence
        state.sequence += 1
        rec = state.trial_recorder  # keyed by sequence: a trial may have several releases in flight
        rec.mark(sequence, "ready")
        glm = self.settings.glm
        # A scheduled release sees a trial's rising edge only, which smooth motion traces fit too.
        without = () if final or glm.release_motion_confounds else PARAMETER_NAMES
        if self.settings.beta_method == "lss":
            beta = state.hrf.lss(state.glm, trial, without) if state.hrf is not None else state.glm.lss(trial, without)
        else:
            beta = state.glm.lsa([trial], without)[trial]
        released = self.normaliser.release(state.number, trial, state.stimuli.get(trial, ""), beta, release=release)
        rec.mark(sequence, "betas")
        state.released[trial] = release
        release_s = float(state.glm.frames[-1]) * state.tr - state.onsets[trial]
        pairmate = state.pairmates.get(trial, "")
        released = replace(released, release_s=release_s, final=final, sequence=sequence, pairmate=pairmate)
        if (trial, release) in state.recorded:  # released, decoded and sent before a restart: not again
            rec.forget(sequence)
            return
        self.store.save_arrays(state.number, f"trial{trial}release{release}beta", beta=released.beta, z=released.z)
        self._send_release(state, released, {
            "trial": trial, "release": release, "release_s": release_s, "final": final, "stimulus": released.stimulus,
            "volumes": state.n_volumes, "method": self.settings.beta_method, "repeats": released.repeats,
            "pairmate": pairmate or None,
        })

    def _send_release(self, state: _Run, released: TrialBeta, row: dict[str, Any]) -> None:
        """Hand a release (its beta saved) to the callbacks and send it, decoded if there is a decoder."""
        sequence = released.sequence
        result = TrialResultMessage(
            session=self.session_id, run=state.number, trial=released.trial, stimulus=released.stimulus,
            pairmate=released.pairmate, embedding=released.z.astype(np.float32), decoder="trial-beta",
            release=released.release, release_s=released.release_s, final=released.final, sequence=sequence,
            latencies={"betas_s": state.trial_recorder.elapsed_ms(sequence, "betas") / 1000.0},
            stamps={"trial_ready": time.time()},
        )
        for callback in self.on_trial:
            callback(released)
        state.undelivered[sequence] = row
        if self.decoder is None:
            self._deliver(state, sequence, result)
        else:
            self.decoder.submit(released, result)

    def _deliver(self, state: _Run, sequence: int, result: TrialResultMessage) -> None:
        """Send a release's result, then record it: a release in the trials table is never sent again."""
        self.publish_trial(result)
        rec = state.trial_recorder
        rec.mark(sequence, "published")
        row = state.undelivered.pop(sequence)
        row["cpd"] = result.cpd
        state.recorded.add((row["trial"], row["release"]))
        state.trial_table.append(row)
        state.trial_timings.append({**rec.row(sequence, "trial"), "trial": row["trial"], "release": row["release"]})
        rec.forget(sequence)

    def poll(self, timeout_s: float = 0.0) -> int:
        """Send and record the results the decoder has finished (waiting up to ``timeout_s`` for one);
        how many. Called from the engine's loop, between messages."""
        if self.decoder is None:
            return 0
        done = self.decoder.collect(timeout_s)
        for trial, result in done:
            result.stamps["sent"] = time.time()
            # The decoder builds its result from the trial alone: which release it is comes from here.
            result = replace(result, release=trial.release, release_s=trial.release_s, final=trial.final,
                             sequence=trial.sequence)
            try:
                self._deliver(self.runs[trial.run], trial.sequence, result)
            except Exception:  # as in handle(): the session goes on
                log.exception("failed to send release %d of trial %d of run %d", trial.release, trial.trial, trial.run)
        return len(done)

    def drain(self, timeout_s: float) -> None:
        """Deliver the results of the trials still decoding, for up to ``timeout_s``; the ones left are
        decoded again by the next start (they are not in the trials table)."""
        deadline = time.monotonic() + timeout_s
        if self.decoder is not None and self.decoder.pending:
            log.info("waiting up to %.0f s for %d trials still decoding", timeout_s, self.decoder.pending)
        while self.decoder is not None and self.decoder.pending and time.monotonic() < deadline:
            self.poll(timeout_s=min(0.5, max(deadline - time.monotonic(), 0.0)))
        if self.decoder is not None and self.decoder.pending:
            log.warning("%d trials still decoding at shutdown: they are decoded again at the next start",
                        self.decoder.pending)

    def _finish_run(self, run: int) -> None:
        """Give every trial its final release (OLS, as every release) and save the run's final betas and t
        maps (``[engine.glm] noise_model``: OLS or AR(1)) on the whole run."""
        state = self.runs.get(run)
        if state is None:
            return
        state.ended = True
        state.glm.refresh()
        active = set(state.glm.active_trials())
        for trial in sorted(state.onsets):
            if trial in active:
                self._release(state, trial, state.schedule.final, final=True)
        if state.glm.active_trials():
            betas = state.glm.final(self.settings.glm.noise_model)
            self.store.save_arrays(
                run, "trialbetas", trials=np.array(betas.trials), lsa=betas.lsa, lss=betas.lss,
                lsa_t=betas.lsa_t, lss_t=betas.lss_t, noise_model=np.array(betas.noise_model), frames=state.glm.frames,
            )

    # -- early estimates ([engine.early]) ----------------------------------------------------------
    def _fit_early(self, run: int) -> tuple[NoisePool | None, HRFChoice | None]:
        """The noise pool and per-voxel HRFs of ``run``, learned on what the session has when it starts."""
        early = self.settings.early
        if not (early.noise_pool or early.hrf_library):
            return None, None
        try:
            earlier = self._earlier_runs(run)
        except Exception:  # an unreadable training run must not stop the live run: it goes plain
            log.exception("run %d: the earlier runs could not be read: plain OLS releases", run)
            return None, None
        if not earlier:
            log.info("run %d: no earlier run to learn early estimates from: plain OLS releases", run)
            return None, None
        assert self.realigner is not None
        n_roi = int(self.realigner.roi_mask.sum())
        pool = hrf = None
        if early.noise_pool:
            try:
                pool = NoisePool(early.noise_components, early.pool_r2).fit(earlier, self.settings.glm)
            except (ValueError, np.linalg.LinAlgError) as exc:  # e.g. too few voxels the task leaves alone
                log.error("run %d: no noise pool (%s)", run, exc)
        if early.hrf_library:
            try:
                hrf = HRFChoice().fit([replace(r, signal=r.signal[:, :n_roi]) for r in earlier], self.settings.glm)
            except (ValueError, np.linalg.LinAlgError) as exc:
                log.error("run %d: no per-voxel HRF (%s)", run, exc)
        log.info("run %d: early estimates from %d earlier runs: %s", run, len(earlier), ", ".join(
            ([f"noise pool of {len(pool.pool)} voxels"] if pool is not None else [])
            + ([f"{len(np.unique(hrf.choice))} HRFs in use"] if hrf is not None else [])) or "none")
        return pool, hrf

    def _earlier_runs(self, run: int) -> list[EarlyRun]:
        """The training session's runs, then this session's runs that had ended when ``run`` started.

        Which of the session's runs those were is saved with ``run`` (``desc-earlyruns.npz``) the
        first time, so a restarted engine learns from the same runs, hence releases the same betas."""
        early = self.settings.early
        runs = list(self._training_runs()) if early.training_session is not None else []
        if not early.session_runs:
            return runs
        path = self.store.derivative_path(run, "earlyruns", ".npz")
        if path.exists():
            with np.load(path) as saved:
                numbers = [int(r) for r in saved["runs"]]
        else:
            numbers = [r for r, s in sorted(self.runs.items()) if r < run and s.ended and s.glm is not None and s.glm.trial_ids]
            self.store.save_arrays(run, "earlyruns", runs=np.array(numbers, dtype=int))
        for number in numbers:
            state = self.runs[number]
            signal = state.glm.signal
            if self._pool_voxels is not None:
                signal = np.hstack([signal, np.vstack(state.extra)]) if state.extra else signal[:0]
            timing = [state.glm.trial_timing(t) for t in state.glm.trial_ids]
            runs.append(EarlyRun(signal, state.tr, [o for o, _ in timing], [d for _, d in timing], state.glm.frames))
        return runs

    def _training_runs(self) -> list[EarlyRun]:
        """The runs of ``[engine.early] training_session``, realigned to this session's reference (once)."""
        if self._training is not None:
            return self._training
        assert self.realigner is not None and self.settings.early.training_session is not None
        self._training = []
        for bold in sorted(self.settings.early.training_session.rglob("*_bold.nii*")):
            events = bold.with_name(bold.name.split("_bold.nii")[0] + "_events.tsv")
            if not bold.name.endswith((".nii", ".nii.gz")) or not events.exists():
                continue
            img = nib.load(bold)
            if img.ndim != 4 or img.shape[:3] != self.realigner.shape:
                log.error("training run %s skipped: shape %s, this session's grid is %s", bold, img.shape, self.realigner.shape)
                continue
            sidecar = bold.with_name(bold.name.split(".nii")[0] + ".json")
            tr = float(json.loads(sidecar.read_text())["RepetitionTime"]) if sidecar.exists() else float(img.header.get_zooms()[3])
            data, affine = np.asarray(img.dataobj), img.header.get_best_affine()
            rows, frames, params = [], [], None
            for index in range(data.shape[3]):
                volume = data[..., index]
                if not volume.any():  # stored as missing
                    continue
                estimate = self.realigner.realign(volume, affine, init=params)
                params = estimate.params
                row = estimate.roi
                if self._pool_voxels is not None:
                    row = np.concatenate([row, self.realigner.resample_voxels(volume, params, self._pool_voxels, affine)])
                rows.append(row)
                frames.append(index)
            table = pd.read_csv(events, sep="\t")
            table = table[np.isfinite(pd.to_numeric(table["onset"], errors="coerce"))]
            self._training.append(EarlyRun(np.vstack(rows), tr, table["onset"].astype(float).tolist(),
                                           table["duration"].astype(float).tolist(), np.array(frames)))
            log.info("training run %s: %d volumes, %d trials", bold.name, len(rows), len(table))
        return self._training


class _VolumeReader:
    """A stored run's volumes by increasing index: a live run's read where they lie, an ended
    (gzipped) run's decompressed once, and only when a volume is wanted."""

    def __init__(self, store: SessionStore, run: int) -> None:
        self.store, self.run = store, run
        self.live = store.bold_path(run, live=True).exists()
        self._volumes: Any = None
        self._next = 0

    def read(self, index: int) -> np.ndarray | None:
        if self.live:
            return self.store.volume(self.run, index)
        if self._volumes is None:
            self._volumes = self.store.iter_volumes(self.run)
        while self._next < index:
            next(self._volumes)
            self._next += 1
        self._next += 1
        return next(self._volumes)

def _event_from_row(session: str, run: int, row: dict[str, str]) -> EventMessage:
    def num(value: str) -> float | None:
        return None if value == "n/a" else float(value)

    return EventMessage(
        session=session, run=run, trial=int(row["trial"]), onset=float(row["onset"]),
        duration=float(row["duration"]), trial_type=row["trial_type"],
        stimulus="" if row["stimulus"] == "n/a" else row["stimulus"],
        pairmate="" if row.get("pairmate", "n/a") == "n/a" else row["pairmate"],
        response="" if row["response"] == "n/a" else row["response"],
        response_time=num(row["response_time"]), feedback=row["feedback"] == "1",
    )


def _roi_on_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The ROI mask at ``path`` on the reference grid (nearest-neighbour if it is on another grid)."""
    try:
        img = nib.load(path)
    except (OSError, nib.filebasedimages.ImageFileError) as exc:
        raise ValueError(f"{path}: cannot read the ROI mask: {exc}") from exc
    if img.shape[:3] == tuple(shape) and np.allclose(img.affine, affine, atol=1e-3):
        mask = np.asarray(img.dataobj).reshape(shape) > 0
    else:
        from nilearn.image import resample_img

        resampled = resample_img(img, target_affine=affine, target_shape=shape, interpolation="nearest",
                                 force_resample=True, copy_header=True)
        mask = np.asarray(resampled.dataobj) > 0
    if not mask.any():
        raise ValueError(f"{path}: the ROI mask is empty on the reference grid")
    return mask


def serve(config_path: str | Path, *, stop: Callable[[], bool] | None = None) -> int:
    """Run the engine of the session config at ``config_path`` until ``stop()`` is true."""
    from rtrecon.contract.keys import load_curve
    from rtrecon.contract.transport import ReliableReceiver, ReliableSender, StatusPublisher, result_key, trial_key, volume_key

    config, settings = load_engine_config(config_path)
    s = config.session
    store = SessionStore(s.output_dir, s.subject, s.session, s.task)
    curve = load_curve(config.security.keys_dir, "engine") if config.security.keys_dir else None
    session_id = session_id_of(s.subject, s.session)
    spool = Path(s.output_dir) / "engine_spool"
    hb = config.network.heartbeat_s
    with (
        ReliableSender(config.network.results, session_id, spool, key=result_key, curve=curve,
                       server_role="stimulus", heartbeat_s=hb, name="engine") as results,
        StatusPublisher(config.network.status, curve=curve, name="engine") as status,
    ):
        def publish_trial(message: TrialResultMessage) -> None:
            # A restarted engine releases again what it had spooled but not yet recorded: sent once.
            if message.sequence > results.spooled.get(message.run, -1):
                results.send(message)

        decoder = None
        if config.decoder.decodes:  # its decoded result goes out instead of the bare beta
            from engine.decoding import BackgroundDecoder, DecodingStage

            decoder = BackgroundDecoder(DecodingStage.from_config(config, publish_trial, store), warm_up=config.decoder.warmup)

        def publish_result(message: TrialResultMessage) -> None:
            publish_trial(message)
            # The operator console's copy: the results link is point-to-point to the stimulus PC.
            status.publish(dataclasses.replace(message, embedding=None))

        engine = Engine(settings, store, publish_trial=publish_result, publish_status=status.publish, decoder=decoder)
        engine.recover()
        events_persisted = {r: max((int(row["trial"]) for row in store.events(r)), default=-1) for r in store.runs()}
        with (
            ReliableReceiver(config.network.volumes, session_id, store.persisted(), key=volume_key,
                             curve=curve, heartbeat_s=hb, name="engine", max_key_jump=config.network.max_index_jump,
                             max_message_bytes=config.network.max_message_bytes) as volumes,
            ReliableReceiver(config.network.events, session_id, events_persisted, key=trial_key,
                             curve=curve, heartbeat_s=hb, name="engine-events") as events,
        ):
            log.info("engine up: volumes on %s, events on %s", config.network.volumes, config.network.events)
            next_links = 0.0
            while stop is None or not stop():
                if time.monotonic() >= next_links:  # the links' health, once a heartbeat, for the console
                    next_links = time.monotonic() + hb
                    links = {"bridge_alive": float(volumes.peer_alive), "stimulus_events_alive": float(events.peer_alive),
                             "stimulus_results_alive": float(results.peer_alive), "results_pending": float(results.pending),
                             "trials_decoding": float(decoder.pending if decoder is not None else 0)}
                    if volumes.peer_lead is not None:  # the bridge's backlog: volumes sent, not yet acknowledged
                        links["bridge_lead"], links["bridge_lead_bound"] = map(float, volumes.peer_lead)
                    torch = sys.modules.get("torch")  # only if decoding put something on a GPU: never start CUDA here
                    if torch is not None and torch.cuda.is_initialized():
                        links["gpu_memory_mb"] = torch.cuda.memory_allocated() / 2**20
                    status.publish(StatusMessage(process="engine", state="links", sent_time=time.time(), metrics=links))
                message = volumes.recv(timeout_s=0.005)
                if message is not None:
                    engine.handle(message, volumes.ack)
                # Events are few and small, and a volume may need them: take all that are queued.
                for _ in range(16):
                    message = events.recv(timeout_s=0.0)
                    if message is not None:
                        engine.handle(message, events.ack)
                engine.poll()
                results.poll()
                for shown in results.notices():  # the stimulus PC showed a result: the console's last stage
                    status.publish(shown)
            engine.drain(timeout_s=_DRAIN_S)
            results.poll()
        if decoder is not None:
            decoder.close(timeout_s=1.0)
        engine.join_background()
    return 0
