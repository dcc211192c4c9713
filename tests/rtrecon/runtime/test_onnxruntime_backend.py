"""rtrecon.runtime.onnxruntime_backend: parity of ONNX Runtime with torch (1e-4)."""

import numpy as np
import pytest
import torch

from rtrecon.models import MindEye2, MindEye2Config
from rtrecon.runtime.export import export_adapter, export_backbone, export_encoder, export_prior_step
from rtrecon.runtime.onnxruntime_backend import OrtEncoder, OrtPrior, default_providers, quantize_dynamic, session


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny(n_voxels=(50, 30))).eval()
    d = tmp_path_factory.mktemp("onnx")
    return model, {
        "enc": export_encoder(model, d / "enc.onnx", subject=1),
        "prior": export_prior_step(model, d / "prior.onnx"),
        "guided": export_prior_step(model, d / "guided.onnx", guidance=True),
        "adapters": [export_adapter(model, d / f"adapter{s}.onnx", s) for s in (0, 1)],
        "backbone": export_backbone(model, d / "backbone.onnx"),
        "dir": d,
    }


def test_encoder_parity(exported):
    model, paths = exported
    enc = OrtEncoder(paths["enc"])
    assert enc.subject == 1 and enc.n_voxels == 30
    x = torch.randn(3, 30)
    out = enc(x)
    ref = model.encode(x, 1)
    for key in ("backbone", "clip_voxels", "clip_voxels_norm"):
        np.testing.assert_allclose(out[key], getattr(ref, key).detach().numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"enc\.onnx: expects voxels of shape \(B, 30\)"):
        enc(np.zeros((1, 50), np.float32))


def test_shared_backbone_serves_every_subject(exported):
    model, paths = exported
    shared = session(paths["backbone"])
    for subject, n_vox in enumerate((50, 30)):
        enc = OrtEncoder.from_parts(paths["adapters"][subject], shared)
        assert enc.backbone is shared and enc.n_voxels == n_vox
        x = torch.randn(2, n_vox)
        ref = model.encode(x, subject).clip_voxels_norm.detach().numpy()
        np.testing.assert_allclose(enc(x)["clip_voxels_norm"], ref, atol=1e-4, rtol=0)
    by_path = OrtEncoder.from_parts(paths["adapters"][0], paths["backbone"])
    assert set(by_path(np.zeros((1, 50), np.float32))) == {"backbone", "clip_voxels", "clip_voxels_norm"}
    with pytest.raises(ValueError, match="not an rtrecon backbone graph"):
        OrtEncoder.from_parts(paths["adapters"][0], paths["enc"])


def test_prior_step_and_sampling_parity(exported):
    model, paths = exported
    prior = OrtPrior(paths["prior"], model.prior.noise_scheduler)
    x, b, t = torch.randn(2, 4, 16), torch.randn(2, 4, 16), torch.tensor([0, 9])
    with torch.no_grad():
        np.testing.assert_allclose(prior.step(x, t, b), model.prior(x, t, b).numpy(), atol=1e-4, rtol=0)
        for steps in (5, None):  # DDIM and the full DDPM loop
            ref = model.prior.sample(b, steps=steps, generator=torch.Generator().manual_seed(2))
            got = prior.sample(b, steps=steps, generator=torch.Generator().manual_seed(2))
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="guidance=True"):
        prior.step(x, t, b, cond_scale=2.0)


def test_guided_prior_parity(exported):
    model, paths = exported
    guided = OrtPrior(paths["guided"])  # schedule rebuilt from the graph's metadata
    x, b, t = torch.randn(1, 4, 16), torch.randn(1, 4, 16), torch.tensor([5])
    with torch.no_grad():
        ref = model.prior.net.forward_with_cond_scale(x, t, b, 3.0).numpy()
    np.testing.assert_allclose(guided.step(x, t, b, cond_scale=3.0), ref, atol=1e-4, rtol=0)


def test_int8_quantisation_stays_close(exported):
    model, paths = exported
    q = OrtEncoder(quantize_dynamic(paths["enc"], paths["dir"] / "enc_int8.onnx"))
    x = torch.randn(4, 30)
    cos = (q(x)["clip_voxels_norm"] * model.encode(x, 1).clip_voxels_norm.detach().numpy()).sum(-1)
    assert cos.min() > 0.95


def test_wrong_graph_kind_and_missing_file(exported, tmp_path):
    _, paths = exported
    with pytest.raises(ValueError, match="not an rtrecon prior_step graph"):
        OrtPrior(paths["enc"])
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        OrtEncoder(tmp_path / "nope.onnx")
    assert default_providers()[-1] == "CPUExecutionProvider"


def test_sessions_sleep_between_runs_unless_asked_to_spin(exported):
    _, paths = exported
    key = "session.intra_op.allow_spinning"
    assert session(paths["enc"], threads=2).get_session_options().get_session_config_entry(key) == "0"
    assert session(paths["enc"], threads=2, spinning=True).get_session_options().get_session_config_entry(key) == "1"
    assert OrtEncoder(paths["enc"]).session.get_session_options().get_session_config_entry(key) == "0"
