"""rtrecon.reconstruction.conditioning: the official vector, LCM guidance input, unconditional input and output mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtrecon.reconstruction.conditioning import guidance_embedding, map_output, size_crop_vector, unconditional_tokens


def test_vector_equals_the_official_conditioner_output(schedules):
    vector = size_crop_vector((768, 768), (0, 0), embed_dim=256, batch_size=2)
    expected = np.asarray(schedules["unclip_vector_suffix_768_crop0"], dtype=np.float32)
    assert vector.shape == (2, 1024)
    np.testing.assert_allclose(vector[0].numpy(), expected, atol=1e-4)  # float32 of 768 x freq
    np.testing.assert_array_equal(vector[0].numpy(), vector[1].numpy())


def test_vector_changes_with_size_and_crop():
    base = size_crop_vector((768, 768), (0, 0))
    assert not torch.allclose(base, size_crop_vector((512, 512), (0, 0)))
    assert torch.equal(base[:, :512], size_crop_vector((768, 768), (16, 0))[:, :512])


def test_unconditional_tokens_random_is_seeded_gaussian_and_zero_is_zero():
    tokens = torch.ones(2, 256, 1664)
    a = unconditional_tokens(tokens, "random", generator=torch.Generator().manual_seed(3))
    b = unconditional_tokens(tokens, "random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and abs(a.mean().item()) < 0.01 and abs(a.std().item() - 1) < 0.01
    assert torch.count_nonzero(unconditional_tokens(tokens, "zero")) == 0
    with pytest.raises(ValueError, match="random"):
        unconditional_tokens(tokens, "null")


def test_output_mapping_official_and_standard():
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    assert torch.allclose(map_output(x, "official"), torch.tensor([0.0, 0.2, 1.0, 1.0]))
    assert torch.allclose(map_output(x, "standard"), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(ValueError, match="official"):
        map_output(x, "sigmoid")


def test_guidance_embedding_is_lcms():
    w = torch.tensor([0.0, 4.0])
    emb = guidance_embedding(w, 8)
    freqs = torch.exp(-np.log(10000.0) * torch.arange(4) / 3)
    assert torch.allclose(emb[1], torch.cat([torch.sin(4000 * freqs), torch.cos(4000 * freqs)]), atol=1e-4)
    assert torch.equal(emb[0], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))
