"""MindEye2 in plain PyTorch: exact to the official code, loading its checkpoints key-for-key.

Quick start::

    from rtrecon.models import load_official
    model = load_official("final_subj01_pretrained_40sess_24bs/last.pth", dtype=torch.float16, device="cuda")
    out = model.encode(betas, subject=0)                  # betas (B, n_vox)
    out.backbone, out.clip_voxels, out.clip_voxels_norm   # (B,256,1664), (B,256,1664), (B,425984)
    tokens = model.prior.sample(out.backbone, steps=20)   # DDIM, eta=1, as the official inference
    x0 = model.prior(x_t, t, out.backbone)                # one prior-network call

API:

- :class:`MindEye2Config` (``config``): every architectural number; presets ``final()``,
  ``realtime()``, ``tiny()``.
- :class:`MindEye2` (``mindeye``): ``ridge`` (``adapters.RidgeRegression``), ``backbone``
  (``backbone.BrainNetwork``, with the ``blurry`` branch), ``diffusion_prior``
  (``diffusion_prior.DiffusionPrior`` = ``prior.PriorNetwork`` + ``schedulers.NoiseScheduler``);
  ``encode(voxels, subject)``, ``prior``, ``add_subject``.
- :func:`load_official` (``loading``): infers the configuration from a checkpoint's keys and
  shapes and loads strictly. Accepts an official ``last.pth`` (``model_state_dict``), a plain
  state dict, a ``.safetensors`` file or an in-memory dict; ``new_subject_voxels=N`` starts a new
  participant from a (multi-subject) checkpoint the way the official fine-tuning does;
  ``dtype``/``device`` cast on load; the weights are memory-mapped and assigned without a
  random initialisation first (meta device), so peak memory stays near one copy in ``dtype``.
- :func:`infer_config`, :func:`save_checkpoint` (``loading``).
- ``convnext.ConvNeXtTeacher``: the blurry branch's frozen ConvNeXt teacher for training (VICRegL
  ConvNeXt-XL from a local checkpoint, or ``tiny(seed)``), with ``convnext.blur_augment``.

Exactness: against the reference fixtures made with the official code (ridge, backbone,
clip_voxels, the prior network and its intermediates, classifier-free guidance, DDIM and DDPM
loops replayed with the recorded noise, the blurry branch) every output agrees to 1e-5 (1e-4 for
the diffusers-decoded blurry latent); ``state_dict()`` has exactly the official keys, shapes and
order for the h=4096 blurry and h=1024 models. Half precision follows dalle2's rules (LayerNorm
eps 1e-3 for non-float32 activations); the noise schedule and rotary frequencies stay float32.
Memory: the h=1024 model is 722 M parameters (1.4 GB in fp16), the h=4096 blurry one 2.2 G
(4.5 GB in fp16).
"""

from rtrecon.models.config import MindEye2Config
from rtrecon.models.loading import infer_config, load_official, save_checkpoint
from rtrecon.models.mindeye import EncodeOutput, MindEye2

__all__ = ["MindEye2", "MindEye2Config", "EncodeOutput", "load_official", "infer_config", "save_checkpoint"]
