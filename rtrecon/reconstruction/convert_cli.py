"""``rtrecon convert-unclip CKPT OUT_DIR``: the official unCLIP checkpoint to a diffusers folder.

Reads MindEye2's ``unclip6_epoch0_step110000.ckpt`` (sgm/Lightning) or a ``.safetensors`` copy
and writes the folder :meth:`rtrecon.reconstruction.unclip.UnclipReconstructor.from_pretrained` loads.
Every UNet and VAE tensor must map onto the diffusers models, with its shape, or nothing is
written past the check and the command exits with status 1 naming the file and the keys.
"""

from __future__ import annotations

import argparse
import sys

import torch

__all__ = ["configure", "run"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="the sgm checkpoint (.ckpt with a state_dict, or .safetensors)")
    parser.add_argument("out_dir", help="folder to write (unet/, vae/, scheduler/, image_encoder/, unclip.json)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="precision of the written weights")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in the .ckpt (only for a file from a trusted source)",
    )
    parser.add_argument(
        "--config",
        metavar="UNCLIP_JSON",
        help="architecture as an unclip.json (default: the official unclip6 values)",
    )
    parser.add_argument(
        "--no-image-encoder", action="store_true", help="do not write the OpenCLIP bigG visual tower the checkpoint carries"
    )
    parser.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from rtrecon.reconstruction.config import OFFICIAL
    from rtrecon.reconstruction.conversion import ConversionError, convert_unclip_checkpoint
    from rtrecon.reconstruction.unclip import CONFIG_NAME, load_config

    try:
        config = OFFICIAL
        if ns.config:
            path = Path(ns.config)
            if path.name != CONFIG_NAME or not path.is_file():
                raise FileNotFoundError(f"{path}: --config must be an existing {CONFIG_NAME}")
            config = load_config(path.parent)
        out = convert_unclip_checkpoint(
            ns.checkpoint,
            ns.out_dir,
            config=config,
            dtype=_DTYPES[ns.dtype],
            trust_pickle=ns.trust_pickle,
            image_encoder=not ns.no_image_encoder,
        )
    except (ConversionError, FileNotFoundError, ValueError) as err:
        print(f"convert-unclip: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} (unet/, vae/, scheduler/, unclip.json)")
    return 0
