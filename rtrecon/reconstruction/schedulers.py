"""Sampling schedules of the unCLIP reconstructor, as diffusers schedulers.

The official sampler is sgm's ``EulerEDMSampler`` over ``LegacyDDPMDiscretization`` (betas
``linspace(sqrt(0.00085), sqrt(0.012), 1000)**2``, sigma = sqrt((1 - acp) / acp)) with 38 steps,
no churn. Its 38 timesteps are ``linspace(999, 0, 38, endpoint=False).astype(int)`` (26 ... 999),
a spacing none of diffusers' ``timestep_spacing`` modes produce, so :func:`official_timesteps`
computes them and diffusers' ``EulerDiscreteScheduler`` is given them as custom timesteps: its
sigmas, ``scale_model_input`` (1 / sqrt(sigma^2 + 1)), epsilon prediction and Euler update are then
sgm's, step for step (``schedules.json``'s ``unclip_sampler_sigmas_38_steps``).

Few-step kinds, for speed: ``"euler_karras"`` (Euler on Karras sigmas) and ``"dpmpp_karras"``
(DPM-Solver++ 2M on Karras sigmas, final sigma 0); and ``"lcm"`` (diffusers' ``LCMScheduler``),
only for a UNet distilled by :mod:`~rtrecon.reconstruction.distill_lcm` (1-4 steps).

``"euler_*"`` schedulers work on variance-exploding latents (x = x0 + sigma * eps), the others on
variance-preserving ones (x / sqrt(1 + sigma^2)); :func:`is_variance_exploding` tells which and
:func:`first_sigma` gives the noise level the chain starts from.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rtrecon.reconstruction.config import DiscretizationConfig

__all__ = ["SCHEDULERS", "first_sigma", "is_variance_exploding", "make_scheduler", "official_timesteps", "set_schedule"]

SchedulerKind = Literal["euler_edm", "euler_karras", "dpmpp_karras", "lcm"]
SCHEDULERS: tuple[str, ...] = ("euler_edm", "euler_karras", "dpmpp_karras", "lcm")


def official_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """sgm's ``generate_roughly_equally_spaced_steps``, descending (the order they are sampled in)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps {num_steps} must be in 1..{num_train_timesteps}")
    ascending = np.linspace(num_train_timesteps - 1, 0, num_steps, endpoint=False).astype(int)[::-1]
    return [int(t) for t in ascending[::-1]]


def _common(discretization: DiscretizationConfig, prediction_type: str) -> dict:
    return {
        "num_train_timesteps": discretization.num_timesteps,
        "beta_start": discretization.linear_start,
        "beta_end": discretization.linear_end,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
    }


def make_scheduler(
    kind: SchedulerKind = "euler_edm", discretization: DiscretizationConfig | None = None, prediction_type: str = "epsilon"
):
    """A diffusers scheduler of ``kind`` over the unCLIP's DDPM discretisation (timesteps unset).

    ``prediction_type`` is the UNet's (``epsilon`` officially; see ``UnclipConfig.prediction_type``).
    """
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    common = _common(discretization or DiscretizationConfig(), prediction_type)
    if kind == "euler_edm":
        return EulerDiscreteScheduler(**common, timestep_spacing="linspace")
    if kind == "euler_karras":
        return EulerDiscreteScheduler(**common, timestep_spacing="linspace", use_karras_sigmas=True)
    if kind == "dpmpp_karras":
        return DPMSolverMultistepScheduler(
            **common, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True, final_sigmas_type="zero"
        )
    if kind == "lcm":
        return LCMScheduler(**common)
    raise ValueError(f"scheduler {kind!r}: choose one of {', '.join(SCHEDULERS)}")


def set_schedule(scheduler, kind: SchedulerKind, num_steps: int, device=None) -> None:
    """Set ``num_steps`` timesteps: the official spacing for ``euler_edm``, Karras sigmas otherwise."""
    if kind == "euler_edm":
        scheduler.set_timesteps(
            timesteps=official_timesteps(num_steps, scheduler.config.num_train_timesteps), device=device
        )
    else:
        scheduler.set_timesteps(num_steps, device=device)


def is_variance_exploding(scheduler) -> bool:
    """True when the scheduler's latents are x0 + sigma * eps (Euler), False when VP (DPM-Solver, LCM)."""
    from diffusers import EulerDiscreteScheduler

    return isinstance(scheduler, EulerDiscreteScheduler)


def first_sigma(scheduler) -> float:
    """The (variance-exploding) noise level of the first timestep, once the timesteps are set."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is not None:
        return float(sigmas[0])
    acp = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])])
    return ((1.0 - acp) / acp) ** 0.5
