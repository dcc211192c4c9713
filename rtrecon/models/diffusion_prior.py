"""The diffusion prior: the prior network with its noise schedule, sampling and training loss.

``DiffusionPrior(config)`` registers ``noise_scheduler`` then ``net`` (the official key order,
``diffusion_prior.noise_scheduler.*`` and ``diffusion_prior.net.*``).

- ``prior(image_embed, t, brain_embed)``: one network call (predicted clean tokens);
- ``prior.sample(brain_embed, steps=20)``: image tokens from brain tokens. ``steps < T`` uses
  DDIM (eta 1, as upstream's inference), ``steps=None`` or ``T`` the full DDPM loop; ``cond_scale``
  applies classifier-free guidance; ``generator`` or ``noise`` (a ``NoiseSource``) control the
  draws. As upstream, the result is not divided by any embedding scale and not l2-normalised;
- ``prior.loss(image_embed, brain_embed)``: the training objective (random time, q-sample,
  conditioning dropout with ``config.prior_cond_drop_prob``, MSE on x0). Returns ``(loss, pred)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtrecon.models.config import MindEye2Config
from rtrecon.models.prior import PriorNetwork
from rtrecon.models.schedulers import NoiseScheduler, NoiseSource, ddim_sample, ddpm_sample, randn_source

__all__ = ["DiffusionPrior"]


class DiffusionPrior(nn.Module):
    """Prior network + cosine noise schedule (x0 prediction)."""

    def __init__(self, config: MindEye2Config) -> None:
        super().__init__()
        self.config = config
        self.noise_scheduler = NoiseScheduler(config.prior_timesteps)
        self.net = PriorNetwork(config)

    def forward(self, image_embed: torch.Tensor, timesteps: torch.Tensor, brain_embed: torch.Tensor) -> torch.Tensor:
        return self.net(image_embed, timesteps, brain_embed)

    @torch.no_grad()
    def sample(
        self,
        brain_embed: torch.Tensor,
        steps: int | None = 20,
        *,
        cond_scale: float = 1.0,
        generator: torch.Generator | None = None,
        noise: NoiseSource | None = None,
        eta: float = 1.0,
    ) -> torch.Tensor:
        """Sample image tokens ``(B, S, D)`` conditioned on brain tokens ``(B, S, D)``."""
        total = self.noise_scheduler.num_timesteps
        steps = total if steps is None else int(steps)
        if noise is None:
            # Drawn in the weights' dtype: float32 under autocast, as upstream's torch.randn (the
            # chain stays float32 while the backbone tokens are half); half for a half model.
            noise = randn_source(brain_embed.device, self.net.learned_query.dtype, generator)

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net.forward_with_cond_scale(x, t, brain_embed, cond_scale)

        shape = tuple(brain_embed.shape)
        if steps < total:
            return ddim_sample(self.noise_scheduler, denoise, shape, steps, noise, eta=eta)
        if steps == total:
            return ddpm_sample(self.noise_scheduler, denoise, shape, noise)
        raise ValueError(f"steps must be at most the schedule length {total}, got {steps}")

    def loss(
        self, image_embed: torch.Tensor, brain_embed: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MindEye2's prior loss: ``(mse(pred_x0, image_embed), pred_x0)``."""
        batch = image_embed.shape[0]
        times = torch.randint(
            0, self.noise_scheduler.num_timesteps, (batch,), device=image_embed.device, generator=generator
        )
        noise = torch.randn(image_embed.shape, device=image_embed.device, dtype=image_embed.dtype, generator=generator)
        noisy = self.noise_scheduler.q_sample(image_embed, times, noise)
        drop = self.config.prior_cond_drop_prob if self.training else 0.0
        pred = self.net(noisy, times, brain_embed, brain_cond_drop_prob=drop, image_cond_drop_prob=drop)
        return F.mse_loss(pred, image_embed), pred
