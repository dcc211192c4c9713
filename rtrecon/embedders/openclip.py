"""OpenCLIP image-token embedder: the target space of the MindEye2 decoder.

MindEye2 regresses fMRI onto the **256 × 1664 output tokens of OpenCLIP ViT-bigG/14** (the
vision transformer's patch tokens after its final LayerNorm, before the projection to the joint
embedding; the class token is dropped). Its reference implementation, Stability's
``sgm.modules.encoders.modules.FrozenOpenCLIPImageEmbedder(output_tokens=True, only_tokens=True)``,
preprocesses by resizing to 224 (bicubic, ``align_corners=True``, antialiased), computing
``(x + 1) / 2`` -- i.e. it assumes inputs in [-1, 1] -- and normalising with the OpenAI CLIP
mean/std. MindEye2 feeds it images in **[0, 1]**, so the released checkpoints target embeddings
of [0, 1] images squeezed into [0.5, 1]. ``quirk=True`` (the default) reproduces that exactly;
``quirk=False`` is the standard CLIP preprocessing of [0, 1] images.

Two ways to build one, through the same ``open_clip.create_model`` call:

* ``OpenClipImageEmbedder.from_local(path)`` loads local OpenCLIP weights: a full CLIP checkpoint
  (for bigG the ``laion2b_s39b_b160k`` checkpoint a user downloaded; nothing is fetched here), or
  the vision tower alone, as ``rtrecon convert-unclip`` writes it from the unCLIP checkpoint
  (``image_encoder/open_clip_visual.safetensors``, ``visual.*`` keys only). The vision tower is
  all that image embedding uses, so the second is enough: it is built alone (no text tower) and
  loaded strictly.
* ``OpenClipImageEmbedder.tiny(seed)`` builds a small ViT of the same family (``TINY_MODEL_CFG``
  overrides the bigG config) with seeded random weights. It is the synthetic world's "CLIP"
  (``rtrecon.data.synthetic``) and runs every code path on a CPU in milliseconds.

Only the vision tower is kept; the text tower is freed after loading, as in the reference.

``embedder.autocast_dtype = torch.float16`` runs :meth:`OpenClipImageEmbedder.embed` under
autocast (float32 weights), as the decoder's ``fp16-autocast`` precision does.

Example::

    emb = OpenClipImageEmbedder.tiny(seed=0)
    tokens = emb.embed(images_uint8_nhwc)      # (N, emb.num_tokens, emb.dim)
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rtrecon._compat import import_torchvision

import_torchvision()  # open_clip imports torchvision; see rtrecon._compat for why.
import open_clip  # noqa: E402
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD  # noqa: E402

__all__ = [
    "BIGG_ARCH",
    "TINY_MODEL_CFG",
    "OpenClipImageEmbedder",
    "create_openclip_model",
]

BIGG_ARCH = "ViT-bigG-14"

#: Overrides applied to the bigG config for the tiny model: 8×8 patches of a 64 px image give
#: 64 tokens of width 64. The text tower is built (open_clip's CLIP needs one) and then dropped.
TINY_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 16, "mlp_ratio": 2.0, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def create_openclip_model(
    arch: str = BIGG_ARCH,
    pretrained: str | Path | None = None,
    model_cfg: dict[str, Any] | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> torch.nn.Module:
    """Build a full OpenCLIP model with ``open_clip.create_model``.

    ``pretrained`` is a local checkpoint file (never a hub tag: an unknown path is an error, not
    a download). ``model_cfg`` entries replace the named architecture's top-level config
    entries (``embed_dim``, ``vision_cfg``, ``text_cfg``). ``seed`` makes the random
    initialisation reproducible without touching the caller's global RNG state.
    """
    pretrained_arg: str | None = None
    if pretrained is not None:
        path = Path(pretrained)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: OpenCLIP weights not found (expected a local checkpoint file for {arch}, "
                "e.g. open_clip_pytorch_model.bin of laion2b_s39b_b160k for ViT-bigG-14)"
            )
        pretrained_arg = str(path)
    kwargs = copy.deepcopy(model_cfg or {})
    root = logging.getLogger()
    quiet = _RandomInitIsIntended()
    if pretrained_arg is None:
        root.addFilter(quiet)
    try:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            model = open_clip.create_model(
                arch, pretrained=pretrained_arg, require_pretrained=pretrained_arg is not None,
                device=device, precision=precision, **kwargs,
            )
    except RuntimeError as err:
        if pretrained_arg is None:
            raise
        raise ValueError(f"{pretrained_arg}: not loadable as {arch} weights ({err})") from err
    finally:
        root.removeFilter(quiet)
    return model.eval()


class _RandomInitIsIntended(logging.Filter):
    """Drops open_clip's warning that a model was "initialized randomly" (sent to the root logger
    whenever no weights are loaded). Without ``pretrained`` random weights are what was asked
    for (the synthetic world's seeded CLIP, a model to train), and the warning would tell
    whoever runs the demo that something went wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name == "root" and record.getMessage().startswith("No pretrained weights loaded"))


class OpenClipImageEmbedder(torch.nn.Module):
    """Images → OpenCLIP vision-transformer output tokens ``(N, num_tokens, dim)``.

    Parameters
    ----------
    visual:
        An open_clip ``VisionTransformer`` (``model.visual``).
    quirk:
        Reproduce MindEye2's input-range quirk: ``(x + 1) / 2`` applied to [0, 1] images before
        the CLIP normalisation (see the module docstring). ``False``: standard preprocessing.
    """

    def __init__(self, visual: torch.nn.Module, quirk: bool = True) -> None:
        super().__init__()
        if not hasattr(visual, "output_tokens") or not hasattr(visual, "image_size"):
            raise TypeError(f"expected an open_clip VisionTransformer, got {type(visual).__name__}")
        visual.output_tokens = True
        self.visual = visual.eval().requires_grad_(False)
        self.quirk = bool(quirk)
        self.register_buffer("mean", torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1), persistent=False)
        grid = visual.grid_size
        self._num_tokens = int(grid[0] * grid[1])
        self._dim = int(visual.conv1.out_channels)
        #: Half dtype :meth:`embed` autocasts to (None: no autocast).
        self.autocast_dtype: torch.dtype | None = None

    @classmethod
    def from_local(
        cls,
        weights_path: str | Path,
        arch: str = BIGG_ARCH,
        quirk: bool = True,
        model_cfg: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> OpenClipImageEmbedder:
        """Load local OpenCLIP weights and keep the vision tower.

        ``weights_path`` is a full CLIP checkpoint, or a ``.safetensors`` file of the vision tower
        alone (``visual.*`` keys, as ``rtrecon convert-unclip`` writes it): enough for image
        embedding, which never uses the text tower.
        """
        path = Path(weights_path)
        if path.suffix == ".safetensors" and path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            if keys and all(k.startswith("visual.") for k in keys):
                return cls.from_visual_weights(path, arch, quirk, model_cfg, device, precision)
        model = create_openclip_model(arch, weights_path, model_cfg, device=device, precision=precision)
        return cls(model.visual, quirk=quirk)

    @classmethod
    def from_visual_weights(
        cls,
        weights_path: str | Path,
        arch: str = BIGG_ARCH,
        quirk: bool = True,
        model_cfg: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> OpenClipImageEmbedder:
        """The vision tower alone from a ``visual.*`` safetensors file (strict: every key, every shape)."""
        from open_clip.model import _build_vision_tower
        from safetensors.torch import load_file

        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if precision not in dtypes:
            raise ValueError(f"precision {precision!r}: a vision tower loads as one of {', '.join(dtypes)}")
        path = Path(weights_path)
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise ValueError(f"{arch}: not an OpenCLIP architecture")
        cfg = {**copy.deepcopy(cfg), **copy.deepcopy(model_cfg or {})}
        state = {k[len("visual."):]: v for k, v in load_file(str(path)).items()}
        with torch.device("meta"):  # no random initialisation of 1.8 B parameters only to overwrite them
            visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg.get("quick_gelu", False))
        try:
            visual.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: not the {arch} vision tower ({err})") from None
        return cls(visual.to(device=device, dtype=dtypes[precision]), quirk=quirk)

    @classmethod
    def tiny(cls, seed: int = 0, quirk: bool = True, device: str | torch.device = "cpu") -> OpenClipImageEmbedder:
        """A small ViT with seeded random weights, built by the same code as bigG."""
        model = create_openclip_model(BIGG_ARCH, None, TINY_MODEL_CFG, seed=seed, device=device)
        return cls(model.visual, quirk=quirk)

    @property
    def num_tokens(self) -> int:
        """Number of output tokens (256 for bigG: the 16×16 patch grid, class token dropped)."""
        return self._num_tokens

    @property
    def dim(self) -> int:
        """Token width before the projection (1664 for bigG)."""
        return self._dim

    @property
    def image_size(self) -> int:
        """Side length the images are resized to (224 for bigG)."""
        return int(self.visual.image_size[0])

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] → normalised model input."""
        size = tuple(int(s) for s in self.visual.image_size)
        if tuple(x.shape[-2:]) != size:
            # The reference resizes with kornia (bicubic, align_corners, antialias); torch's own
            # antialiased bicubic differs from kornia's blur-then-resize by a few 1e-3. MindEye2
            # feeds 224-px images, where both are the identity.
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=True, antialias=True)
        if self.quirk:
            x = (x + 1.0) / 2.0
        return (x - self.mean.to(x)) / self.std.to(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] → tokens (N, num_tokens, dim)."""
        _, tokens = self.visual(self.preprocess(x))
        return tokens

    def embed(self, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embed a batch of images without gradients.

        ``images`` is either uint8 (N, H, W, 3) RGB (numpy or torch, as stored in
        ``nsd_stimuli.hdf5``) or float (N, 3, H, W) in [0, 1]. Returns float tokens
        (N, num_tokens, dim) on the embedder's device.
        """
        x = torch.as_tensor(images)
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (4-D), got shape {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            if x.shape[-1] != 3:
                raise ValueError(f"uint8 images must be (N, H, W, 3), got shape {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2)
        elif not x.is_floating_point() or x.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) or float (N, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
        param = self.visual.conv1.weight
        out = []
        autocast = (torch.autocast(param.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            for start in range(0, x.shape[0], batch_size):
                chunk = x[start : start + batch_size].to(param.device)
                chunk = chunk.to(param.dtype) / 255.0 if chunk.dtype == torch.uint8 else chunk.to(param.dtype)
                out.append(self(chunk).float() if self.autocast_dtype is not None else self(chunk))
        if not out:
            return torch.empty(0, self.num_tokens, self.dim, dtype=param.dtype, device=param.device)
        return torch.cat(out)
