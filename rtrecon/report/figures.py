"""The report's pictures as PNG bytes: images, motion traces, stage latencies, retrieval accuracy.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
through ``pyplot``, so nothing global is touched and no display is needed.

- :func:`image_png` — an image array as a PNG thumbnail; :func:`image_jpeg` as a small JPEG (the
  per-trial cards: a 750-trial session's report stays a few MB);
- :func:`motion_png` — fMRIPrep-style motion plot of one run: translations (mm), rotations
  (degrees) and framewise displacement with its threshold;
- :func:`latency_png` — the duration of every stage, stacked per trial, with the median and
  95th percentile of the total;
- :func:`accuracy_png` — top-1 / top-5 retrieval accuracy beside chance;
- :func:`release_png` — top-1 / top-5 against the release delay (seconds from onset), one point
  per release, with chance: what an experimenter needs to choose a delay.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from rtrecon.report.records import MotionTrace, ReportSummary, TrialRecord

__all__ = ["as_uint8", "image_png", "image_jpeg", "motion_png", "latency_png", "accuracy_png", "release_png"]

_DPI = 100


def as_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as (H, W) or (H, W, 3|4) ``uint8``.

    Takes (H, W), (H, W, 1|3|4) or channel-first (1|3|4, H, W); ``uint8`` as is, floats in [0, 1]
    (a rounding overshoot of 1e-3 is clipped).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image must be (H, W), (H, W, 3|4) or (3, H, W), got shape {np.shape(image)}")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"an image must be uint8 or floats in [0, 1], got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)) or array.min() < -1e-3 or array.max() > 1 + 1e-3:
        raise ValueError(
            f"a float image must lie in [0, 1], got [{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]"
        )
    return np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)


def image_png(image: np.ndarray, max_side: int = 256) -> bytes:
    """``image`` (see :func:`as_uint8`) as PNG, shrunk to at most ``max_side`` pixels a side."""
    picture = Image.fromarray(as_uint8(image))
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def image_jpeg(image: np.ndarray, max_side: int = 96, quality: int = 85) -> bytes:
    """``image`` as a JPEG thumbnail of at most ``max_side`` pixels a side (alpha dropped)."""
    picture = Image.fromarray(as_uint8(image)).convert("RGB")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def motion_png(trace: MotionTrace, fd_threshold_mm: float = 0.5) -> bytes:
    """Translations, rotations and FD of one run, on a shared time axis."""
    n = trace.params.shape[0]
    x = np.arange(n) * trace.tr if trace.tr else np.arange(n)
    figure = Figure(figsize=(9, 5.2), layout="constrained")
    axes = figure.subplots(3, 1, sharex=True)
    colours = ("#1f77b4", "#2ca02c", "#d62728")
    for i, axis in enumerate("xyz"):
        axes[0].plot(x, trace.params[:, i], color=colours[i], lw=1.2, label=axis)
        axes[1].plot(x, np.degrees(trace.params[:, 3 + i]), color=colours[i], lw=1.2, label=axis)
    axes[0].set_ylabel("translation\n(mm)")
    axes[1].set_ylabel("rotation\n(degrees)")
    for ax in axes[:2]:
        ax.legend(loc="upper left", ncols=3, fontsize=8, frameon=False)
        ax.axhline(0, color="0.7", lw=0.6)
    fd = trace.fd
    finite = np.isfinite(fd)
    axes[2].plot(x, fd, color="0.2", lw=1.2)
    axes[2].axhline(fd_threshold_mm, color="#d62728", ls="--", lw=1, label=f"{fd_threshold_mm:g} mm")
    high = finite & (fd > fd_threshold_mm)
    axes[2].plot(x[high], fd[high], "o", color="#d62728", ms=4)
    axes[2].set_ylabel("FD (mm)")
    axes[2].set_ylim(bottom=0)
    axes[2].legend(loc="upper left", fontsize=8, frameon=False)
    axes[2].set_xlabel("time (s)" if trace.tr else "volume")
    mean_fd = float(np.mean(fd[finite])) if finite.any() else float("nan")
    figure.suptitle(
        f"run {trace.run}: {n} volumes, mean FD {mean_fd:.3f} mm, "
        f"{int(high.sum())} above {fd_threshold_mm:g} mm",
        fontsize=11,
    )
    for ax in axes:
        ax.grid(alpha=0.25)
    return _png(figure)


def latency_png(trials: Sequence[TrialRecord], stages: Sequence[str]) -> bytes:
    """Stacked stage durations per trial, with the median and 95th percentile of the total."""
    timed = [t for t in trials if t.latencies]
    if not timed:
        raise ValueError("no trial has latencies to plot")
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(timed))
    bottom = np.zeros(len(timed))
    cmap = colormaps["tab20"]
    palette = [cmap(i % 20) for i in range(len(stages))]
    for i, stage in enumerate(stages):
        heights = np.array([t.latencies.get(stage, 0.0) for t in timed])
        ax.bar(x, heights, bottom=bottom, width=0.85, label=stage, color=palette[i])
        bottom += heights
    totals = np.array([t.total_latency_s for t in timed])
    median, p95 = float(np.median(totals)), float(np.percentile(totals, 95))
    ax.axhline(median, color="black", lw=1.2, label=f"median {median:.3f} s")
    ax.axhline(p95, color="black", lw=1.2, ls="--", label=f"p95 {p95:.3f} s")
    step = max(1, len(timed) // 30)
    ax.set_xticks(x[::step], [f"{t.run}.{t.trial}" for t in timed][::step], rotation=90, fontsize=7)
    ax.set_xlabel("trial (run.trial)")
    ax.set_ylabel("seconds")
    ax.set_title("latency per stage, from the volume written to the result shown")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.25)
    return _png(figure)


def accuracy_png(summary: ReportSummary) -> bytes:
    """Top-1 and top-5 retrieval accuracy as bars, chance as a marker on each."""
    if summary.top1 is None:
        raise ValueError("no trial has a retrieval rank to plot")
    figure = Figure(figsize=(4.2, 3.2), layout="constrained")
    ax = figure.subplots()
    values = [summary.top1, summary.top5]
    chances = [summary.chance_top1, summary.chance_top5]
    bars = ax.bar(["top-1", "top-5"], values, color=["#1f77b4", "#6baed6"], width=0.6)
    for bar, value in zip(bars, values, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.02, f"{value:.0%}", ha="center", fontsize=9)
    for bar, chance in zip(bars, chances, strict=True):
        if chance is not None:
            left, width = bar.get_x(), bar.get_width()
            ax.hlines(chance, left - 0.08, left + width + 0.08, color="#d62728", lw=2, zorder=3)
            ax.text(left + width + 0.1, chance, f"chance\n{chance:.1%}", va="center", fontsize=7, color="#d62728")
    ax.set_ylim(0, 1.1)
    ax.set_xlim(-0.5, 1.75)
    ax.set_ylabel("accuracy")
    ax.set_title(f"retrieval over {summary.retrieval_trials} trials", fontsize=10)
    ax.grid(axis="y", alpha=0.25)
    return _png(figure)


def release_png(by_release: dict[int, dict], chance_top1: float | None, chance_top5: float | None) -> bytes:
    """Top-1 and top-5 per release against its median delay after onset, with chance."""
    releases = [r for r in sorted(by_release) if by_release[r].get("top1") is not None]
    if not releases:
        raise ValueError("no release has a retrieval rank to plot")
    x = np.array([by_release[r].get("median_release_s") or np.nan for r in releases], float)
    if np.isnan(x).any():  # no delays recorded: the release index stands in
        x = np.arange(len(releases), dtype=float)
    figure = Figure(figsize=(5.6, 3.4), layout="constrained")
    ax = figure.subplots()
    for key, colour in (("top1", "#1f77b4"), ("top5", "#6baed6")):
        y = [by_release[r][key] for r in releases]
        ax.plot(x, y, "o-", color=colour, label=key.replace("top", "top-"))
        for xi, yi, r in zip(x, y, releases):
            ax.annotate(f"{yi:.0%}", (xi, yi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    for chance, style in ((chance_top1, "--"), (chance_top5, ":")):
        if chance is not None:
            ax.axhline(chance, color="#d62728", ls=style, lw=1)
    ax.set_xticks(x, [f"{v:.1f} s\n(release {r})" for v, r in zip(x, releases)], fontsize=8)
    ax.set_xlabel("release delay after onset (median)")
    ax.set_ylabel("retrieval accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.set_title("accuracy against release delay (red: chance)", fontsize=10)
    ax.grid(alpha=0.25)
    return _png(figure)
