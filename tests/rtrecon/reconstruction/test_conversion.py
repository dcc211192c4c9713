"""rtrecon.reconstruction.conversion: the official sgm checkpoint to diffusers, every key and shape."""

from __future__ import annotations

import pytest
import torch

from rtrecon.reconstruction.conversion import (
    ConversionError,
    convert_unclip_checkpoint,
    convert_unclip_state_dict,
    load_sgm_state_dict,
)
from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor


def test_every_official_unet_and_vae_key_maps_with_its_shape(meta_checkpoint, manifest, official_meta_models):
    unet, vae = convert_unclip_state_dict(meta_checkpoint, models=official_meta_models)
    counts = manifest["counts"]["by_prefix"]
    assert len(unet) == counts["model.diffusion_model."]["entries"] == 1680
    assert len(vae) == counts["first_stage_model."]["entries"] == 248
    assert sum(v.numel() for v in unet.values()) == counts["model.diffusion_model."]["numel"]
    assert sum(v.numel() for v in vae.values()) == counts["first_stage_model."]["numel"]
    assert unet["class_embedding.linear_1.weight"].shape == (1280, 1024)
    assert unet["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape == (640, 1664)
    assert vae["decoder.mid_block.attentions.0.to_q.weight"].shape == (512, 512)  # 1x1 conv -> linear


def test_every_tensor_is_used_once_with_its_values(reduced_checkpoint, reduced_config, reduced_meta_models):
    unet, vae = convert_unclip_state_dict(reduced_checkpoint, reduced_config, models=reduced_meta_models)
    source = {t.untyped_storage().data_ptr() for t in reduced_checkpoint.values()}
    converted = [t.untyped_storage().data_ptr() for t in [*unet.values(), *vae.values()]]
    assert sorted(converted) == sorted(source)
    ckpt = reduced_checkpoint
    assert torch.equal(unet["class_embedding.linear_2.weight"], ckpt["model.diffusion_model.label_emb.0.2.weight"])
    assert torch.equal(unet["up_blocks.0.resnets.2.conv_shortcut.weight"], ckpt["model.diffusion_model.output_blocks.2.0.skip_connection.weight"])
    assert torch.equal(vae["encoder.mid_block.attentions.0.to_v.weight"], ckpt["first_stage_model.encoder.mid.attn_1.v.weight"][:, :, 0, 0])


def test_a_missing_unmapped_or_misshapen_tensor_is_named(reduced_checkpoint, reduced_config, reduced_meta_models):
    broken = dict(reduced_checkpoint)
    del broken["model.diffusion_model.middle_block.1.proj_in.weight"]
    broken["model.diffusion_model.input_blocks.1.0.extra.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError, match="missing.*mid_block.attentions.0.proj_in.weight.*unexpected.*extra.weight"):
        convert_unclip_state_dict(broken, reduced_config, models=reduced_meta_models)
    wrong = dict(reduced_checkpoint)
    wrong["first_stage_model.decoder.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    with pytest.raises(ConversionError, match="VAE.*decoder.conv_in.weight"):
        convert_unclip_state_dict(wrong, reduced_config, models=reduced_meta_models)


def test_converted_folder_loads_and_decodes(tmp_path, reduced_checkpoint, reduced_config):
    ckpt = tmp_path / "unclip6.ckpt"
    clip = {"conditioner.embedders.0.model.visual.proj": torch.randn(52, 40)}
    torch.save({"state_dict": {**reduced_checkpoint, **clip}, "global_step": 110000}, ckpt)
    out = convert_unclip_checkpoint(ckpt, tmp_path / "out", config=reduced_config, dtype=torch.float16)
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "scheduler" / "scheduler_config.json").is_file()
    from safetensors.torch import load_file

    assert torch.equal(load_file(out / "image_encoder" / "open_clip_visual.safetensors")["visual.proj"], clip["conditioner.embedders.0.model.visual.proj"].half())
    reconstructor = UnclipReconstructor.from_pretrained(out)
    assert reconstructor.config == reduced_config
    assert torch.equal(
        reconstructor.unet.state_dict()["conv_in.weight"], reduced_checkpoint["model.diffusion_model.input_blocks.0.0.weight"].half().float()
    )
    image = reconstructor(torch.randn(1, 8, 52), SamplingOptions.fast(steps=2, image_size=32))
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_unreadable_checkpoints_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        load_sgm_state_dict(tmp_path / "nothing.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="bad.ckpt"):
        load_sgm_state_dict(bad)
    torch.save({"epoch": 1}, tmp_path / "nostate.ckpt")
    with pytest.raises(ConversionError, match="state_dict"):
        load_sgm_state_dict(tmp_path / "nostate.ckpt")


def test_converted_image_encoder_loads_as_the_openclip_embedder(tmp_path, reduced_checkpoint, reduced_config):
    """The visual tower convert-unclip writes (visual.* keys only) embeds images as the whole CLIP does."""
    import numpy as np

    from rtrecon.embedders.openclip import BIGG_ARCH, TINY_MODEL_CFG, OpenClipImageEmbedder, create_openclip_model

    clip = create_openclip_model(BIGG_ARCH, None, TINY_MODEL_CFG, seed=1)
    prefixed = {f"conditioner.embedders.0.model.visual.{k}": v for k, v in clip.visual.state_dict().items()}
    # the text-side tensors the official checkpoint also carries, which an image embedder never needs
    prefixed["conditioner.embedders.0.model.positional_embedding"] = clip.positional_embedding.detach()
    torch.save({"state_dict": {**reduced_checkpoint, **prefixed}}, tmp_path / "unclip6.ckpt")
    out = convert_unclip_checkpoint(tmp_path / "unclip6.ckpt", tmp_path / "out", config=reduced_config)
    embedder = OpenClipImageEmbedder.from_local(out / "image_encoder" / "open_clip_visual.safetensors", model_cfg=TINY_MODEL_CFG)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert torch.equal(embedder.embed(images), OpenClipImageEmbedder(clip.visual).embed(images))
