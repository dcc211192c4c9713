"""rtrecon.models.backbone: residual MLP mixer, token head and retrieval projector."""

import pytest
import torch

from rtrecon.models import MindEye2Config
from rtrecon.models.backbone import BrainNetwork


@pytest.mark.parametrize("name", ["tiny_fixture", "tiny_fixture_rot"])
def test_reproduces_the_official_backbone(official, name):
    fx = official(name)
    ridge = fx.outputs["voxel_ridge"]
    with torch.no_grad():
        hidden = fx.model.backbone.mixer(ridge)
        backbone, clip_voxels, blurry = fx.model.backbone(ridge)
    assert blurry is None
    for got, want in [(hidden, fx.intermediates["backbone_mixer_out"]), (backbone, fx.outputs["backbone"]),
                      (clip_voxels, fx.outputs["clip_voxels"])]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_two_residual_streams_not_one():
    # The official mixer adds block k's own-stream output, not block2's: a one-stream
    # implementation gives a different result as soon as block2's constant is non-zero.
    torch.manual_seed(0)
    net = BrainNetwork(MindEye2Config.tiny()).eval()
    with torch.no_grad():
        for block in net.mixer_blocks2:
            block[0].bias.fill_(0.5)
        x = torch.randn(2, 1, 32)
        one_stream = x
        for b1, b2 in zip(net.mixer_blocks1, net.mixer_blocks2):
            one_stream = b1(one_stream) + one_stream
            one_stream = (b2(one_stream.transpose(1, 2)) + one_stream.transpose(1, 2)).transpose(1, 2)
        assert not torch.allclose(net.mixer(x), one_stream.flatten(1))


def test_dropout_only_in_training():
    torch.manual_seed(0)
    net = BrainNetwork(MindEye2Config.tiny())
    x = torch.randn(4, 1, 32)
    net.train()
    assert not torch.allclose(net(x)[0], net(x)[0])
    net.eval()
    torch.testing.assert_close(net(x)[0], net(x)[0])
