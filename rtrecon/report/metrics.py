"""Reconstruction and retrieval metrics, as MindEye2 reports them, computed on what a session produced.

Low-level image metrics (MindEye2's ``final_evaluations``):

- :func:`pixcorr`: the seen image resized to the reconstruction's size (bilinear), both flattened,
  the Pearson correlation per pair, averaged;
- :func:`ssim`: grayscale (ITU-R 601 luma, as ``skimage.color.rgb2gray``) in [0, 1], Gaussian-weighted
  SSIM with ``sigma=1.5``, ``use_sample_covariance=False``, ``data_range=1`` -- the settings MindEye2
  passes to ``skimage.metrics.structural_similarity`` -- written here with scipy (scikit-image is
  not a dependency);

High-level:

- :func:`two_way_identification`: MindEye2's definition on feature vectors (here the session's
  CLIP embedder): for each reconstruction, the share of the other seen images whose features
  correlate less with it than its own seen image's (chance 50 %);
- :func:`retrieval_ranks`, :func:`top_k`, :func:`hubness`: the rank of the true image among a
  gallery, top-k accuracy, and the most retrieved image with its share of the trials (a decoder
  that answers one image for every trial has a hub near 100 %).

Metrics of external networks (AlexNet layers 2/5, Inception-v3, EfficientNet-B1, SwAV ResNet-50)
need weights rtrecon does not ship: :data:`EXTERNAL_METRICS` names them, and
:func:`external_metrics` computes each from a local torchvision weights file when one is given
and otherwise reports it as not computed -- never a stand-in value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = ["EXTERNAL_METRICS", "pixcorr", "ssim", "two_way_identification", "retrieval_ranks", "top_k", "hubness",
           "external_metrics"]

#: MindEye2's metrics that need networks rtrecon does not ship (name → what they use).
EXTERNAL_METRICS: dict[str, str] = {
    "alexnet2": "AlexNet layer 2 two-way identification (torchvision AlexNet weights)",
    "alexnet5": "AlexNet layer 5 two-way identification (torchvision AlexNet weights)",
    "inception": "Inception-v3 two-way identification (torchvision Inception-v3 weights)",
    "effnet": "EfficientNet-B1 feature distance (torchvision EfficientNet-B1 weights)",
    "swav": "SwAV ResNet-50 feature distance (facebookresearch/swav weights)",
}


def _float_rgb(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, -1)
    return x[..., :3]


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` as float RGB in [0, 1] at ``size`` (height, width), bilinear as MindEye2's resize."""
    x = _float_rgb(image)
    if x.shape[:2] == size:
        return x
    channels = [np.asarray(Image.fromarray(x[..., c].astype(np.float32), mode="F").resize(size[::-1], Image.BILINEAR))
                for c in range(3)]
    return np.clip(np.stack(channels, -1).astype(np.float64), 0.0, 1.0)


def _pairs(reconstructions: Sequence[np.ndarray], seen: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(reconstructions) != len(seen):
        raise ValueError(f"{len(reconstructions)} reconstructions for {len(seen)} seen images")
    if not len(seen):
        raise ValueError("no image pairs")
    return [(_float_rgb(r), _resized(s, np.shape(r)[:2])) for r, s in zip(reconstructions, seen)]


def pixcorr(reconstructions: Sequence[np.ndarray], seen: Sequence[np.ndarray]) -> float:
    """Mean per-pair Pearson correlation of the pixels (seen images resized to the reconstructions)."""
    values = []
    for r, s in _pairs(reconstructions, seen):
        a, b = r.ravel() - r.mean(), s.ravel() - s.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        values.append(float((a * b).sum() / denom) if denom > 0 else 0.0)
    return float(np.mean(values))


def _gray(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.2125, 0.7154, 0.0721])


def ssim(reconstructions: Sequence[np.ndarray], seen: Sequence[np.ndarray], sigma: float = 1.5) -> float:
    """Mean grayscale SSIM over pairs (Wang et al. 2004; skimage's Gaussian-weighted variant)."""
    c1, c2 = 0.01**2, 0.03**2
    truncate = 3.5
    pad = int(truncate * sigma + 0.5)  # skimage crops the border its window does not cover

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma, truncate=truncate, mode="reflect")

    values = []
    for r, s in _pairs(reconstructions, seen):
        x, y = _gray(r), _gray(s)
        ux, uy = blur(x), blur(y)
        vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
        s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        values.append(float(s_map[pad:-pad, pad:-pad].mean() if min(s_map.shape) > 2 * pad else s_map.mean()))
    return float(np.mean(values))


def two_way_identification(predicted: np.ndarray, seen: np.ndarray) -> float:
    """MindEye2's two-way identification of feature rows (``predicted[i]`` from ``seen[i]``'s trial).

    ``r[i, j]`` is the correlation of seen ``i`` with prediction ``j``; prediction ``j`` wins
    against seen ``i`` when ``r[i, j] < r[j, j]``; the score is the mean number of wins over
    ``n - 1``. Chance is 0.5.
    """
    p = np.asarray(predicted, np.float64).reshape(len(predicted), -1)
    s = np.asarray(seen, np.float64).reshape(len(seen), -1)
    if p.shape != s.shape or len(p) < 2:
        raise ValueError(f"need two or more matching rows, got {p.shape} and {s.shape}")
    n = len(s)
    r = np.corrcoef(s, p)[:n, n:]
    wins = (r < np.diag(r)).sum(0)
    return float(wins.mean() / (n - 1))


def retrieval_ranks(embeddings: np.ndarray, gallery: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """1-based rank of each row's ``targets[i]`` (a gallery row) by cosine similarity (ties count against it)."""
    e = np.asarray(embeddings, np.float64).reshape(len(embeddings), -1)
    g = np.asarray(gallery, np.float64).reshape(len(gallery), -1)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    scores = e @ g.T
    own = scores[np.arange(len(e)), np.asarray(targets)]
    return (scores > own[:, None]).sum(1) + 1


def rank_among(embedding: np.ndarray, candidates: np.ndarray, target: int) -> int:
    """1-based rank of ``candidates[target]`` among ``candidates`` by cosine similarity to one ``embedding``
    (ties count against it): imagery retrieval among a trial's target set."""
    return int(retrieval_ranks(np.asarray(embedding)[None], candidates, [target])[0])


def top_k(ranks: Sequence[int], k: int) -> float | None:
    ranks = np.asarray(ranks)
    return float(np.mean(ranks <= k)) if ranks.size else None


def hubness(top1_ids: Sequence[str]) -> tuple[str | None, float | None]:
    """The most retrieved (top-1) id and the share of trials that retrieved it."""
    if not len(top1_ids):
        return None, None
    name, count = Counter(top1_ids).most_common(1)[0]
    return name, count / len(top1_ids)


#: Per external metric: torchvision architecture, the layer whose output is compared, input size, and
#: how (MindEye2: two-way identification for AlexNet and Inception, correlation distance otherwise).
_NETWORKS: dict[str, tuple[str, str, int, str]] = {
    "alexnet2": ("alexnet", "features.4", 256, "two_way"),
    "alexnet5": ("alexnet", "features.11", 256, "two_way"),
    "inception": ("inception_v3", "avgpool", 342, "two_way"),
    "effnet": ("efficientnet_b1", "avgpool", 255, "distance"),
    "swav": ("resnet50", "avgpool", 224, "distance"),
}


def _network_features(name: str, weights: Path, images: Sequence[np.ndarray]) -> np.ndarray:
    """Features of ``images`` at the metric's layer of its network loaded from ``weights`` (a state dict)."""
    import torch

    from rtrecon._compat import import_torchvision

    tv = import_torchvision()
    from torchvision.models.feature_extraction import create_feature_extractor

    arch, layer, size, _ = _NETWORKS[name]
    kwargs = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
    model = getattr(tv.models, arch)(weights=None, **kwargs)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    # SwAV's released checkpoint is a ResNet-50 without the classifier, saved from DDP ("module.").
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state, strict=name != "swav")
    extractor = create_feature_extractor(model.eval(), {layer: "out"})
    x = torch.from_numpy(np.stack([_resized(i, (size, size)) for i in images])).permute(0, 3, 1, 2).float()
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.inference_mode():
        return extractor(x)["out"].flatten(1).numpy()


def external_metrics(reconstructions: Sequence[np.ndarray], seen: Sequence[np.ndarray],
                     weights: Mapping[str, Path] | None = None) -> dict[str, float | str]:
    """Each of :data:`EXTERNAL_METRICS`: its value where a local weights file is given for it (a
    torchvision state dict of the network), else ``"not computed: ..."`` saying what it needs.

    A weights file that is given must exist: a missing file is an error, not a silent gap.
    """
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(EXTERNAL_METRICS))
    if unknown:
        raise ValueError(f"unknown external metric(s) {', '.join(unknown)}: choose among {', '.join(EXTERNAL_METRICS)}")
    out: dict[str, float | str] = {}
    for name, what in EXTERNAL_METRICS.items():
        if name not in weights:
            out[name] = f"not computed: needs {what}; no local weights given"
            continue
        path = Path(weights[name])
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such weights file for {name} ({what})")
        pred = _network_features(name, path, reconstructions)
        real = _network_features(name, path, seen)
        if _NETWORKS[name][3] == "two_way":
            out[name] = two_way_identification(pred, real)
        else:  # scipy's correlation distance, averaged over pairs
            p, r = pred - pred.mean(1, keepdims=True), real - real.mean(1, keepdims=True)
            corr = (p * r).sum(1) / np.sqrt((p * p).sum(1) * (r * r).sum(1))
            out[name] = float(np.mean(1.0 - corr))
    return out
