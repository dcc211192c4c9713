"""rtrecon.reconstruction.unet: the unCLIP UNet in diffusers."""

from __future__ import annotations

import pytest
import torch

from rtrecon.reconstruction.config import TINY
from rtrecon.reconstruction.unet import build_unet, load_unet


def test_official_unet_has_the_manifest_parameter_count(manifest, official_meta_models):
    unet = official_meta_models[0]
    numel = sum(v.numel() for v in unet.state_dict().values())
    assert numel == manifest["counts"]["by_prefix"]["model.diffusion_model."]["numel"] == 2_501_272_324


def test_tiny_unet_predicts_noise_of_the_latent_shape():
    torch.manual_seed(0)
    unet = build_unet(TINY)
    x = torch.randn(2, 4, 8, 8)
    tokens = torch.randn(2, TINY.num_tokens, TINY.context_dim)
    vector = torch.randn(2, TINY.adm_in_channels)
    with torch.no_grad():
        out = unet(x, 10, encoder_hidden_states=tokens, class_labels=vector).sample
        other = unet(x, 10, encoder_hidden_states=tokens, class_labels=vector + 1).sample
    assert out.shape == x.shape
    assert not torch.allclose(out, other)  # the vector reaches the output


def test_load_from_a_non_model_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_unet(tmp_path)
