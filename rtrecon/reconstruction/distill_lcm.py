"""Latent-consistency distillation of the unCLIP UNet: 1-4 steps instead of 38 x 2 (needs a GPU).

The path beyond few-step solvers: distil the (official or synthetic) unCLIP UNet into a latent
consistency model (Luo et al. 2023, "Latent Consistency Models"; the recipe of diffusers'
``train_lcm_distill_sd_wds.py``), then sample it with diffusers' ``LCMScheduler`` through
``UnclipReconstructor(tokens, SamplingOptions.lcm(steps=4))``.

- **Student**: the teacher's UNet plus a guidance-scale embedding (``time_cond_proj_dim``; its
  projection starts at zero, so the student starts as the teacher). CFG is folded into it: one
  UNet pass per step.
- **Teacher step**: classifier-free guidance with the official unconditional input (random
  tokens), scale ``w + 1`` for ``w ~ U[w_min, w_max]``, one DDIM step of ``k = T / ddim_steps``
  timesteps over the official discretisation.
- **Target**: an EMA copy of the student evaluated at the teacher's next point; loss is the
  pseudo-Huber distance between the consistency-parameterised outputs (``c_skip``, ``c_out`` with
  sigma_data 0.5 and timestep scaling 10, as ``LCMScheduler`` uses at sampling time).

Training data are images and their tokens (as for :mod:`~rtrecon.reconstruction.train_synthetic`):
the teacher's VAE encodes the images to the latents the noise is added to.

Command line (GPU)::

    python -m rtrecon.reconstruction.distill_lcm --unclip weights/unclip6 --images coco.hdf5 \\
        --tokens coco_bigG_tokens.npy --out weights/unclip6_lcm --device cuda --steps 4000
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rtrecon.reconstruction.conditioning import guidance_embedding, size_crop_vector, unconditional_tokens
from rtrecon.reconstruction.unclip import UnclipReconstructor

__all__ = ["DistillSettings", "distill_lcm", "main", "make_student"]


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-5
    ddim_steps: int = 50
    w_min: float = 3.0
    w_max: float = 15.0
    ema_decay: float = 0.95
    huber_c: float = 0.001
    guidance_embed_dim: int = 256
    #: Trade compute for memory: teacher, student, EMA target and AdamW state of the official
    #: 2.5 B-parameter UNet already take ~60 GB in float32.
    gradient_checkpointing: bool = True
    seed: int = 0
    log_every: int = 50


def make_student(teacher_unet, guidance_embed_dim: int = 256):
    """The teacher's UNet with a zero-initialised guidance-scale input (same outputs at start)."""
    from diffusers import UNet2DConditionModel

    # Private keys dropped: "_use_default_values" would reset time_cond_proj_dim to its default.
    config = {k: v for k, v in teacher_unet.config.items() if not k.startswith("_")}
    config["time_cond_proj_dim"] = guidance_embed_dim
    student = UNet2DConditionModel.from_config(config)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise ValueError(f"teacher and student UNets differ beyond the guidance input: {missing}, {unexpected}")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.to(teacher_unet.device, teacher_unet.dtype)


def _boundary(t: torch.Tensor, sigma_data: float = 0.5, scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    scaled = scaling * t.float()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def distill_lcm(
    teacher: UnclipReconstructor,
    images: np.ndarray,
    tokens: np.ndarray,
    *,
    settings: DistillSettings = DistillSettings(),
    log: Callable[[str], None] = print,
) -> UnclipReconstructor:
    """Distil ``teacher``'s UNet on (images uint8 (N,H,W,3), tokens (N,T,D)); returns the LCM reconstructor.

    The teacher must be in float32 (mixed precision is the caller's ``torch.autocast``).
    """
    from rtrecon.reconstruction.train_synthetic import _check_arrays, _images_to_tensor

    _check_arrays(images, tokens)
    if teacher.dtype != torch.float32:
        raise ValueError(f"the teacher must be loaded in float32 (got {teacher.dtype}): the student is trained from its weights")
    device, cfg = teacher.device, teacher.config
    torch.manual_seed(settings.seed)  # the random unconditional tokens, drawn on the device
    gen = torch.Generator().manual_seed(settings.seed)
    T = cfg.discretization.num_timesteps
    k = T // settings.ddim_steps
    teacher_unet = teacher.unet
    student = make_student(teacher_unet, settings.guidance_embed_dim).train().requires_grad_(True)
    if settings.gradient_checkpointing:
        student.enable_gradient_checkpointing()
    target = copy.deepcopy(student).requires_grad_(False)

    from diffusers import DDPMScheduler

    d = cfg.discretization
    acp = DDPMScheduler(
        num_train_timesteps=T, beta_start=d.linear_start, beta_end=d.linear_end, beta_schedule="scaled_linear"
    ).alphas_cumprod.to(device)
    ddim_t = (torch.arange(1, settings.ddim_steps + 1) * k - 1).to(device)

    with torch.no_grad():
        x = _images_to_tensor(images, cfg.image_size)
        vae = teacher.vae
        dists = [vae.encode(x[i : i + 32].to(device, teacher.vae_dtype)).latent_dist for i in range(0, len(x), 32)]
        mean = torch.cat([p.mean.float() for p in dists])
        std = torch.cat([p.std.float() for p in dists])
    tok = torch.from_numpy(np.asarray(tokens, dtype=np.float32))
    vector = size_crop_vector((cfg.image_size,) * 2, (0, 0), embed_dim=cfg.size_embed_dim, device=device)
    opt = torch.optim.AdamW(student.parameters(), lr=settings.lr, weight_decay=0.0)

    def predict_x0(unet, x_t, t, context, vec, w_emb=None):
        # The student keeps the teacher's parametrisation (epsilon, v or x0), so the LCM scheduler
        # reads it with the same prediction_type.
        out = unet(x_t, t, encoder_hidden_states=context, class_labels=vec, timestep_cond=w_emb).sample
        a = acp[t].view(-1, 1, 1, 1)
        if cfg.prediction_type == "epsilon":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt(), out
        if cfg.prediction_type == "v_prediction":
            x0 = a.sqrt() * x_t - (1 - a).sqrt() * out
            return x0, (1 - a).sqrt() * x_t + a.sqrt() * out
        return out, (x_t - a.sqrt() * out) / (1 - a).sqrt()

    t0 = time.perf_counter()
    for step in range(settings.steps):
        b = min(settings.batch_size, len(tok))
        idx = torch.randint(0, len(tok), (b,), generator=gen)
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen).to(device)) * vae.config.scaling_factor
        cond = tok[idx].to(device)
        vec = vector.expand(b, -1)
        n = torch.randint(0, settings.ddim_steps, (b,), generator=gen).to(device)
        t_start = ddim_t[n]
        t_next = (t_start - k).clamp_min(0)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        a_start = acp[t_start].view(-1, 1, 1, 1)
        noisy = a_start.sqrt() * latents + (1 - a_start).sqrt() * noise
        w = settings.w_min + (settings.w_max - settings.w_min) * torch.rand(b, generator=gen).to(device)
        w_emb = guidance_embedding(w, settings.guidance_embed_dim).to(device)

        c_skip, c_out = _boundary(t_start)
        x0_student, _ = predict_x0(student, noisy, t_start, cond, vec, w_emb)
        model_pred = c_skip * noisy + c_out * x0_student

        with torch.no_grad():
            uncond = unconditional_tokens(cond, "random", generator=None)
            x0_both, eps_both = predict_x0(
                teacher_unet, torch.cat([noisy, noisy]), torch.cat([t_start, t_start]), torch.cat([uncond, cond]), torch.cat([vec, vec])
            )
            x0_u, x0_c = x0_both.chunk(2)
            eps_u, eps_c = eps_both.chunk(2)
            wv = w.view(-1, 1, 1, 1)
            x0_teacher = x0_c + wv * (x0_c - x0_u)
            eps_teacher = eps_c + wv * (eps_c - eps_u)
            a_next = acp[t_next].view(-1, 1, 1, 1)
            x_next = a_next.sqrt() * x0_teacher + (1 - a_next).sqrt() * eps_teacher
            c_skip_n, c_out_n = _boundary(t_next)
            x0_target, _ = predict_x0(target, x_next, t_next, cond, vec, w_emb)
            target_pred = c_skip_n * x_next + c_out_n * x0_target

        loss = (((model_pred.float() - target_pred.float()) ** 2 + settings.huber_c**2).sqrt() - settings.huber_c).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for p_t, p_s in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p_s, 1.0 - settings.ema_decay)
        if step % settings.log_every == 0 or step == settings.steps - 1:
            log(f"lcm step {step}: loss {loss.item():.5f} ({time.perf_counter() - t0:.0f} s)")
    target.eval()
    return UnclipReconstructor(target, teacher.vae, cfg, tiny_autoencoder=teacher.tiny_autoencoder, device=device, dtype=teacher.dtype)


def main(argv: list[str] | None = None) -> int:
    from rtrecon.reconstruction.train_synthetic import load_arrays

    parser = argparse.ArgumentParser(prog="python -m rtrecon.reconstruction.distill_lcm", description=__doc__.split("\n")[0])
    parser.add_argument("--unclip", required=True, help="the teacher unCLIP folder (rtrecon convert-unclip output)")
    parser.add_argument("--images", required=True, help="uint8 (N,H,W,3) images: .npy or .hdf5 (--images-key)")
    parser.add_argument("--images-key", default="imgBrick")
    parser.add_argument("--tokens", required=True, help="(N,T,D) tokens .npy, row-aligned with the images")
    parser.add_argument("--out", required=True, help="folder for the distilled reconstructor")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=DistillSettings.steps)
    parser.add_argument("--batch-size", type=int, default=DistillSettings.batch_size)
    parser.add_argument("--lr", type=float, default=DistillSettings.lr)
    ns = parser.parse_args(argv)
    try:
        images, tokens = load_arrays(ns.images, ns.tokens, ns.images_key)
        teacher = UnclipReconstructor.from_pretrained(ns.unclip, device=ns.device)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"distill_lcm: {err}", file=sys.stderr)
        return 1
    settings = DistillSettings(steps=ns.steps, batch_size=ns.batch_size, lr=ns.lr)
    distill_lcm(teacher, images, tokens, settings=settings).save_pretrained(ns.out)
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
