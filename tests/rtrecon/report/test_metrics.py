"""Reconstruction metrics: MindEye2's definitions, checked against brute force and their controls."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from rtrecon.data.images import make_images
from rtrecon.report.metrics import (EXTERNAL_METRICS, external_metrics, hubness, pixcorr, retrieval_ranks, ssim, top_k,
                                    two_way_identification)


@pytest.fixture(scope="module")
def images():
    return make_images(12, 48, seed=3)[0]


def test_pixcorr_is_one_for_the_image_minus_one_for_its_negative_and_near_zero_across_images(images):
    assert pixcorr(images, images) == pytest.approx(1.0)
    assert pixcorr(list(255 - images), list(images)) == pytest.approx(-1.0)
    # seen images are resized to the reconstruction's size
    big = np.repeat(np.repeat(images, 2, 1), 2, 2)
    assert pixcorr(images, big) > 0.95
    assert abs(pixcorr(images, np.roll(images, 1, 0))) < 0.5


def _brute_ssim(x: np.ndarray, y: np.ndarray, sigma: float = 1.5) -> float:
    """SSIM with explicit Gaussian windows at every interior pixel (Wang et al. 2004, population moments)."""
    half = int(3.5 * sigma + 0.5)
    u = np.arange(-half, half + 1)
    w = np.exp(-0.5 * (u[:, None] ** 2 + u[None, :] ** 2) / sigma**2)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(half, x.shape[0] - half):
        for j in range(half, x.shape[1] - half):
            a = x[i - half:i + half + 1, j - half:j + half + 1]
            b = y[i - half:i + half + 1, j - half:j + half + 1]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cab = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2, (w * a * b).sum() - ma * mb
            values.append((2 * ma * mb + c1) * (2 * cab + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def _gray(image: np.ndarray) -> np.ndarray:
    return (image / 255.0) @ np.array([0.2125, 0.7154, 0.0721])


def test_ssim_matches_a_brute_force_window_sum(images):
    assert ssim(images, images) == pytest.approx(1.0)
    blurred = ndimage.uniform_filter(images[0], (3, 3, 1))
    brute = _brute_ssim(_gray(blurred), _gray(images[0]))
    assert ssim([blurred], [images[0]]) == pytest.approx(brute, rel=1e-6)
    assert ssim(images, np.roll(images, 1, 0)) < 0.5 < ssim([blurred], [images[0]])


def test_ssim_matches_skimage_when_installed(images):
    metrics = pytest.importorskip("skimage.metrics")
    gray = _gray
    blurred = ndimage.uniform_filter(images[0], (3, 3, 1))
    expected = metrics.structural_similarity(gray(blurred), gray(images[0]), gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=1.0)
    assert ssim([blurred], [images[0]]) == pytest.approx(expected, rel=1e-6)


def test_two_way_identification_follows_mindeye2():
    rng = np.random.default_rng(0)
    seen = rng.standard_normal((40, 30))
    assert two_way_identification(seen, seen) == 1.0
    assert two_way_identification(seen + 0.3 * rng.standard_normal(seen.shape), seen) > 0.95
    # the control: predictions that belong to other trials are at chance
    chance = [two_way_identification(rng.standard_normal(seen.shape), seen) for _ in range(20)]
    assert abs(np.mean(chance) - 0.5) < 0.03
    # MindEye2's loop, literally: r = corrcoef(reals, preds)[:n, n:]; success = r < diag(r); sum over axis 0
    pred = seen + rng.standard_normal(seen.shape)
    r = np.corrcoef(seen, pred)[:40, 40:]
    assert two_way_identification(pred, seen) == pytest.approx(np.mean(np.sum(r < np.diag(r), 0)) / 39)


def test_ranks_top_k_and_hubness():
    gallery = np.eye(4)
    emb = np.array([[1.0, 0.1, 0, 0], [0.9, 0.2, 0, 0], [0, 0, 0, 1.0]])
    ranks = retrieval_ranks(emb, gallery, [0, 1, 2])
    np.testing.assert_array_equal(ranks, [1, 2, 2])
    assert top_k(ranks, 1) == pytest.approx(1 / 3) and top_k([], 1) is None
    assert hubness(["a", "b", "a", "a"]) == ("a", 0.75) and hubness([]) == (None, None)


def test_external_metrics_are_not_computed_without_weights_and_never_faked(images, tmp_path):
    out = external_metrics(images, images)
    assert set(out) == set(EXTERNAL_METRICS) and all(v.startswith("not computed") for v in out.values())
    with pytest.raises(FileNotFoundError, match="alexnet2"):
        external_metrics(images, images, {"alexnet2": tmp_path / "missing.pth"})
    with pytest.raises(ValueError, match="unknown"):
        external_metrics(images, images, {"vgg": tmp_path})


def test_an_alexnet_weights_file_gives_a_two_way_score(images, tmp_path):
    import torch

    from rtrecon._compat import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    torch.save(tv.models.alexnet(weights=None).state_dict(), tmp_path / "alexnet.pth")
    out = external_metrics(images, images, {"alexnet2": tmp_path / "alexnet.pth"})
    assert out["alexnet2"] == 1.0 and out["alexnet5"].startswith("not computed")
    shuffled = external_metrics(list(images), list(np.roll(images, 1, 0)), {"alexnet2": tmp_path / "alexnet.pth"})
    assert shuffled["alexnet2"] < 0.9
