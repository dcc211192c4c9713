"""The reconstruction: the SDXL unCLIP image model (MindEye2's last stage) in diffusers.

Modules, one concern each:

- :mod:`~rtrecon.reconstruction.config`: the unCLIP UNet/VAE configurations as data (the official
  ``unclip6.yaml`` values, a tiny one for CPU tests, a small one for the synthetic world).
- :mod:`~rtrecon.reconstruction.unet`, :mod:`~rtrecon.reconstruction.vae`: diffusers model builders.
- :mod:`~rtrecon.reconstruction.conversion`: the official sgm checkpoint to a diffusers folder.
- :mod:`~rtrecon.reconstruction.conditioning`: the 1024-d size/crop vector, the unconditional input,
  the output mapping.
- :mod:`~rtrecon.reconstruction.schedulers`: the official 38-step Euler EDM schedule and the few-step
  Karras schedules, as diffusers schedulers.
- :mod:`~rtrecon.reconstruction.unclip`: ``UnclipReconstructor(tokens) -> images``.
- :mod:`~rtrecon.reconstruction.train_synthetic`: trains a small reconstructor on (images, tokens) arrays.
- :mod:`~rtrecon.reconstruction.weights`: the synthetic world's trained reconstructor, shipped with rtrecon.
- :mod:`~rtrecon.reconstruction.distill_lcm`: latent-consistency distillation of a reconstructor's UNet (GPU).
- :mod:`~rtrecon.reconstruction.convert_cli`: the ``rtrecon convert-unclip`` command.
"""

from rtrecon._compat import import_torchvision

# diffusers imports torchvision; the pinned CPU wheels need the shim first (rtrecon/_compat.py).
import_torchvision()
