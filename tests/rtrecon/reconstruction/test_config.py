"""rtrecon.reconstruction.config: the unclip6.yaml values and the diffusers configs derived from them."""

from __future__ import annotations

import pytest

from rtrecon.reconstruction.config import OFFICIAL, OFFICIAL_SAMPLING, SYNTHETIC, TINY


def test_official_values_are_the_unclip6_yaml():
    net = OFFICIAL.ldm_config()["model"]["params"]["network_config"]["params"]
    assert (net["model_channels"], net["channel_mult"], net["transformer_depth"]) == (320, [1, 2, 4], [1, 2, 10])
    assert (net["context_dim"], net["adm_in_channels"], net["num_head_channels"]) == (1664, 1024, 64)
    assert net["attention_resolutions"] == [4, 2] and net["use_linear_in_transformer"]
    assert OFFICIAL.ldm_config()["model"]["params"]["scale_factor"] == 0.13025
    assert (OFFICIAL_SAMPLING.num_steps, OFFICIAL_SAMPLING.guidance_scale, OFFICIAL_SAMPLING.image_size) == (38, 5.0, 768)


def test_diffusers_unet_config_feeds_the_vector_through_class_embedding():
    cfg = OFFICIAL.unet_config()
    assert cfg["class_embed_type"] == "projection" and cfg["projection_class_embeddings_input_dim"] == 1024
    assert cfg["addition_embed_type"] is None
    assert cfg["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert cfg["transformer_layers_per_block"] == [1, 2, 10]
    assert cfg["attention_head_dim"] == [5, 10, 20]  # diffusers' name for the head count here
    assert cfg["block_out_channels"] == [320, 640, 1280] and cfg["sample_size"] == 96


def test_diffusers_vae_config():
    cfg = OFFICIAL.vae_config()
    assert cfg["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["scaling_factor"] == 0.13025 and cfg["latent_channels"] == 4
    assert OFFICIAL.vae_scale_factor == 8


def test_small_configs_keep_the_vector_width_consistent():
    for config in (TINY, SYNTHETIC):
        assert config.adm_in_channels == 4 * config.size_embed_dim
        assert config.unet_config()["cross_attention_dim"] == config.context_dim


def test_synthetic_config_is_a_v_prediction_decoder_at_32_px():
    assert SYNTHETIC.prediction_type == "v_prediction" and OFFICIAL.prediction_type == TINY.prediction_type == "epsilon"
    assert SYNTHETIC.image_size // SYNTHETIC.vae_scale_factor == 16


def test_inconsistent_vector_width_is_refused():
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        OFFICIAL.replace(prediction_type="x0")
    with pytest.raises(ValueError, match="adm_in_channels"):
        OFFICIAL.replace(adm_in_channels=1280)
    with pytest.raises(ValueError, match="multiple"):
        OFFICIAL.replace(image_size=500)
