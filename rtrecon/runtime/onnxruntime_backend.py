"""Run exported MindEye2 graphs with ONNX Runtime (CPU; CUDA / TensorRT execution providers if installed).

- ``OrtEncoder(path)`` (fused graph) or ``OrtEncoder.from_parts(adapter, backbone)``:
  ``encoder(voxels) -> {"backbone", "clip_voxels", "clip_voxels_norm"}`` (numpy in, numpy out;
  torch tensors are accepted too).
- ``OrtPrior(path, scheduler=None)``: ``prior.step(x_t, t, brain)`` is one network call;
  ``prior.sample(brain, steps=20, generator=...)`` runs the same DDIM/DDPM loop as the torch
  model (:mod:`rtrecon.models.schedulers`) around the ONNX network. The noise schedule is rebuilt
  from the graph's metadata unless the model's own ``noise_scheduler`` is given.
- ``quantize_dynamic(src, dst)``: int8 dynamic quantisation of the weights (MatMul/Gemm), the
  documented option for memory-bound CPU inference; it trades ~1 % error for ~4x less weight traffic.
- ``default_providers()``: CUDA first when ONNX Runtime was built with it, else CPU.

Execution providers can be chosen with ``providers=[...]``; ``threads`` sets intra-op threads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtrecon.models.config import MindEye2Config
from rtrecon.models.schedulers import NoiseScheduler, ddim_sample, ddpm_sample, randn_source

__all__ = ["OrtEncoder", "OrtPrior", "default_providers", "quantize_dynamic", "session"]


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
            *, spinning: bool = False) -> Any:
    """An ``onnxruntime.InferenceSession`` with full graph optimisation.

    Its intra-op threads sleep when out of work unless ``spinning``: ONNX Runtime's default
    busy-waiting keeps a core spinning after each run, and with an adapter and a backbone session
    chained (or beside the engine's realignment) the spinning threads take the cores the next
    run needs. Measured on 2 cores (h=1024 encoder, 2 threads, 8 interleaved rounds): 124 ms per
    call sleeping, 158 ms spinning, against 188 ms for torch eager.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX model")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers or default_providers())


def _metadata(sess: Any, path: Path, kind: str) -> dict[str, Any]:
    meta = sess.get_modelmeta().custom_metadata_map
    if meta.get("rtrecon_kind") != kind:
        raise ValueError(f"{path}: not an rtrecon {kind} graph (rtrecon_kind={meta.get('rtrecon_kind')!r})")
    return {k[len("rtrecon_") :]: json.loads(v) for k, v in meta.items() if k.startswith("rtrecon_") and k != "rtrecon_kind"}


def _np(x: Any, dtype: np.dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class OrtEncoder:
    """Voxels -> backbone tokens, retrieval tokens and normalised retrieval embedding.

    ``OrtEncoder(path)`` runs a fused encoder graph; ``OrtEncoder.from_parts(adapter, backbone)``
    chains a subject's adapter graph and a shared backbone graph (pass the same ``backbone``
    session to several subjects' encoders to hold its weights once).
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None,
                 *, backbone: Any | None = None) -> None:
        self.path = Path(path)
        self.session = session(self.path, providers, threads)
        kind = "adapter" if backbone is not None else "encoder"
        meta = _metadata(self.session, self.path, kind)
        self.config = MindEye2Config.from_dict(meta["config"])
        self.subject = int(meta["subject"])
        self.n_voxels = self.config.n_voxels[self.subject]
        self.backbone = backbone
        self._dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    @classmethod
    def from_parts(cls, adapter: str | os.PathLike, backbone: str | os.PathLike | Any,
                   providers: list[str] | None = None, threads: int | None = None) -> OrtEncoder:
        """Chain ``adapter`` (path) and ``backbone`` (path or an existing backbone session)."""
        if isinstance(backbone, (str, os.PathLike)):
            path = Path(backbone)
            backbone = session(path, providers, threads)
            _metadata(backbone, path, "backbone")
        return cls(adapter, providers, threads, backbone=backbone)

    def __call__(self, voxels: Any) -> dict[str, np.ndarray]:
        x = _np(voxels, self._dtype)
        if x.ndim == 3:
            x = x[:, 0]
        if x.ndim != 2 or x.shape[1] != self.n_voxels:
            raise ValueError(f"{self.path}: expects voxels of shape (B, {self.n_voxels}), got {x.shape}")
        sess, feeds = self.session, {"voxels": x}
        if self.backbone is not None:
            feeds = {"hidden": self.session.run(["hidden"], feeds)[0]}
            sess = self.backbone
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feeds)))


class OrtPrior:
    """The prior network under ONNX Runtime, with the torch samplers around it."""

    def __init__(self, path: str | os.PathLike, scheduler: NoiseScheduler | None = None,
                 providers: list[str] | None = None, threads: int | None = None) -> None:
        self.path = Path(path)
        self.session = session(self.path, providers, threads)
        meta = _metadata(self.session, self.path, "prior_step")
        self.config = MindEye2Config.from_dict(meta["config"])
        self.guidance = bool(meta["guidance"])
        self.scheduler = scheduler if scheduler is not None else NoiseScheduler(self.config.prior_timesteps)
        self._dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def step(self, image_embed: Any, timesteps: Any, brain_embed: Any, cond_scale: float = 1.0) -> np.ndarray:
        feeds = {
            "image_embed": _np(image_embed, self._dtype),
            "timesteps": _np(timesteps, np.int64).reshape(-1),
            "brain_embed": _np(brain_embed, self._dtype),
        }
        if self.guidance:
            feeds["cond_scale"] = np.asarray(cond_scale, dtype=self._dtype)
        elif cond_scale != 1.0:
            raise ValueError(f"{self.path}: exported without guidance; re-export with guidance=True for cond_scale != 1")
        return self.session.run(["pred_x0"], feeds)[0]

    def sample(self, brain_embed: Any, steps: int | None = 20, *, cond_scale: float = 1.0,
               generator: torch.Generator | None = None, eta: float = 1.0) -> torch.Tensor:
        brain = torch.as_tensor(_np(brain_embed, np.float32))
        total = self.scheduler.num_timesteps
        steps = total if steps is None else int(steps)
        noise = randn_source("cpu", torch.float32, generator)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.step(x, t, brain, cond_scale)).float()

        if steps < total:
            return ddim_sample(self.scheduler, denoise, tuple(brain.shape), steps, noise, eta=eta)
        return ddpm_sample(self.scheduler, denoise, tuple(brain.shape), noise)


def quantize_dynamic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """int8 dynamic quantisation of ``src``'s MatMul/Gemm weights (the rtrecon metadata is kept)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as _quantize

    src, dst = Path(src), Path(dst)
    big = any(src.parent.glob(src.name + "*.data")) or src.stat().st_size > 1.8e9
    _quantize(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
              use_external_data_format=big)
    return dst
