"""Export MindEye2's inference graphs to ONNX.

- :func:`export_encoder`: one subject's adapter + backbone + retrieval head,
  ``voxels (B, n_vox) -> backbone (B,S,D), clip_voxels (B,S,D), clip_voxels_norm (B,S*D)``.
- :func:`export_adapter` + :func:`export_backbone`: the same split in two, ``voxels -> hidden
  (B, h)`` per subject and ``hidden -> backbone, clip_voxels, clip_voxels_norm`` once for all
  subjects (ONNX Runtime chains them: ``OrtEncoder.from_parts``).
- :func:`export_prior_step`: one prior-network call,
  ``image_embed (B,S,D), timesteps (B,) int64, brain_embed (B,S,D) -> pred_x0 (B,S,D)``; with
  ``guidance=True`` it also takes a scalar ``cond_scale`` and returns the classifier-free-guided
  prediction (conditional and null branches in one graph).

The batch axis is dynamic. The model's configuration, the subject and the graph kind are stored in
the ONNX metadata (``rtrecon_kind``, ``rtrecon_config``, ``rtrecon_subject``), so a runtime can
rebuild the noise schedule and check inputs without the torch model.

The TorchScript-based exporter (``dynamo=False``) is used: it needs no extra package and handles
every operator here.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rtrecon.models.mindeye import MindEye2

__all__ = [
    "export_encoder", "export_adapter", "export_backbone", "export_prior_step",
    "EncoderGraph", "AdapterGraph", "BackboneGraph", "PriorStepGraph", "OPSET",
]

OPSET = 17


class EncoderGraph(nn.Module):
    """Adapter + backbone + retrieval head of one subject, as a plain tensor-in/tensor-out module."""

    def __init__(self, model: MindEye2, subject: int) -> None:
        super().__init__()
        self.ridge = model.ridge.linears[subject]
        self.backbone = model.backbone

    def forward(self, voxels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = self.backbone.mixer(self.ridge(voxels)[:, None])
        tokens = self.backbone.tokens(hidden)
        clip_voxels = self.backbone.clip_proj(tokens)
        return tokens, clip_voxels, F.normalize(clip_voxels.flatten(1), dim=-1)


class AdapterGraph(nn.Module):
    """One subject's adapter: ``voxels (B, n_vox) -> hidden (B, h)``."""

    def __init__(self, model: MindEye2, subject: int) -> None:
        super().__init__()
        self.ridge = model.ridge.linears[subject]

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return self.ridge(voxels)


class BackboneGraph(nn.Module):
    """The shared part: ``hidden (B, h) -> backbone, clip_voxels, clip_voxels_norm``."""

    def __init__(self, model: MindEye2) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens = self.backbone.tokens(self.backbone.mixer(hidden[:, None]))
        clip_voxels = self.backbone.clip_proj(tokens)
        return tokens, clip_voxels, F.normalize(clip_voxels.flatten(1), dim=-1)


class PriorStepGraph(nn.Module):
    """One prior-network call, optionally classifier-free guided."""

    def __init__(self, model: MindEye2, guidance: bool = False) -> None:
        super().__init__()
        self.net = model.prior.net
        self.guidance = guidance

    def forward(self, image_embed: torch.Tensor, timesteps: torch.Tensor, brain_embed: torch.Tensor,
                cond_scale: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.net(image_embed, timesteps, brain_embed)
        if not self.guidance:
            return cond
        null = self.net(image_embed, timesteps, brain_embed, brain_cond_drop_prob=1.0, image_cond_drop_prob=1.0)
        return null + (cond - null) * cond_scale


def _metadata(model: MindEye2, kind: str, **extra: object) -> dict[str, str]:
    meta = {"rtrecon_kind": kind, "rtrecon_config": json.dumps(model.config.to_dict())}
    meta.update({f"rtrecon_{k}": json.dumps(v) for k, v in extra.items()})
    return meta


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
            dynamic: dict[str, dict[int, str]], metadata: dict[str, str]) -> Path:
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=dynamic,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    # Appending a serialised ModelProto that holds only metadata_props is a protobuf merge:
    # the repeated field is extended without re-reading and re-writing gigabytes of weights.
    extra = onnx.ModelProto()
    for key, value in metadata.items():
        entry = extra.metadata_props.add()
        entry.key, entry.value = key, value
    with open(path, "ab") as fh:
        fh.write(extra.SerializeToString())
    return path


def export_encoder(model: MindEye2, path: str | os.PathLike, subject: int = 0) -> Path:
    """Write subject ``subject``'s voxels -> tokens + retrieval graph to ``path``."""
    n_vox = model.ridge.linears[subject].in_features
    param = next(model.parameters())
    example = torch.zeros(1, n_vox, dtype=param.dtype, device=param.device)
    return _export(
        EncoderGraph(model, subject), (example,), Path(path), ["voxels"],
        ["backbone", "clip_voxels", "clip_voxels_norm"],
        {name: {0: "batch"} for name in ("voxels", "backbone", "clip_voxels", "clip_voxels_norm")},
        _metadata(model, "encoder", subject=subject),
    )


def export_adapter(model: MindEye2, path: str | os.PathLike, subject: int = 0) -> Path:
    """Write subject ``subject``'s adapter (``voxels -> hidden``) to ``path``."""
    lin = model.ridge.linears[subject]
    example = torch.zeros(1, lin.in_features, dtype=lin.weight.dtype, device=lin.weight.device)
    return _export(AdapterGraph(model, subject), (example,), Path(path), ["voxels"], ["hidden"],
                   {"voxels": {0: "batch"}, "hidden": {0: "batch"}}, _metadata(model, "adapter", subject=subject))


def export_backbone(model: MindEye2, path: str | os.PathLike) -> Path:
    """Write the shared backbone + retrieval head (``hidden -> tokens``) to ``path``.

    With :func:`export_adapter` this serves any number of subjects from one copy of the
    backbone's weights (1.8 GB at h=1024), and exports each new subject in seconds.
    """
    param = model.backbone.backbone_linear.weight
    example = torch.zeros(1, model.config.hidden_dim, dtype=param.dtype, device=param.device)
    outputs = ["backbone", "clip_voxels", "clip_voxels_norm"]
    return _export(BackboneGraph(model), (example,), Path(path), ["hidden"], outputs,
                   {name: {0: "batch"} for name in ["hidden", *outputs]}, _metadata(model, "backbone"))


def export_prior_step(model: MindEye2, path: str | os.PathLike, guidance: bool = False) -> Path:
    """Write one prior-network call (``guidance=True``: with a ``cond_scale`` input) to ``path``."""
    cfg = model.config
    param = next(model.prior.net.parameters())
    x = torch.zeros(1, cfg.clip_tokens, cfg.clip_dim, dtype=param.dtype, device=param.device)
    t = torch.zeros(1, dtype=torch.long, device=param.device)
    args: tuple = (x, t, x)
    inputs = ["image_embed", "timesteps", "brain_embed"]
    if guidance:
        args += (torch.tensor(1.0, dtype=param.dtype, device=param.device),)
        inputs.append("cond_scale")
    dynamic = {name: {0: "batch"} for name in ("image_embed", "timesteps", "brain_embed", "pred_x0")}
    return _export(PriorStepGraph(model, guidance), args, Path(path), inputs, ["pred_x0"], dynamic,
                   _metadata(model, "prior_step", guidance=guidance))
