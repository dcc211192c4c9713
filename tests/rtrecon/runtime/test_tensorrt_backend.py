"""rtrecon.runtime.tensorrt_backend: lazy import; engine tests need TensorRT and a GPU."""

import importlib.util

import pytest
import torch

from rtrecon.runtime import tensorrt_backend

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-library message cannot be shown")
def test_missing_tensorrt_gives_an_actionable_error(tmp_path):
    with pytest.raises(ImportError, match="TensorRT"):
        tensorrt_backend.build_engine(tmp_path / "x.onnx", tmp_path / "x.engine")


@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT and a CUDA GPU are required")
def test_engine_matches_torch(tmp_path):
    from rtrecon.models import MindEye2, MindEye2Config
    from rtrecon.runtime.export import export_encoder

    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny()).eval()
    engine = tensorrt_backend.build_engine(export_encoder(model, tmp_path / "e.onnx"), tmp_path / "e.engine", fp16=False)
    runner = tensorrt_backend.TrtRunner(engine)
    x = torch.randn(2, 50)
    out = runner(voxels=x.cuda())
    torch.testing.assert_close(out["clip_voxels_norm"].cpu(), model.encode(x, 0).clip_voxels_norm, atol=1e-4, rtol=0)
