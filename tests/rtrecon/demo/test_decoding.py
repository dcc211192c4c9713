"""The demo's decoder against the world's noise ceiling, and the shuffled world that must fall to chance.

The world is the demo's default (high-SNR), as small as the shortened demo (2 subjects × 2 sessions ×
1 run); the decoder is the demo's recipe without the prior (retrieval is what is measured here),
fine-tuned on session 1, tested on session 2's released betas. Thresholds are not tuned constants:
each is derived from what the betas carry -- the top-1 of an oracle that knows the world's true
responses (:func:`rtrecon.data.synthetic.ceiling_ranks`) -- and from the spread of chance (3
binomial standard errors). The control world (each trial's response that of a random image,
same subjects and design) gives the same decoder nothing to find: its top-1, its two-way
identification and the oracle's own top-1 fall to chance.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtrecon.data.nsd import NSDDataset
from rtrecon.data.synthetic import ceiling_ranks, load_truth, ncsnr
from rtrecon.demo.cache import cached_dataset, cached_decoder
from rtrecon.demo.training import DecoderRecipe, zscore
from rtrecon.report.metrics import retrieval_ranks, top_k, two_way_identification

#: The shortened demo's world, in the demo's default noise; the recipe is the demo's, shortened.
WORLD = dict(n_subjects=2, n_sessions=2, n_runs=1, size="small", seed=0, world="high-snr")
RECIPE = DecoderRecipe(hidden_dim=64, pretrain_epochs=4, finetune_epochs=8, use_prior=False)
#: Share of the way from chance to the oracle's top-1 the decoder must reach on released betas.
CEILING_SHARE = 0.25


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    cache = tmp_path_factory.mktemp("decoding")
    real, _ = cached_dataset(**WORLD, root=cache, progress=False)
    shuffled, _ = cached_dataset(**WORLD, shuffled=True, root=cache, progress=False)
    checkpoint, _ = cached_decoder(real, {2: [1, 2]}, 1, [1], RECIPE, root=cache, progress=False)
    return real, shuffled, checkpoint


def _decode(root, checkpoint):
    import torch

    from rtrecon.models import load_official

    nsd = NSDDataset(root)
    ids = np.array([t.image_id for t in nsd.trials(1) if t.session == 2])
    gallery = np.unique(ids)
    betas = nsd.betas(1, 2, mask=nsd.roi_mask(1))
    model = load_official(checkpoint).eval()
    with torch.inference_mode():
        embeddings = model.encode(torch.from_numpy(zscore(betas)), 0).clip_voxels_norm.numpy()
    targets = load_truth(root)["embeddings"]
    ranks = retrieval_ranks(embeddings, targets[gallery - 1], np.searchsorted(gallery, ids))
    oracle = ceiling_ranks(root, 1, betas, ids, gallery)
    # MindEye2's two-way identification of the decoded embeddings against the seen images' own
    two_way = two_way_identification(embeddings, targets[ids - 1].reshape(len(ids), -1))
    return ranks, oracle, two_way, len(gallery)


def test_retrieval_only_trains_no_prior(worlds):
    import torch

    from rtrecon.models import load_official

    _, _, checkpoint = worlds
    assert load_official(checkpoint).config.use_prior is False
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["model_state_dict"]
    assert not any("prior" in k for k in state)


def _chance_band(n_trials: int, gallery: int) -> float:
    """Chance top-1 plus 3 binomial standard errors."""
    p = 1.0 / gallery
    return p + 3.0 * np.sqrt(p * (1 - p) / n_trials)


def test_the_worlds_snr_is_the_documented_one_and_the_control_has_none(worlds):
    real, shuffled, _ = worlds
    assert real != shuffled  # the cache keys them apart
    assert 0.55 < np.median(ncsnr(real, 1)) < 0.85  # high-snr: the top of NSD's range (docs: 0.63-0.71 at 4 sessions)
    assert np.median(ncsnr(shuffled, 1)) < 0.1


def test_decoder_reaches_a_share_of_the_noise_ceiling_and_the_shuffled_world_falls_to_chance(worlds):
    real, shuffled, checkpoint = worlds
    ranks, oracle, two_way, gallery = _decode(real, checkpoint)
    chance, band = 1.0 / gallery, _chance_band(len(ranks), gallery)
    ceiling = top_k(oracle, 1)
    print(f"\ngallery {gallery}: decoder top-1 {top_k(ranks, 1):.3f} top-5 {top_k(ranks, 5):.3f} two-way {two_way:.3f}; "
          f"oracle top-1 {ceiling:.3f}; chance {chance:.3f} (+3 SE {band:.3f})")
    assert ceiling > band  # the betas carry the image
    assert top_k(ranks, 1) >= max(band, chance + CEILING_SHARE * (ceiling - chance))
    assert top_k(ranks, 5) > top_k(ranks, 1)

    s_ranks, s_oracle, s_two_way, s_gallery = _decode(shuffled, checkpoint)
    s_band = _chance_band(len(s_ranks), s_gallery)
    print(f"shuffled world: decoder top-1 {top_k(s_ranks, 1):.3f} two-way {s_two_way:.3f}; oracle top-1 {top_k(s_oracle, 1):.3f}")
    assert top_k(s_ranks, 1) <= s_band and top_k(s_oracle, 1) <= s_band
    # two-way identification under chance: mean 0.5, spread about 0.29/sqrt(n) per trial averaged over n
    assert abs(s_two_way - 0.5) < 3 * 0.29 / np.sqrt(len(s_ranks)) < two_way - 0.5
