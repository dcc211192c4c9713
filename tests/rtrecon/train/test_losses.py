"""rtrecon.train.losses: BiMixCo, SoftCLIP, soft contrastive loss, temperature schedule."""

import torch
import torch.nn.functional as F

from rtrecon.train.losses import cosine_anneal, mixco, mixco_nce, soft_clip_loss, soft_cont_loss


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_mixco_nce_without_mixing_is_bidirectional_infonce():
    p, t = _unit(6, 8, 0), _unit(6, 8, 1)
    logits = p @ t.T / 0.1
    labels = torch.arange(6)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(mixco_nce(p, t, 0.1), expected)
    # betas of 1 (nothing mixed) give the same loss as plain InfoNCE
    ones = torch.ones(6)
    torch.testing.assert_close(mixco_nce(p, t, 0.1, torch.randperm(6), ones, torch.zeros(6, dtype=torch.bool)), expected)


def test_mixco_mixes_only_selected_rows():
    torch.manual_seed(0)
    x = torch.randn(32, 5)
    mixed, perm, betas, select = mixco(x.clone())
    assert select.any() and (~select).any()
    torch.testing.assert_close(mixed[~select], x[~select])
    assert torch.all(betas[~select] == 1)
    s = select.nonzero()[0, 0]
    torch.testing.assert_close(mixed[s], betas[s] * x[s] + (1 - betas[s]) * x[perm[s]])


def test_contrastive_losses_prefer_matching_pairs():
    t = _unit(8, 16, 2)
    matched = soft_clip_loss(t, t, 0.05)
    shuffled = soft_clip_loss(t[torch.randperm(8, generator=torch.Generator().manual_seed(0))], t, 0.05)
    assert matched < shuffled
    assert soft_cont_loss(t, t, t, 0.2) < soft_cont_loss(_unit(8, 16, 3), t, t, 0.2)


def test_cosine_anneal_endpoints():
    temps = cosine_anneal(0.004, 0.0075, 5)
    assert abs(temps[0].item() - 0.004) < 1e-7 and abs(temps[-1].item() - 0.0075) < 1e-7
    assert torch.all(temps[1:] >= temps[:-1])
