"""The session folder as the console reads it back: what the engine persisted, for backfill.

The engine writes its session store (:mod:`engine.store`) before it publishes anything, so a
console that starts late, misses messages on the status feed (PUB/SUB drops them for a slow or
absent subscriber) or sees the engine restart reads the gap back from disk. This module reads
the store's files by their BIDS names, without importing the engine (``rtrecon`` never does)::

    OUT/sub-XX/ses-YY/func/<prefix>_bold.json                          the run's sidecar (TR)
    OUT/sub-XX/ses-YY/func/<prefix>_events.tsv                         trial onsets and stimuli
    OUT/derivatives/rtrecon/sub-XX/ses-YY/func/<prefix>_desc-confounds_timeseries.tsv   motion, FD
    OUT/derivatives/rtrecon/sub-XX/ses-YY/func/<prefix>_desc-volumetimings.tsv          stage times
    OUT/derivatives/rtrecon/sub-XX/ses-YY/func/<prefix>_desc-trials.tsv                 releases sent
    OUT/derivatives/rtrecon/sub-XX/ses-YY/func/<prefix>_desc-trial<N>release<R>decoded.npz   top-k, image
    OUT/derivatives/rtrecon/sub-XX/ses-YY/func/<prefix>_desc-runend.json                run ended

with ``<prefix>`` the run's BIDS stem (:class:`rtrecon.contract.layout.SessionLayout`: ``run-RR``, as the
engine's store writes it). Files being appended may end in a torn
line, which is skipped. Only what the console shows is read: never a volume's voxels.

Each trial is released several times (``[engine] releases_s`` after its onset, then once more at
run end): the trials table has one row per release sent, in release order, and each decoded
release its own arrays, so :meth:`SessionFolder.released` gives every trial's releases and
:meth:`SessionFolder.decoded` one release's decoding (the newest stored by default).
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtrecon.contract.layout import SessionLayout

__all__ = ["MOTION_NAMES", "VolumeRow", "StoredRelease", "DecodedTrial", "SessionFolder"]

#: The engine's six rigid-body parameters (mm, radians), in its order.
MOTION_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


@dataclass(frozen=True)
class VolumeRow:
    """One volume as the engine recorded it (NaN where unknown)."""

    run: int
    index: int
    params: tuple[float, ...]
    fd: float
    latency_ms: float
    missing: bool


@dataclass(frozen=True)
class StoredRelease:
    """One release of a trial as the engine's trials table recorded it, once its result was sent.

    ``release`` is the index in the trial's schedule (the final, end-of-run one last), ``release_s``
    the seconds from onset to the start of the last volume its beta used (NaN where unknown).
    """

    run: int
    trial: int
    release: int
    release_s: float
    final: bool
    stimulus: str
    pairmate: str = ""
    cpd: float | None = None  # its result's pairmate distinctiveness (None: no pairmate, or not decoded)


@dataclass(frozen=True)
class DecodedTrial:
    """One release of a trial as the engine's decoding stage saved it."""

    run: int
    trial: int
    release: int
    retrieved: list[str]
    scores: list[float]
    image: np.ndarray | None


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "n/a") else math.nan
    except ValueError:
        return math.nan


def _read_tsv(path: Path) -> list[dict[str, str]]:
    """Rows of a TSV being appended to (a last line without its newline is not whole yet)."""
    try:
        raw = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = raw[: raw.rfind("\n") + 1].splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


class SessionFolder:
    """Read-only view of one session's store under ``root`` (the config's ``output_dir``)."""

    def __init__(self, root: str | Path, subject: str, session: str, task: str) -> None:
        self.layout = SessionLayout(Path(root), subject, session, task)
        self.func = self.layout.func_dir
        self.derivatives = self.layout.derivatives_dir

    def prefix(self, run: int) -> str:
        """The run's stem, as the engine's store writes it."""
        return self.layout.stem(run)

    def _derivative(self, run: int, desc: str, ext: str = ".tsv") -> Path:
        return self.derivatives / f"{self.prefix(run)}_desc-{desc}{ext}"

    def runs(self) -> list[int]:
        """Runs with anything stored, in order."""
        found = set()
        for path in self.func.glob(f"{self.layout.session_id}_task-{self.layout.task}_run-*_*"):
            label = path.name.split("_run-")[1].split("_")[0]
            if label.isdigit():
                found.add(int(label))
        return sorted(found)

    def tr(self, run: int) -> float | None:
        """The run's TR from its sidecar (None before its first volume)."""
        try:
            return float(json.loads((self.func / f"{self.prefix(run)}_bold.json").read_text())["RepetitionTime"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def ended(self, run: int) -> int | None:
        """The run's volume count once it has ended, else None."""
        try:
            return int(json.loads(self._derivative(run, "runend", ".json").read_text())["n_volumes"])
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def volumes(self, run: int, start: int = 0) -> list[VolumeRow]:
        """The run's volumes from ``start`` on: motion, FD and missing from the confounds, latency
        (received → GLM updated) from the volume timings."""
        latency = {int(r["volume"]): _number(r.get("glm_updated_ms"))
                   for r in _read_tsv(self._derivative(run, "volumetimings")) if r.get("volume", "").isdigit()}
        rows = []
        for r in _read_tsv(self._derivative(run, "confounds_timeseries")):
            if not r.get("volume", "").isdigit() or int(r["volume"]) < start:
                continue
            index = int(r["volume"])
            rows.append(VolumeRow(run, index, tuple(_number(r.get(n)) for n in MOTION_NAMES),
                                  _number(r.get("framewise_displacement")), latency.get(index, math.nan),
                                  r.get("missing") == "1"))
        return rows

    def stages(self, run: int, start: int = 0) -> dict[int, dict[str, float]]:
        """volume -> milliseconds of each stage from the volume timings: ``bridge`` (read from the
        scanner's export, or sent, to received: wall clocks of two machines), ``persist``,
        ``realign`` and ``glm`` (the engine's own clock); a stage without its times is left out."""
        out = {}
        for r in _read_tsv(self._derivative(run, "volumetimings")):
            if not r.get("volume", "").isdigit() or int(r["volume"]) < start:
                continue
            read = _number(r.get("read_time"))
            read = read if math.isfinite(read) else _number(r.get("sent_time"))
            persisted, realigned, glm = (_number(r.get(f"{s}_ms")) for s in ("persisted", "realigned", "glm_updated"))
            stages = {"bridge": 1000.0 * (_number(r.get("received_time")) - read), "persist": persisted,
                      "realign": realigned - persisted, "glm": glm - realigned}
            out[int(r["volume"])] = {name: round(ms, 3) for name, ms in stages.items() if math.isfinite(ms)}
        return out

    def events(self, run: int) -> dict[int, tuple[float, str]]:
        """trial -> (onset s, stimulus id) of the run's events."""
        out = {}
        for r in _read_tsv(self.func / f"{self.prefix(run)}_events.tsv"):
            if r.get("trial", "").isdigit():
                out[int(r["trial"])] = (_number(r.get("onset")), "" if r.get("stimulus") in (None, "n/a") else r["stimulus"])
        return out

    def released(self, run: int) -> dict[int, list[StoredRelease]]:
        """trial -> its releases the engine has sent (its trials table), in release order; trials in
        the order of their first release."""
        out: dict[int, list[StoredRelease]] = {}
        for r in _read_tsv(self._derivative(run, "trials")):
            if not (r.get("trial", "").isdigit() and r.get("release", "").isdigit()):
                continue
            stimulus = "" if r.get("stimulus") in (None, "n/a") else r["stimulus"]
            pairmate = "" if r.get("pairmate") in (None, "n/a") else r["pairmate"]
            cpd = _number(r.get("cpd"))
            out.setdefault(int(r["trial"]), []).append(StoredRelease(
                run, int(r["trial"]), int(r["release"]), _number(r.get("release_s")),
                r.get("final") == "1", stimulus, pairmate, cpd if math.isfinite(cpd) else None))
        return out

    def decoded(self, run: int, trial: int, release: int | None = None) -> DecodedTrial | None:
        """A release's saved decoding, the newest release saved when ``release`` is None (None if
        there is none: the trial went out as a bare beta, or is not decoded yet)."""
        if release is None:
            pattern = re.compile(rf"{re.escape(self.prefix(run))}_desc-trial{trial}release(\d+)decoded\.npz")
            stored = [int(m[1]) for path in self.derivatives.glob(f"{self.prefix(run)}_desc-trial{trial}release*decoded.npz")
                      if (m := pattern.fullmatch(path.name))]
            if not stored:
                return None
            release = max(stored)
        path = self._derivative(run, f"trial{trial}release{release}decoded", ".npz")
        try:
            with np.load(path, allow_pickle=False) as data:
                image = np.asarray(data["image"]) if "image" in data.files else None
                return DecodedTrial(run, trial, release, [str(i) for i in data["retrieved"]],
                                    [float(s) for s in data["scores"]], image)
        except (FileNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError):
            return None
