"""Fixtures for the unCLIP reconstructor tests: the reference manifest and schedules, checkpoints built
from the manifest (full size on the meta device, and at 1/32 width with real random values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rtrecon.reconstruction.config import OFFICIAL, UnclipConfig

#: The official architecture at 1/32 of every width >= 128 (320 -> 10 channels, 1664 -> 52 token
#: width, 64 -> 2 channels per head, the same head counts and depths); GroupNorm groups shrink
#: with it since sgm's 32 no longer divides the channel counts.
REDUCED = OFFICIAL.replace(
    model_channels=10,
    num_head_channels=2,
    context_dim=52,
    adm_in_channels=32,
    size_embed_dim=8,
    norm_num_groups=5,
    vae_ch=4,
    vae_norm_num_groups=4,
    image_size=64,
)
REDUCTION = 32


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny models: one torch thread (tests/conftest.py says why)."""


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "mindeye2_reference"


@pytest.fixture(scope="session")
def manifest(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "unclip6_state_dict_manifest.json").read_text())


@pytest.fixture(scope="session")
def schedules(reference_dir: Path) -> dict:
    return json.loads((reference_dir / "schedules.json").read_text())


@pytest.fixture(scope="session")
def meta_checkpoint(manifest: dict) -> dict[str, torch.Tensor]:
    """Every tensor of the official checkpoint, with its shape, on the meta device."""
    return {e["key"]: torch.empty(e["shape"], device="meta") for e in manifest["entries"]}


def reduced_shape(shape: list[int]) -> list[int]:
    return [d // REDUCTION if d >= 128 else d for d in shape]


@pytest.fixture(scope="session")
def reduced_checkpoint(manifest: dict) -> dict[str, torch.Tensor]:
    """The UNet and VAE tensors of the official checkpoint at 1/32 width, random values."""
    gen = torch.Generator().manual_seed(0)
    return {
        e["key"]: torch.randn(reduced_shape(e["shape"]), generator=gen)
        for e in manifest["entries"]
        if e["key"].startswith(("model.diffusion_model.", "first_stage_model."))
    }


@pytest.fixture(scope="session")
def reduced_config() -> UnclipConfig:
    return REDUCED


@pytest.fixture(scope="session")
def official_meta_models():
    """The official (unet, vae) in diffusers, on the meta device (built once: ~2 s)."""
    from rtrecon.reconstruction.unet import build_unet
    from rtrecon.reconstruction.vae import build_vae

    return build_unet(OFFICIAL, device="meta"), build_vae(OFFICIAL, device="meta")


@pytest.fixture(scope="session")
def reduced_meta_models():
    from rtrecon.reconstruction.unet import build_unet
    from rtrecon.reconstruction.vae import build_vae

    return build_unet(REDUCED, device="meta"), build_vae(REDUCED, device="meta")
