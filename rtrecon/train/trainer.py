"""MindEye2 training with Hugging Face accelerate (one CPU to many GPUs/nodes, same code).

``train(model, data, config, output_dir)`` runs the MindEye2 recipe:

- loss = ``prior_scale`` (30) x prior MSE on x0 + ``clip_scale`` (1) x contrastive
  + ``blur_scale`` (0.5) x (L1 on the blurry VAE latent + ``blur_cont_scale`` (0.1) x soft
  contrastive loss (temperature 0.2) of the blurry tokens against ConvNeXt features), as
  upstream's ``(loss_blurry + 0.1 * cont_loss) * blur_scale``. The L1 needs the blurry branch
  and ``data.blurry_latents``; the contrastive term needs ``teacher`` (a frozen
  :class:`rtrecon.models.convnext.ConvNeXtTeacher`) and ``data.images``: each step the teacher
  embeds the batch's images and an augmented copy (:func:`~rtrecon.models.convnext.blur_augment`),
  and all B x 49 tokens are compared at once, as upstream;
- contrastive: BiMixCo (voxel mixing, temperature 0.006) for the first ``mixup_pct`` (33 %) of
  epochs, then SoftCLIP with the temperature cosine-annealed 0.004 -> 0.0075;
- AdamW (lr 3e-4, weight decay 1e-2, none on biases and norm gains) with OneCycle
  (``pct_start = 2 / epochs``, ``final_div_factor`` 1000); mixed precision through accelerate
  (``"no"``, ``"fp16"``, ``"bf16"``);
- every step holds ``batch_size`` trials of every subject per process (shared-subject
  pretraining); the per-subject adapter outputs are concatenated before the shared backbone.

Fine-tuning a new participant is the same call on a model from
``load_official(pretrained, new_subject_voxels=N)`` and that subject's data.

Launch on several processes with ``accelerate launch --multi_gpu --num_processes N -m rtrecon.cli
train ...`` or ``torchrun --nproc_per_node N -m rtrecon.cli train ...`` (multi-node: their usual
flags). Without a GPU the processes form a gloo CPU group, so the same command runs on a laptop.
Each rank trains on its own shard of every epoch. After each epoch
the full training state (model, optimiser, scheduler, RNG) is saved with ``accelerator.save_state``
to ``output_dir/state`` and ``output_dir/progress.json`` records the epoch, so ``resume=True``
continues where a run stopped; the model itself is written in the official layout to
``output_dir/last.pth`` (readable by ``load_official``). Progress bars (rich) show on the main
process. Returns the per-epoch history of mean losses.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rtrecon.models.loading import save_checkpoint
from rtrecon.models.mindeye import MindEye2
from rtrecon.train.data import TrainingData, epoch_batches
from rtrecon.train.losses import cosine_anneal, mixco, mixco_nce, soft_clip_loss, soft_cont_loss

__all__ = ["TrainConfig", "train", "TrainingStep", "param_groups"]


@dataclass
class TrainConfig:
    """Hyper-parameters of the MindEye2 recipe (upstream defaults)."""

    epochs: int = 150
    batch_size: int = 24
    lr: float = 3e-4
    weight_decay: float = 1e-2
    mixup_pct: float = 0.33
    mixco_temp: float = 0.006
    soft_temp_start: float = 0.004
    soft_temp_end: float = 0.0075
    prior_scale: float = 30.0
    clip_scale: float = 1.0
    blur_scale: float = 0.5
    blur_cont_scale: float = 0.1
    blur_cont_temp: float = 0.2
    use_prior: bool = True
    mixed_precision: str = "no"
    seed: int = 0
    pct_start: float | None = None
    progress: bool = True


class TrainingStep(nn.Module):
    """All of one step's forward computation in a single ``forward`` (what DDP needs to sync)."""

    def __init__(self, model: MindEye2, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, voxels: list[torch.Tensor], targets: torch.Tensor, blurry_targets: torch.Tensor | None,
                mix: bool, soft_temp: float,
                teacher_feats: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        cfg, model = self.config, self.model
        perms, betas, selects, hidden, offset = [], [], [], [], 0
        for subject, x in enumerate(voxels):
            if mix:
                x, perm, beta, select = mixco(x)
                perms.append(perm + offset)
                betas.append(beta)
                selects.append(select)
            hidden.append(model.ridge(x, subject))
            offset += x.shape[0]
        backbone, clip_voxels, blurry = model.backbone(torch.cat(hidden))
        losses: dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=targets.device)
        if cfg.use_prior and model.config.use_prior:
            prior_loss, _ = model.diffusion_prior.loss(targets, backbone)
            losses["prior"] = prior_loss
            total = total + cfg.prior_scale * prior_loss
        if cfg.clip_scale > 0:
            pred = F.normalize(clip_voxels.flatten(1).float(), dim=-1)
            targ = F.normalize(targets.flatten(1).float(), dim=-1)
            if mix:
                clip_loss = mixco_nce(pred, targ, cfg.mixco_temp, torch.cat(perms), torch.cat(betas), torch.cat(selects))
            else:
                clip_loss = soft_clip_loss(pred, targ, soft_temp)
            losses["clip"] = clip_loss
            total = total + cfg.clip_scale * clip_loss
        if blurry is not None and blurry_targets is not None:
            blur_loss = F.l1_loss(blurry[0].float(), blurry_targets)
            losses["blurry"] = blur_loss
            total = total + cfg.blur_scale * blur_loss
        if blurry is not None and teacher_feats is not None:
            dim = blurry[1].shape[-1]
            feats, feats_aug = (F.normalize(t.reshape(-1, dim).float(), dim=-1) for t in teacher_feats)
            cont = soft_cont_loss(F.normalize(blurry[1].reshape(-1, dim).float(), dim=-1), feats, feats_aug,
                                  cfg.blur_cont_temp)
            losses["blurry_cont"] = cont
            total = total + cfg.blur_scale * cfg.blur_cont_scale * cont
        losses["loss"] = total
        return losses


def param_groups(model: MindEye2, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices (and all adapters, as upstream), none on biases/gains."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if name.startswith("ridge.") or p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), disable=not enabled, transient=False)


def train(model: MindEye2, data: TrainingData, config: TrainConfig, output_dir: str | os.PathLike,
          resume: bool = False, accelerator: Any | None = None, teacher: nn.Module | None = None) -> list[dict[str, float]]:
    """Train ``model`` on ``data`` with the MindEye2 recipe; see the module docstring.

    ``teacher``: the blurry branch's frozen ConvNeXt (needs a blurry model and ``data.images``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    if model.config.n_voxels != data.n_voxels:
        raise ValueError(f"model adapters take {model.config.n_voxels} voxels but the data has {data.n_voxels}")
    if model.config.clip_tokens != data.targets.shape[1] or model.config.clip_dim != data.targets.shape[2]:
        raise ValueError(f"model predicts {model.config.clip_tokens}x{model.config.clip_dim} tokens, "
                         f"targets are {data.targets.shape[1]}x{data.targets.shape[2]}")
    if teacher is not None and not model.config.blurry:
        raise ValueError("a ConvNeXt teacher trains the blurry branch, but this model has none (blurry=False)")
    if teacher is not None and data.images is None:
        raise ValueError("the ConvNeXt teacher needs the stimuli: TrainingData.images is missing")
    output_dir = Path(output_dir)
    # DDP must be told when some parameters get no gradient (prior off, blurry branch without targets)
    unused = (model.config.use_prior and not config.use_prior) or (
        model.config.blurry and (data.blurry_latents is None or teacher is None))
    if accelerator is None:
        accelerator = Accelerator(
            # without a GPU, processes started by a launcher must be told to form a gloo CPU group
            cpu=not torch.cuda.is_available(),
            mixed_precision=config.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
        )
    set_seed(config.seed + accelerator.process_index)
    n_trials = tuple(len(s.image_ids) for s in data.subjects)
    steps_per_epoch = len(epoch_batches(n_trials, config.batch_size, 0, config.seed,
                                        accelerator.process_index, accelerator.num_processes))
    total_steps = config.epochs * steps_per_epoch
    model.train()
    step_module = TrainingStep(model, config)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    pct_start = config.pct_start if config.pct_start is not None else min(2 / config.epochs, 0.5)
    # OneCycleLR divides by the length of each of its phases, which a 2-step run makes zero; a
    # schedule planned for 3 steps and stopped after 2 is the closest it allows.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(total_steps, 3),
                                                    final_div_factor=1000, pct_start=pct_start)
    step_module, optimizer, scheduler = accelerator.prepare(step_module, optimizer, scheduler)

    state_dir, progress_file = output_dir / "state", output_dir / "progress.json"
    start_epoch, history = 0, []
    if resume and progress_file.is_file():
        accelerator.load_state(str(state_dir))
        saved = json.loads(progress_file.read_text())
        start_epoch, history = saved["epoch"], saved["history"]
    mix_epochs = int(math.floor(config.mixup_pct * config.epochs))
    soft_temps = cosine_anneal(config.soft_temp_start, config.soft_temp_end, config.epochs - mix_epochs)
    device = accelerator.device
    targets_all = torch.from_numpy(data.targets)
    latents_all = torch.from_numpy(data.blurry_latents) if data.blurry_latents is not None else None
    images_all = torch.from_numpy(data.images) if teacher is not None else None
    if teacher is not None:
        from rtrecon.models.convnext import blur_augment

        teacher = teacher.to(device).eval().requires_grad_(False)

    with _progress(config.progress and accelerator.is_local_main_process) as bar:
        task = bar.add_task("training", total=total_steps, completed=start_epoch * steps_per_epoch, status="")
        for epoch in range(start_epoch, config.epochs):
            mix = epoch < mix_epochs
            soft_temp = float(soft_temps[epoch - mix_epochs]) if not mix else 0.0
            sums: dict[str, float] = {}
            steps = epoch_batches(n_trials, config.batch_size, epoch, config.seed,
                                  accelerator.process_index, accelerator.num_processes)
            for step in steps:
                voxels = [torch.from_numpy(s.betas[idx]).to(device) for s, idx in zip(data.subjects, step)]
                image_ids = np.concatenate([s.image_ids[idx] for s, idx in zip(data.subjects, step)])
                targets = targets_all[image_ids].to(device)
                latents = latents_all[image_ids].to(device) if latents_all is not None else None
                feats = None
                if images_all is not None:
                    images = images_all[image_ids].to(device)
                    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
                    with torch.no_grad(), accelerator.autocast():
                        feats = (teacher(images), teacher(blur_augment(images)))
                with accelerator.autocast():
                    losses = step_module(voxels, targets, latents, mix, soft_temp, feats)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(losses["loss"])
                optimizer.step()
                scheduler.step()
                for key, value in losses.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                bar.update(task, advance=1, status=f"epoch {epoch + 1}/{config.epochs} loss {float(losses['loss'].detach()):.4f}")
            record = {key: value / len(steps) for key, value in sums.items()}
            gathered = accelerator.gather(torch.tensor([record["loss"]], device=device))
            record.update(epoch=epoch + 1, loss_all_ranks=float(gathered.mean()), lr=scheduler.get_last_lr()[0],
                          contrastive="BiMixCo" if mix else "SoftCLIP", world_size=accelerator.num_processes)
            history.append(record)
            accelerator.wait_for_everyone()
            accelerator.save_state(str(state_dir), safe_serialization=False)
            if accelerator.is_main_process:
                save_checkpoint(accelerator.unwrap_model(step_module).model, output_dir / "last.pth",
                                epoch=epoch + 1, train_config=asdict(config))
                progress_file.write_text(json.dumps({"epoch": epoch + 1, "history": history}, indent=1))
            accelerator.wait_for_everyone()
    model.eval()
    return history
