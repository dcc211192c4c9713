"""rtrecon.train.evaluate: repeat averaging and top-1 retrieval in both directions."""

import numpy as np
import pytest
import torch

from rtrecon.models import MindEye2, MindEye2Config
from rtrecon.train.data import SubjectData
from rtrecon.train.evaluate import average_repeats, retrieval_accuracy


def test_average_repeats():
    s = SubjectData(np.array([[1.0, 1], [3, 3], [5, 5]]), [7, 2, 7])
    betas, ids = average_repeats(s)
    assert ids.tolist() == [2, 7]
    np.testing.assert_allclose(betas, [[3, 3], [3, 3]])


def test_perfect_and_chance_retrieval():
    torch.manual_seed(0)
    model = MindEye2(MindEye2Config.tiny()).eval()
    rng = np.random.default_rng(0)
    betas = rng.standard_normal((40, 50)).astype(np.float32)
    subject = SubjectData(betas, np.arange(40))
    with torch.no_grad():
        own = model.encode(torch.from_numpy(betas), 0).clip_voxels.numpy()
    perfect = retrieval_accuracy(model, subject, own, n=30, loops=4)
    assert perfect["fwd_top1"] == 1.0 and perfect["bwd_top1"] == 1.0 and perfect["n"] == 30
    shuffled = retrieval_accuracy(model, subject, own[rng.permutation(40)], n=30, loops=4)
    assert shuffled["fwd_top1"] < 0.3
    assert shuffled["chance"] == pytest.approx(1 / 30)
