"""rtrecon.models.convnext: the blurry branch's ConvNeXt teacher, against Meta's ConvNeXt layout."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rtrecon.models.convnext import ConvNeXtTeacher, ConvNeXtTeacherConfig, blur_augment


class _LayerNormCF(nn.Module):
    """Meta's channels-first LayerNorm, written out as in VICRegL's convnext.py."""

    def __init__(self, dim):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * ((x - u) / torch.sqrt(s + 1e-6)) + self.bias[:, None, None]


class _Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2)


class _MetaConvNeXt(nn.Module):
    """The VICRegL / MindEye2 ``ConvnextXL`` module layout (no layer scale), small widths."""

    def __init__(self, depths, dims, projector):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], 4, stride=4), _LayerNormCF(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(_LayerNormCF(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)))
        self.stages = nn.ModuleList([nn.Sequential(*[_Block(d) for _ in range(n)]) for d, n in zip(dims, depths)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        sizes = (dims[-1], *projector)
        layers = []
        for a, b in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU(True)]
        self.maps_projector = nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1], bias=False))

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.maps_projector(self.norm(x.flatten(2).permute(0, 2, 1)))


CONFIG = ConvNeXtTeacherConfig(depths=(1, 2, 1, 1), dims=(8, 16, 24, 32), projector=(16, 16, 512))


def _vicregl_checkpoint(tmp_path):
    torch.manual_seed(3)
    ref = _MetaConvNeXt(CONFIG.depths, CONFIG.dims, CONFIG.projector).eval()
    with torch.no_grad():  # non-trivial norms, so a swapped key cannot pass
        for m in ref.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1, 0.2), m.bias.normal_(0, 0.2)
    sd = {f"module.{k.replace('downsample_layers', 'backbone.downsample_layers').replace('stages', 'backbone.stages')}": v
          for k, v in ref.state_dict().items()}
    sd = {k.replace("module.norm.", "module.backbone.norm."): v for k, v in sd.items()}
    sd["module.projector.0.weight"] = torch.zeros(4, 32)  # VICRegL's global head: not part of the teacher
    path = tmp_path / "convnext_fullckpt.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    return ref, path


def test_vicregl_checkpoint_loads_and_matches_the_official_layout(tmp_path):
    ref, path = _vicregl_checkpoint(tmp_path)
    teacher = ConvNeXtTeacher.from_vicregl(path, CONFIG)
    images = torch.rand(3, 3, 224, 224)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.228, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref((images - mean) / std)
        got = teacher(images)
    assert got.shape == (3, 49, 512)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    # smaller stimuli (the synthetic world's 96 px) are resized to 224 first: still 49 tokens
    assert teacher(torch.rand(2, 3, 96, 96)).shape == (2, 49, 512)


def test_bad_checkpoints_name_the_file(tmp_path):
    _, path = _vicregl_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="convnext_fullckpt.pth: shapes do not match"):
        ConvNeXtTeacher.from_vicregl(path, ConvNeXtTeacherConfig(depths=(1, 2, 1, 1), dims=(8, 16, 24, 48), projector=(16, 16, 512)))
    sd = torch.load(path)["model"]
    torch.save({"model": {k: v for k, v in sd.items() if "maps_projector" not in k}}, tmp_path / "nomaps.pth")
    with pytest.raises(ValueError, match="nomaps.pth: not a VICRegL ConvNeXt with a maps projector"):
        ConvNeXtTeacher.from_vicregl(tmp_path / "nomaps.pth", CONFIG)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        ConvNeXtTeacher.from_vicregl(tmp_path / "absent.pth")


def test_tiny_teacher_is_seeded_and_separates_images():
    a, b, other = ConvNeXtTeacher.tiny(0), ConvNeXtTeacher.tiny(0), ConvNeXtTeacher.tiny(1)
    torch.testing.assert_close(a.state_dict(), b.state_dict())
    assert not torch.equal(a.maps_projector[-1].weight, other.maps_projector[-1].weight)
    images = torch.rand(4, 3, 96, 96)
    feats = F.normalize(a(images).flatten(1), dim=-1)
    sim = feats @ feats.T
    assert (sim.argmax(1) == torch.arange(4)).all() and sim.diag().min() > sim.fill_diagonal_(0).max()


def test_blur_augment_draws_per_image():
    images = torch.rand(1, 3, 96, 96).expand(6, -1, -1, -1)
    torch.manual_seed(0)
    out = blur_augment(images)
    assert out.shape == (6, 3, 224, 224) and out.min() >= 0 and out.max() <= 1
    assert len({round(float(x.sum()), 3) for x in out}) > 1  # the same image, different augmentations
    torch.manual_seed(0)
    torch.testing.assert_close(blur_augment(images), out)  # reproducible from torch's seed
