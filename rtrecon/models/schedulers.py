"""The prior's noise schedule and its DDIM / DDPM samplers.

``NoiseScheduler(timesteps)`` holds dalle2's 13 cosine-schedule buffers (computed in float64,
stored float32; they are part of the official state dict under
``diffusion_prior.noise_scheduler.*``, so a loaded checkpoint brings its own values).

The samplers take the denoiser as a plain callable ``denoise(x_t, t) -> x0`` so that the same loop
drives the eager torch network, an ONNX Runtime session or a TensorRT engine:

- :func:`ddim_sample` (``eta=1`` by default): time grid ``linspace(-1, T, steps+1)[:-1]`` truncated
  to int and reversed (T=100, 20 steps starts at t=94), coefficients from ``alphas_cumprod_prev``,
  fresh noise only while ``t_next > 0``;
- :func:`ddpm_sample`: all ``T`` ancestral steps, noise drawn at every step (multiplied by 0 at t=0).

Randomness comes from ``noise(shape) -> Tensor``; :func:`randn_source` draws like upstream
(``torch.randn`` on the default or a given generator, in upstream order), and
:func:`replay_source` replays recorded draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "NoiseScheduler", "cosine_beta_schedule", "ddim_time_pairs", "ddim_sample", "ddpm_sample",
    "randn_source", "replay_source", "Denoiser", "NoiseSource",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Callable[[tuple[int, ...]], torch.Tensor]

BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "p2_loss_weight",
)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule in float64."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return torch.clip(1 - (alphas_cumprod[1:] / alphas_cumprod[:-1]), 0, 0.999)


class NoiseScheduler(nn.Module):
    """dalle2's ``NoiseScheduler`` buffers for a cosine schedule of ``timesteps`` steps."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        betas = cosine_beta_schedule(timesteps)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, dim=0)
        ac_prev = F.pad(ac[:-1], (1, 0), value=1.0)
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        values = {
            "betas": betas,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * ac_prev.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
            "p2_loss_weight": torch.ones_like(betas),  # p2 reweighting off (gamma 0) upstream
        }
        for name in BUFFERS:
            self.register_buffer(name, values[name].to(torch.float32))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @staticmethod
    def _at(buf: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return buf.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Diffuse clean ``x_start`` to time ``t``."""
        return self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start + self._at(
            self.sqrt_one_minus_alphas_cumprod, t, x_start
        ) * noise

    def predict_noise_from_start(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t - x0) / self._at(
            self.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def q_posterior(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and clipped log-variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = self._at(self.posterior_mean_coef1, t, x_t) * x_start + self._at(self.posterior_mean_coef2, t, x_t) * x_t
        return mean, self._at(self.posterior_log_variance_clipped, t, x_t)


def randn_source(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None
) -> NoiseSource:
    """Standard normal draws, in the order upstream makes them."""
    return lambda shape: torch.randn(shape, generator=generator, device=device, dtype=dtype)


def replay_source(draws: Iterable[torch.Tensor]) -> NoiseSource:
    """Replay recorded noise tensors one by one (shapes are checked)."""
    it = iter(draws)

    def draw(shape: tuple[int, ...]) -> torch.Tensor:
        try:
            value = next(it)
        except StopIteration:
            raise RuntimeError("replay_source ran out of recorded noise draws") from None
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"recorded noise has shape {tuple(value.shape)}, the sampler asked for {tuple(shape)}")
        return value

    return draw


def ddim_time_pairs(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """Upstream's DDIM ``(t, t_next)`` pairs; the last ``t_next`` is -1."""
    times = torch.linspace(-1.0, timesteps, steps + 1)[:-1].int().tolist()
    times = list(reversed(times))
    return list(zip(times[:-1], times[1:]))


def ddim_sample(
    scheduler: NoiseScheduler,
    denoise: Denoiser,
    shape: tuple[int, ...],
    steps: int,
    noise: NoiseSource,
    eta: float = 1.0,
) -> torch.Tensor:
    """DDIM sampling of an x0-predicting denoiser (dalle2 ``p_sample_loop_ddim``)."""
    if not 0 < steps <= scheduler.num_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{scheduler.num_timesteps}, got {steps}")
    alphas = scheduler.alphas_cumprod_prev
    x = noise(tuple(shape))
    for t, t_next in ddim_time_pairs(scheduler.num_timesteps, steps):
        time = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
        x0 = denoise(x, time)
        if t_next < 0:
            x = x0
            continue
        pred_noise = scheduler.predict_noise_from_start(x, time, x0)
        alpha, alpha_next = alphas[t], alphas[t_next]
        c1 = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c2 = ((1 - alpha_next) - c1.square()).sqrt()
        step_noise = noise(tuple(shape)) if t_next > 0 else 0.0
        x = x0 * alpha_next.sqrt().to(x.dtype) + c1.to(x.dtype) * step_noise + c2.to(x.dtype) * pred_noise
    return x


def ddpm_sample(scheduler: NoiseScheduler, denoise: Denoiser, shape: tuple[int, ...], noise: NoiseSource) -> torch.Tensor:
    """Ancestral sampling over all ``T`` steps (MindEye2 ``p_sample_loop_ddpm``)."""
    x = noise(tuple(shape))
    for i in reversed(range(scheduler.num_timesteps)):
        time = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
        x0 = denoise(x, time)
        mean, log_var = scheduler.q_posterior(x0, x, time)
        draw = noise(tuple(shape))
        nonzero = float(i != 0)
        x = mean + nonzero * (0.5 * log_var).exp() * draw
    return x
