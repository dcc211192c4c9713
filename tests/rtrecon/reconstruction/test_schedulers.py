"""rtrecon.reconstruction.schedulers: the official 38-step Euler EDM schedule in diffusers, and the few-step ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtrecon.reconstruction.schedulers import is_variance_exploding, make_scheduler, official_timesteps, set_schedule


def test_official_timesteps_are_sgms(schedules):
    assert official_timesteps(38)[::-1] == schedules["unclip_sampler_timestep_indices_38"]


def test_diffusers_euler_reproduces_the_official_38_sigmas(schedules):
    scheduler = make_scheduler("euler_edm")
    set_schedule(scheduler, "euler_edm", 38)
    expected = np.asarray(schedules["unclip_sampler_sigmas_38_steps"], dtype=np.float64)
    np.testing.assert_allclose(scheduler.sigmas.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), official_timesteps(38))


def test_the_discretisation_is_the_denoisers_1000_sigmas(schedules):
    sigmas = make_scheduler("euler_edm").sigmas[:-1].flip(0).numpy()
    np.testing.assert_allclose(sigmas, schedules["unclip_denoiser_sigmas_1000"], rtol=2e-5)  # diffusers computes betas in float32, sgm in float64


def test_official_euler_step_is_sgms_update():
    scheduler = make_scheduler("euler_edm")
    set_schedule(scheduler, "euler_edm", 38)
    x, eps = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    s0, s1 = scheduler.sigmas[0], scheduler.sigmas[1]
    t = scheduler.timesteps[0]
    assert torch.allclose(scheduler.scale_model_input(x, t), x / (s0**2 + 1) ** 0.5)
    denoised = x - s0 * eps
    assert torch.allclose(scheduler.step(eps, t, x).prev_sample, x + (s1 - s0) * (x - denoised) / s0, atol=1e-5)


@pytest.mark.parametrize("kind", ["euler_karras", "dpmpp_karras"])
@pytest.mark.parametrize("steps", [4, 8, 12])
def test_few_step_karras_schedules_span_the_official_range(kind, steps):
    scheduler = make_scheduler(kind)
    set_schedule(scheduler, kind, steps)
    assert len(scheduler.timesteps) == steps
    assert scheduler.sigmas[0] == pytest.approx(14.6146, rel=1e-4) and scheduler.sigmas[-1] == 0
    assert bool(torch.all(scheduler.sigmas[:-1] > scheduler.sigmas[1:]))
    assert is_variance_exploding(scheduler) == (kind == "euler_karras")


def test_unknown_scheduler_is_refused():
    with pytest.raises(ValueError, match="dpmpp_karras"):
        make_scheduler("ddim")
    with pytest.raises(ValueError, match="num_steps"):
        official_timesteps(0)


@pytest.mark.parametrize("kind", ["euler_edm", "dpmpp_karras", "lcm"])
def test_the_unets_prediction_type_reaches_the_scheduler(kind):
    assert make_scheduler(kind).config.prediction_type == "epsilon"
    assert make_scheduler(kind, prediction_type="v_prediction").config.prediction_type == "v_prediction"


@pytest.mark.parametrize("kind", ["euler_karras", "dpmpp_karras"])
def test_a_v_prediction_step_equals_the_epsilon_step_it_stands_for(kind):
    eps_sched, v_sched = make_scheduler(kind), make_scheduler(kind, prediction_type="v_prediction")
    for scheduler in (eps_sched, v_sched):
        set_schedule(scheduler, kind, 4)
    t = eps_sched.timesteps[0]
    sigma = float(eps_sched.sigmas[0])
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 3, 3, generator=gen), torch.randn(1, 4, 3, 3, generator=gen)
    a = 1.0 / (1.0 + sigma**2)  # alphas_cumprod at this noise level
    x = x0 + sigma * eps if is_variance_exploding(eps_sched) else a**0.5 * x0 + (1 - a) ** 0.5 * eps
    v = a**0.5 * eps - (1 - a) ** 0.5 * x0
    expected = eps_sched.step(eps, t, x).prev_sample
    torch.testing.assert_close(v_sched.step(v, t, x).prev_sample, expected, rtol=1e-4, atol=1e-4)
