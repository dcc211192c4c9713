"""rtrecon.models.config: the one configuration dataclass."""

import json

import pytest

from rtrecon.models import MindEye2Config


def test_presets_match_the_published_architectures():
    final, rt = MindEye2Config.final(), MindEye2Config.realtime((8627,))
    assert (final.hidden_dim, final.blurry, final.out_dim) == (4096, True, 256 * 1664)
    assert (rt.hidden_dim, rt.blurry, rt.n_voxels) == (1024, False, (8627,))
    assert final.rotary_dim == 32  # min(32, dim_head=52): partial rotary
    assert MindEye2Config.tiny().rotary_dim == 8


def test_json_round_trip():
    cfg = MindEye2Config.tiny(n_voxels=(50, 60), blurry=True)
    again = MindEye2Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.n_voxels == (50, 60)


@pytest.mark.parametrize(
    "bad, match",
    [(dict(n_voxels=()), "n_voxels"), (dict(n_voxels=(0,)), "n_voxels"), (dict(seq_len=2), "seq_len"),
     (dict(prior_rotary_dim=7), "even")],
)
def test_invalid_configs_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        MindEye2Config.tiny().replace(**bad)


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match="hidden_size"):
        MindEye2Config.from_dict({"hidden_size": 3})
