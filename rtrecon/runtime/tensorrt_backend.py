"""TensorRT engines built from the exported ONNX graphs (optional; imported lazily).

TensorRT is not installable in this workplace (its libraries come only from NVIDIA's index), so
nothing here runs in the test suite; the code follows TensorRT 10's documented Python API.

- ``build_engine(onnx_path, engine_path, fp16=True, batch=(1, 1, 8))``: parse the ONNX, add one
  optimisation profile over the dynamic batch axis (min, opt, max), build and serialise the engine.
- ``TrtRunner(engine_path)``: ``runner(**inputs)`` with CUDA torch tensors -> dict of CUDA torch
  outputs (enqueued on the current torch stream).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["build_engine", "TrtRunner", "import_tensorrt"]


def import_tensorrt() -> Any:
    """``tensorrt``, or an ImportError that says how to get it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise ImportError(
            "the TensorRT backend needs NVIDIA TensorRT >= 10 (pip install tensorrt from NVIDIA's index, "
            "with a CUDA GPU); use the ONNX Runtime backend otherwise"
        ) from exc
    return tensorrt


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, fp16: bool = True,
                 batch: tuple[int, int, int] = (1, 1, 8), workspace_gb: float = 4.0) -> Path:
    """Build a serialised TensorRT engine with one batch-axis optimisation profile."""
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        if shape and shape[0] == -1:
            shapes = [tuple([b, *shape[1:]]) for b in batch]
            profile.set_shape(tensor.name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT engine build failed")
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class TrtRunner:
    """Execute a serialised engine on CUDA torch tensors."""

    _DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32,
               "BF16": torch.bfloat16}

    def __init__(self, engine_path: str | os.PathLike) -> None:
        trt = import_tensorrt()
        self._trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        for name in self.inputs:
            tensor = feeds[name].contiguous()
            feeds[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            dtype = self._DTYPES[self.engine.get_tensor_dtype(name).name]
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outputs
