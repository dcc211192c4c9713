"""Synthetic subjects: anatomy, a visual ROI and image-driven voxel tuning.

``make_anatomy(shape, voxel_mm, n_roi, rng)`` draws a brain-shaped volume (a bumpy ellipsoid
with cortex, white matter and ventricles, each with its own EPI intensity, under a smooth coil
bias field) and an ``nsdgeneral``-like ROI: the ``n_roi`` most posterior cortical voxels. The
grid is oriented like NSD's func1pt8mm arrays (first voxel anterior, right, inferior).

``make_tuning(anatomy, features, lowlevel, rng)`` gives each ROI voxel a response to every
stimulus image:

* **low-level voxels** (the posterior part of the ROI, as early visual cortex) have a Gaussian
  population receptive field over the image, placed retinotopically from the voxel's position,
  and read one channel of ``lowlevel_features`` (local luminance contrast, red-green or
  blue-yellow colour);
* **high-level voxels** (the rest) are tuned to ``features``, the whitened principal components
  of the image embedding that all subjects share, through a subject-specific random mapping.

Responses are z-scored over the stimulus set and turned into percent signal change with a
per-voxel amplitude. ``lowlevel_features(images, grid)`` computes the pRF input maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Anatomy", "Tuning", "lowlevel_features", "make_anatomy", "make_tuning", "embedding_features"]

OUTSIDE, CSF, GREY, WHITE = 0, 1, 2, 3
_INTENSITY = {CSF: 1400.0, GREY: 1000.0, WHITE: 750.0}


@dataclass(frozen=True)
class Anatomy:
    """One subject's grid. ``roi`` follows NSD: -1 outside the brain, 0 brain, 1 in the ROI."""

    affine: np.ndarray  # (4, 4) voxel → mm
    tissue: np.ndarray  # (X, Y, Z) int8: OUTSIDE, CSF, GREY, WHITE
    baseline: np.ndarray  # (X, Y, Z) float32 mean EPI intensity, 0 outside the brain
    roi: np.ndarray  # (X, Y, Z) int16

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tissue.shape)  # type: ignore[return-value]

    @property
    def brain(self) -> np.ndarray:
        return self.tissue != OUTSIDE

    @property
    def roi_index(self) -> np.ndarray:
        """Flat C-order indices of the ROI voxels (the voxel order of every per-voxel array)."""
        return np.flatnonzero(self.roi.ravel() > 0)


@dataclass(frozen=True)
class Tuning:
    """Per-ROI-voxel tuning; arrays are indexed like ``Anatomy.roi_index``."""

    high_level: np.ndarray  # (V,) bool
    prf: np.ndarray  # (V, 3) visual-field x, y in [0, 1] and size (low-level voxels)
    channel: np.ndarray  # (V,) low-level feature channel
    weights: np.ndarray  # (V, K) high-level weights on the shared features
    amplitude: np.ndarray  # (V,) mean response in % signal change
    selectivity: np.ndarray  # (V,) image-specific modulation as a fraction of the amplitude
    hrf_index: np.ndarray  # (V,) index into the HRF library

    def responses(self, lowlevel: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Mean response (% signal change) of every voxel to every image: (n_images, V).

        ``lowlevel``: (n_images, C, G, G) from ``lowlevel_features``; ``features``:
        (n_images, K) shared embedding features.
        """
        n, _, g, _ = lowlevel.shape
        centres = (np.arange(g) + 0.5) / g
        gx = np.exp(-0.5 * ((centres[None, :] - self.prf[:, :1]) / self.prf[:, 2:3]) ** 2)  # (V, G) columns
        gy = np.exp(-0.5 * ((centres[None, :] - self.prf[:, 1:2]) / self.prf[:, 2:3]) ** 2)  # (V, G) rows
        gx /= gx.sum(1, keepdims=True)
        gy /= gy.sum(1, keepdims=True)
        low = np.empty((n, len(self.channel)), np.float64)
        for c in np.unique(self.channel):
            sel = self.channel == c
            # Separable pRF: Σ_rows Σ_cols gy[r] · map[r, c] · gx[c].
            low[:, sel] = np.einsum("nrc,vr,vc->nv", lowlevel[:, c], gy[sel], gx[sel], optimize=True)
        high = features @ self.weights.T
        raw = np.where(self.high_level[None, :], high, low)
        z = (raw - raw.mean(0)) / (raw.std(0) + 1e-12)
        return (self.amplitude * (1.0 + self.selectivity * z)).astype(np.float32)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-12)


def make_anatomy(shape: tuple[int, int, int], voxel_mm: float, n_roi: int, rng: np.random.Generator) -> Anatomy:
    """Draw a subject's brain on a ``shape`` grid of ``voxel_mm`` voxels with ``n_roi`` ROI voxels."""
    shape = tuple(int(s) for s in shape)
    centre = (np.asarray(shape) - 1) / 2.0
    # NSD orientation: index axes run right→left, anterior→posterior, inferior→superior.
    affine = np.diag([-voxel_mm, -voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ centre
    idx = np.indices(shape, dtype=np.float32)
    radii = np.asarray(shape, np.float32) * rng.uniform(0.40, 0.45, 3).astype(np.float32)
    rel = (idx - centre.reshape(3, 1, 1, 1).astype(np.float32)) / radii.reshape(3, 1, 1, 1)
    r = np.sqrt((rel**2).sum(0))
    bumps = 1.0 + 0.06 * _smooth_field(shape, rng, sigma=max(shape) / 8)
    outer = r / bumps
    brain = outer < 1.0
    # Cortex: an outer shell whose depth is modulated by "folds" (a finer smooth field).
    depth = 0.78 + 0.08 * _smooth_field(shape, rng, sigma=max(shape) / 25)
    tissue = np.full(shape, OUTSIDE, np.int8)
    tissue[brain] = WHITE
    tissue[brain & (outer > depth)] = GREY
    for side in (-1, 1):  # two lateral ventricles
        vent = ((rel[0] - side * 0.15) / 0.1) ** 2 + ((rel[1] + 0.05) / 0.35) ** 2 + ((rel[2] - 0.05) / 0.15) ** 2
        tissue[brain & (vent < 1.0)] = CSF
    baseline = np.zeros(shape, np.float32)
    for t, value in _INTENSITY.items():
        baseline[tissue == t] = value
    bias = 1.0 + 0.08 * rel[1] - 0.05 * rel[2] + 0.03 * _smooth_field(shape, rng, sigma=max(shape) / 6)
    baseline = (ndimage.gaussian_filter(baseline, 0.6) * bias * brain).astype(np.float32)

    grey = np.flatnonzero(tissue.ravel() == GREY)
    if n_roi > grey.size:
        raise ValueError(f"asked for {n_roi} ROI voxels but the {shape} brain has only {grey.size} cortical voxels")
    # Most posterior first (high y index), with a little jitter so the ROI edge is not a plane.
    posterior = idx[1].ravel()[grey] + rng.normal(0, 0.03 * shape[1], grey.size)
    roi = np.where(brain, 0, -1).astype(np.int16)
    roi.ravel()[grey[np.argsort(-posterior)[:n_roi]]] = 1
    return Anatomy(affine=affine, tissue=tissue, baseline=baseline, roi=roi)


def lowlevel_features(images: np.ndarray, grid: int = 16) -> np.ndarray:
    """pRF input maps of uint8 (N, H, W, 3) images: (N, 3, grid, grid) float32.

    Channels: local luminance contrast (absolute deviation from a blurred copy), red-green and
    blue-yellow colour opposition, each averaged over ``grid``×``grid`` blocks.
    """
    x = images.astype(np.float32) / 255.0
    n, h, w, _ = x.shape
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
    contrast = np.abs(lum - ndimage.gaussian_filter(lum, (0, h / 48, w / 48)))
    rg = x[..., 0] - x[..., 1]
    by = x[..., 2] - 0.5 * (x[..., 0] + x[..., 1])
    maps = np.stack([contrast, rg, by], 1)  # (N, 3, H, W)
    hb, wb = h // grid, w // grid
    maps = maps[:, :, : hb * grid, : wb * grid].reshape(n, 3, grid, hb, grid, wb).mean((3, 5))
    return maps.astype(np.float32)


def embedding_features(embeddings: np.ndarray, k: int) -> np.ndarray:
    """The shared tuning space: top-``k`` whitened principal components of flattened embeddings."""
    flat = embeddings.reshape(len(embeddings), -1).astype(np.float64)
    flat -= flat.mean(0)
    # Left singular vectors from the (images × images) Gram matrix: far cheaper than an SVD of
    # the (images × tokens·dim) matrix when tokens·dim exceeds the number of images.
    evals, evecs = np.linalg.eigh(flat @ flat.T)
    order = np.argsort(evals)[::-1][: min(k, len(flat) - 1)]
    return (evecs[:, order] * np.sqrt(len(flat))).astype(np.float32)


def make_tuning(
    anatomy: Anatomy, n_features: int, n_hrfs: int, rng: np.random.Generator, low_fraction: float = 0.4
) -> Tuning:
    """Draw this subject's voxel tuning (its own random mapping to the shared features)."""
    index = anatomy.roi_index
    ijk = np.stack(np.unravel_index(index, anatomy.shape), 1).astype(np.float64)
    v = len(index)
    posterior_rank = np.argsort(np.argsort(-ijk[:, 1])) / max(v - 1, 1)
    high = posterior_rank >= low_fraction
    # Retinotopy: visual-field position follows the voxel's left-right / up-down position in the
    # ROI (crossed, as in cortex), pRF size grows with eccentricity.
    span = ijk.max(0) - ijk.min(0) + 1e-9
    pos = (ijk - ijk.min(0)) / span
    px = np.clip(1.0 - pos[:, 0] + rng.normal(0, 0.08, v), 0.02, 0.98)
    py = np.clip(1.0 - pos[:, 2] + rng.normal(0, 0.08, v), 0.02, 0.98)
    ecc = np.hypot(px - 0.5, py - 0.5)
    size = 0.04 + 0.25 * ecc + rng.uniform(0, 0.05, v)
    channel = rng.choice(3, size=v, p=[0.6, 0.2, 0.2])
    decay = np.exp(-np.arange(n_features) / max(n_features / 3, 1))
    weights = rng.standard_normal((v, n_features)) * decay
    weights *= rng.random((v, n_features)) < 0.5  # each voxel reads a random subset
    weights /= np.linalg.norm(weights, axis=1, keepdims=True) + 1e-12
    return Tuning(
        high_level=high,
        prf=np.stack([px, py, size], 1),
        channel=channel,
        weights=weights,
        amplitude=rng.lognormal(np.log(1.2), 0.4, v),
        selectivity=rng.uniform(0.4, 0.8, v),
        hrf_index=rng.integers(0, n_hrfs, v),
    )
