"""Load official (and rtrecon-trained) MindEye2 checkpoints, inferring the architecture.

``load_official(source, *, new_subject_voxels=None, keep_pretrained_subjects=False, dtype=None,
device=None)`` returns a :class:`~rtrecon.models.mindeye.MindEye2` in eval mode.

``source`` may be:

- the official ``train_logs/<model>/last.pth`` (a dict with ``model_state_dict``), or any
  ``torch.save``-d dict with ``model_state_dict`` / ``state_dict``, or a bare state dict;
- a ``.safetensors`` file;
- an in-memory ``dict[str, Tensor]``.

The configuration (hidden size, voxel counts per subject, tokens, CLIP width, number of blocks,
blurry branch, prior depth/heads/head width/rotary width/buckets/timesteps) is inferred from the
keys and shapes (:func:`infer_config`), and the weights are loaded **strictly**: any missing,
unexpected or mis-shaped key is an error naming the source. ``module.`` and ``_orig_mod.``
prefixes left by DDP / ``torch.compile`` are removed first.

Memory: ``.pth`` files are memory-mapped, the model is built on the ``meta`` device and the
tensors are assigned, not copied into a randomly initialised model; ``dtype``/``device`` then
convert tensor by tensor. The noise schedule and rotary frequencies stay in float32 (as under the
official fp16 autocast), everything else takes ``dtype``.

New participant (the official fine-tuning path, ``load_ckpt(multisubj_loading=True)``):
``new_subject_voxels=N`` builds a one-subject model with a freshly initialised ``N``-voxel adapter,
drops every pretrained adapter and loads the rest; as upstream, the new adapter's *bias* is copied
from the checkpoint's first adapter. With ``keep_pretrained_subjects=True`` the pretrained
adapters are kept and the new one is appended (its index is ``model.config.n_subjects - 1``).

``save_checkpoint(model, path)`` writes the official layout (``{'model_state_dict': ...,
'config': ...}``) or, for a ``.safetensors`` path, a safetensors file with the configuration in
its metadata.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtrecon.models.config import MindEye2Config
from rtrecon.models.mindeye import MindEye2
from rtrecon.models.prior import RotaryEmbedding
from rtrecon.models.schedulers import NoiseScheduler

__all__ = ["load_official", "infer_config", "read_state_dict", "save_checkpoint", "cast_model"]

StateDict = dict[str, torch.Tensor]
_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefixes(sd: Mapping[str, torch.Tensor]) -> StateDict:
    out = {}
    for key, value in sd.items():
        for prefix in _PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> StateDict:
    """The MindEye2 state dict inside ``source`` (path or mapping), prefixes removed."""
    name = "<in-memory state dict>"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint file")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    else:
        obj = source
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: expected a state dict or a dict holding 'model_state_dict', got {type(obj).__name__}")
    for key in ("model_state_dict", "state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"{name}: holds no tensors (keys: {sorted(obj)[:10]})")
    return _strip_prefixes(sd)


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _get(sd: Mapping[str, torch.Tensor], key: str, name: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{name}: not a MindEye2 checkpoint, key {key!r} is missing")
    return sd[key]


def infer_config(sd: Mapping[str, torch.Tensor], name: str = "<state dict>") -> MindEye2Config:
    """Rebuild the :class:`MindEye2Config` of a state dict from its keys and shapes."""
    subjects = _indices(sd, r"ridge\.linears\.(\d+)\.weight$")
    if subjects != list(range(len(subjects))) or not subjects:
        raise KeyError(f"{name}: expected ridge.linears.0..N-1.weight, found subject indices {subjects}")
    n_voxels = tuple(int(sd[f"ridge.linears.{s}.weight"].shape[1]) for s in subjects)
    hidden = int(sd["ridge.linears.0.weight"].shape[0])
    n_blocks = len(_indices(sd, r"backbone\.mixer_blocks1\.(\d+)\.0\.weight$"))
    seq_len = int(_get(sd, "backbone.mixer_blocks2.0.0.weight", name).shape[0])
    clip_dim = int(_get(sd, "backbone.clip_proj.2.weight", name).shape[0])
    out_dim = int(_get(sd, "backbone.backbone_linear.weight", name).shape[0])
    if out_dim % clip_dim:
        raise ValueError(f"{name}: backbone_linear output {out_dim} is not a multiple of the CLIP width {clip_dim}")
    fields: dict[str, Any] = dict(
        n_voxels=n_voxels, hidden_dim=hidden, n_blocks=n_blocks, seq_len=seq_len, clip_dim=clip_dim,
        clip_tokens=out_dim // clip_dim, blurry="backbone.blin1.weight" in sd,
        use_prior="diffusion_prior.net.learned_query" in sd,
    )
    if fields["use_prior"]:
        p = "diffusion_prior.net."
        layer = p + "causal_transformer.layers.0."
        dim = int(sd[p + "learned_query"].shape[1])
        if dim != clip_dim:
            raise ValueError(f"{name}: prior width {dim} differs from the CLIP width {clip_dim}")
        dim_head = int(_get(sd, layer + "0.null_kv", name).shape[1])
        fields.update(
            prior_depth=len(_indices(sd, r"diffusion_prior\.net\.causal_transformer\.layers\.(\d+)\.0\.null_kv$")),
            prior_dim_head=dim_head,
            prior_heads=int(_get(sd, layer + "0.to_q.weight", name).shape[0]) // dim_head,
            prior_timesteps=int(_get(sd, "diffusion_prior.noise_scheduler.betas", name).shape[0]),
            prior_ff_mult=int(_get(sd, layer + "1.1.weight", name).shape[0]) // (2 * dim),
            prior_time_mlp_mult=int(_get(sd, p + "to_time_embeds.0.1.net.0.0.weight", name).shape[0]) // dim,
            prior_rotary_dim=2 * int(_get(sd, layer + "0.rotary_emb.freqs", name).numel()),
            prior_rel_pos_buckets=int(
                _get(sd, p + "causal_transformer.rel_pos_bias.relative_attention_bias.weight", name).shape[0]
            ),
        )
    return MindEye2Config(**fields)


def cast_model(model: nn.Module, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> nn.Module:
    """Move/cast tensor by tensor; the noise schedule and rotary frequencies stay float32.

    Every other tensor takes ``dtype``: a half model then runs its residual stream, LayerNorms
    (dalle2's eps 1e-3 everywhere) and sampling noise in half precision. That is not the official
    numerics; :class:`rtrecon.runtime.device.Placement` (``fp16-autocast``) is.
    """
    keep_fp32 = (NoiseScheduler, RotaryEmbedding)
    for module in model.modules():
        target = None if isinstance(module, keep_fp32) else dtype
        for name, param in module.named_parameters(recurse=False):
            new = param.data.to(device=device, dtype=target if param.is_floating_point() else None)
            module._parameters[name] = nn.Parameter(new, requires_grad=param.requires_grad)
        for name, buf in module.named_buffers(recurse=False):
            module._buffers[name] = buf.to(device=device, dtype=target if buf.is_floating_point() else None)
    return model


def load_official(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    new_subject_voxels: int | None = None,
    keep_pretrained_subjects: bool = False,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> MindEye2:
    """A :class:`MindEye2` with the architecture and weights of ``source`` (strict), in eval mode."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<in-memory state dict>"
    sd = read_state_dict(source)
    config = infer_config(sd, name)
    new_ridge: nn.Linear | None = None
    if new_subject_voxels is not None:
        if keep_pretrained_subjects:
            config = config.replace(n_voxels=(*config.n_voxels, int(new_subject_voxels)))
            new_ridge = nn.Linear(int(new_subject_voxels), config.hidden_dim)
        else:
            first_bias = sd["ridge.linears.0.bias"]
            sd = {k: v for k, v in sd.items() if not k.startswith("ridge.")}
            config = config.replace(n_voxels=(int(new_subject_voxels),))
            new_ridge = nn.Linear(int(new_subject_voxels), config.hidden_dim)
            with torch.no_grad():
                new_ridge.bias.copy_(first_bias.to(new_ridge.bias.dtype))
    with torch.device("meta"):
        model = MindEye2(config)
    new_index = config.n_subjects - 1
    if new_ridge is not None:
        # the new adapter is the only tensor not in the checkpoint: materialise it now
        model.ridge.linears[new_index] = new_ridge
        for k in model.ridge.linears[new_index].state_dict():
            sd[f"ridge.linears.{new_index}.{k}"] = getattr(new_ridge, k).data
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise RuntimeError(f"{name}: does not match the inferred MindEye2 architecture: {exc}") from None
    cast_model(model, dtype, device)
    return model.eval()


def save_checkpoint(model: MindEye2, path: str | os.PathLike, **extra: Any) -> Path:
    """Save ``model`` as an official-layout ``.pth`` (or ``.safetensors``) that :func:`load_official` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    config = model.config.to_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        seen: set[int] = set()
        flat = {}
        for key, value in sd.items():
            ptr = value.untyped_storage().data_ptr()
            # shared tensors (the rotary frequencies) must be distinct objects in safetensors
            flat[key] = value.detach().clone().contiguous() if ptr in seen else value.detach().contiguous()
            seen.add(ptr)
        save_file(flat, str(path), metadata={"format": "pt", "rtrecon_mindeye2_config": json.dumps(config)})
    else:
        torch.save({"model_state_dict": sd, "config": config, **extra}, path)
    return path
