"""Procedurally generated natural-ish stimulus images for the synthetic world.

Each image is a background (a two-colour gradient "horizon" with low-frequency texture) with
one to three objects on it. An object has a category (its shape), a colour, a position, a size
and a surface texture; categories come with typical colours so that category and colour are
correlated, as in natural images. Everything is drawn with numpy from a seeded generator, so the
image set is a pure function of ``(n, size, seed)``.

``make_images(n, size, seed)`` returns ``(images, info)``: uint8 ``(n, size, size, 3)`` RGB and a
list of per-image dicts (``category``, ``colour``, ``texture``, ``x``, ``y``, ``scale`` of the
largest object, and ``n_objects``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["CATEGORIES", "TEXTURES", "make_images"]

#: Object categories and their typical RGB colours (a category's colour is drawn near one of them).
CATEGORIES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "ball": ((0.9, 0.2, 0.1), (0.95, 0.8, 0.1), (0.2, 0.4, 0.9)),
    "house": ((0.7, 0.3, 0.2), (0.85, 0.85, 0.8), (0.5, 0.5, 0.55)),
    "tree": ((0.15, 0.55, 0.15), (0.3, 0.45, 0.1), (0.55, 0.7, 0.2)),
    "animal": ((0.55, 0.35, 0.2), (0.2, 0.2, 0.2), (0.9, 0.85, 0.75)),
    "star": ((0.95, 0.9, 0.3), (0.9, 0.5, 0.1), (0.8, 0.3, 0.6)),
    "fish": ((0.95, 0.5, 0.1), (0.3, 0.6, 0.9), (0.7, 0.7, 0.8)),
}
TEXTURES = ("plain", "stripes", "dots", "checker")

_BACKGROUNDS = (
    ((0.55, 0.75, 0.95), (0.35, 0.6, 0.25)),  # sky over grass
    ((0.6, 0.8, 0.95), (0.85, 0.75, 0.5)),  # sky over sand
    ((0.2, 0.3, 0.6), (0.1, 0.3, 0.5)),  # sea
    ((0.75, 0.72, 0.68), (0.45, 0.4, 0.35)),  # indoor wall over floor
    ((0.15, 0.15, 0.25), (0.25, 0.2, 0.2)),  # night
)


def _shape_mask(category: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft occupancy in [0, 1] of a unit-size object at object coordinates (u, v) ∈ ~[-1, 1]."""
    if category == "ball":
        d = np.hypot(u, v) - 0.8
    elif category == "house":
        body = np.maximum(np.abs(u) - 0.7, np.abs(v - 0.3) - 0.5)
        roof = np.maximum(v + 0.2, np.abs(u) * 0.9 - (v + 0.95) * 0.9)  # triangle above the body
        roof = np.maximum(roof, -(v + 1.0))
        d = np.minimum(body, roof)
    elif category == "tree":
        crown = np.hypot(u / 0.8, (v + 0.3) / 0.6) - 1.0
        trunk = np.maximum(np.abs(u) - 0.15, np.abs(v - 0.65) - 0.35)
        d = np.minimum(crown * 0.6, trunk)
    elif category == "animal":
        body = np.hypot(u / 0.75, (v - 0.1) / 0.45) - 1.0
        head = np.hypot((u - 0.75) / 0.3, (v + 0.35) / 0.3) - 1.0
        legs = np.maximum(np.minimum(np.abs(u - 0.4), np.abs(u + 0.4)) - 0.08, np.abs(v - 0.65) - 0.3)
        d = np.minimum(np.minimum(body, head) * 0.4, legs)
    elif category == "star":
        angle = np.arctan2(v, u)
        radius = 0.55 + 0.3 * np.cos(5 * angle)
        d = np.hypot(u, v) - radius
    elif category == "fish":
        body = np.hypot(u / 0.7, v / 0.4) - 1.0
        tail = np.maximum(u + 0.6, np.abs(v) - (-(u + 0.6)) * 0.8)
        tail = np.maximum(tail, -(u + 1.0))
        d = np.minimum(body * 0.4, tail)
    else:
        raise ValueError(f"unknown category {category!r}")
    return np.clip(0.5 - d * 12.0, 0.0, 1.0)


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, angle: float) -> np.ndarray:
    """Multiplicative brightness pattern around 1."""
    if kind == "plain":
        return np.ones_like(u)
    ru = u * np.cos(angle) + v * np.sin(angle)
    if kind == "stripes":
        return 1.0 + 0.35 * np.sign(np.sin(ru * freq))
    if kind == "dots":
        rv = -u * np.sin(angle) + v * np.cos(angle)
        return 1.0 - 0.45 * ((np.sin(ru * freq) * np.sin(rv * freq)) > 0.5)
    rv = -u * np.sin(angle) + v * np.cos(angle)
    return 1.0 + 0.3 * np.sign(np.sin(ru * freq) * np.sin(rv * freq))


def _one_image(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, dict]:
    top, bottom = (np.asarray(c) for c in _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))])
    tint = rng.normal(0.0, 0.06, 3)
    horizon = rng.uniform(0.3, 0.7)
    blend = 1.0 / (1.0 + np.exp(-(yy - horizon) * rng.uniform(8, 40)))
    img = (top + tint) * (1 - blend[..., None]) + (bottom + tint) * blend[..., None]
    # Low-frequency texture: a few random plane waves, as clouds, grass or wall grain.
    for _ in range(3):
        k = rng.normal(0, rng.uniform(3, 20), 2)
        img *= 1.0 + 0.05 * np.sin(k[0] * xx + k[1] * yy + rng.uniform(0, 2 * np.pi))[..., None]

    names = list(CATEGORIES)
    n_objects = int(rng.choice([1, 1, 2, 3]))
    objects = []
    for _ in range(n_objects):
        category = names[rng.integers(len(names))]
        colour = np.clip(np.asarray(CATEGORIES[category][rng.integers(3)]) + rng.normal(0, 0.08, 3), 0, 1)
        texture = TEXTURES[rng.integers(len(TEXTURES))]
        scale = rng.uniform(0.12, 0.35)
        cx, cy = rng.uniform(0.2, 0.8, 2)
        objects.append((scale, category, colour, texture, cx, cy))
    # Largest first is the "main" object; smaller ones drawn after it sit in front.
    objects.sort(key=lambda o: -o[0])
    for scale, category, colour, texture, cx, cy in objects:
        u = (xx - cx) / scale
        v = (yy - cy) / scale
        mask = _shape_mask(category, u, v)
        shade = _texture(texture, u, v, rng.uniform(4, 12), rng.uniform(0, np.pi)) * (1.0 - 0.25 * v.clip(-1, 1))
        img = img * (1 - mask[..., None]) + (colour * shade[..., None]) * mask[..., None]
    img = img + rng.normal(0, 0.015, img.shape)  # sensor grain
    scale, category, colour, texture, cx, cy = objects[0]
    info = {
        "category": category,
        "colour": "#%02x%02x%02x" % tuple(int(c * 255) for c in colour),
        "texture": texture,
        "x": float(cx),
        "y": float(cy),
        "scale": float(scale),
        "n_objects": n_objects,
    }
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), info


def make_images(n: int, size: int = 96, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """Draw ``n`` images of ``size``×``size`` pixels; deterministic for ``seed``."""
    if n < 0 or size < 8:
        raise ValueError(f"need n >= 0 and size >= 8, got n={n}, size={size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / (size - 1)
    images = np.empty((n, size, size, 3), np.uint8)
    info = []
    # One child generator per image: image i does not depend on how many images come before it.
    for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
        images[i], meta = _one_image(np.random.default_rng(child), size, yy, xx)
        info.append(meta)
    return images, info
