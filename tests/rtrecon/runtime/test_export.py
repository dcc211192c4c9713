"""rtrecon.runtime.export: ONNX graphs of the encoder and of the prior step."""

import json

import onnx
import pytest
import torch

from rtrecon.models import MindEye2, MindEye2Config
from rtrecon.runtime.export import EncoderGraph, PriorStepGraph, export_encoder, export_prior_step


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MindEye2(MindEye2Config.tiny(n_voxels=(50, 30))).eval()


def test_encoder_graph_equals_encode(model):
    x = torch.randn(2, 30)
    tokens, clip_voxels, norm = EncoderGraph(model, 1)(x)
    ref = model.encode(x, 1)
    torch.testing.assert_close(tokens, ref.backbone)
    torch.testing.assert_close(norm, ref.clip_voxels_norm)


def test_written_graphs_carry_their_metadata(tmp_path, model):
    enc = onnx.load(str(export_encoder(model, tmp_path / "enc.onnx", subject=1)))
    meta = {p.key: p.value for p in enc.metadata_props}
    assert meta["rtrecon_kind"] == "encoder" and json.loads(meta["rtrecon_subject"]) == 1
    assert json.loads(meta["rtrecon_config"])["n_voxels"] == [50, 30]
    assert [i.name for i in enc.graph.input] == ["voxels"]
    assert enc.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 30
    prior = onnx.load(str(export_prior_step(model, tmp_path / "p.onnx", guidance=True)))
    assert [i.name for i in prior.graph.input] == ["image_embed", "timesteps", "brain_embed", "cond_scale"]
    onnx.checker.check_model(prior)


def test_guided_step_graph_matches_forward_with_cond_scale(model):
    x, b, t = torch.randn(2, 4, 16), torch.randn(2, 4, 16), torch.tensor([2, 9])
    with torch.no_grad():
        got = PriorStepGraph(model, guidance=True)(x, t, b, torch.tensor(2.5))
        ref = model.prior.net.forward_with_cond_scale(x, t, b, 2.5)
    torch.testing.assert_close(got, ref)
