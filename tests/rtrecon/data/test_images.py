"""Tests for rtrecon.data.images (procedural stimulus images)."""

from __future__ import annotations

import numpy as np
import pytest

from rtrecon.data.images import CATEGORIES, TEXTURES, make_images


def test_images_are_deterministic_uint8_rgb_and_independent_of_count() -> None:
    a, info = make_images(6, size=40, seed=1)
    assert a.shape == (6, 40, 40, 3) and a.dtype == np.uint8
    b, _ = make_images(3, size=40, seed=1)
    np.testing.assert_array_equal(a[:3], b)  # image i does not depend on how many are drawn
    c, _ = make_images(3, size=40, seed=2)
    assert not np.array_equal(b, c)
    assert len(info) == 6 and all(i["category"] in CATEGORIES and i["texture"] in TEXTURES for i in info)


def test_images_vary_in_content_and_use_the_full_range() -> None:
    imgs, info = make_images(40, size=48, seed=0)
    flat = imgs.reshape(40, -1).astype(float)
    corr = np.corrcoef(flat)
    assert corr[np.triu_indices(40, 1)].mean() < 0.8  # not near-copies of one picture
    assert imgs.std() > 30 and imgs.min() < 30 and imgs.max() > 220
    assert len({i["category"] for i in info}) >= 4 and len({i["n_objects"] for i in info}) >= 2


def test_the_main_object_is_drawn_where_its_info_says() -> None:
    imgs, info = make_images(150, size=64, seed=5)
    hits = candidates = 0
    for img, meta in zip(imgs, info):
        if meta["n_objects"] != 1 or meta["texture"] != "plain":
            continue
        colour = np.array([int(meta["colour"][k : k + 2], 16) for k in (1, 3, 5)])
        dist = np.abs(img.astype(int) - colour).sum(-1)
        ys, xs = np.nonzero(dist < 60)
        candidates += 1
        if len(xs):
            hits += abs(xs.mean() / 63 - meta["x"]) < 0.2 and abs(ys.mean() / 63 - meta["y"]) < 0.25
    assert candidates >= 5 and hits >= 0.6 * candidates


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="size"):
        make_images(2, size=4)
