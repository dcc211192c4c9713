"""rtrecon.reconstruction.vae: the SDXL KL autoencoder and the tiny autoencoder option."""

from __future__ import annotations

import pytest
import torch

from rtrecon.reconstruction.config import TINY
from rtrecon.reconstruction.vae import build_tiny_autoencoder, build_vae, load_tiny_autoencoder, load_vae


def test_official_vae_has_the_manifest_parameter_count(manifest, official_meta_models):
    vae = official_meta_models[1]
    assert sum(v.numel() for v in vae.state_dict().values()) == manifest["counts"]["by_prefix"]["first_stage_model."]["numel"]
    assert vae.config.scaling_factor == 0.13025


def test_tiny_vae_and_tiny_autoencoder_decode_latents_to_images(tmp_path):
    torch.manual_seed(0)
    vae, taesd = build_vae(TINY), build_tiny_autoencoder()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert vae.decode(z).sample.shape == (1, 3, 64, 64)
        assert taesd.decode(z).sample.shape == (1, 3, 64, 64)
    taesd.save_pretrained(tmp_path / "taesd")
    vae.save_pretrained(tmp_path / "vae")
    assert torch.equal(load_tiny_autoencoder(tmp_path / "taesd").state_dict()["decoder.layers.0.weight"], taesd.state_dict()["decoder.layers.0.weight"])
    assert load_vae(tmp_path / "vae").config.block_out_channels == vae.config.block_out_channels


def test_missing_folders_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_vae(tmp_path)
    with pytest.raises(FileNotFoundError, match="AutoencoderTiny"):
        load_tiny_autoencoder(tmp_path)
