"""Per-stage timing of volumes and trials (after OpenNFT's event recorder).

A :class:`StageRecorder` notes, for each item (a volume index or a trial number), the time it
passed each stage, twice: ``time.time()`` for comparison with the stamps other processes put in
messages (``written``, ``seen``, ``read``, ``sent``), and ``time.perf_counter()`` for the
engine's own latencies, which must not jump with the wall clock. :meth:`StageRecorder.row` gives
one table row per item: the wall times of every stage (incoming stamps included) and the
milliseconds from the first engine stage to each later one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["VOLUME_STAGES", "TRIAL_STAGES", "StageRecorder"]

VOLUME_STAGES = ("received", "persisted", "realigned", "glm_updated")
TRIAL_STAGES = ("ready", "betas", "published")


class StageRecorder:
    """Stage times of items; ``stages`` lists the engine's own stages in order."""

    def __init__(self, stages: Sequence[str], incoming: Sequence[str] = ("written", "seen", "read", "sent")) -> None:
        self.stages = tuple(stages)
        self.incoming = tuple(incoming)
        self._wall: dict[Any, dict[str, float]] = {}
        self._mono: dict[Any, dict[str, float]] = {}

    def columns(self, key_name: str) -> list[str]:
        return (
            [key_name]
            + [f"{s}_time" for s in (*self.incoming, *self.stages)]
            + [f"{s}_ms" for s in self.stages[1:]]
        )

    def mark(
        self, key: Any, stage: str, stamps: Mapping[str, float] | None = None, at: float | None = None
    ) -> None:
        """``key`` reached ``stage`` now (or at ``at``, a ``time.perf_counter()`` value taken
        earlier); ``stamps`` are the wall times earlier processes recorded."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r} (known: {', '.join(self.stages)})")
        now = time.perf_counter()
        at = now if at is None else at
        self._wall.setdefault(key, {})[stage] = time.time() - (now - at)
        self._mono.setdefault(key, {})[stage] = at
        if stamps:
            self._wall[key].update({k: float(v) for k, v in stamps.items() if k in self.incoming})

    def elapsed_ms(self, key: Any, stage: str, since: str | None = None) -> float:
        """Milliseconds from ``since`` (default: the first stage) to ``stage`` for ``key``."""
        mono = self._mono[key]
        return (mono[stage] - mono[since or self.stages[0]]) * 1000.0

    def row(self, key: Any, key_name: str) -> dict[str, Any]:
        wall, mono = self._wall.get(key, {}), self._mono.get(key, {})
        out: dict[str, Any] = {key_name: key}
        for s in (*self.incoming, *self.stages):
            out[f"{s}_time"] = wall.get(s)
        first = mono.get(self.stages[0])
        for s in self.stages[1:]:
            out[f"{s}_ms"] = None if first is None or s not in mono else (mono[s] - first) * 1000.0
        return out

    def forget(self, key: Any) -> None:
        self._wall.pop(key, None)
        self._mono.pop(key, None)
