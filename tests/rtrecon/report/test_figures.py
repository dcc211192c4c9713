"""Report figures: image conversion rules and real PNG plots of the right content."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from rtrecon.report.figures import accuracy_png, as_uint8, image_png, latency_png, motion_png
from rtrecon.report.records import MotionTrace, SessionReportData, TrialRecord, summarise


def _open(png: bytes) -> Image.Image:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_as_uint8_layouts_and_ranges() -> None:
    rng = np.random.default_rng(0)
    floats = rng.random((8, 6, 3))
    expected = np.round(floats * 255).astype(np.uint8)
    np.testing.assert_array_equal(as_uint8(floats), expected)
    np.testing.assert_array_equal(as_uint8(np.moveaxis(floats, -1, 0)), expected)  # channel-first
    np.testing.assert_array_equal(as_uint8(expected), expected)
    assert as_uint8(floats[..., :1]).shape == (8, 6)
    assert as_uint8(np.float32(1.0005) * np.ones((2, 2))).max() == 255  # rounding overshoot clipped
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        as_uint8(floats * 2 - 1)
    with pytest.raises(ValueError, match="got shape"):
        as_uint8(np.zeros((5, 5, 2)))
    with pytest.raises(ValueError, match="got shape"):
        as_uint8(np.zeros(4))


def test_image_png_keeps_content_and_shrinks_large_images() -> None:
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    image[:20, :, 0] = 255
    small = np.asarray(_open(image_png(image)))
    np.testing.assert_array_equal(small, image)  # lossless below max_side
    big = _open(image_png(np.zeros((600, 300, 3), dtype=np.uint8), max_side=128))
    assert big.size == (64, 128)


def test_motion_plot_is_a_png() -> None:
    params = np.cumsum(np.random.default_rng(2).normal(0, 0.02, (60, 6)), axis=0)
    fd = np.r_[np.nan, np.abs(np.diff(params, axis=0)).sum(1)]
    png = _open(motion_png(MotionTrace(params, fd, tr=2.0, run=2)))
    assert png.size[0] > 500 and png.size[1] > 300


def test_latency_and_accuracy_plots() -> None:
    trials = [
        TrialRecord(1, i, str(i), correct_rank=i, latencies={"read": 0.1, "decoded": 0.2 + 0.01 * i})
        for i in range(1, 9)
    ]
    data = SessionReportData("01", "01", "perception", "d", trials, gallery_size=8)
    assert _open(latency_png(trials, data.stages())).size[0] > 500
    assert _open(accuracy_png(summarise(data, "r.html"))).size[0] > 200
    with pytest.raises(ValueError, match="no trial has latencies"):
        latency_png([TrialRecord(1, 1, "a")], ["read"])
    empty = SessionReportData("01", "01", "perception", "d", [TrialRecord(1, 1, "a")])
    with pytest.raises(ValueError, match="no trial has a retrieval rank"):
        accuracy_png(summarise(empty, "r.html"))
