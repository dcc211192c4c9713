"""Pairmate distinctiveness (CPD) of each result, scored on the stimulus PC from its decoded embedding.

Real-time MindEye's per-trial feedback: with ``c`` the seen image's gallery embedding, ``f`` its
pairmate's (a similar image, the foil) and ``p`` the decoded embedding, all flattened and
L2-normalised,

    CPD = 2 <p - (c + f) / 2, c - f> / ||c - f||^2  =  (cos(p, c) - cos(p, f)) / (1 - cos(c, f))

+1 at the seen image, -1 at the pairmate, 0 halfway: the formula of
``rtrecon.runtime.retrieval.pairmate_distinctiveness`` (torch, the engine's side; this module stays
numpy-only, as the stimulus PC installs no torch). The result's own ``scores`` are not enough:
they hold the top-k ids' similarities only, and never ``cos(c, f)``. So the stimulus PC reads the
decoder's gallery (``[stimulus.feedback] embeddings``: a ``.npz`` with ``embeddings`` (N, ...) and
``ids``), keeps the rows of this run's images and pairmates, and scores each result as it arrives
(a few dot products).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .trials import Trial, TrialListError

__all__ = ["PairmateScorer", "distinctiveness"]

log = logging.getLogger(__name__)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64).ravel()
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


def distinctiveness(pred: np.ndarray, correct: np.ndarray, foil: np.ndarray) -> float:
    """CPD of one decoded embedding (see the module docstring); ValueError when correct == foil."""
    p, c, f = _unit(pred), _unit(correct), _unit(foil)
    diff = c - f
    denom = float(diff @ diff)
    if denom == 0:
        raise ValueError("correct and foil embeddings are identical: distinctiveness is undefined")
    return float(2 * ((p - (c + f) / 2) @ diff) / denom)


class PairmateScorer:
    """The gallery rows of a run's images and pairmates; :meth:`score` gives a result's CPD.

    Raises :class:`~stimulus.trials.TrialListError` naming the line of every trial whose image or
    pairmate the gallery lacks, and ValueError when the gallery cannot be read.
    """

    def __init__(self, gallery: Path, trials: Sequence[Trial], trials_file: Path):
        try:
            with np.load(gallery, allow_pickle=False) as f:
                if "embeddings" not in f or "ids" not in f:
                    raise ValueError(f"{gallery}: a gallery needs arrays 'embeddings' and 'ids'")
                ids = [str(i) for i in f["ids"]]
                embeddings = f["embeddings"]
        except (OSError, ValueError) as exc:
            raise ValueError(f"[stimulus.feedback] embeddings: {exc}") from None
        row = {stim_id: i for i, stim_id in enumerate(ids)}
        problems = []
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for trial in trials:
            if not trial.pairmate:
                continue
            missing = [name for name in (trial.stimulus, trial.pairmate) if name not in row]
            if missing:
                problems.append((trial.line, f"{' and '.join(map(repr, missing))} not among the ids of {gallery}"))
            elif trial.stimulus == trial.pairmate:
                problems.append((trial.line, f"pairmate {trial.pairmate!r} is the trial's own image"))
            else:
                self._pairs[trial.index] = (_unit(embeddings[row[trial.stimulus]]), _unit(embeddings[row[trial.pairmate]]))
        if problems:
            raise TrialListError(trials_file, problems)

    def __contains__(self, trial: int) -> bool:
        return trial in self._pairs

    def score(self, trial: int, embedding: np.ndarray | None) -> float | None:
        """The CPD of ``embedding`` for ``trial`` (None: no pairmate, or no embedding in the result)."""
        if embedding is None or trial not in self._pairs:
            return None
        correct, foil = self._pairs[trial]
        if np.asarray(embedding).size != correct.size:
            log.warning("trial %d: the result's embedding has %d values, the gallery's %d: no pairmate distinctiveness",
                        trial, np.asarray(embedding).size, correct.size)
            return None
        return distinctiveness(embedding, correct, foil)
