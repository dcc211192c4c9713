"""rtrecon.reconstruction.distill_lcm: the LCM distillation entry point, a few steps on the tiny reconstructor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtrecon.reconstruction.conditioning import guidance_embedding
from rtrecon.reconstruction.distill_lcm import DistillSettings, distill_lcm, make_student
from rtrecon.reconstruction.unclip import SamplingOptions, UnclipReconstructor


@pytest.fixture(scope="module")
def teacher() -> UnclipReconstructor:
    return UnclipReconstructor.tiny(seed=0)


def test_student_starts_as_the_teacher(teacher):
    student = make_student(teacher.unet, 32)
    x, tokens, vector = torch.randn(1, 4, 8, 8), torch.randn(1, 64, 64), torch.randn(1, 128)
    w = guidance_embedding(torch.tensor([4.0]), 32)
    with torch.no_grad():
        a = teacher.unet(x, 500, encoder_hidden_states=tokens, class_labels=vector).sample
        b = student(x, 500, encoder_hidden_states=tokens, class_labels=vector, timestep_cond=w).sample
    assert torch.allclose(a, b, atol=1e-5)


def test_a_few_distillation_steps_give_a_one_pass_per_step_decoder(teacher):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    tokens = rng.standard_normal((4, 64, 64)).astype(np.float32)
    logs: list[str] = []
    settings = DistillSettings(steps=2, batch_size=2, ddim_steps=10, guidance_embed_dim=32, lr=1e-4, log_every=1)
    lcm = distill_lcm(teacher, images, tokens, settings=settings, log=logs.append)
    assert len(logs) == 2 and all(np.isfinite(float(line.split("loss ")[1].split()[0])) for line in logs)
    calls = []
    lcm.unet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images_out = lcm(torch.from_numpy(tokens[:1]), SamplingOptions.lcm(steps=2))
    assert images_out.shape == (1, 3, 64, 64) and calls == [1, 1]
    with pytest.raises(ValueError, match="lcm"):
        lcm(torch.from_numpy(tokens[:1]), SamplingOptions.fast(steps=2))
    with pytest.raises(ValueError, match="lcm"):
        teacher(torch.from_numpy(tokens[:1]), SamplingOptions.lcm(steps=2))
