"""Rigid-body realignment of one volume at a time, and framewise displacement.

:class:`RigidRealigner` registers each incoming volume to a session reference with a
6-parameter rigid transform estimated by inverse-compositional Gauss-Newton (Baker & Matthews
2004) on a smoothed, subsampled set of brain voxels of the reference. The Jacobian and the
Gauss-Newton Hessian depend only on the reference, so they are computed once; a volume costs one
Gaussian smoothing, its cubic B-spline prefilter and a few cubic samplings of ``n_samples``
points. Each estimate starts from the previous one (head motion is slow between TRs), so 2-4
iterations usually suffice.

Accuracy, against elastix (rigid, mean squares on the unsmoothed volumes with cubic B-spline
interpolation, every voxel of the brain mask: the offline reference) as the mean distance between
where the two transforms send the brain: on the shared real run (siemens_prisma_e11_pydecnef_run1,
130 volumes of 3x3x3.5 mm, moving up to 1.5 mm), each volume warm-started from the previous one as
the engine runs it, 0.034 mm median, 0.054 at the 95th percentile, 0.071 at most (medians
0.034-0.041 over four random sample sets; 0.032-0.035 with 20,000 samples at 1.6x the sampling
cost). On four other real series, 0.005-0.029 mm on volumes that moved 0.07-0.41 mm. What matters:

- Sampling the smoothed volumes with cubic B-splines, which interpolate them exactly. Trilinear
  sampling smooths by an amount that depends on where a point falls between voxels, which pulls
  the estimate towards grid-aligned positions: 0.067 mm median (0.076 at the 95th percentile) on
  the shared run, 0.015-0.052 on the other series, and 0.042 mm off exactly rigid synthetic moves
  of the real reference (0.016 cubic), for about half the time (7 instead of 13 ms CPU per volume
  on the engine benchmark's 1.8 mm grid of 81x104x83 voxels, 12,000 samples).
- Smoothing at 3.5 mm FWHM: 0.041 mm median at 2.5 mm (less noise averaged out), 0.080 at 5 mm
  (the smoothed objective's minimum drifts from the raw data's).
- Enough samples: 0.043-0.044 mm median with 6,000 (two sample sets), 0.030 with the whole mask
  (47,266 voxels, at 2.7x the time).

On grids finer than the smoothing (voxels under ~1.85 mm at 3.5 mm FWHM) the estimate runs on
2x2x2 block means of the smoothed volumes, which carry the same information at an eighth of
the cost.

Large moves. When the warm-started estimate does not converge within ``max_iter`` iterations
(a move of tens of mm since the previous volume, rare in a usable session), it is estimated
again coarse to fine from the same start: on volumes smoothed at 16, 9 then 5 mm FWHM (block
means where the grid allows), then at the fine level, each level starting where the previous
ended and smoothing the whole volume; the better fit of the two attempts is kept. The common
case stays one level. On a whole-brain EPI the fine level alone converges from up to ~45 mm
mean displacement given enough iterations (measured on synthetic moves); the pyramid is the
safety net where it runs out of them, as on a real volume acquired during a ~25° head turn.

Far from the reference. The minimum of the smoothed objective sits where the rigid model fits
the smoothed data best; when the head is far from the reference (a ~25° turn), the rigid model
holds only approximately and that minimum drifts from the raw data's: 0.10-0.15 mm from elastix
on real 24 mm turns. So once the estimate moves the brain by more than ``refine_above_mm`` on
average, it is refined on the unsmoothed volume, sampled with cubic B-splines at up to
``refine_samples`` brain voxels: 0.08-0.09 mm from elastix on those turns, at ~0.1 s for such a
volume. Nearer the reference it brings nothing: refining every volume of the shared run gives
0.038 mm median (0.048 at the 95th percentile) at four times the cost.

Parameters follow fMRIPrep's confounds: ``trans_x, trans_y, trans_z`` in mm and
``rot_x, rot_y, rot_z`` in radians, in the reference's world (RAS+ mm) frame. A point ``x`` of the
reference maps to ``R (x - c) + c + t`` in the moving volume's world space, where ``c`` is the
centre of the reference grid and ``R = Rz @ Ry @ Rx``. Rotating about the grid centre (as mcflirt
and ITK's centred transforms do) keeps translations small and comparable across tools.

Only the voxels the GLM needs (the ROI) are resampled per volume (:meth:`RigidRealigner.realign`);
:meth:`RigidRealigner.resample_volume` resamples the whole volume when it is to be saved.

:func:`framewise_displacement` is Power et al. (2012): the sum of absolute backward differences
of the translations plus those of the rotations as arc lengths on a 50 mm sphere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "PARAMETER_NAMES",
    "RigidRealigner",
    "MotionEstimate",
    "rigid_matrix",
    "matrix_to_parameters",
    "framewise_displacement",
    "displacement_error",
    "brain_mask",
]

PARAMETER_NAMES = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")

# An update that moves no point of a 50 mm sphere by more than this (a small fraction of the
# margin kept from the volume's edges) leaves the set of usable sample points as it was.
_REFRESH_MM = 0.05


def _rotation(angles: np.ndarray) -> np.ndarray:
    rx, ry, rz = angles
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return mz @ my @ mx


#: Voxels kept around the sampled points when a spline's prefilter runs on a crop of the volume: its
#: coefficients there differ from the whole volume's by 0.27**8 (2.6e-5) of the step at the crop's edge.
_SPLINE_PAD = 8


def _sample(volume: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """``volume`` at voxel coordinates ``coords`` (3, n), float64 (n,), by splines of ``order``.

    Above order 1 the spline prefilter runs on the points' bounding box (plus :data:`_SPLINE_PAD`),
    not the whole volume: an ROI is a fraction of the grid, and the prefilter costs per voxel.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if order > 1 and coords.size:
        lo = np.maximum(np.floor(coords.min(axis=1)).astype(int) - _SPLINE_PAD, 0)
        hi = np.minimum(np.ceil(coords.max(axis=1)).astype(int) + _SPLINE_PAD + 1, volume.shape)
        if np.all(hi > lo):
            volume = volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            coords = coords - lo[:, None]
    return ndimage.map_coordinates(volume, coords, order=order, mode="nearest").astype(np.float64)


def rigid_matrix(params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The 4x4 world-to-world matrix of ``params`` (trans mm, rot rad) rotating about ``center``."""
    params = np.asarray(params, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64)
    rot = _rotation(params[3:])
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = center - rot @ center + params[:3]
    return out


def matrix_to_parameters(matrix: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rigid_matrix` (the rotation part must be a proper rotation)."""
    rot = matrix[:3, :3]
    ry = -np.arcsin(np.clip(rot[2, 0], -1.0, 1.0))
    rx = np.arctan2(rot[2, 1], rot[2, 2])
    rz = np.arctan2(rot[1, 0], rot[0, 0])
    center = np.asarray(center, dtype=np.float64)
    trans = matrix[:3, 3] - center + rot @ center
    return np.array([*trans, rx, ry, rz])


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power FD for a (n, 6) series of parameters; the first value is NaN (no previous volume)."""
    params = np.atleast_2d(np.asarray(params, dtype=np.float64))
    fd = np.full(len(params), np.nan)
    if len(params) > 1:
        diff = np.abs(np.diff(params, axis=0))
        fd[1:] = diff[:, :3].sum(axis=1) + radius * diff[:, 3:].sum(axis=1)
    return fd


def displacement_error(
    estimated: np.ndarray, true: np.ndarray, points_mm: np.ndarray, center: np.ndarray
) -> float:
    """Mean distance (mm) between where two parameter sets send ``points_mm`` (n, 3)."""
    a = rigid_matrix(estimated, center)
    b = rigid_matrix(true, center)
    pts = np.c_[points_mm, np.ones(len(points_mm))]
    return float(np.linalg.norm((pts @ (a - b).T)[:, :3], axis=1).mean())


def brain_mask(reference: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Brain voxels of an EPI volume (nilearn's ``compute_epi_mask``), as a boolean array."""
    import nibabel as nib
    from nilearn.masking import compute_epi_mask

    img = nib.Nifti1Image(np.asarray(reference, dtype=np.float32), affine)
    return np.asarray(compute_epi_mask(img).get_fdata(), dtype=bool)


def _prepare(volume: np.ndarray, factor: int, sigma: np.ndarray) -> np.ndarray:
    """Block-mean by ``factor`` and smooth a volume (or a box of one starting at a multiple of ``factor``)."""
    volume = np.asarray(volume, dtype=np.float32)
    if factor > 1:
        nx, ny, nz = (np.array(volume.shape) // factor) * factor
        volume = volume[:nx, :ny, :nz]
        while factor > 1:  # pairwise means, one halving at a time: faster than a strided reshape
            volume = volume[0::2] + volume[1::2]
            volume = volume[:, 0::2] + volume[:, 1::2]
            volume = (volume[:, :, 0::2] + volume[:, :, 1::2]) * 0.125
            factor //= 2
    return ndimage.gaussian_filter(volume, sigma, truncate=2.0)


def _to_grid(voxels: np.ndarray, lo: np.ndarray, factor: int) -> np.ndarray:
    """Volume voxel coordinates (3, n) -> coordinates in the prepared box that starts at ``lo``."""
    if factor == 1:
        return voxels - lo[:, None]
    return (voxels - lo[:, None] - (factor - 1) / 2.0) / factor


@dataclass(frozen=True)
class MotionEstimate:
    """One volume's realignment: parameters (6,), the ROI voxels resampled, and GN iterations."""

    params: np.ndarray
    roi: np.ndarray
    iterations: int
    converged: bool


@dataclass(frozen=True)
class _Level:
    """One smoothing level: its block-mean factor, kernel, sample points and steepest-descent images."""

    factor: int
    sigma: np.ndarray  # Gaussian sigma in block-mean (grid) voxels, per axis
    margin: np.ndarray  # (3, 1) volume voxels near an edge that the smoothing makes untrustworthy
    samples: np.ndarray  # (4, n) homogeneous volume voxel indices
    ref_values: np.ndarray  # (n,) the smoothed reference there
    sd: np.ndarray  # (n, 6) steepest-descent images
    order: int = 1  # spline order sampling the moving volume


class RigidRealigner:
    """Realign volumes to ``reference`` (x, y, z) with world ``affine``.

    Parameters
    ----------
    reference, affine:
        The session reference volume and its voxel-to-RAS+ matrix.
    mask:
        Boolean brain mask on the reference grid used to pick sample points; by default
        nilearn's ``compute_epi_mask`` of the reference, dilated by two voxels so that the brain's
        edge (where most of the alignment information lies) is sampled.
    roi_mask:
        Boolean mask of the voxels :meth:`realign` resamples (the decoder's ROI); by default ``mask``.
    fwhm_mm:
        Gaussian smoothing applied to reference and moving volumes before estimation. SPM's
        realign uses 5 mm, which widens the capture range (the pyramid covers that here); at
        3.5 mm the minimum stays nearer the raw data's (see above: 0.034 mm median from elastix on
        the shared run, 0.080 at 5 mm) and the noise is still averaged out (0.041 at 2.5 mm).
    coarse_fwhm_mm:
        Smoothing of the coarser levels, coarsest first, run only when the warm-started estimate
        at ``fwhm_mm`` does not converge (a large move since the previous volume, see above):
        each level starts where the previous one ended, and ``fwhm_mm`` finishes. Empty: no pyramid.
    refine_above_mm:
        Mean displacement of the brain (mm) from the reference above which the estimate is
        refined on the unsmoothed volume (see above); ``None``: never, ``0``: every volume.
    refine_samples:
        How many mask voxels the refinement uses (a fixed, seeded random subsample).
    n_samples:
        How many mask voxels the estimate uses (a fixed, seeded random subsample).
    max_iter:
        Gauss-Newton iterations per level.
    tol_mm:
        Convergence: the update moves no point of a 50 mm sphere by more than this. 0.01 mm
        moves the shared run's estimates by 0.0002 mm (median; 0.001 at most) from 0.001 mm's,
        one iteration sooner.
    order:
        Spline order used to resample ROI voxels and full volumes: 3 (cubic B-splines) or 1
        (trilinear, which smooths each volume by an amount that depends on its own sub-voxel shift:
        on the demo's 4.5 mm world, first-release r 0.36 instead of 0.43, docs/early_estimates.md).
    fine_order:
        Spline order sampling the smoothed moving volume at ``fwhm_mm``: 3 (cubic B-splines) or
        1 (trilinear: about half the time, twice as far from elastix; see above).
    """

    def __init__(
        self,
        reference: np.ndarray,
        affine: np.ndarray,
        *,
        mask: np.ndarray | None = None,
        roi_mask: np.ndarray | None = None,
        fwhm_mm: float = 3.5,
        coarse_fwhm_mm: Sequence[float] = (16.0, 9.0, 5.0),
        refine_above_mm: float | None = 5.0,
        refine_samples: int = 50000,
        n_samples: int = 12000,
        max_iter: int = 30,
        tol_mm: float = 1e-2,
        order: int = 3,
        fine_order: int = 3,
        seed: int = 0,
    ) -> None:
        reference = np.asarray(reference, dtype=np.float32)
        if reference.ndim != 3:
            raise ValueError(f"reference must be a 3D volume, got shape {reference.shape}")
        self.shape = reference.shape
        self.affine = np.asarray(affine, dtype=np.float64)
        self.center = self.affine @ np.r_[(np.array(self.shape) - 1) / 2.0, 1.0]
        self.center = self.center[:3]
        self.max_iter = max_iter
        self.tol_mm = tol_mm
        self.order = order

        if mask is None:
            mask = ndimage.binary_dilation(brain_mask(reference, self.affine), iterations=2)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the reference's {self.shape}")
        self.mask = mask
        self.roi_mask = mask if roi_mask is None else np.asarray(roi_mask, dtype=bool)
        if self.roi_mask.shape != self.shape:
            raise ValueError(f"ROI mask shape {self.roi_mask.shape} differs from the reference's {self.shape}")
        self.roi_voxels = np.c_[np.argwhere(self.roi_mask), np.ones(int(self.roi_mask.sum()))].T  # (4, V)

        candidates = np.argwhere(mask)
        rng = np.random.default_rng(seed)
        if len(candidates) > n_samples:
            candidates = candidates[np.sort(rng.choice(len(candidates), n_samples, replace=False))]
        samples = np.c_[candidates, np.ones(len(candidates))].T  # (4, n)
        self._fine = self._level(reference, fwhm_mm, samples, order=fine_order)
        self._coarse = [self._level(reference, fwhm, samples) for fwhm in coarse_fwhm_mm]
        self.refine_above_mm = refine_above_mm
        self._sample_world = self.affine @ samples  # where _displacement measures a transform
        self._refine = None
        if refine_above_mm is not None:
            candidates = np.argwhere(mask)
            if len(candidates) > refine_samples:
                candidates = candidates[np.sort(rng.choice(len(candidates), refine_samples, replace=False))]
            self._refine = self._level(reference, 0.0, np.c_[candidates, np.ones(len(candidates))].T, order=3)

    def _level(self, reference: np.ndarray, fwhm_mm: float, samples: np.ndarray, order: int = 1) -> _Level:
        voxel_size = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        sigma = fwhm_mm / np.sqrt(8 * np.log(2)) / voxel_size
        # Where the smoothing's sigma spans 0.8 voxel or more (FWHM ≥ 1.9 voxels: fine grids such as
        # NSD's 1.8 mm, or the coarse levels), estimate on f×f×f block means: 1/f³ of the voxels to
        # smooth, about the same information once smoothed (the blocks still sample the FWHM twice).
        # Block averaging blurs by a box of variance (f² - 1)/12 voxel², taken off the Gaussian.
        # Each axis keeps at least 8 block means (a thin slab is not averaged away).
        factor = 1
        while factor < 4 and np.all(sigma >= 0.8 * factor) and min(self.shape) >= 16 * factor:
            factor *= 2
        sigma = np.sqrt(sigma**2 - (factor**2 - 1) / 12.0) / factor
        smooth = _prepare(reference, factor, sigma)
        grid = _to_grid(samples[:3], np.zeros(3, int), factor)
        # The reference is read with the moving volume's interpolator: off the grid (block means) any
        # other would smooth the two differently and bias the fit.
        ref_values = ndimage.map_coordinates(smooth, grid, order=order, mode="nearest").astype(np.float64)
        # Gradient per voxel of the volume (a grid step is `factor` voxels), then per mm.
        grad_vox = np.stack(
            [ndimage.map_coordinates(g, grid, order=1) for g in np.gradient(smooth)], axis=-1
        ).astype(np.float64) / factor
        world = (self.affine @ samples)[:3].T
        grad_world = grad_vox @ np.linalg.inv(self.affine[:3, :3])
        arm = world - self.center
        # Steepest-descent images: d R(T_p x)/dp at p = 0 for translations and small rotations.
        sd = np.c_[grad_world, np.cross(arm, grad_world)]
        # Voxels within reach of an edge of the smoothing kernel (or a cubic spline's support) are not
        # trusted (in volume voxels).
        margin = ((np.ceil(2.0 * sigma) + 1 + (order > 1)) * factor)[:, None]
        return _Level(factor, sigma, margin, samples, ref_values, sd, order)

    def _voxel_map(self, params: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Reference voxel index -> moving voxel index, for ``params``."""
        return np.linalg.inv(affine) @ rigid_matrix(params, self.center) @ self.affine

    def _check(self, volume: np.ndarray) -> np.ndarray:
        volume = np.asarray(volume)
        if volume.shape != self.shape:
            raise ValueError(f"volume shape {volume.shape} differs from the reference's {self.shape}")
        if not np.all(np.isfinite(volume)):
            raise ValueError("volume contains NaN or infinite values")
        return volume

    def estimate(
        self, volume: np.ndarray, affine: np.ndarray | None = None, init: np.ndarray | None = None
    ) -> tuple[np.ndarray, int, bool]:
        """Parameters aligning ``volume`` to the reference, the iterations used, and convergence.

        The fine level alone, from ``init``, in the common case; if it does not converge, the
        coarse levels then the fine one again, from ``init``, and the better fit of the two; far
        from the reference, a refinement on the unsmoothed volume.
        """
        volume = self._check(volume)
        affine = self.affine if affine is None else np.asarray(affine, dtype=np.float64)
        start = rigid_matrix(np.zeros(6) if init is None else init, self.center)
        world_to_vox = np.linalg.inv(affine)
        transform, iterations, converged, cost = self._solve(self._fine, volume, world_to_vox, start, box=True)
        if not converged and self._coarse:
            coarse = start
            total = iterations
            for level in self._coarse:
                coarse, used, _, _ = self._solve(level, volume, world_to_vox, coarse, box=False)
                total += used
            refined, used, refined_converged, refined_cost = self._solve(
                self._fine, volume, world_to_vox, coarse, box=False
            )
            iterations = total + used
            if refined_converged or refined_cost < cost:
                transform, converged = refined, refined_converged
        if self._refine is not None and converged and self._displacement(transform) > self.refine_above_mm:
            refined, used, refined_converged, _ = self._solve(self._refine, volume, world_to_vox, transform, box=True)
            iterations += used
            if refined_converged:
                transform = refined
        return matrix_to_parameters(transform, self.center), iterations, converged

    def _displacement(self, transform: np.ndarray) -> float:
        """Mean distance (mm) ``transform`` moves the fine level's sample points."""
        return float(np.linalg.norm(((transform - np.eye(4)) @ self._sample_world)[:3], axis=0).mean())

    def _solve(
        self, level: _Level, volume: np.ndarray, world_to_vox: np.ndarray, transform: np.ndarray, box: bool
    ) -> tuple[np.ndarray, int, bool, float]:
        """Gauss-Newton at one level from ``transform``: (transform, iterations, converged, cost).

        ``world_to_vox`` maps the moving volume's world to its voxels. With ``box``, only the box
        the sample points fall in at the start (plus room for the update) is smoothed: the same
        values there as smoothing the whole volume, at a fraction of the cost, for the small moves
        of a warm start. ``cost`` is the mean squared residual at the last transform evaluated
        (the one before the last update).
        """
        f = level.factor
        lo = np.zeros(3, int)
        hi = np.array(self.shape)
        if box:
            coords = (world_to_vox @ transform @ self.affine @ level.samples)[:3]
            pad = level.margin[:, 0] + 4
            lo = np.clip(np.floor(coords.min(axis=1) - pad), 0, None).astype(int)
            lo -= lo % f  # the same block grid as the reference's
            hi = np.minimum(np.ceil(coords.max(axis=1) + pad).astype(int) + 1, self.shape)
        smooth = _prepare(volume[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], f, level.sigma)
        hi = lo + np.array(smooth.shape) * f
        if level.order > 1:
            smooth = ndimage.spline_filter(smooth, level.order, output=np.float32, mode="nearest")
        lower = lo[:, None] + level.margin
        upper = hi[:, None] - 1 - level.margin
        cost = np.inf
        update_mm = np.inf
        for iteration in range(1, self.max_iter + 1):
            coords = (world_to_vox @ transform @ self.affine @ level.samples)[:3]
            if update_mm > _REFRESH_MM:
                # Points that land near or beyond the edge of the volume (or of the smoothed box) see
                # smoothing and extrapolation artefacts rather than anatomy: leave them out. Decided
                # again only after a sizeable update: after tiny ones a point on the margin flips in
                # and out, and the iterations cycle between two answers ~0.003 mm apart.
                inside = np.all((coords >= lower) & (coords <= upper), axis=0)
                if inside.sum() < 12:  # the volume has left the reference's field of view
                    return transform, iteration, False, np.inf
                sd = level.sd[inside]
                hessian = sd.T @ sd
            moved = ndimage.map_coordinates(smooth, _to_grid(coords[:, inside], lo, f), order=level.order,
                                            mode="nearest", prefilter=False)
            residual = moved - level.ref_values[inside]
            # Not ``residual @ residual``: a threaded OpenBLAS dot took ~16 ms here on a busy machine.
            cost = float(np.square(residual).mean())
            step = np.linalg.solve(hessian, sd.T @ residual)
            # Inverse composition: the update is a warp of the reference, so undo it on the moving side.
            transform = transform @ np.linalg.inv(rigid_matrix(step, self.center))
            update_mm = np.abs(step[:3]).sum() + 50.0 * np.abs(step[3:]).sum()
            if update_mm < self.tol_mm:
                return transform, iteration, True, cost
        return transform, self.max_iter, False, cost

    def resample_roi(self, volume: np.ndarray, params: np.ndarray, affine: np.ndarray | None = None) -> np.ndarray:
        """The ROI voxels of ``volume`` realigned to the reference grid, float64 (V,)."""
        affine = self.affine if affine is None else np.asarray(affine, dtype=np.float64)
        coords = (self._voxel_map(params, affine) @ self.roi_voxels)[:3]
        return _sample(volume, coords, self.order)

    def resample_voxels(
        self, volume: np.ndarray, params: np.ndarray, voxels: np.ndarray, affine: np.ndarray | None = None
    ) -> np.ndarray:
        """The reference-grid ``voxels`` (4, n homogeneous indices) of ``volume`` realigned, float64 (n,)."""
        affine = self.affine if affine is None else np.asarray(affine, dtype=np.float64)
        coords = (self._voxel_map(params, affine) @ voxels)[:3]
        return _sample(volume, coords, self.order)

    def resample_volume(
        self, volume: np.ndarray, params: np.ndarray, affine: np.ndarray | None = None
    ) -> np.ndarray:
        """The whole of ``volume`` realigned to the reference grid (float32), e.g. for saving."""
        affine = self.affine if affine is None else np.asarray(affine, dtype=np.float64)
        vmap = self._voxel_map(params, affine)
        return ndimage.affine_transform(
            np.asarray(volume, dtype=np.float32), vmap, output_shape=self.shape, order=self.order, mode="nearest"
        )

    def realign(
        self, volume: np.ndarray, affine: np.ndarray | None = None, init: np.ndarray | None = None
    ) -> MotionEstimate:
        """Estimate the motion of ``volume`` (warm-started at ``init``) and resample its ROI voxels."""
        params, iterations, converged = self.estimate(volume, affine, init)
        return MotionEstimate(params, self.resample_roi(volume, params, affine), iterations, converged)
