"""Tests for rtrecon.data.brains (anatomy, ROI and voxel tuning)."""

from __future__ import annotations

import numpy as np
import pytest

from rtrecon.data import brains


@pytest.fixture(scope="module")
def anatomy() -> brains.Anatomy:
    return brains.make_anatomy((22, 26, 22), 5.0, 400, np.random.default_rng(0))


def test_anatomy_has_tissue_contrast_and_a_posterior_cortical_roi(anatomy: brains.Anatomy) -> None:
    t, base, roi = anatomy.tissue, anatomy.baseline, anatomy.roi
    assert roi.dtype == np.int16 and set(np.unique(roi)) == {-1, 0, 1} and (roi > 0).sum() == 400
    assert (roi == -1).sum() == (~anatomy.brain).sum() and (base[~anatomy.brain] == 0).all()
    assert (t[roi > 0] == brains.GREY).all()
    means = {k: base[t == k].mean() for k in (brains.CSF, brains.GREY, brains.WHITE)}
    assert means[brains.CSF] > means[brains.GREY] > means[brains.WHITE]
    # Posterior = high y index (NSD orientation: the y axis runs anterior → posterior).
    grey_y = np.nonzero(t == brains.GREY)[1]
    assert np.nonzero(roi > 0)[1].mean() > grey_y.mean() + 3
    # The affine maps the grid centre to the world origin with the NSD axis signs.
    centre = anatomy.affine @ np.append((np.asarray(anatomy.shape) - 1) / 2, 1)
    np.testing.assert_allclose(centre[:3], 0, atol=1e-9)
    assert anatomy.affine[0, 0] < 0 and anatomy.affine[1, 1] < 0 and anatomy.affine[2, 2] > 0


def test_subjects_differ_and_too_large_rois_are_refused() -> None:
    a = brains.make_anatomy((20, 24, 20), 5.0, 200, np.random.default_rng(1))
    b = brains.make_anatomy((20, 24, 20), 5.0, 200, np.random.default_rng(2))
    assert a.brain.sum() != b.brain.sum()
    with pytest.raises(ValueError, match="cortical voxels"):
        brains.make_anatomy((10, 10, 10), 5.0, 10_000, np.random.default_rng(0))


def test_lowlevel_features_see_contrast_and_colour_where_they_are() -> None:
    img = np.full((2, 64, 64, 3), 128, np.uint8)
    img[0, 8:24, 8:24] = np.where((np.indices((16, 16)).sum(0) % 2)[..., None], 255, 0)  # checker, top-left
    img[1, 40:56, 40:56] = (255, 0, 0)  # red, bottom-right
    f = brains.lowlevel_features(img, grid=8)
    assert f.shape == (2, 3, 8, 8)
    assert f[0, 0, 1:3, 1:3].mean() > 5 * f[0, 0, 5:7, 5:7].mean() + 1e-3
    assert f[1, 1, 5:7, 5:7].mean() > 0.5 and abs(f[1, 1, 1:3, 1:3]).max() < 1e-6


def test_embedding_features_are_whitened_principal_components() -> None:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((50, 4, 6)) * np.linspace(3, 0.1, 24).reshape(4, 6)
    feats = brains.embedding_features(emb, 5)
    assert feats.shape == (50, 5)
    np.testing.assert_allclose(feats.T @ feats / 50, np.eye(5), atol=1e-4)
    np.testing.assert_allclose(feats.mean(0), 0, atol=1e-5)


def test_voxels_respond_to_their_prf_and_to_the_shared_features(anatomy: brains.Anatomy) -> None:
    rng = np.random.default_rng(4)
    tuning = brains.make_tuning(anatomy, 8, 20, rng)
    v = len(anatomy.roi_index)
    assert tuning.high_level.sum() == pytest.approx(0.6 * v, abs=2) and tuning.hrf_index.max() < 20
    # Low-level voxels lie posterior to high-level ones (early visual cortex at the back).
    y = np.unravel_index(anatomy.roi_index, anatomy.shape)[1]
    assert y[~tuning.high_level].mean() > y[tuning.high_level].mean()
    n = 200
    low = rng.random((n, 3, 16, 16)).astype(np.float32)
    feats = rng.standard_normal((n, 8)).astype(np.float32)
    resp = tuning.responses(low, feats)
    assert resp.shape == (n, v)
    np.testing.assert_allclose(resp.mean(0), tuning.amplitude, rtol=1e-4)
    high = np.flatnonzero(tuning.high_level)[:20]
    for i in high:
        assert np.corrcoef(resp[:, i], feats @ tuning.weights[i])[0, 1] > 0.999
    # A low-level voxel follows contrast inside its pRF, not outside it.
    i = int(np.flatnonzero(~tuning.high_level & (tuning.channel == 0) & (tuning.prf[:, 2] < 0.12))[0])
    cx, cy = (tuning.prf[i, :2] * 16).astype(int).clip(0, 15)
    inside, outside = low.copy(), low.copy()
    inside[:, 0, cy, cx] += 5.0
    outside[:, 0, (cy + 8) % 16, (cx + 8) % 16] += 5.0
    both = np.concatenate([inside[:1], outside[:1], low[1:]])
    r = tuning.responses(both, np.concatenate([feats[:1], feats[:1], feats[1:]]))
    assert r[0, i] > r[1, i]
