"""Weights that ship with rtrecon: the synthetic world's trained unCLIP model.

``synthetic_unclip/`` is an unCLIP folder (``unet/``, ``vae/`` safetensors, ``unclip.json``) of
:data:`~rtrecon.reconstruction.config.SYNTHETIC`, trained by :mod:`rtrecon.reconstruction.train_synthetic` on
pairs of the synthetic world's images and its tiny OpenCLIP tokens (``training.json`` records the
run, ``heldout_metrics.json`` its held-out figures, ``heldout_grid.png`` held-out scenes above their
reconstructions). The synthetic images and tokens are a pure
function of their seeds, so these weights stay valid for every synthetic dataset whose embedder is
``OpenClipImageEmbedder.tiny(seed=0)`` (:mod:`rtrecon.data.synthetic`'s, at either size preset).

>>> reconstructor = load_synthetic_reconstructor()
>>> images = reconstructor(tokens, SamplingOptions.fast(steps=4))   # (B, 3, 32, 32) in [0, 1]
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch

__all__ = ["SYNTHETIC_UNCLIP", "load_synthetic_reconstructor", "synthetic_reconstructor_path"]

#: The folder name of the synthetic world's reconstructor inside this package.
SYNTHETIC_UNCLIP = "synthetic_unclip"


def synthetic_reconstructor_path() -> Path:
    """The shipped synthetic reconstructor's folder, as a file-system path (what session configs name)."""
    # The engine runs in another process and reads the folder by path, so the package must be
    # installed as plain files (as pip installs it), not run from a zip archive.
    folder = Path(str(files(__name__) / SYNTHETIC_UNCLIP))
    if not (folder / "unclip.json").is_file():
        raise FileNotFoundError(f"{folder}: the synthetic unCLIP model's weights are missing from this install of rtrecon")
    return folder


def load_synthetic_reconstructor(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped synthetic reconstructor as an :class:`~rtrecon.reconstruction.unclip.UnclipReconstructor`."""
    from rtrecon.reconstruction.unclip import UnclipReconstructor

    return UnclipReconstructor.from_pretrained(synthetic_reconstructor_path(), device=device, dtype=dtype)
