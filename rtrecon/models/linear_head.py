"""A linear decoding head: ridge regression from voxels to CLIP targets, the penalty chosen by cross-validation.

The alternative to MindEye2's MLP for decoding mental imagery: in NSD-Imagery (Kneeland et al.
2025) simple linear decoders generalise from vision to imagery best, and MIRAGE (2026) reaches
the state of the art with a ridge backbone from voxels to low-dimensional targets
(``shared/reference/nsd_imagery.md``). Trained on perception betas, applied to imagery betas::

    head = LinearHead().fit(train_betas, train_embeddings)   # (n, V), (n, ...) any target shape
    decoded = head.predict(imagery_betas)                    # (m, ...) in the targets' shape

Voxels are z-scored with the training set's statistics (as the engine z-scores live betas); the
targets are centred. For each penalty of ``alphas`` the fit is one SVD of the training betas;
the penalty kept is the one with the best mean held-out correlation over ``folds`` contiguous
folds (contiguous: neighbouring trials share noise), and the final fit uses every trial.

:meth:`LinearHead.save` writes a fitted head as one ``.npz`` (weights, the voxel statistics, the
target mean and shape, the penalty); :meth:`LinearHead.load` reads it back. That file is what the
engine's ``[decoder] head = "linear"`` decodes with (``linear_head``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["LinearHead"]


class LinearHead:
    """Ridge regression voxels -> targets (numpy; see the module docstring)."""

    def __init__(self, alphas: Sequence[float] = tuple(10.0 ** np.arange(-1, 6)), folds: int = 5):
        if not alphas or min(alphas) <= 0:
            raise ValueError(f"alphas {alphas} must be positive")
        if folds < 2:
            raise ValueError(f"folds {folds} must be at least 2")
        self.alphas = tuple(float(a) for a in alphas)
        self.folds = folds
        self.alpha: float | None = None
        self.cv_scores: dict[float, float] = {}

    @staticmethod
    def _solutions(x: np.ndarray, y: np.ndarray, alphas: Sequence[float]) -> list[np.ndarray]:
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        uty = u.T @ y
        return [vt.T @ ((s / (s * s + a))[:, None] * uty) for a in alphas]

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self._mean) / self._std

    def fit(self, betas: np.ndarray, targets: np.ndarray) -> "LinearHead":
        x = np.asarray(betas, np.float64)
        y = np.asarray(targets, np.float64)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"betas {x.shape} must be (n_trials, n_voxels) with one target per trial (targets {y.shape})")
        if len(x) < 2 * self.folds:
            raise ValueError(f"{len(x)} trials are too few for {self.folds}-fold cross-validation")
        self._shape = y.shape[1:]
        y = y.reshape(len(y), -1)
        scores = np.zeros(len(self.alphas))
        for held in np.array_split(np.arange(len(x)), self.folds):
            train = np.setdiff1d(np.arange(len(x)), held)
            mean, std = x[train].mean(0), x[train].std(0) + 1e-8
            y_mean = y[train].mean(0)
            test_x = (x[held] - mean) / std
            for k, w in enumerate(self._solutions((x[train] - mean) / std, y[train] - y_mean, self.alphas)):
                pred = test_x @ w + y_mean
                scores[k] += _mean_row_correlation(pred, y[held]) / self.folds
        best = int(np.argmax(scores))
        self.alpha = self.alphas[best]
        self.cv_scores = dict(zip(self.alphas, scores.tolist()))
        self._mean, self._std = x.mean(0), x.std(0) + 1e-8
        self._y_mean = y.mean(0)
        (self.weights,) = self._solutions(self._standardise(x), y - self._y_mean, [self.alpha])
        return self

    def predict(self, betas: np.ndarray) -> np.ndarray:
        if self.alpha is None:
            raise RuntimeError("fit the head first")
        x = np.asarray(betas, np.float64)
        pred = self._standardise(x) @ self.weights + self._y_mean
        return pred.reshape((len(x), *self._shape)).astype(np.float32)

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of one predicted target (what one training target had)."""
        if self.alpha is None:
            raise RuntimeError("fit the head first")
        return self._shape

    @property
    def target_mean(self) -> np.ndarray:
        """The training targets' mean, flattened: the intercept every prediction shares."""
        if self.alpha is None:
            raise RuntimeError("fit the head first")
        return self._y_mean

    @property
    def n_voxels(self) -> int:
        if self.alpha is None:
            raise RuntimeError("fit the head first")
        return int(self._mean.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write the fitted head to ``path`` (``.npz``); the path written."""
        if self.alpha is None:
            raise RuntimeError("fit the head first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:  # a file object: np.savez would append .npz to another suffix
            np.savez(f, weights=self.weights, mean=self._mean, std=self._std, y_mean=self._y_mean,
                     shape=np.asarray(self._shape, np.int64), alpha=self.alpha, alphas=np.asarray(self.alphas),
                     folds=self.folds, cv_alphas=np.asarray(list(self.cv_scores)),
                     cv_scores=np.asarray(list(self.cv_scores.values())))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LinearHead":
        """A head :meth:`save` wrote (ValueError naming the file when it is not one)."""
        keys = ("weights", "mean", "std", "y_mean", "shape", "alpha", "alphas", "folds", "cv_alphas", "cv_scores")
        try:
            with np.load(path, allow_pickle=False) as f:
                missing = [k for k in keys if k not in f]
                if missing:
                    raise ValueError(f"{path}: not a linear head file (no {', '.join(missing)})")
                arrays = {k: f[k] for k in keys}
        except OSError as exc:
            raise ValueError(f"{path}: cannot be read as a linear head .npz: {exc}") from exc
        head = cls(alphas=arrays["alphas"].tolist(), folds=int(arrays["folds"]))
        head.weights, head._mean, head._std = arrays["weights"], arrays["mean"], arrays["std"]
        head._y_mean, head._shape = arrays["y_mean"], tuple(int(n) for n in arrays["shape"])
        head.alpha = float(arrays["alpha"])
        head.cv_scores = dict(zip(arrays["cv_alphas"].tolist(), arrays["cv_scores"].tolist()))
        if head.weights.shape != (head._mean.shape[0], head._y_mean.shape[0]):
            raise ValueError(f"{path}: weights {head.weights.shape} do not match {head._mean.shape[0]} voxels "
                             f"and {head._y_mean.shape[0]} target values")
        return head


def _mean_row_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over trials of the correlation between predicted and true target vectors."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean((a * b).sum(1) / np.where(denom > 0, denom, 1.0)))
