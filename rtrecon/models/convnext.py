"""The blurry branch's teacher: ConvNeXt feature tokens of an image (MindEye2's ``ConvnextXL``).

MindEye2 trains the blurry branch's 49x512 tokens (``blurry_aux``) with a soft contrastive loss
against the features of a frozen ConvNeXt-XL from VICRegL (``convnext_xlarge_alpha0.75_fullckpt.pth``):
the ConvNeXt trunk's last-stage tokens (7x7 for a 224-px image), a per-token LayerNorm, and the
VICRegL ``maps_projector`` MLP (2048-512-512-512: Linear, LayerNorm, ReLU, Linear, LayerNorm,
ReLU, Linear without bias). Source: MedARC-AI/MindEyeV2 ``src/convnext.py`` and ``Train.ipynb``
(the images are normalised with mean (0.485, 0.456, 0.406), std (0.228, 0.224, 0.225) and
augmented with ``blur_augs``), facebookresearch/VICRegL ``convnext.py``.

The trunk is torchvision's :class:`~torchvision.models.ConvNeXt` (the same blocks; its
``features`` interleave the stem/downsampling layers and the stages exactly as Meta's
``downsample_layers``/``stages``). VICRegL trains without layer scale
(``layer_scale_init_value=0``), so the torchvision blocks' layer scales are fixed at 1.

API::

    teacher = ConvNeXtTeacher.from_vicregl("convnext_xlarge_alpha0.75_fullckpt.pth")  # local file
    teacher = ConvNeXtTeacher.tiny(seed=0)       # seeded random, small: synthetic world and tests
    tokens = teacher(images)                     # images (B,3,H,W) in [0,1] -> (B, 49, 512)
    augmented = blur_augment(images)             # the official blur_augs, drawn per image

``forward`` resizes to ``image_size`` (224), normalises, and returns the projector tokens.
The teacher is frozen (``requires_grad_(False)``, eval mode) from construction on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rtrecon._compat import import_torchvision

__all__ = ["ConvNeXtTeacherConfig", "ConvNeXtTeacher", "blur_augment", "convert_vicregl_state_dict"]

#: ImageNet-style normalisation of MindEye2's ConvNeXt input (its std, 0.228, as upstream).
MEAN, STD = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)


@dataclass(frozen=True)
class ConvNeXtTeacherConfig:
    """Trunk depths/widths, projector widths (the last one is the token size) and input size."""

    depths: tuple[int, ...] = (3, 3, 27, 3)
    dims: tuple[int, ...] = (256, 512, 1024, 2048)
    projector: tuple[int, ...] = (512, 512, 512)
    image_size: int = 224

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.dims) != 4:
            raise ValueError(f"ConvNeXt has 4 stages; got depths {self.depths}, dims {self.dims}")
        if not self.projector:
            raise ValueError("the maps projector needs at least one layer")


def _projector(in_dim: int, widths: tuple[int, ...]) -> nn.Sequential:
    """VICRegL's ``MLP(spec, embedding, 'layer_norm')``: (Linear, LayerNorm, ReLU)*, Linear(bias=False)."""
    sizes = (in_dim, *widths)
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class ConvNeXtTeacher(nn.Module):
    """Frozen ConvNeXt trunk + token LayerNorm + maps projector: ``(B,3,H,W)`` in [0,1] -> ``(B, hw, D)``."""

    def __init__(self, config: ConvNeXtTeacherConfig = ConvNeXtTeacherConfig()) -> None:
        super().__init__()
        import_torchvision()
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        self.config = config
        stages = [CNBlockConfig(d, config.dims[i + 1] if i < 3 else None, n)
                  for i, (d, n) in enumerate(zip(config.dims, config.depths))]
        self.trunk = ConvNeXt(stages, stochastic_depth_prob=0.0, layer_scale=1.0).features
        self.norm = nn.LayerNorm(config.dims[-1], eps=1e-6)
        self.maps_projector = _projector(config.dims[-1], config.projector)
        self.register_buffer("mean", torch.tensor(MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def n_tokens(self) -> int:
        return (self.config.image_size // 32) ** 2

    @classmethod
    def tiny(cls, seed: int = 0) -> ConvNeXtTeacher:
        """A small ConvNeXt with seeded random weights and the official 512-d tokens (49 per image)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(ConvNeXtTeacherConfig(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), projector=(64, 512)))

    @classmethod
    def from_vicregl(cls, path: str | os.PathLike, config: ConvNeXtTeacherConfig = ConvNeXtTeacherConfig()) -> ConvNeXtTeacher:
        """The official teacher from a local VICRegL full checkpoint (``{'model': {'module.backbone...'}}``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ConvNeXt checkpoint")
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises several types for foreign or corrupt files
            raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from err
        teacher = cls(config)
        sd = convert_vicregl_state_dict(raw.get("model", raw) if isinstance(raw, dict) else raw, str(path))
        expected = teacher.state_dict()
        missing = [k for k in expected if k not in sd]
        if missing:
            raise ValueError(f"{path}: not a VICRegL ConvNeXt with a maps projector; missing {missing[:5]}"
                             f"{' ...' if len(missing) > 5 else ''}")
        bad = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
        if bad:
            raise ValueError(f"{path}: shapes do not match the configured ConvNeXt: {bad[:5]}")
        teacher.load_state_dict({k: sd[k] for k in expected}, strict=True)
        return teacher

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        x = images.to(self.mean.dtype)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = self.trunk((x - self.mean) / self.std)
        return self.maps_projector(self.norm(x.flatten(2).transpose(1, 2)))


def convert_vicregl_state_dict(sd: dict[str, torch.Tensor], name: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Meta ConvNeXt + maps projector keys (VICRegL, ``module.`` prefix optional) -> this module's keys.

    ``backbone.downsample_layers.i.*`` / ``backbone.stages.i.j.*`` become torchvision's
    ``features.{2i}.*`` / ``features.{2i+1}.j.block.*`` (dwconv 0, norm 2, pwconv1 3, pwconv2 5),
    ``backbone.norm`` the token LayerNorm; the layer scales are set to 1 (VICRegL has none). Keys
    of the other VICRegL heads (global projector, classifier) are dropped.
    """
    block = {"dwconv": "0", "norm": "2", "pwconv1": "3", "pwconv2": "5"}
    out: dict[str, torch.Tensor] = {}
    dims: dict[int, int] = {}
    for key, value in sd.items():
        k = key.removeprefix("module.")
        parts = k.split(".")
        if k.startswith("backbone.downsample_layers."):
            i = int(parts[2])
            out[".".join(["trunk", str(2 * i), *parts[3:]])] = value
        elif k.startswith("backbone.stages."):
            i, j, sub = int(parts[2]), parts[3], parts[4]
            if sub == "gamma":
                continue  # absent in VICRegL; the official teacher would ignore it too
            if sub not in block:
                raise ValueError(f"{name}: unexpected ConvNeXt block key {key!r}")
            out[".".join(["trunk", str(2 * i + 1), j, "block", block[sub], *parts[5:]])] = value
            if sub == "dwconv" and parts[-1] == "weight":
                dims[i] = value.shape[0]
                out[f"trunk.{2 * i + 1}.{j}.layer_scale"] = torch.ones(value.shape[0], 1, 1, dtype=value.dtype)
        elif k.startswith("backbone.norm."):
            out["norm." + parts[-1]] = value
        elif k.startswith("maps_projector."):
            out[k] = value
    if not dims:
        raise ValueError(f"{name}: no 'backbone.stages.*' keys; not a VICRegL ConvNeXt checkpoint")
    return out


def blur_augment(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """MindEye2's ``blur_augs`` (kornia upstream), drawn independently per image with torchvision.

    ColorJitter(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with p 0.8, RandomGrayscale
    p 0.1, RandomSolarize p 0.1, RandomResizedCrop to ``size`` at 90 % area, square. Images
    ``(B,3,H,W)`` in [0,1]; draws use torch's global generator.
    """
    import_torchvision()
    from torchvision.transforms import v2

    augs = v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        v2.RandomGrayscale(p=0.1),
        v2.RandomSolarize(threshold=0.5, p=0.1),
        v2.RandomResizedCrop((size, size), scale=(0.9, 0.9), ratio=(1.0, 1.0), antialias=True),
    ])
    x = images.float().clamp(0, 1)
    return torch.stack([augs(img) for img in x])
