"""rtrecon.models.schedulers: cosine noise schedule, DDIM and DDPM samplers."""

import json

import pytest
import torch

from rtrecon.models.schedulers import (
    BUFFERS, NoiseScheduler, ddim_sample, ddim_time_pairs, ddpm_sample, randn_source, replay_source,
)


def test_buffers_equal_the_official_schedule(reference_dir, official):
    ref = json.loads((reference_dir / "schedules.json").read_text())["prior_noise_scheduler_T100"]
    sched = NoiseScheduler(100)
    assert list(dict(sched.named_buffers())) == list(BUFFERS)
    for name in BUFFERS:
        torch.testing.assert_close(getattr(sched, name), torch.tensor(ref[name]), atol=0, rtol=1e-6, msg=name)
    fx = official("tiny_fixture")  # T=10: the buffers stored in the fixture's state dict
    small = NoiseScheduler(10)
    for name in BUFFERS:
        torch.testing.assert_close(
            getattr(small, name), fx.state_dict[f"diffusion_prior.noise_scheduler.{name}"], atol=0, rtol=1e-6
        )


def test_ddim_time_grid(reference_dir):
    ref = json.loads((reference_dir / "schedules.json").read_text())["prior_ddim_time_pairs_T100_steps20"]
    assert ddim_time_pairs(100, 20) == [tuple(p) for p in ref]
    assert ddim_time_pairs(10, 5) == [(7, 5), (5, 3), (3, 1), (1, -1)]


@pytest.mark.parametrize("name, kind", [("tiny_fixture", "ddim"), ("tiny_fixture", "ddpm"), ("tiny_fixture_rot", "ddim"),
                                        ("tiny_fixture_blurry", "ddpm")])
def test_sampler_replays_the_official_chain(official, name, kind):
    """Feed the recorded network outputs and noise: every x_t and the result must match."""
    fx = official(name)
    im = fx.intermediates
    xs, ts, x0s = im[f"{kind}_step_x"], im[f"{kind}_step_t"], im[f"{kind}_step_pred_x0"]
    calls = []

    def denoise(x, t):
        i = len(calls)
        calls.append(i)
        torch.testing.assert_close(x, xs[i], atol=1e-5, rtol=0)
        assert torch.equal(t, ts[i])
        return x0s[i]

    noise = replay_source([im[f"{kind}_init_noise"], *im[f"{kind}_step_noise"]])
    sched = fx.model.prior.noise_scheduler
    shape = tuple(fx.outputs["backbone"].shape)
    if kind == "ddim":
        out = ddim_sample(sched, denoise, shape, fx.meta["ddim_timesteps"], noise)
    else:
        out = ddpm_sample(sched, denoise, shape, noise)
    assert len(calls) == xs.shape[0]
    torch.testing.assert_close(out, fx.outputs[f"prior_sample_{kind}"], atol=1e-5, rtol=0)


def test_randn_source_matches_the_global_generator():
    torch.manual_seed(3)
    a = torch.randn(2, 3)
    torch.manual_seed(3)
    assert torch.equal(randn_source()((2, 3)), a)


def test_replay_source_checks_shapes_and_count():
    draw = replay_source([torch.zeros(2)])
    with pytest.raises(ValueError, match="shape"):
        draw((3,))
    with pytest.raises(RuntimeError, match="ran out"):
        draw((2,))


def test_ddim_rejects_too_many_steps():
    with pytest.raises(ValueError, match="1..10"):
        ddim_sample(NoiseScheduler(10), lambda x, t: x, (1, 2), 11, randn_source())
