"""Rigid realignment: known synthetic motion, the real runs' head motion, and elastix agreement."""

from __future__ import annotations

import shutil
import subprocess
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


def test_rejects_bad_volumes(realigner):
    with pytest.raises(ValueError, match="shape"):
        realigner.estimate(np.zeros((10, 10, 10)))
    bad = np.ones(realigner.shape, np.float32)
    bad[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        realigner.estimate(bad)


def _elastix_points(fixed: Path, moving: Path, mask: Path, points_ras: np.ndarray, work: Path) -> np.ndarray:
    """Where elastix's rigid registration sends ``points_ras`` of the fixed image (RAS mm).

    A deterministic setup (every voxel of the fixed mask, regular-step gradient descent): the
    stochastic default is ~0.07 mm off on a synthetic motion that it should recover exactly.
    """
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
                '(AutomaticTransformInitialization "false")', "(NumberOfResolutions 2)",
                "(MaximumNumberOfIterations 200)", '(ImageSampler "Full")', '(ErodeMask "false")',
                '(WriteResultImage "false")',
            ]
        )
    )
    out = work / "out"
    out.mkdir()
    subprocess.run(["elastix", "-f", fixed, "-m", moving, "-fMask", mask, "-p", params, "-out", out, "-threads", "1"],
                   check=True, capture_output=True)
    # ITK works in LPS: flip x and y on the way in and out.
    lps = points_ras * [-1, -1, 1]
    (work / "points.txt").write_text("point\n%d\n" % len(lps) + "\n".join(" ".join(map(str, p)) for p in lps))
    subprocess.run(["transformix", "-def", work / "points.txt", "-tp", out / "TransformParameters.0.txt",
                    "-out", out], check=True, capture_output=True)
    rows = [line.split("OutputPoint = [")[1].split("]")[0] for line in (out / "outputpoints.txt").read_text().splitlines()]
    return np.array([[float(v) for v in row.split()] for row in rows]) * [-1, -1, 1]


@pytest.mark.skipif(shutil.which("elastix") is None, reason="Debian's elastix is not installed")
def test_real_run_agrees_with_elastix(real_run, realigner, tmp_path):
    """Within ~0.1 mm of elastix just after the head jerk, and nearly as good a fit of the raw data.

    The two optimise different objectives (ours on 5 mm-smoothed volumes, elastix's last level
    on the raw ones): they differ by 0.09-0.11 mm on this run (0.04 mm on synthetic motion), and
    on the raw mean squared difference, elastix's own objective, ours is within ~2 % of its fit.
    """
    data, affine = real_run
    fixed = data[..., 0]
    nib.save(nib.Nifti1Image(fixed, affine), tmp_path / "fixed.nii.gz")
    nib.save(nib.Nifti1Image(realigner.mask.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    rng = np.random.default_rng(0)
    brain = np.argwhere(realigner.mask)
    points = (affine @ np.c_[brain, np.ones(len(brain))].T)[:3].T[rng.choice(len(brain), 500, replace=False)]
    interior = ndimage.binary_erosion(realigner.mask, iterations=3)

    def misfit(volume: np.ndarray, world: np.ndarray) -> float:
        moved = ndimage.affine_transform(volume, np.linalg.inv(affine) @ world @ affine, order=3, mode="nearest")
        return float(((moved - fixed)[interior] ** 2).mean())

    for index in (58,):  # just after the head jerk
        nib.save(nib.Nifti1Image(data[..., index], affine), tmp_path / f"moving{index}.nii.gz")
        work = tmp_path / f"elx{index}"
        work.mkdir()
        theirs = _elastix_points(tmp_path / "fixed.nii.gz", tmp_path / f"moving{index}.nii.gz", tmp_path / "mask.nii.gz",
                                 points, work)
        ours_matrix = rigid_matrix(realigner.estimate(data[..., index])[0], realigner.center)
        ours = (np.c_[points, np.ones(len(points))] @ ours_matrix.T)[:, :3]
        gap = np.linalg.norm(ours - theirs, axis=1).mean()
        fit = np.linalg.lstsq(np.c_[points, np.ones(len(points))], theirs, rcond=None)[0].T
        theirs_matrix = np.vstack([fit, [0, 0, 0, 1]])
        print(f"volume {index + 1}: mean gap to elastix {gap:.3f} mm")
        assert gap < 0.15
        assert misfit(data[..., index], ours_matrix) <= 1.03 * misfit(data[..., index], theirs_matrix)


# Real DICOM series (their dcm2niix reference NIfTIs) and the volumes compared with elastix (0-based;
# one per series, elastix taking seconds per volume): the xa30 run's last volume, the farthest in time
# from the reference (all 19 agree to 0.028-0.079 mm), and the cmrr volume with most motion before the
# head's large move (0.05 mm at 0.35 mm of motion; volume 2: 0.049 mm). Left out, measured against elastix
# with the settings below (mean gap per volume, mm), because the rigid model itself does not hold:
# - siemens_mosaic_ep2d_vd13 (vols 2-6) and siemens_mosaic_cmrr_vd13 (vols 4-6): slice-order
#   validation runs where the head moves ~23 mm mean displacement away from the first volume; the
#   tools agree to 0.30-0.49 mm (1.3-2 % of the motion) except cmrr volume 4 (1.9 mm, ours at its
#   iteration limit), the rest being within-volume motion that no rigid transform fits.
# - siemens_mosaic_b17_coronal / _sagittal: the head turns violently during the second volume,
#   smearing it across slices; the tools differ by 4.5 and 3.2 mm (ours at its iteration limit).
# - ge_mr750_dv26_epi_nih: 15 slices of 5 mm (75 mm coverage) and apparent motion of 17-46 mm in
#   volumes 3-5, 7-8 (gaps 1.7-10.7 mm, ours at its iteration limit): the brain leaves the slab;
#   even the small-motion volumes (2, 6, 10) differ by 0.21-0.25 mm, the 5 mm slices leaving
#   z poorly determined.
# Where ours stops at its iteration limit (GE volume 3, cmrr volume 4), elastix's transform fits the
# raw volume ~10 % better (mean squared difference): single-level Gauss-Newton loses its capture
# range beyond ~15 mm of motion, far more than a real-time session tolerates before it is repeated.
DICOM_SERIES = {
    "siemens_enh_xa30_prisma": ("ref_local/7_func-bold_task-fa_run-1.nii.gz", (19,)),
    "siemens_mosaic_cmrr_vd13": ("ref/8_cmrr_Int.nii", (2,)),
}


@pytest.mark.skipif(shutil.which("elastix") is None, reason="Debian's elastix is not installed")
@pytest.mark.parametrize("series", sorted(DICOM_SERIES))
def test_dicom_series_agree_with_elastix(dicom_dir, series, tmp_path):
    """Within 0.1 mm mean displacement of elastix, each volume registered to the first."""
    relative, volumes = DICOM_SERIES[series]
    img = nib.load(dicom_dir / series / relative)
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine
    realigner = RigidRealigner(data[..., 0], affine)
    nib.save(nib.Nifti1Image(data[..., 0], affine), tmp_path / "fixed.nii.gz")
    nib.save(nib.Nifti1Image(realigner.mask.astype(np.uint8), affine), tmp_path / "mask.nii.gz")
    rng = np.random.default_rng(0)
    brain = np.argwhere(realigner.mask)
    points = (affine @ np.c_[brain, np.ones(len(brain))].T)[:3].T[rng.choice(len(brain), 500, replace=False)]
    for index in volumes:
        nib.save(nib.Nifti1Image(data[..., index], affine), tmp_path / f"moving{index}.nii.gz")
        work = tmp_path / f"elx{index}"
        work.mkdir()
        theirs = _elastix_points(tmp_path / "fixed.nii.gz", tmp_path / f"moving{index}.nii.gz",
                                 tmp_path / "mask.nii.gz", points, work)
        params, _, converged = realigner.estimate(data[..., index])
        ours = (np.c_[points, np.ones(len(points))] @ rigid_matrix(params, realigner.center).T)[:, :3]
        gap = np.linalg.norm(ours - theirs, axis=1).mean()
        moved = np.linalg.norm(theirs - points, axis=1).mean()
        print(f"{series} volume {index + 1}: motion {moved:.2f} mm, mean gap to elastix {gap:.3f} mm")
        assert converged
        assert moved > 0.1  # the volume did move: agreeing on no motion would prove little
        assert gap < 0.1
