"""Tests for rtrecon.embedders.openclip (the OpenCLIP image-token embedder)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from rtrecon.embedders.openclip import (
    BIGG_ARCH,
    TINY_MODEL_CFG,
    OpenClipImageEmbedder,
    create_openclip_model,
)

# The OpenAI CLIP normalisation, written out here so the test does not reuse the module's constants.
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiny() -> OpenClipImageEmbedder:
    return OpenClipImageEmbedder.tiny(seed=0)


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_bigg_architecture_gives_256_tokens_of_width_1664() -> None:
    # Built on the meta device: the real 1.8 B-parameter graph, shapes only, no memory.
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model(BIGG_ARCH, device="meta")
    emb = OpenClipImageEmbedder(model.visual)
    assert (emb.num_tokens, emb.dim, emb.image_size) == (256, 1664, 224)
    tokens = emb(torch.empty(2, 3, 425, 425, device="meta"))
    assert tuple(tokens.shape) == (2, 256, 1664)


def test_tiny_is_deterministic_per_seed_and_differs_across_seeds(tiny: OpenClipImageEmbedder) -> None:
    images = _images(4, 64)
    a = tiny.embed(images)
    assert tuple(a.shape) == (4, tiny.num_tokens, tiny.dim) == (4, 64, 64)
    assert torch.equal(a, OpenClipImageEmbedder.tiny(seed=0).embed(images))
    assert not torch.allclose(a, OpenClipImageEmbedder.tiny(seed=1).embed(images))
    # Different images give different tokens (the embedding carries image information).
    assert not torch.allclose(a[0], a[1])


def test_tokens_are_pre_projection_patch_tokens_after_quirk_preprocessing() -> None:
    model = create_openclip_model(BIGG_ARCH, None, TINY_MODEL_CFG, seed=0)
    emb = OpenClipImageEmbedder.tiny(seed=0, quirk=True)
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    visual = model.visual
    with torch.no_grad():
        h = visual.ln_pre(visual._embeds(((x + 1) / 2 - MEAN) / STD))
        h = visual.ln_post(visual.transformer(h))
        expected = h[:, 1:]  # class token dropped, no projection
        got = emb(x)
    assert got.shape[-1] == TINY_MODEL_CFG["vision_cfg"]["width"] != TINY_MODEL_CFG["embed_dim"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_quirk_equals_standard_preprocessing_of_squeezed_images() -> None:
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    quirky = OpenClipImageEmbedder.tiny(seed=0, quirk=True)
    plain = OpenClipImageEmbedder.tiny(seed=0, quirk=False)
    with torch.no_grad():
        torch.testing.assert_close(quirky(x), plain((x + 1) / 2))
        assert not torch.allclose(quirky(x), plain(x), atol=1e-3)


def test_uint8_nhwc_and_float_nchw_inputs_agree_and_other_sizes_are_resized(tiny: OpenClipImageEmbedder) -> None:
    images = _images(3, 64, seed=3)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(tiny.embed(images), tiny.embed(as_float))
    big = tiny.embed(_images(2, 97, seed=4), batch_size=1)
    assert tuple(big.shape) == (2, 64, 64)
    assert tuple(tiny.embed(np.zeros((0, 64, 64, 3), np.uint8)).shape) == (0, 64, 64)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((64, 64, 3), np.uint8), np.zeros((1, 64, 64, 4), np.uint8), np.zeros((1, 64, 64, 3), np.float32)],
)
def test_bad_image_batches_are_rejected(tiny: OpenClipImageEmbedder, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="shape|expected"):
        tiny.embed(bad)


def test_from_local_loads_a_saved_checkpoint_through_open_clip(tmp_path) -> None:
    model = create_openclip_model(BIGG_ARCH, None, TINY_MODEL_CFG, seed=5)
    path = tmp_path / "tiny_openclip.pt"
    torch.save(model.state_dict(), path)
    loaded = OpenClipImageEmbedder.from_local(path, model_cfg=TINY_MODEL_CFG, quirk=True)
    images = _images(2, 64, seed=6)
    torch.testing.assert_close(loaded.embed(images), OpenClipImageEmbedder.tiny(seed=5).embed(images))


def test_from_local_errors_name_the_file(tmp_path) -> None:
    missing = tmp_path / "nope.bin"
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        OpenClipImageEmbedder.from_local(missing)
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="wrong.pt"):
        OpenClipImageEmbedder.from_local(wrong, model_cfg=TINY_MODEL_CFG)


def test_random_weights_asked_for_raise_no_warning_and_other_warnings_pass(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        create_openclip_model(BIGG_ARCH, None, TINY_MODEL_CFG, seed=1)
        logging.warning("No pretrained weights loaded: a warning of the caller's own")
    assert [r.getMessage() for r in caplog.records] == ["No pretrained weights loaded: a warning of the caller's own"]


def _visual_only_file(tmp_path, seed: int = 0):
    """A tiny CLIP's vision tower saved as ``rtrecon convert-unclip`` writes the unCLIP's (``visual.*`` only)."""
    from safetensors.torch import save_file

    full = create_openclip_model(BIGG_ARCH, None, TINY_MODEL_CFG, seed=seed)
    path = tmp_path / "image_encoder" / "open_clip_visual.safetensors"
    path.parent.mkdir()
    save_file({f"visual.{k}": v.contiguous() for k, v in full.visual.state_dict().items()}, str(path))
    return full, path


def test_from_local_loads_the_visual_tower_convert_unclip_writes(tmp_path) -> None:
    full, path = _visual_only_file(tmp_path)
    emb = OpenClipImageEmbedder.from_local(path, model_cfg=TINY_MODEL_CFG)
    assert not hasattr(emb, "transformer") and (emb.num_tokens, emb.dim) == (64, 64)
    images = _images(3, 64)
    expected = OpenClipImageEmbedder(full.visual).embed(images)
    assert torch.equal(emb.embed(images), expected)
    emb.autocast_dtype = torch.bfloat16  # the decoder's bf16-autocast precision
    mixed = emb.embed(images)
    assert mixed.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(mixed.flatten(1), expected.flatten(1)).min() > 0.99


def test_a_visual_tower_of_another_architecture_is_refused(tmp_path) -> None:
    _, path = _visual_only_file(tmp_path)
    wider = {**TINY_MODEL_CFG, "vision_cfg": {**TINY_MODEL_CFG["vision_cfg"], "width": 128}}
    with pytest.raises(ValueError, match=r"open_clip_visual.safetensors: not the ViT-bigG-14 vision tower"):
        OpenClipImageEmbedder.from_local(path, model_cfg=wider)
