"""The engine's state checkpoint: what a restart needs so that it does not re-process the session.

A restarted engine rebuilds its state from the store (:meth:`engine.server.Engine.recover`).
Replaying every stored volume through the GLM and every release again cost ~11 s at 1 000
volumes (benchmarks/soak.py), most of it solving releases whose results were already sent.
An :class:`EngineCheckpoint`, written every ``[engine] checkpoint_volumes`` volumes and at each
run's end, holds what those releases left behind:

* per run: how many of its volumes had been processed (``volumes``), whether it had ended, each
  trial's newest release, the next sequence number, and the releases handed to the decoder but
  not yet sent (``undelivered``: their trials-table rows; the betas are in each release's
  ``desc-trial<N>release<R>beta.npz``, so they are sent again after a restart);
* the :class:`~engine.trials.TrialNormaliser`'s running statistics and repeats (the only state
  that depends on every release of the session);
* a live run's GLM trial columns as computed so far (:meth:`~engine.glm.IncrementalGLM.column_cache`:
  a column kept and extended differs from one recomputed later by ~1e-12 of a beta, and the
  restart must continue bit for bit).

The per-volume state is not in it: the ROI signal and motion of each volume are in the run's
realignment checkpoint (:class:`~engine.store.RealignmentLog`) and the events in the store, so a
restart refills the live run's GLM from those without solving anything, skips the ended runs
(their final betas are saved), and replays with releases only the volumes after the checkpoint
(at most ``checkpoint_volumes``). The results are those of an undisturbed run, bit for bit.

A checkpoint written with other ``[engine]`` settings, or naming more volumes than the store
holds, is ignored with a warning (the whole session is then replayed, as without one). It is one
``.npz`` (a JSON description and the arrays), written atomically and fsynced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.contract.layout import atomic_file

__all__ = ["RunCheckpoint", "EngineCheckpoint", "settings_fingerprint"]

log = logging.getLogger(__name__)

_VERSION = 1


def settings_fingerprint(settings: Any) -> str:
    """A digest of the engine settings that shape its state (a checkpoint is only valid with them)."""
    return hashlib.sha256(settings.model_dump_json(exclude={"checkpoint_volumes"}).encode()).hexdigest()[:16]


@dataclass
class RunCheckpoint:
    """One run at the checkpoint."""

    volumes: int  # volumes of the run processed (releases included)
    ended: bool
    released: dict[int, int] = field(default_factory=dict)  # trial -> its newest release
    sequence: int = 0  # the next release's sequence number
    undelivered: dict[int, dict[str, Any]] = field(default_factory=dict)  # sequence -> trials-table row
    columns: list[list[float]] = field(default_factory=list)  # the GLM's cached trial columns: [trial, rows, *grid]


@dataclass
class EngineCheckpoint:
    """The engine's release state at a point of the session (see the module docstring)."""

    fingerprint: str
    runs: dict[int, RunCheckpoint]
    normaliser: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        meta = {
            "version": _VERSION, "fingerprint": self.fingerprint, "normaliser": self.normaliser,
            "runs": {str(r): {"volumes": c.volumes, "ended": c.ended, "released": {str(t): n for t, n in c.released.items()},
                              "sequence": c.sequence, "undelivered": {str(s): row for s, row in c.undelivered.items()},
                              "columns": c.columns}
                     for r, c in self.runs.items()},
        }
        with atomic_file(Path(path)) as f:
            np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **self.arrays)

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> EngineCheckpoint | None:
        """The checkpoint at ``path``; None (with a warning saying why) if there is none to use."""
        path = Path(path)
        if not path.exists():
            return None
        try:
            with np.load(path) as saved:
                meta = json.loads(saved["meta"].tobytes())
                arrays = {name: saved[name] for name in saved.files if name != "meta"}
            if meta.get("version") != _VERSION:
                log.warning("%s: a checkpoint of another version: the session is replayed in full", path)
                return None
            if meta["fingerprint"] != fingerprint:
                log.warning("%s: written with other [engine] settings: the session is replayed in full", path)
                return None
            runs = {
                int(r): RunCheckpoint(
                    int(c["volumes"]), bool(c["ended"]), {int(t): int(n) for t, n in c["released"].items()},
                    int(c["sequence"]), {int(s): row for s, row in c["undelivered"].items()}, c["columns"],
                )
                for r, c in meta["runs"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:  # a damaged file costs a full replay, not the session
            log.warning("%s: unreadable checkpoint (%s): the session is replayed in full", path, exc)
            return None
        return cls(meta["fingerprint"], runs, meta["normaliser"], arrays)
