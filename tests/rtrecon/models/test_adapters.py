"""rtrecon.models.adapters: per-subject ridge adapters."""

import pytest
import torch

from rtrecon.models.adapters import RidgeRegression


def test_reproduces_the_official_ridge(official):
    fx = official("tiny_fixture")
    out = fx.model.ridge(fx.inputs["voxels"], 0)
    torch.testing.assert_close(out, fx.outputs["voxel_ridge"], atol=1e-5, rtol=0)


def test_accepts_flat_and_token_inputs_and_checks_sizes():
    ridge = RidgeRegression([7, 9], hidden_dim=5)
    x = torch.randn(3, 9)
    assert ridge(x, 1).shape == (3, 1, 5)
    torch.testing.assert_close(ridge(x, 1), ridge(x[:, None], 1))
    with pytest.raises(ValueError, match=r"subject 0 expects voxels of shape \(B, 7\)"):
        ridge(x, 0)
    with pytest.raises(IndexError, match="2 adapters"):
        ridge(x, 2)


def test_add_subject_appends_a_new_adapter():
    ridge = RidgeRegression([7], hidden_dim=5).to(torch.float64)
    idx = ridge.add_subject(11)
    assert idx == 1 and ridge.n_voxels == (7, 11)
    assert ridge.linears[1].weight.dtype == torch.float64
    assert set(ridge.state_dict()) == {f"linears.{s}.{p}" for s in (0, 1) for p in ("weight", "bias")}
