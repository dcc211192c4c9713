"""NSD experiment design and the generative model of a synthetic run.

Design (facts in ``shared/reference/nsd_layout.md`` §5-6):

* ``make_stimpattern(n_sessions, n_runs, rng)``: (S, R, 75) 0/1 stimulus trials. 3 blank trials
  open a run and 4 close it; the middle 68 hold 63 stimulus trials in 6 stretches of 9-14
  separated by 5 blank trials; in even-numbered runs the 63rd stimulus trial is blank (62).
* ``make_masterordering(n_trials, n_slots, n_shared, rng)``: the chronological sequence of
  1-based subject image slots, slots ``1..n_shared`` being the shared images; every image is
  shown at most 3 times, the shared ones exactly 3 times.

Signal model of one run, in the brain's own frame (% signal change around each voxel's mean):

* ``hrf_library(n)``: double-gamma HRFs with peak times 4.5-7 s and varied undershoots (as
  GLMsingle's library), one assigned to each voxel; ``trial_regressors`` convolves each trial's
  3-s boxcar with each HRF and samples it at the volume times (t = i·TR).
* ``drift``: per-voxel slow cosine drift plus a linear trend.
* ``correlated_noise``: spatially smoothed, AR(1) temporally correlated Gaussian noise plus a
  global fluctuation shared by all voxels.

Head motion (``make_motion``, ``move_volumes``): 6 rigid-body parameters per volume (translations
in mm, rotations in rad about the grid centre; x, y, z order as SPM's ``rp`` files), a slow drift
plus occasional jerks, applied by resampling every volume (trilinear, batched in torch).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.signal import lfilter
from scipy.spatial.transform import Rotation
from scipy.stats import gamma

__all__ = [
    "STIM_S",
    "correlated_noise",
    "drift",
    "hrf_library",
    "make_masterordering",
    "make_motion",
    "make_stimpattern",
    "motion_matrix",
    "move_volumes",
    "trial_regressors",
]

STIM_S = 3.0  # image on-screen time of an NSD trial (then 1 s off)


def _stim_run(rng: np.random.Generator, even: bool) -> np.ndarray:
    while True:
        lengths = rng.integers(9, 15, size=6)
        if lengths.sum() == 63:
            break
    pattern = [0, 0, 0]
    for i, n in enumerate(lengths):
        pattern += [1] * int(n) + ([0] if i < 5 else [])
    pattern += [0, 0, 0, 0]
    out = np.asarray(pattern, np.uint8)
    if even:
        out[np.flatnonzero(out)[62]] = 0
    return out


def make_stimpattern(n_sessions: int, n_runs: int, rng: np.random.Generator) -> np.ndarray:
    """NSD's (session, run, trial) 0/1 pattern of stimulus trials; run ``r`` (1-based) even → 62."""
    return np.stack(
        [np.stack([_stim_run(rng, even=(r + 1) % 2 == 0) for r in range(n_runs)]) for _ in range(n_sessions)]
    )


def make_masterordering(n_trials: int, n_slots: int, n_shared: int, rng: np.random.Generator) -> np.ndarray:
    """1-based slot per stimulus trial; shared slots shown 3 times, the others 1-3 times."""
    rest = n_trials - 3 * n_shared
    n_other = n_slots - n_shared
    if rest < n_other or rest > 3 * n_other:
        raise ValueError(
            f"cannot show {n_slots} images ({n_shared} shared ×3, others 1-3×) in exactly {n_trials} trials"
        )
    repeats = np.ones(n_other, int)
    extra = rest - n_other
    repeats[: extra // 2] = 3
    repeats[extra // 2 : extra // 2 + extra % 2] = 2
    slots = np.concatenate([np.repeat(np.arange(1, n_shared + 1), 3), np.repeat(np.arange(n_shared + 1, n_slots + 1), rng.permutation(repeats))])
    return slots[rng.permutation(len(slots))].astype(np.int64)


def hrf_library(n: int, dt: float, length_s: float = 32.0) -> np.ndarray:
    """``n`` double-gamma HRFs sampled every ``dt`` s, each with unit peak: (n, T)."""
    t = np.arange(0.0, length_s, dt)
    peaks = np.linspace(4.5, 7.0, n)
    undershoot = 10.0 + 4.0 * np.sin(np.arange(n) * 2.4) ** 2  # decorrelated from the peak
    ratio = 1.0 / (4.0 + 3.0 * np.cos(np.arange(n) * 1.7) ** 2)
    out = np.empty((n, t.size))
    for i in range(n):
        h = gamma.pdf(t, peaks[i] + 1.0) - ratio[i] * gamma.pdf(t, peaks[i] + 1.0 + undershoot[i])
        out[i] = h / h.max()
    return out


def trial_regressors(onsets: np.ndarray, n_vols: int, tr: float, hrfs: np.ndarray, dt: float) -> np.ndarray:
    """Each trial's HRF response, per HRF, at the volume times: (n_hrfs, n_vols, n_trials)."""
    box = np.ones(int(round(STIM_S / dt)))
    kernels = np.stack([np.convolve(h, box)[: h.size] * dt for h in hrfs])  # (H, T) response to 3 s on
    grid = np.arange(kernels.shape[1]) * dt
    lag = np.arange(n_vols)[:, None] * tr - np.asarray(onsets, float)[None, :]
    out = np.stack([np.interp(lag, grid, k, left=0.0, right=0.0) for k in kernels])
    return out.astype(np.float32)


def drift(n_voxels: int, n_vols: int, tr: float, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Slow drift in % signal change: (n_vols, n_voxels)."""
    t = np.arange(n_vols) * tr
    duration = n_vols * tr
    basis = [t / duration - 0.5] + [np.cos(np.pi * k * (t + tr / 2) / duration) for k in (1, 2)]
    basis = np.stack(basis, 1).astype(np.float32)  # periods ≥ duration: below any sane high-pass cutoff
    coef = rng.normal(0, amplitude, (basis.shape[1], n_voxels)).astype(np.float32)
    return basis @ coef


def correlated_noise(
    brain: np.ndarray, n_vols: int, rng: np.random.Generator, ar: float, spatial_sigma: float, global_fraction: float
) -> np.ndarray:
    """Unit-variance noise over the ``brain`` voxels: (n_vols, n_brain) float32."""
    fields = rng.standard_normal((n_vols, *brain.shape), np.float32)
    fields = ndimage.gaussian_filter(fields, (0, spatial_sigma, spatial_sigma, spatial_sigma))[:, brain]
    fields /= fields.std(0, keepdims=True) + 1e-12
    # AR(1) in time with unit stationary variance: y[t] = ar·y[t-1] + c·x[t], c = √(1 - ar²);
    # dividing x[0] by c makes y[0] = x[0], so the series starts stationary.
    c = np.sqrt(1 - ar**2)
    fields[0] /= c
    out = lfilter([c], [1.0, -ar], fields, axis=0)
    # A slower global fluctuation shared by all voxels (respiration/cardiac aliasing, vigilance).
    glob = lfilter([1.0], [1.0, -0.8], rng.standard_normal(n_vols))
    glob = (glob - glob.mean()) / (glob.std() + 1e-12)
    return (np.sqrt(1 - global_fraction) * out + np.sqrt(global_fraction) * glob[:, None]).astype(np.float32)


def make_motion(n_vols: int, rng: np.random.Generator, start: np.ndarray | None = None) -> np.ndarray:
    """Rigid-body parameters per volume: (n_vols, 6) = (tx, ty, tz mm, rx, ry, rz rad)."""
    scale = np.array([0.2, 0.25, 0.2, 0.003, 0.002, 0.002])
    steps = rng.standard_normal((n_vols, 6)) * scale / np.sqrt(n_vols)
    slow = ndimage.gaussian_filter1d(np.cumsum(steps, 0), 4.0, axis=0) * 3.0
    jerks = np.zeros((n_vols, 6))
    for _ in range(rng.poisson(1.5)):
        at = int(rng.integers(5, n_vols - 5))
        size = rng.standard_normal(6) * np.array([0.4, 0.6, 0.4, 0.008, 0.006, 0.006])
        if rng.random() < 0.5:  # a jerk that comes back after a few volumes
            jerks[at : at + int(rng.integers(1, 5))] += size
        else:  # a shift that stays
            jerks[at:] += size * 0.5
    params = slow - slow[0] + jerks
    return params + (np.zeros(6) if start is None else start)


def motion_matrix(params: np.ndarray) -> np.ndarray:
    """4×4 world-space rigid transform(s) of the head: (6,) → (4, 4), or (T, 6) → (T, 4, 4)."""
    p = np.atleast_2d(params)
    m = np.tile(np.eye(4), (len(p), 1, 1))
    m[:, :3, :3] = Rotation.from_euler("xyz", p[:, 3:6]).as_matrix()
    m[:, :3, 3] = p[:, :3]
    return m[0] if np.ndim(params) == 1 else m


def move_volumes(volumes: np.ndarray, affine: np.ndarray, params: np.ndarray, chunk: int = 16) -> np.ndarray:
    """Resample each volume (T, X, Y, Z) as seen after the head moved by ``params[t]`` (T, 6).

    Output voxel o of volume t is input voxel A⁻¹·M_t⁻¹·A·o (trilinear, zero outside), so tissue
    that sat at world point p now sits at M_t·p, with M_t = ``motion_matrix(params[t])`` and A
    the voxel-to-mm ``affine`` (rotations are about the world origin; the synthetic grids put it
    at the grid centre). Batched through ``torch.nn.functional.grid_sample``.
    """
    import torch
    import torch.nn.functional as F

    n, *shape = volumes.shape
    # grid_sample works in normalised coordinates u = D·i - 1 (align_corners) listed in reversed
    # axis order; conjugate the voxel-space transform into that frame once per volume.
    d = np.diag(np.append(2.0 / (np.asarray(shape, np.float64) - 1), 1.0))
    d[:3, 3] = -1.0
    flip = np.eye(4)[[2, 1, 0, 3]]
    to_norm = flip @ d
    from_norm = np.linalg.inv(to_norm)
    # Per volume: to_norm · A⁻¹ · M_t⁻¹ · A · from_norm, all volumes at once.
    theta_all = to_norm @ np.linalg.inv(affine) @ np.linalg.inv(motion_matrix(params)) @ affine @ from_norm
    # Output voxel centres in that frame, homogeneous, in grid_sample's (D, H, W) = (X, Y, Z) layout.
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    base = np.stack([*np.meshgrid(*axes, indexing="ij")[::-1], np.ones(shape, np.float32)], -1).reshape(-1, 4)
    out = np.empty(volumes.shape, np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        theta = theta_all[start:stop]
        # (affine_grid computes the same product but is far slower on CPU than a BLAS matmul.)
        grid = np.matmul(base[None], theta[:, :3].transpose(0, 2, 1).astype(np.float32))
        grid = torch.from_numpy(grid).view(stop - start, *shape, 3)
        vol_t = torch.from_numpy(np.ascontiguousarray(volumes[start:stop], np.float32)).unsqueeze(1)
        moved = F.grid_sample(vol_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[start:stop] = moved[:, 0].numpy()
    return out
