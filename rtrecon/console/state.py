"""The live session as the operator sees it, aggregated from the engine's feed and the store.

:class:`SessionState` takes the engine's status feed (:class:`~rtrecon.contract.wire.StatusMessage`: one
per volume with its motion, FD and latency, a ``links`` one per heartbeat with the health of the
bridge and stimulus links and the decoder's queue, a ``warning`` per missing volume), the copies
of the trial results the engine publishes on the same feed (:class:`~rtrecon.contract.wire.TrialResultMessage`,
one per release), rows read back from the session folder (:mod:`rtrecon.console.folder`) and
the operator's controls, and the stimulus PC's word of when each result was first shown
(:class:`~rtrecon.contract.wire.ShownMessage`, which the engine republishes). It keeps, per run, every volume and every trial with its releases, and
answers with JSON-ready dicts: :meth:`snapshot` (everything, for a page that connects) and
:meth:`changes` (what changed since the last call, pushed to every open page).

A release is known by (run, trial, release index) and shown once: a restarted engine republishes
results it had sent, and the store holds the releases the feed gave too, so a release already
heard is not taken again (only a release read back from the store gives way to the feed's copy,
which has its latencies). The running accuracy scores each trial once, on its first release (what
the participant saw first, as the session report's headline does); later releases refine the
reconstruction and top-5 the page shows, not the accuracy.

It holds no sockets and no clock of its own (``now`` is passed in, ``time.monotonic()``
seconds), so it is tested by feeding it messages. Nothing in it is patient data: volume indices,
motion numbers, stimulus ids and reconstructions only.

The banners (:meth:`banners`) name what an operator must act on: a missing volume, a dead link
(the engine silent for ``liveness`` heartbeats; the bridge or the stimulus PC gone while a run
is live), a decoder falling behind (``decoder_backlog`` trials or more waiting), a bridge held
back by its lead bound (``[bridge] max_lead`` volumes sent and not yet acknowledged: the engine is
behind the scanner), a TR that is not the session's, and framewise displacement above ``fd_threshold_mm`` (the alarm).
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtrecon.console.folder import MOTION_NAMES, DecodedTrial, StoredRelease, VolumeRow
from rtrecon.contract.wire import OperatorMessage, ShownMessage, StatusMessage, TrialResultMessage

__all__ = ["SessionState", "thumbnail"]

_MISSING = re.compile(r"run (\d+) volume (\d+) missing: (.*)")
_THUMB_PX = 128


def thumbnail(image: np.ndarray | None, size: int = _THUMB_PX) -> str | None:
    """A reconstruction as a PNG ``data:`` URL at most ``size`` pixels a side (None without one)."""
    if image is None:
        return None
    from PIL import Image

    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3, 4) or pixels.dtype != np.uint8:
        return None
    picture = Image.fromarray(pixels.squeeze(2) if pixels.shape[2] == 1 else pixels)
    picture.thumbnail((size, size))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class _Volume:
    index: int
    params: tuple[float, ...]
    fd: float
    latency_ms: float
    missing: bool = False
    reason: str = ""
    stages: dict[str, float] = field(default_factory=dict)

    def as_json(self, run: int) -> dict[str, Any]:
        return {"run": run, "index": self.index, "missing": self.missing, "reason": self.reason,
                "fd": _finite(self.fd), "latency_ms": _finite(self.latency_ms), "stages": self.stages,
                **{name: _finite(v) for name, v in zip(MOTION_NAMES, self.params)}}


@dataclass
class _Release:
    release: int
    release_s: float
    final: bool
    decoder: str
    retrieved: list[str]
    scores: list[float]
    rank: int | None
    thumbnail: str | None
    latencies: dict[str, float]
    stamps: dict[str, float]
    from_store: bool = False  # read back from the store: the feed's copy of it replaces it
    pairmate: str = ""
    cpd: float | None = None
    shown: ShownMessage | None = None  # when the stimulus PC first showed it

    def as_json(self) -> dict[str, Any]:
        shown = self.shown
        return {"release": self.release, "release_s": _finite(self.release_s), "final": self.final,
                "decoder": self.decoder, "retrieved": self.retrieved[:5], "n_retrieved": len(self.retrieved),
                "scores": [_finite(round(s, 4)) for s in self.scores[:5]], "rank": self.rank,
                "thumbnail": self.thumbnail, "latencies": self.latencies, "stamps": self.stamps,
                "pairmate": self.pairmate, "cpd": None if self.cpd is None else round(self.cpd, 4),
                "shown": None if shown is None else {"run_s": round(shown.shown, 4), "wall": shown.shown_wall,
                                                     "received_to_shown_s": round(shown.received_to_shown_s, 4)}}


@dataclass
class _Trial:
    trial: int
    stimulus: str = ""
    onset: float | None = None
    releases: dict[int, _Release] = field(default_factory=dict)
    bad: bool = False

    def latest(self) -> _Release | None:
        return self.releases[max(self.releases)] if self.releases else None

    def first(self) -> _Release | None:
        return self.releases[min(self.releases)] if self.releases else None

    def as_json(self, run: int) -> dict[str, Any]:
        return {"run": run, "trial": self.trial, "stimulus": self.stimulus, "onset": self.onset, "bad": self.bad,
                "releases": [self.releases[k].as_json() for k in sorted(self.releases)]}


@dataclass
class _Run:
    number: int
    volumes: dict[int, _Volume] = field(default_factory=dict)
    trials: dict[int, _Trial] = field(default_factory=dict)
    ended: int | None = None  # volume count once over
    tr: float | None = None
    ended_by_operator: bool = False

    def trial(self, number: int) -> _Trial:
        return self.trials.setdefault(number, _Trial(number))


class SessionState:
    """Everything the console page shows, built from messages (see the module docstring).

    Parameters
    ----------
    session_id : str
        ``sub-XX_ses-YY``; messages of another session are ignored.
    task : str
        The session's task (running accuracy is shown for perception).
    expected_volumes : int or None
        Volumes a run is planned to have (the config's ``planned_volumes``; None: not planned).
    fd_threshold_mm : float
        Framewise displacement above which a volume raises the alarm.
    heartbeat_s, liveness : float
        The engine publishes its links every heartbeat; silent ``liveness`` heartbeats: dead.
    decoder_backlog : int
        Trials waiting to be decoded at which the decoder is falling behind.
    expected_tr : float or None
        The session's TR (``[stimulus.trigger] tr``); a run whose TR differs raises a banner.
    """

    def __init__(
        self,
        session_id: str,
        *,
        task: str = "perception",
        expected_volumes: int | None = None,
        fd_threshold_mm: float = 0.5,
        heartbeat_s: float = 1.0,
        liveness: float = 3.0,
        decoder_backlog: int = 3,
        expected_tr: float | None = None,
    ) -> None:
        self.session_id = session_id
        self.task = task
        self.expected_volumes = expected_volumes
        self.fd_threshold_mm = fd_threshold_mm
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.decoder_backlog = decoder_backlog
        self.expected_tr = expected_tr
        self.runs: dict[int, _Run] = {}
        self.links: dict[str, bool] = {}
        self.trials_decoding = 0
        self.results_pending = 0
        self.gpu_memory_mb: float | None = None  # when the engine decodes on a GPU
        self.bridge_lead: tuple[int, int] | None = None  # (volumes the bridge is ahead, its bound; 0: none)
        self.engine_heard: float | None = None
        self.engine_restarts = 0
        self.feedback_paused = False
        self.warnings: list[str] = []
        self.controls: list[dict[str, Any]] = []
        self._changed_volumes: list[tuple[int, int]] = []
        self._changed_trials: list[tuple[int, int]] = []
        self._shown_early: dict[tuple[int, int, int], ShownMessage] = {}  # shown before the result's copy came

    # -- input -----------------------------------------------------------------------------------
    def _run(self, number: int) -> _Run:
        return self.runs.setdefault(number, _Run(number))

    def engine_alive(self, now: float) -> bool:
        """The engine was heard within ``liveness`` heartbeats."""
        return self.engine_heard is not None and now - self.engine_heard <= self.heartbeat_s * self.liveness

    def on_status(self, message: StatusMessage, now: float) -> bool:
        """Take one status message; True if it leaves a gap that the store must fill (a volume
        after one this state has not seen)."""
        if message.process != "engine":
            return False
        if self.engine_heard is not None and not self.engine_alive(now):
            self.engine_restarts += 1  # silent past its liveness, then back: restarted (or the link was)
        self.engine_heard = now
        metrics = message.metrics
        if message.state == "links":
            self.links = {name: bool(value) for name, value in metrics.items() if name.endswith("_alive")}
            self.trials_decoding = int(metrics.get("trials_decoding", 0))
            self.results_pending = int(metrics.get("results_pending", 0))
            self.gpu_memory_mb = metrics.get("gpu_memory_mb")
            lead = metrics.get("bridge_lead")
            self.bridge_lead = None if lead is None else (int(lead), int(metrics.get("bridge_lead_bound", 0)))
            return False
        missing = _MISSING.match(message.message)
        if missing is not None:
            run, index, reason = int(missing[1]), int(missing[2]), missing[3]
            gap = self._add_volume(run, _Volume(index, (math.nan,) * 6, math.nan, math.nan, True, reason))
            return gap
        if message.state == "warning":
            self.warnings = [*self.warnings[-4:], message.message]
            return False
        if "volume" not in metrics or "run" not in metrics:
            return False
        run, index = int(metrics["run"]), int(metrics["volume"])
        self.trials_decoding = int(metrics.get("trials_decoding", self.trials_decoding))
        params = tuple(float(metrics.get(name, math.nan)) for name in MOTION_NAMES)
        volume = _Volume(index, params, float(metrics.get("framewise_displacement", math.nan)),
                         float(metrics.get("latency_ms", math.nan)))
        return self._add_volume(run, volume)

    def _add_volume(self, run_number: int, volume: _Volume) -> bool:
        run = self._run(run_number)
        gap = volume.index > 0 and (volume.index - 1) not in run.volumes
        run.volumes[volume.index] = volume
        self._changed_volumes.append((run_number, volume.index))
        return gap

    def on_result(self, message: TrialResultMessage) -> None:
        """Take one trial result (a release of a trial); a release already heard is ignored."""
        if message.session != self.session_id:
            return
        trial = self.runs[message.run].trials.get(message.trial) if message.run in self.runs else None
        held = trial.releases.get(message.release) if trial is not None else None
        if held is not None and not held.from_store:  # republished by a restarted engine
            return
        self._set_release(message.run, message.trial, message.stimulus, _Release(
            message.release, message.release_s, message.final, message.decoder, list(message.retrieved),
            list(message.scores), self._rank(message.stimulus, message.retrieved), thumbnail(message.image),
            {k: round(v, 4) for k, v in message.latencies.items() if math.isfinite(v)},
            {k: v for k, v in message.stamps.items() if math.isfinite(v)}, pairmate=message.pairmate, cpd=message.cpd,
            shown=self._shown_early.pop((message.run, message.trial, message.release), None)))

    def on_shown(self, message: ShownMessage) -> None:
        """The stimulus PC first showed a release (kept until the release itself arrives, if it has not)."""
        if message.session != self.session_id:
            return
        trial = self.runs[message.run].trials.get(message.trial) if message.run in self.runs else None
        held = trial.releases.get(message.release) if trial is not None else None
        if held is None:
            self._shown_early[(message.run, message.trial, message.release)] = message
            while len(self._shown_early) > 1000:  # bounded: releases that never come
                self._shown_early.pop(next(iter(self._shown_early)))
            return
        if held.shown is None:
            held.shown = message
            self._changed_trials.append((message.run, message.trial))

    @staticmethod
    def _rank(stimulus: str, retrieved: list[str]) -> int | None:
        """1-based rank of the true image among the retrieved (None: not among them, or unknown)."""
        return retrieved.index(stimulus) + 1 if stimulus and stimulus in retrieved else None

    def _set_release(self, run_number: int, trial_number: int, stimulus: str, release: _Release) -> None:
        trial = self._run(run_number).trial(trial_number)
        if stimulus:
            trial.stimulus = stimulus
        trial.releases[release.release] = release
        self._changed_trials.append((run_number, trial_number))

    # -- backfill from the store -----------------------------------------------------------------
    def add_volume_rows(self, rows: Iterable[VolumeRow]) -> None:
        """Volumes read back from the store (those the feed already gave are kept as they are)."""
        for row in rows:
            run = self._run(row.run)
            if row.index not in run.volumes:
                self._add_volume(row.run, _Volume(row.index, row.params, row.fd, row.latency_ms, row.missing,
                                                  "missing when stored" if row.missing else ""))

    def add_stages(self, run_number: int, stages: dict[int, dict[str, float]]) -> None:
        """Per-stage milliseconds of volumes (:meth:`SessionFolder.stages`) not known yet."""
        run = self._run(run_number)
        for index, durations in stages.items():
            volume = run.volumes.get(index)
            if volume is not None and durations and not volume.stages:
                volume.stages = dict(durations)
                self._changed_volumes.append((run_number, index))

    def add_events(self, run_number: int, events: dict[int, tuple[float, str]]) -> None:
        """Trial onsets and stimuli read back from the store's events."""
        run = self._run(run_number)
        for number, (onset, stimulus) in events.items():
            trial = run.trial(number)
            if trial.onset is None or (stimulus and not trial.stimulus):
                trial.onset = _finite(onset)
                trial.stimulus = trial.stimulus or stimulus
                self._changed_trials.append((run_number, number))

    def knows_release(self, run_number: int, trial_number: int, release: int) -> bool:
        """This release of the trial has been taken already (from the feed or the store)."""
        trial = self.runs[run_number].trials.get(trial_number) if run_number in self.runs else None
        return trial is not None and release in trial.releases

    def add_stored_release(self, stored: StoredRelease, decoded: DecodedTrial | None) -> None:
        """A release the store says was sent (its trials table), with its decoding if one was saved
        (else it went out as a bare beta); ignored if the feed (or the store) gave it already."""
        if self.knows_release(stored.run, stored.trial, stored.release):
            return
        trial = self._run(stored.run).trial(stored.trial)
        stimulus = trial.stimulus or stored.stimulus
        retrieved, scores = (decoded.retrieved, decoded.scores) if decoded is not None else ([], [])
        self._set_release(stored.run, stored.trial, stored.stimulus, _Release(
            stored.release, stored.release_s, stored.final, "from the store", retrieved, scores,
            self._rank(stimulus, retrieved), thumbnail(decoded.image if decoded is not None else None), {}, {},
            from_store=True, pairmate=stored.pairmate, cpd=stored.cpd))

    def set_run_info(self, run_number: int, *, tr: float | None = None, ended: int | None = None) -> None:
        """The run's TR (its sidecar) and, once over, its volume count."""
        run = self._run(run_number)
        run.tr = tr if tr is not None else run.tr
        run.ended = ended if ended is not None else run.ended

    # -- controls --------------------------------------------------------------------------------
    def apply_control(self, record: dict[str, Any]) -> None:
        """An operator's control (as :class:`~rtrecon.console.records.ControlRecords` stores it)."""
        action = record["action"]
        if action in ("pause_feedback", "resume_feedback"):
            self.feedback_paused = action == "pause_feedback"
        elif action in ("mark_bad", "unmark_bad"):
            trial = self._run(int(record["run"])).trial(int(record["trial"]))
            trial.bad = action == "mark_bad"
            self._changed_trials.append((int(record["run"]), int(record["trial"])))
        elif action == "end_run":
            self._run(int(record["run"])).ended_by_operator = True
        self.controls = [*self.controls[-19:], record]

    def operator_message(self, sent_time: float) -> OperatorMessage:
        """The operator's controls as the stimulus program receives them."""
        return OperatorMessage(
            session=self.session_id, feedback_paused=self.feedback_paused,
            ended_runs=sorted(r.number for r in self.runs.values() if r.ended_by_operator),
            bad_trials={r.number: sorted(t.trial for t in r.trials.values() if t.bad)
                        for r in self.runs.values() if any(t.bad for t in r.trials.values())},
            sent_time=sent_time,
        )

    # -- output ----------------------------------------------------------------------------------
    @property
    def current_run(self) -> int | None:
        return max(self.runs) if self.runs else None

    def run_state(self, now: float) -> str:
        run = self.runs.get(self.current_run) if self.current_run is not None else None
        if run is None:
            return "waiting for the first volume"
        if run.ended is not None:
            return f"run {run.number} ended ({run.ended} volumes)"
        if run.ended_by_operator:
            return f"run {run.number}: ended by the operator, waiting for the scanner to stop"
        if not self.engine_alive(now):
            return f"run {run.number}: engine silent"
        return f"run {run.number} acquiring"

    def accuracy(self) -> dict[str, Any]:
        """Top-1 and top-5 retrieval over decoded trials with a known stimulus, each scored once on
        its first release (trials marked bad left out); with pairmates, the mean CPD of those first
        releases and the pairmate two-way accuracy (decoded nearer the seen image than its pairmate: CPD > 0)."""
        hits1 = hits5 = n = 0
        cpds: list[float] = []
        for run in self.runs.values():
            for trial in run.trials.values():
                first = trial.first()
                if not trial.bad and first is not None and first.cpd is not None:
                    cpds.append(first.cpd)
                if trial.bad or first is None or not first.retrieved or not trial.stimulus:
                    continue
                n += 1
                hits1 += first.retrieved[0] == trial.stimulus
                hits5 += trial.stimulus in first.retrieved[:5]
        return {"task": self.task, "trials": n, "top1": hits1 / n if n else None, "top5": hits5 / n if n else None,
                "cpd_trials": len(cpds), "cpd_mean": float(np.mean(cpds)) if cpds else None,
                "pairmate_two_way": float(np.mean(np.array(cpds) > 0)) if cpds else None}

    def fd_alarm(self) -> dict[str, Any] | None:
        """The latest volume of the current run whose FD crosses the threshold, if any."""
        if self.current_run is None:
            return None
        run = self.runs[self.current_run]
        over = [v for v in run.volumes.values() if math.isfinite(v.fd) and v.fd > self.fd_threshold_mm]
        if not over:
            return None
        worst = max(over, key=lambda v: v.index)
        return {"run": run.number, "index": worst.index, "fd": worst.fd, "count": len(over)}

    def banners(self, now: float) -> list[dict[str, str]]:
        """What is wrong now, worst first (``level``: ``alarm``, ``error``, ``warning`` or ``info``)."""
        out: list[dict[str, str]] = []
        run = self.runs.get(self.current_run) if self.current_run is not None else None
        live = run is not None and run.ended is None
        alarm = self.fd_alarm()
        if alarm is not None:
            out.append({"level": "alarm", "text": f"FD {alarm['fd']:.2f} mm at volume {alarm['index']} of run "
                        f"{alarm['run']} (threshold {self.fd_threshold_mm:g} mm; {alarm['count']} volume(s) over)"})
        if self.engine_heard is not None and not self.engine_alive(now):
            silent = now - self.engine_heard
            if live or run is None:
                out.append({"level": "error", "text": f"engine silent for {silent:.0f} s: dead link or engine stopped "
                            "(the page reconnects and backfills from the store)"})
            else:  # stopped once its run was over, as at the end of a session
                out.append({"level": "info", "text": f"engine silent for {silent:.0f} s, after run {run.number} ended"})
        elif live and self.engine_heard is not None:
            names = {"bridge_alive": "bridge → engine", "stimulus_events_alive": "stimulus → engine (events)"}
            for key, name in names.items():
                if key in self.links and not self.links[key]:
                    out.append({"level": "error", "text": f"link {name} is dead"})
        if run is not None:
            missing = sorted((v.index, v.reason) for v in run.volumes.values() if v.missing)
            if missing:
                listed = ", ".join(str(index) for index, _ in missing[-5:])
                reason = f": {missing[-1][1]}" if missing[-1][1] else ""
                out.append({"level": "warning", "text": f"run {run.number}: {len(missing)} missing volume(s) "
                            f"(last: {listed}{reason})"})
            expected = self.expected_tr
            if run.tr is not None and expected is not None and abs(run.tr - expected) > 1e-3 * expected:
                out.append({"level": "error",
                            "text": f"bad TR: run {run.number} has TR {run.tr:g} s, the session's is {expected:g} s"})
        if self.bridge_lead is not None and 0 < self.bridge_lead[1] <= self.bridge_lead[0]:
            out.append({"level": "warning", "text": f"engine behind the scanner: the bridge is {self.bridge_lead[0]} "
                        f"volume(s) ahead, its bound (max_lead {self.bridge_lead[1]}); the rest wait in its spool"})
        if self.trials_decoding >= self.decoder_backlog:
            out.append({"level": "warning", "text": f"decoder falling behind: {self.trials_decoding} trials waiting"})
        for warning in self.warnings[-2:]:
            out.append({"level": "warning", "text": f"engine: {warning}"})
        if self.feedback_paused:
            out.append({"level": "info", "text": "feedback paused by the operator"})
        return out

    def summary(self, now: float) -> dict[str, Any]:
        run = self.runs.get(self.current_run) if self.current_run is not None else None
        received = len(run.volumes) if run else 0
        missing = sum(v.missing for v in run.volumes.values()) if run else 0
        return {
            "type": "summary",
            "session": self.session_id,
            "state": self.run_state(now),
            "run": run.number if run else None,
            "runs": sorted(self.runs),
            "received": received - missing,
            "missing": missing,
            "expected": run.ended if run and run.ended is not None else self.expected_volumes,
            "tr": run.tr if run else None,
            "links": {"engine": self.engine_alive(now), **self.links},
            "bridge_lead": None if self.bridge_lead is None else {"lead": self.bridge_lead[0], "bound": self.bridge_lead[1]},
            "engine_restarts": self.engine_restarts,
            "decoder": {"trials_decoding": self.trials_decoding, "results_pending": self.results_pending,
                        "ready": self.trials_decoding < self.decoder_backlog, "gpu_memory_mb": self.gpu_memory_mb},
            "fd_threshold_mm": self.fd_threshold_mm,
            "alarm": self.fd_alarm(),
            "accuracy": self.accuracy(),
            "banners": self.banners(now),
            "feedback_paused": self.feedback_paused,
            "controls": self.controls[-5:],
        }

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything, for a page that has just connected (what changed is still to be pushed to the others)."""
        return {
            "type": "snapshot",
            "summary": self.summary(now),
            "volumes": [r.volumes[i].as_json(r.number) for r in self.runs.values() for i in sorted(r.volumes)],
            "trials": [r.trials[t].as_json(r.number) for r in self.runs.values() for t in sorted(r.trials)],
        }

    def changes(self, now: float) -> dict[str, Any]:
        """What changed since the last :meth:`changes`, with a fresh summary."""
        volumes = [self.runs[r].volumes[i].as_json(r) for r, i in dict.fromkeys(self._changed_volumes)]
        trials = [self.runs[r].trials[t].as_json(r) for r, t in dict.fromkeys(self._changed_trials)]
        self._changed_volumes.clear()
        self._changed_trials.clear()
        return {"type": "update", "summary": self.summary(now), "volumes": volumes, "trials": trials}
