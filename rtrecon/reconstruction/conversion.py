"""The official sgm checkpoint (``unclip6_epoch0_step110000.ckpt``) to a diffusers unCLIP folder.

The key renaming is diffusers' own single-file machinery (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, the same code ``from_single_file`` runs for SD/SDXL files); this
module adds what makes the conversion trustworthy for this checkpoint:

- every ``model.diffusion_model.*`` and ``first_stage_model.*`` tensor must be used exactly once
  (diffusers' helpers skip unknown keys silently), and the converted set must equal the keys and
  shapes of the diffusers models built from :mod:`~rtrecon.reconstruction.config` (strict);
- the checkpoint is memory-mapped and the models are built on the ``meta`` device and filled by
  assignment, so converting the 10 GB UNet does not need twice its size in RAM.

``convert_unclip_checkpoint(ckpt, out_dir)`` writes ``unet/`` and ``vae/`` (safetensors), the
official ``scheduler/`` config and ``unclip.json`` (see :class:`~rtrecon.reconstruction.unclip.UnclipReconstructor`),
plus ``image_encoder/open_clip_visual.safetensors``: the OpenCLIP ViT-bigG/14 visual tower the
checkpoint also carries (``conditioner.embedders.0.model.visual.*``, open_clip key names), which
computes the tokens this reconstructor is conditioned on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from rtrecon.reconstruction.config import OFFICIAL, UnclipConfig

__all__ = [
    "CLIP_PREFIX",
    "UNET_PREFIX",
    "VAE_PREFIX",
    "ConversionError",
    "convert_unclip_checkpoint",
    "convert_unclip_state_dict",
    "load_sgm_state_dict",
]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0.model."


class ConversionError(ValueError):
    """The checkpoint does not match the unCLIP architecture it is converted to."""


def load_sgm_state_dict(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an sgm checkpoint (``.ckpt``/``.pt`` with a ``state_dict``, or ``.safetensors``).

    Pickled checkpoints are memory-mapped and read with ``weights_only=True``; a Lightning file
    whose extra entries need arbitrary classes is refused unless ``trust_pickle`` (only for a
    file from a source you trust: unpickling can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=not trust_pickle)
    except Exception as err:  # torch raises several types for a bad or foreign pickle
        hint = "" if trust_pickle else " (if the file is from a trusted source, retry with trust_pickle / --trust-pickle)"
        raise ConversionError(f"{path}: cannot read as a torch checkpoint: {err}{hint}") from err
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"{path}: no 'state_dict' of tensors in this checkpoint")
    return dict(state)


def _expected(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def _check(part: str, source: dict, converted: dict, expected: dict[str, torch.Size]) -> None:
    problems = []
    if not source:
        problems.append(f"no {part} keys in the checkpoint")
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong = sorted(k for k in set(expected) & set(converted) if tuple(converted[k].shape) != tuple(expected[k]))
    if len(converted) != len(source):
        problems.append(f"{len(source)} checkpoint tensors became {len(converted)} diffusers tensors (some were not mapped)")
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
    if wrong:
        problems.append(
            f"{len(wrong)} with the wrong shape, e.g. "
            + ", ".join(f"{k} {tuple(converted[k].shape)} != {tuple(expected[k])}" for k in wrong[:3])
        )
    if problems:
        raise ConversionError(f"{part}: " + "; ".join(problems))


def _meta_models(config: UnclipConfig):
    from rtrecon.reconstruction.unet import build_unet
    from rtrecon.reconstruction.vae import build_vae

    return build_unet(config, device="meta"), build_vae(config, device="meta")


def convert_unclip_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: UnclipConfig = OFFICIAL, *, models=None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(unet, vae) diffusers state dicts from an sgm ``state_dict``, checked key by key and shape by shape.

    ``models`` is an optional (unet, vae) pair of ``config`` to check against (built on the meta
    device when not given).
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    unet_model, vae_model = models or _meta_models(config)
    unet_source = {k: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    vae_source = {k: v for k, v in state_dict.items() if k.startswith(VAE_PREFIX)}
    unet = convert_ldm_unet_checkpoint(unet_source, config.unet_config())
    vae = convert_ldm_vae_checkpoint(vae_source, config.vae_config())
    _check("UNet", unet_source, unet, _expected(unet_model))
    _check("VAE", vae_source, vae, _expected(vae_model))
    return unet, vae


def convert_unclip_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    config: UnclipConfig = OFFICIAL,
    dtype: torch.dtype = torch.float32,
    trust_pickle: bool = False,
    image_encoder: bool = True,
) -> Path:
    """Convert the sgm checkpoint file into the unCLIP folder ``out_dir``; returns ``out_dir``."""
    from safetensors.torch import save_file

    from rtrecon.reconstruction.schedulers import make_scheduler
    from rtrecon.reconstruction.unclip import save_config

    out_dir = Path(out_dir)
    state = load_sgm_state_dict(checkpoint, trust_pickle=trust_pickle)
    models = _meta_models(config)
    try:
        converted = convert_unclip_state_dict(state, config, models=models)
    except ConversionError as err:
        raise ConversionError(f"{checkpoint}: {err}") from err

    for name, model, sd in zip(("unet", "vae"), models, converted):
        model.load_state_dict({k: v.to(dtype).contiguous() for k, v in sd.items()}, strict=True, assign=True)
        model.save_pretrained(out_dir / name, safe_serialization=True)
    make_scheduler("euler_edm", config.discretization).save_pretrained(out_dir / "scheduler")
    save_config(config, out_dir)

    clip = {k[len(CLIP_PREFIX) :]: v for k, v in state.items() if k.startswith(CLIP_PREFIX + "visual.")}
    if image_encoder and clip:
        (out_dir / "image_encoder").mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(dtype).contiguous() for k, v in clip.items()}, out_dir / "image_encoder" / "open_clip_visual.safetensors")
    return out_dir
