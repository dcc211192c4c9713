"""The ridge decoding head against the closed-form ridge solution."""

from __future__ import annotations

import numpy as np
import pytest

from rtrecon.models.linear_head import LinearHead


def test_the_fit_is_the_closed_form_ridge_on_z_scored_voxels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 30)) * rng.uniform(0.5, 3, 30) + rng.uniform(-2, 2, 30)
    w = rng.standard_normal((30, 4, 2))
    y = np.einsum("nv,vab->nab", x, w) + 0.5 * rng.standard_normal((120, 4, 2))
    head = LinearHead(alphas=[10.0]).fit(x, y)
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    yc = y.reshape(120, -1) - y.reshape(120, -1).mean(0)
    reference = np.linalg.solve(z.T @ z + 10.0 * np.eye(30), z.T @ yc)
    np.testing.assert_allclose(head.weights, reference, rtol=1e-8, atol=1e-10)
    new = rng.standard_normal((5, 30))
    expected = ((new - x.mean(0)) / (x.std(0) + 1e-8)) @ reference + y.reshape(120, -1).mean(0)
    np.testing.assert_allclose(head.predict(new), expected.reshape(5, 4, 2), rtol=1e-5, atol=1e-5)


def test_cross_validation_penalises_more_where_the_targets_are_noisier():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 50))
    signal = x @ rng.standard_normal((50, 20))
    clean = LinearHead().fit(x, signal)
    noisy = LinearHead().fit(x, signal + 20 * rng.standard_normal((200, 20)))
    assert clean.alpha <= 1.0 and noisy.alpha > 10 * clean.alpha
    with pytest.raises(ValueError, match="too few"):
        LinearHead(folds=5).fit(x[:6], x[:6])
    with pytest.raises(RuntimeError, match="fit the head first"):
        LinearHead().predict(x)


def test_a_saved_head_predicts_what_it_predicted_before(tmp_path):
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((60, 12)), rng.standard_normal((60, 3, 2))
    head = LinearHead().fit(x, y)
    path = head.save(tmp_path / "head.npz")
    back = LinearHead.load(path)
    new = rng.standard_normal((4, 12))
    np.testing.assert_array_equal(back.predict(new), head.predict(new))
    assert back.alpha == head.alpha and back.cv_scores == head.cv_scores and back.n_voxels == 12
    # the intercept the engine retrieves around: the training targets' mean, flattened
    np.testing.assert_allclose(back.target_mean, y.reshape(60, -1).mean(0))
    np.savez(tmp_path / "other.npz", embeddings=y)
    with pytest.raises(ValueError, match=r"other.npz: not a linear head file \(no weights"):
        LinearHead.load(tmp_path / "other.npz")
