"""rtrecon.runtime.cuda_graphs: the prior's DDIM chain as one replayed CUDA graph (CUDA only)."""

from __future__ import annotations

import pytest
import torch

from rtrecon.models import MindEye2, MindEye2Config
from rtrecon.models.schedulers import replay_source
from rtrecon.runtime.cuda_graphs import GraphedPriorSampler


def _model(device: str) -> MindEye2:
    torch.manual_seed(0)
    config = MindEye2Config.tiny().replace(prior_timesteps=100)
    with torch.device(device):
        return MindEye2(config).eval()


def test_a_cpu_prior_is_refused():
    with pytest.raises(RuntimeError, match="CUDA graphs need the prior on a CUDA device, it is on cpu"):
        GraphedPriorSampler(_model("cpu").prior, (1, 4, 16), steps=20)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("autocast", [None, torch.float16])
def test_replay_gives_the_eager_chain_on_the_same_draws(autocast):
    model = _model("cuda")
    backbone = torch.randn(1, 4, 16, device="cuda")
    sampler = GraphedPriorSampler(model.prior, (1, 4, 16), steps=20, autocast=autocast)
    generator = torch.Generator("cuda").manual_seed(0)
    first = sampler(backbone, generator)
    with torch.no_grad(), torch.autocast("cuda", dtype=autocast or torch.float16, enabled=autocast is not None):
        eager = model.prior.sample(backbone, steps=20, noise=replay_source(list(sampler._noise.unbind(0))))
    torch.testing.assert_close(first, eager, atol=1e-3 if autocast else 1e-5, rtol=0)
    assert not torch.equal(sampler(backbone, generator), first)  # fresh draws each replay
    with pytest.raises(ValueError, match="captured for backbone tokens"):
        sampler(torch.randn(2, 4, 16, device="cuda"))
