"""Rigid realignment: known synthetic motion, the real runs' head motion, and elastix agreement."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from engine.motion import (
    RigidRealigner,
    displacement_error,
    framewise_displacement,
    matrix_to_parameters,
    rigid_matrix,
)
from rtrecon.contract import children
from rtrecon.testing import scaled

RUN = "data/bold/siemens_prisma_e11_pydecnef_run1/ref_local/5_PERCEPTION.nii.gz"


@pytest.fixture(scope="module")
def real_run(shared_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(shared_dir / RUN)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


@pytest.fixture(scope="module")
def realigner(real_run) -> RigidRealigner:
    data, affine = real_run
    return RigidRealigner(data[..., 0], affine)


def _move(volume: np.ndarray, affine: np.ndarray, params: np.ndarray, center: np.ndarray) -> np.ndarray:
    """The volume the scanner would record if the head moved by ``params`` (cubic resampling)."""
    vmap = np.linalg.inv(affine) @ rigid_matrix(params, center) @ affine
    return ndimage.affine_transform(volume, np.linalg.inv(vmap), order=3, mode="nearest")


def test_matrix_round_trip():
    rng = np.random.default_rng(0)
    center = np.array([1.0, -20.0, 7.0])
    for _ in range(20):
        params = np.r_[rng.uniform(-5, 5, 3), rng.uniform(-0.3, 0.3, 3)]
        np.testing.assert_allclose(matrix_to_parameters(rigid_matrix(params, center), center), params, atol=1e-12)


def test_framewise_displacement_is_power():
    params = np.array([[0, 0, 0, 0, 0, 0], [1, 0, -0.5, 0.01, 0, 0], [1, 0, -0.5, 0.01, 0, -0.02]], float)
    fd = framewise_displacement(params)
    assert np.isnan(fd[0])
    np.testing.assert_allclose(fd[1:], [1.5 + 0.5, 1.0])


def test_recovers_known_motion(real_run, realigner):
    data, affine = real_run
    ref = data[..., 0]
    rng = np.random.default_rng(1)
    points = (affine @ np.c_[np.argwhere(realigner.mask), np.ones(realigner.mask.sum())].T)[:3].T
    errors = []
    previous = None
    for _ in range(8):
        true = np.r_[rng.uniform(-2, 2, 3), np.deg2rad(rng.uniform(-2, 2, 3))]
        moving = _move(ref, affine, true, realigner.center)
        moving += rng.normal(0, 0.01 * ref.mean(), moving.shape).astype(np.float32)
        est = realigner.realign(moving, init=previous)
        assert est.converged
        previous = est.params
        errors.append(displacement_error(est.params, true, points, realigner.center))
    assert np.mean(errors) <= 0.05, errors


def test_roi_resampling_undoes_motion(real_run, realigner):
    data, affine = real_run
    ref = data[..., 0]
    true = np.array([1.5, -1.0, 0.5, 0.02, -0.01, 0.015])
    moving = _move(ref, affine, true, realigner.center)
    est = realigner.realign(moving)
    unmoved = np.abs(moving[realigner.roi_mask] - ref[realigner.roi_mask]).mean()
    ideal = realigner.resample_roi(moving, true)
    assert np.abs(est.roi - ideal).mean() < 0.05 * unmoved
    assert np.corrcoef(ideal, ref[realigner.roi_mask])[0, 1] > 0.95
    full = realigner.resample_volume(moving, est.params)
    np.testing.assert_allclose(full[realigner.roi_mask], est.roi, rtol=1e-5, atol=1e-3)


def test_roi_is_resampled_by_cubic_splines_not_trilinear():
    """A smooth field moved by a sub-voxel shift: the ROI comes back as the field at the shifted points
    (cubic B-splines), not blurred by the shift's own trilinear weights (the control, ``order=1``)."""
    shape, voxel = (40, 44, 36), np.array([4.5, 4.5, 4.5])
    affine = np.diag([*voxel, 1.0])

    def field(i, j, k):
        return 1000 + 50 * np.sin(2 * np.pi * i / 9) * np.cos(2 * np.pi * j / 11) + 30 * np.sin(2 * np.pi * k / 7)

    volume = field(*np.indices(shape, dtype=np.float64)).astype(np.float32)
    roi = np.zeros(shape, bool)
    roi[8:32, 20:40, 8:28] = True  # an ROI away from the grid's edges: its bounding box is a crop
    shift_mm = np.array([1.8, -1.35, 0.9])  # 0.4, -0.3, 0.2 voxel
    truth = field(*(np.argwhere(roi).T + (shift_mm / voxel)[:, None]))
    errors = {}
    for order in (3, 1):
        realigner = RigidRealigner(volume, affine, mask=np.ones(shape, bool), roi_mask=roi, order=order)
        errors[order] = np.abs(realigner.resample_roi(volume, np.r_[shift_mm, 0, 0, 0]) - truth).mean()
    assert RigidRealigner(volume, affine, mask=np.ones(shape, bool)).order == 3  # the default
    assert errors[3] < 0.2 * errors[1], errors


def test_rejects_bad_volumes(realigner):
    with pytest.raises(ValueError, match="shape"):
        realigner.estimate(np.zeros((10, 10, 10)))
    bad = np.ones(realigner.shape, np.float32)
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        realigner.estimate(bad)


def test_real_run_converges_on_every_volume(real_run, realigner):
    """Warm-started through the first half of the real run and its head jerk, every volume converges
    in a few iterations (without the sample set frozen under small updates, 4 of these cycled
    between two answers ~0.003 mm apart to the iteration limit, then ran the pyramid)."""
    data, _ = real_run
    previous = None
    iterations = []
    for index in range(62):
        previous, used, converged = realigner.estimate(data[..., index], init=previous)
        assert converged, index
        iterations.append(used)
    assert max(iterations) <= 8, iterations


def test_pyramid_captures_a_large_move_the_fine_level_alone_does_not(real_run):
    """A 24 mm move (12° turns) from a cold start: with few iterations the fine level alone stops
    far off; the coarse levels, run because it did not converge, bring it in."""
    data, affine = real_run
    ref = data[..., 0]
    true = np.r_[12.0, -10.0, 8.0, np.deg2rad([10.0, -8.0, 12.0])]
    single = RigidRealigner(ref, affine, coarse_fwhm_mm=(), max_iter=6, n_samples=6000)
    pyramid = RigidRealigner(ref, affine, max_iter=6, n_samples=6000)
    points = (affine @ np.c_[np.argwhere(single.mask), np.ones(single.mask.sum())].T)[:3].T
    moving = _move(ref, affine, true, single.center)
    assert displacement_error(np.zeros(6), true, points, single.center) > 20
    params, _, converged = single.estimate(moving)
    assert not converged and displacement_error(params, true, points, single.center) > 1.0
    params, iterations, converged = pyramid.estimate(moving)
    assert converged and iterations > 6
    assert displacement_error(params, true, points, pyramid.center) < 0.1


def test_refines_on_the_raw_volume_only_far_from_the_reference(real_run):
    """Near the reference the smoothed estimate stands; 20 mm away it is refined on the raw volume,
    which lands nearer the true motion (0.010 mm off this exactly rigid move, the smoothed estimate
    0.026)."""
    data, affine = real_run
    ref = data[..., 0]
    refining = RigidRealigner(ref, affine, n_samples=6000)
    smoothed_only = RigidRealigner(ref, affine, n_samples=6000, refine_above_mm=None)
    points = (affine @ np.c_[np.argwhere(refining.mask), np.ones(refining.mask.sum())].T)[:3].T

    near = np.r_[1.0, -0.5, 0.5, np.deg2rad([0.5, -0.5, 0.3])]
    moving = _move(ref, affine, near, refining.center)
    params, iterations, converged = refining.estimate(moving)
    plain, plain_iterations, _ = smoothed_only.estimate(moving)
    assert converged and iterations == plain_iterations
    np.testing.assert_array_equal(params, plain)

    far = np.r_[10.0, -8.0, 6.0, np.deg2rad([8.0, -6.0, 9.0])]
    assert displacement_error(np.zeros(6), far, points, refining.center) > refining.refine_above_mm
    moving = _move(ref, affine, far, refining.center)
    params, iterations, converged = refining.estimate(moving)
    plain, plain_iterations, _ = smoothed_only.estimate(moving)
    assert converged and iterations > plain_iterations
    error = displacement_error(params, far, points, refining.center)
    assert error < 0.02 and error < 0.5 * displacement_error(plain, far, points, refining.center)


def test_thin_slab_without_usable_samples_does_not_crash():
    """Six 2.4 mm slices (a real XA10 SMS series is like this): no sample is far enough from the
    slab's faces to be trusted, so the estimate stays at its start, reported as not converged."""
    rng = np.random.default_rng(0)
    volume = ndimage.gaussian_filter(rng.normal(size=(32, 32, 6)), 2).astype(np.float32) + 5
    realigner = RigidRealigner(volume, np.diag([3.4, 3.4, 2.4, 1.0]), mask=np.ones(volume.shape, bool))
    params, _, converged = realigner.estimate(volume, init=np.full(6, 0.01))
    assert not converged
    np.testing.assert_allclose(params, 0.01)


class _Elastix:
    """elastix's rigid registration of ``moving`` to ``fixed`` (NIfTI paths), started in the background.

    A deterministic setup (every voxel of the fixed mask, regular-step gradient descent): the
    stochastic default is ~0.07 mm off on a synthetic motion that it should recover exactly. One
    resolution: the volumes compared moved under 2 mm, and two resolutions (the smoothed level
    first) give the same transform to 0.002 mm (measured on each) at twice the time.
    """

    def __init__(self, fixed: Path, moving: Path, mask: Path, work: Path) -> None:
        self.work = work
        work.mkdir()
        params = work / "rigid.txt"
        params.write_text(
            "\n".join(
                [
                    '(FixedInternalImagePixelType "float")', '(MovingInternalImagePixelType "float")',
                    '(Registration "MultiResolutionRegistration")', '(Interpolator "BSplineInterpolator")',
                    "(BSplineInterpolationOrder 3)", '(FixedImagePyramid "FixedSmoothingImagePyramid")',
                    '(MovingImagePyramid "MovingSmoothingImagePyramid")', '(Optimizer "RegularStepGradientDescent")',
                    "(MaximumStepLength 1.0)", "(MinimumStepLength 0.0005)", "(RelaxationFactor 0.6)",
                    "(MinimumGradientMagnitude 0.0000001)", '(Transform "EulerTransform")',
                    '(Metric "AdvancedMeanSquares")', '(AutomaticScalesEstimation "true")',
                    '(AutomaticTransformInitialization "false")', "(NumberOfResolutions 1)",
                    "(MaximumNumberOfIterations 200)", '(ImageSampler "Full")', '(ErodeMask "false")',
                    '(WriteResultImage "false")',
                ]
            )
        )
        with open(work / "stderr.txt", "wb") as err:
            self.process = children.start(
                ["elastix", "-f", fixed, "-m", moving, "-fMask", mask, "-p", params, "-out", work, "-threads", "1"],
                stdout=subprocess.DEVNULL, stderr=err,
            )

    def points(self, points_ras: np.ndarray) -> np.ndarray:
        """Where the registration sends ``points_ras`` of the fixed image (RAS mm); waits for it."""
        returncode = self.process.wait()
        assert returncode == 0, f"elastix failed: {(self.work / 'stderr.txt').read_text()[-2000:]}"
        # ITK works in LPS: flip x and y on the way in and out.
        lps = points_ras * [-1, -1, 1]
        (self.work / "points.txt").write_text("point\n%d\n" % len(lps) + "\n".join(" ".join(map(str, p)) for p in lps))
        children.run(["transformix", "-def", self.work / "points.txt", "-tp", self.work / "TransformParameters.0.txt",
                      "-out", self.work], check=True, capture_output=True, timeout=scaled(60))
        text = (self.work / "outputpoints.txt").read_text()
        rows = [line.split("OutputPoint = [")[1].split("]")[0] for line in text.splitlines()]
        return np.array([[float(v) for v in row.split()] for row in rows]) * [-1, -1, 1]


# Real DICOM series (their dcm2niix reference NIfTIs) compared with elastix: the series, the
# reference volume and the volume registered to it (0-based; elastix takes seconds per volume).
# Measured on every series (mean gap to elastix over 500 brain-mask points, mm, at the elastix
# motion in brackets; to volume 0 unless said), with the defaults (3.5 mm FWHM sampled with cubic
# B-splines; raw-data refinement above 5 mm of displacement); these are where a rigid fit of one
# volume is meaningful, and agree (trilinear sampling of the smoothed volumes, fine_order=1, gives
# the figures after "trilinear"):
# - siemens_enh_xa30_prisma: 0.005-0.023 (0.09-0.15) on volumes 1, 5, 10, 19; 19 here.
#   Trilinear 0.015-0.042.
# - siemens_mosaic_cmrr_vd13: volumes 1-2 0.020-0.027 (0.21-0.30), trilinear 0.041-0.052; after
#   its ~25° head turn, volumes 4-5 0.082 (24.2, 23.8 mm; the raw-data refinement, either way), 4 here.
# - siemens_mosaic_ep2d_vd13 after its head turn: volumes 2-5 0.081-0.090 (23.1-23.9 mm), 3 here;
#   volume 5 to volume 3 0.018 (0.41), trilinear 0.045, here.
# - siemens_mosaic_rt_e11_pyneal: volumes 1-2 0.017-0.029 (0.07-0.15), trilinear 0.026-0.051,
#   18 slices of 3.8 mm.
# - siemens_enh_xa60_terrax, a phantom in 10 slices of 2 mm: 0.065-0.086 (0.03-0.04), too little
#   motion for agreement to prove much, so not here.
# Measured and left out:
# - volumes acquired while the head turned: ep2d volume 1 (0.19 mm gap at 24 mm) and cmrr volume 3
#   (elastix 14 mm, gap 10.8 mm), and siemens_mosaic_b17_coronal / _sagittal / _jpeglossless,
#   whose second volume is smeared across slices by a violent turn: a rigid transform describes
#   none of them, and the two tools stop at different compromises.
# - ge_mr750_dv26_epi_nih (15 slices of 5 mm): 0.099-0.233 at 0.4-1.7 mm, z being poorly determined
#   by 5 mm slices (refining on the raw data every volume gives 0.10-0.12). elastix itself is no
#   surer there: on volumes 5 and 9, its answer moves by 0.13-0.15 mm with its stochastic sampler
#   (20000 points) and by 0.60 mm with linear interpolation, against 0.05 and 0.25 mm on the real
#   run's volume 58 (measured with the setup below changed in that one line). Its turns of
#   18-45°, and ge_mr750_dv24_rt_mrdc_pyneal's, take the brain out of the slab (gaps 3-47 mm;
#   elastix's own fit is the worse one in GE volumes 6-8).
# - siemens_enh_xa10_vida: 6 slices of 2.4 mm, too thin a slab for a 3-D rigid fit (our estimate
#   keeps its start, not converged: see test_thin_slab_without_usable_samples_does_not_crash).
# - siemens_interop_xa30_prisma and philips_achieva_epi_magdeburg (a phantom): under 0.03 mm of
#   motion (gaps 0.005-0.034 mm), and agreeing on no motion would prove little.
DICOM_CASES = {
    "xa30_prisma": ("siemens_enh_xa30_prisma", "ref_local/7_func-bold_task-fa_run-1.nii.gz", 0, 19),
    "cmrr": ("siemens_mosaic_cmrr_vd13", "ref/8_cmrr_Int.nii", 0, 2),
    "cmrr_after_turn": ("siemens_mosaic_cmrr_vd13", "ref/8_cmrr_Int.nii", 0, 4),
    "ep2d": ("siemens_mosaic_ep2d_vd13", "ref/2_ep2d_Asc.nii", 3, 5),
    "ep2d_after_turn": ("siemens_mosaic_ep2d_vd13", "ref/2_ep2d_Asc.nii", 0, 3),
    "rt_e11_pyneal": ("siemens_mosaic_rt_e11_pyneal", "ref_local/13_bold_ep2d_Visual.nii.gz", 0, 2),
}
BOLD_VOLUME = 58  # of the real run: just after its head jerk
RUN_VOLUMES = range(10, 130, 10)  # of the real run, compared with elastix as the run goes on


@dataclass
class _Case:
    data: np.ndarray
    affine: np.ndarray
    realigner: RigidRealigner
    volume: int
    points: np.ndarray
    elastix: _Elastix


@pytest.fixture(scope="module")
def elastix_cases(real_run, realigner, dicom_dir, tmp_path_factory) -> dict[str, _Case]:
    """Every registration compared with elastix, all started at once: they take seconds each and
    run side by side (and beside the other tests of this module)."""
    if shutil.which("elastix") is None:
        pytest.skip("Debian's elastix is not installed")
    work = tmp_path_factory.mktemp("elastix")
    cases = {}
    sources = {"bold": (*real_run, realigner, 0, BOLD_VOLUME)}
    for name, (series, relative, reference, volume) in DICOM_CASES.items():
        img = nib.load(dicom_dir / series / relative)
        data = np.asarray(img.dataobj, dtype=np.float32)
        sources[name] = (data, img.affine, RigidRealigner(data[..., reference], img.affine), reference, volume)
    for name, (data, affine, case_realigner, reference, volume) in sources.items():
        rng = np.random.default_rng(0)
        folder = work / name
        folder.mkdir()
        nib.save(nib.Nifti1Image(data[..., reference], affine), folder / "fixed.nii.gz")
        nib.save(nib.Nifti1Image(case_realigner.mask.astype(np.uint8), affine), folder / "mask.nii.gz")
        nib.save(nib.Nifti1Image(data[..., volume], affine), folder / "moving.nii.gz")
        brain = np.argwhere(case_realigner.mask)
        points = (affine @ np.c_[brain, np.ones(len(brain))].T)[:3].T[rng.choice(len(brain), 500, replace=False)]
        registration = _Elastix(
            folder / "fixed.nii.gz", folder / "moving.nii.gz", folder / "mask.nii.gz", folder / "out"
        )
        cases[name] = _Case(data, affine, case_realigner, volume, points, registration)
    yield cases
    for case in cases.values():
        children.kill(case.elastix.process)


@pytest.fixture(scope="module")
def elastix_run(real_run, realigner, tmp_path_factory) -> tuple[np.ndarray, dict[int, _Elastix]]:
    """elastix's registrations of every tenth volume of the real run to its first (all started at
    once), and the 500 brain-mask points they are compared on."""
    if shutil.which("elastix") is None:
        pytest.skip("Debian's elastix is not installed")
    data, affine = real_run
    work = tmp_path_factory.mktemp("elastix_run")
    nib.save(nib.Nifti1Image(data[..., 0], affine), work / "fixed.nii.gz")
    nib.save(nib.Nifti1Image(realigner.mask.astype(np.uint8), affine), work / "mask.nii.gz")
    brain = np.argwhere(realigner.mask)
    rng = np.random.default_rng(0)
    points = (affine @ np.c_[brain, np.ones(len(brain))].T)[:3].T[rng.choice(len(brain), 500, replace=False)]
    registrations = {}
    for volume in RUN_VOLUMES:
        moving = work / f"moving_{volume}.nii.gz"
        nib.save(nib.Nifti1Image(data[..., volume], affine), moving)
        registrations[volume] = _Elastix(work / "fixed.nii.gz", moving, work / "mask.nii.gz", work / f"out_{volume}")
    yield points, registrations
    for registration in registrations.values():
        children.kill(registration.process)


def _gap_to_elastix(case: _Case) -> tuple[np.ndarray, float, float, bool, np.ndarray]:
    """(our matrix, mean gap to elastix, elastix's mean motion, converged, elastix's affine fit)."""
    theirs = case.elastix.points(case.points)
    params, _, converged = case.realigner.estimate(case.data[..., case.volume])
    ours_matrix = rigid_matrix(params, case.realigner.center)
    homogeneous = np.c_[case.points, np.ones(len(case.points))]
    ours = (homogeneous @ ours_matrix.T)[:, :3]
    theirs_matrix = np.vstack([np.linalg.lstsq(homogeneous, theirs, rcond=None)[0].T, [0, 0, 0, 1]])
    gap = float(np.linalg.norm(ours - theirs, axis=1).mean())
    moved = float(np.linalg.norm(theirs - case.points, axis=1).mean())
    return ours_matrix, gap, moved, converged, theirs_matrix


def test_real_run_agrees_with_elastix(elastix_cases):
    """Within 0.1 mm of elastix just after the head jerk, and nearly as good a fit of the raw data.

    The two optimise different objectives (ours on 3.5 mm-smoothed volumes, elastix's on the raw
    ones): from a cold start on this volume they differ by 0.051 mm (0.034 median over the run
    warm-started, see below), and on the raw mean squared difference, elastix's own objective,
    ours is within a few % of its fit.
    """
    case = elastix_cases["bold"]
    fixed = case.data[..., 0]
    interior = ndimage.binary_erosion(case.realigner.mask, iterations=3)
    moving = case.data[..., case.volume]

    def misfit(world: np.ndarray) -> float:
        vmap = np.linalg.inv(case.affine) @ world @ case.affine
        moved = ndimage.affine_transform(moving, vmap, order=3, mode="nearest")
        return float(((moved - fixed)[interior] ** 2).mean())

    ours_matrix, gap, moved, converged, theirs_matrix = _gap_to_elastix(case)
    print(f"volume {case.volume + 1}: motion {moved:.2f} mm, mean gap to elastix {gap:.3f} mm")
    assert converged and moved > 1.0
    assert gap < 0.1
    assert misfit(ours_matrix) <= 1.03 * misfit(theirs_matrix)


@pytest.mark.parametrize("name", sorted(DICOM_CASES))
def test_dicom_series_agree_with_elastix(elastix_cases, name):
    """Within 0.1 mm mean displacement (over 500 points of the brain mask) of elastix, registering
    the volume to the series' reference volume, from small moves to a ~25° head turn."""
    case = elastix_cases[name]
    _, gap, moved, converged, _ = _gap_to_elastix(case)
    print(f"{DICOM_CASES[name][0]} volume {case.volume + 1}: motion {moved:.2f} mm, mean gap to elastix {gap:.3f} mm")
    assert converged
    assert moved > 0.1  # the volume did move: agreeing on no motion would prove little
    assert gap < 0.1


def test_real_run_follows_elastix_through_the_run(real_run, realigner, elastix_run):
    """Warm-started through the real run as the engine runs it, every tenth volume lands within
    0.05 mm of elastix (median of the mean gap over the brain; 0.034 measured over all 129 moved
    volumes, 0.054 at the 95th percentile). The control must fail: the same estimate sampling the
    smoothed volumes trilinearly, whose sub-voxel-dependent smoothing biases it (0.067 median over
    the run)."""
    data, affine = real_run
    points, registrations = elastix_run
    homogeneous = np.c_[points, np.ones(len(points))]
    theirs = {volume: registration.points(points) for volume, registration in registrations.items()}
    trilinear = RigidRealigner(data[..., 0], affine, fine_order=1)
    medians = {}
    for name, estimator in (("cubic", realigner), ("trilinear", trilinear)):
        previous = None
        gaps = []
        for index in range(1, max(RUN_VOLUMES) + 1):
            previous, _, converged = estimator.estimate(data[..., index], init=previous)
            assert converged, (name, index)
            if index in theirs:
                ours = (homogeneous @ rigid_matrix(previous, estimator.center).T)[:, :3]
                gaps.append(float(np.linalg.norm(ours - theirs[index], axis=1).mean()))
        medians[name] = float(np.median(gaps))
        print(f"{name}: mean gap to elastix on volumes {list(theirs)}: median {medians[name]:.3f} mm, "
              f"at most {max(gaps):.3f}")
    assert medians["cubic"] <= 0.05
    assert medians["trilinear"] > 0.05
