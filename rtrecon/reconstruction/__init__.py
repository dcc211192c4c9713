"""The SDXL unCLIP image decoder (MindEye2's last stage) in diffusers.

Modules, one concern each:

- :mod:`~rtrecon.decoders.config`: the unCLIP UNet/VAE configurations as data (the official
  ``unclip6.yaml`` values, a tiny one for CPU tests, a small one for the synthetic world).
- :mod:`~rtrecon.decoders.unet`, :mod:`~rtrecon.decoders.vae`: diffusers model builders.
- :mod:`~rtrecon.decoders.conversion`: the official sgm checkpoint to a diffusers folder.
- :mod:`~rtrecon.decoders.conditioning`: the 1024-d size/crop vector, the unconditional input,
  the output mapping.
- :mod:`~rtrecon.decoders.schedulers`: the official 38-step Euler EDM schedule and the few-step
  Karras schedules, as diffusers schedulers.
- :mod:`~rtrecon.decoders.unclip`: ``UnclipDecoder(tokens) -> images``.
- :mod:`~rtrecon.decoders.train_synthetic`: trains a small decoder on (images, tokens) arrays.
- :mod:`~rtrecon.decoders.weights`: the synthetic world's trained decoder, shipped with rtrecon.
- :mod:`~rtrecon.decoders.distill_lcm`: latent-consistency distillation of a decoder's UNet (GPU).
- :mod:`~rtrecon.decoders.convert_cli`: the ``rtrecon convert-unclip`` command.
"""

from rtrecon._compat import import_torchvision

# diffusers imports torchvision; the pinned CPU wheels need the shim first (rtrecon/_compat.py).
import_torchvision()
