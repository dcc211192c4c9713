"""Decoder weights that ship with rtrecon: the synthetic world's trained unCLIP decoder.

``synthetic_unclip/`` is a decoder folder (``unet/``, ``vae/`` safetensors, ``unclip.json``) of
:data:`~rtrecon.decoders.config.SYNTHETIC`, trained by :mod:`rtrecon.decoders.train_synthetic` on
pairs of the synthetic world's images and its tiny OpenCLIP tokens (``training.json`` records the
run, ``heldout_metrics.json`` its held-out figures, ``heldout_grid.png`` held-out scenes above their
reconstructions). The synthetic images and tokens are a pure
function of their seeds, so these weights stay valid for every synthetic dataset whose embedder is
``OpenClipImageEmbedder.tiny(seed=0)`` (:mod:`rtrecon.data.synthetic`'s, at either size preset).

>>> decoder = load_synthetic_decoder()
>>> images = decoder(tokens, SamplingOptions.fast(steps=4))   # (B, 3, 32, 32) in [0, 1]
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import torch

__all__ = ["SYNTHETIC_UNCLIP", "load_synthetic_decoder", "synthetic_decoder_path"]

#: The folder name of the synthetic world's decoder inside this package.
SYNTHETIC_UNCLIP = "synthetic_unclip"


def synthetic_decoder_path() -> Path:
    """The shipped synthetic decoder's folder, as a file-system path (what session configs name)."""
    # The engine runs in another process and reads the folder by path, so the package must be
    # installed as plain files (as pip installs it), not run from a zip archive.
    folder = Path(str(files(__name__) / SYNTHETIC_UNCLIP))
    if not (folder / "unclip.json").is_file():
        raise FileNotFoundError(f"{folder}: the synthetic unCLIP decoder's weights are missing from this install of rtrecon")
    return folder


def load_synthetic_decoder(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """The shipped synthetic decoder as an :class:`~rtrecon.decoders.unclip.UnclipDecoder`."""
    from rtrecon.decoders.unclip import UnclipDecoder

    return UnclipDecoder.from_pretrained(synthetic_decoder_path(), device=device, dtype=dtype)
