"""rtrecon.runtime.retrieval: top-k retrieval and pairmate distinctiveness."""

import numpy as np
import pytest
import torch

from rtrecon.runtime.retrieval import Retriever, pairmate_distinctiveness


def test_topk_finds_the_noisy_copies_in_order():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(20, 4, 8)).astype(np.float32)
    ids = [f"img{i}" for i in range(20)]
    retriever = Retriever(gallery, ids)
    pred = gallery[[3, 11]] * 5 + 0.1 * rng.normal(size=(2, 4, 8))  # scale must not matter
    top, scores = retriever.topk(pred, k=3)
    assert [row[0] for row in top] == ["img3", "img11"]
    assert scores.shape == (2, 3) and torch.all(scores[:, :-1] >= scores[:, 1:])
    assert scores[0, 0] == pytest.approx(1.0, abs=0.01)


def test_pairmate_distinctiveness_landmarks():
    rng = np.random.default_rng(1)
    correct, foil = rng.normal(size=(1, 32)), rng.normal(size=(1, 32))
    c = correct / np.linalg.norm(correct)
    f = foil / np.linalg.norm(foil)
    assert pairmate_distinctiveness(correct * 3, correct, foil).item() == pytest.approx(1.0, abs=1e-5)
    assert pairmate_distinctiveness(foil, correct, foil).item() == pytest.approx(-1.0, abs=1e-5)
    mid = (c + f) / 2  # the normalised midpoint direction lies on the perpendicular bisector
    assert pairmate_distinctiveness(mid, correct, foil).item() == pytest.approx(0.0, abs=1e-5)
    pred = rng.normal(size=(1, 32))
    p = pred / np.linalg.norm(pred)
    expected = 2 * np.dot((p - (c + f) / 2)[0], (c - f)[0]) / np.sum((c - f) ** 2)
    assert pairmate_distinctiveness(pred, correct, foil).item() == pytest.approx(expected, abs=1e-5)


def test_errors_are_explicit():
    with pytest.raises(ValueError, match="3 embeddings but 2 ids"):
        Retriever(np.ones((3, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="features"):
        Retriever(np.ones((3, 4))).topk(np.ones((1, 5)))
    with pytest.raises(ValueError, match="identical"):
        pairmate_distinctiveness(np.ones(4), np.ones(4), np.ones(4))
