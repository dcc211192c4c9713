"""The demo decoder's training data: z-scored betas over nsdgeneral, image rows in the targets."""

from __future__ import annotations

import numpy as np
import pytest

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.training import subject_data, zscore


def test_zscore_is_per_voxel_and_leaves_flat_voxels_at_zero():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    z = zscore(x)
    np.testing.assert_allclose(z[:, 0], [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(z[:, 1], 0.0)


def test_subject_data_matches_the_released_betas_and_design(demo_run):
    nsd = NSDDataset(demo_run.dataset)
    data = subject_data(nsd, 1, [1, 2])
    mask = nsd.roi_mask(1)
    assert data.betas.shape == (126, int(mask.sum())) and data.name == "subj01"
    released = nsd.betas(1, 2, mask=mask)
    np.testing.assert_allclose(data.betas[63:], zscore(released), atol=1e-5)
    trials = [t for t in nsd.trials(1) if t.session in (1, 2)]
    np.testing.assert_array_equal(data.image_ids, [t.image_id - 1 for t in trials])


def test_subject_data_rejects_a_session_without_betas(demo_run):
    with pytest.raises(ValueError, match="betas_session03"):
        subject_data(NSDDataset(demo_run.dataset), 1, [3])


def test_the_demo_decoder_has_the_prior_the_engine_reconstructs_from(demo_run):
    """By default the demo trains the prior and the engine decodes its tokens with the shipped unCLIP model."""
    from rtrecon.reconstruction.unclip import load_config
    from rtrecon.reconstruction.weights import synthetic_reconstructor_path
    from rtrecon.demo.training import DecoderRecipe
    from rtrecon.models import load_official

    (checkpoint,) = (demo_run.cache / "decoders").glob("*/finetune/last.pth")
    config = load_official(checkpoint).config
    assert config.use_prior and config.prior_timesteps == DecoderRecipe().prior_timesteps
    session_config = (demo_run.session_dir / "session.toml").read_text()
    assert str(synthetic_reconstructor_path()) in session_config
    decoded = sorted(demo_run.session_dir.glob("derivatives/rtrecon/**/*decoded.npz"))
    assert decoded
    size = load_config(synthetic_reconstructor_path()).image_size
    for path in decoded:
        image = np.load(path)["image"]
        assert image.dtype == np.uint8 and image.shape == (size, size, 3)
        assert image.std() > 0  # a picture, not a blank
