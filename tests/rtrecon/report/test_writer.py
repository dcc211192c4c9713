"""The written report: every trial with its images, correct accuracy, embedded plots, honest gaps."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtrecon.contract import children
from rtrecon.report import MotionTrace, SessionReportData, TrialRecord, stage_durations, write_report
from rtrecon.testing import scaled

STAGES = ["written", "read", "received", "realigned", "decoded", "generated", "shown"]
RANKS = [1, 2, 1, 7, None, 3, 1, 12]  # 7 ranked: top-1 3/7, top-5 5/7
NO_RECON = {3, 5}  # trial numbers without a reconstruction


class _Page(HTMLParser):
    """The report's trials (their images and gaps), its plots and its summary table."""

    def __init__(self) -> None:
        super().__init__()
        self.trials: dict[str, dict] = {}
        self.plots: dict[str, str] = {}
        self.summary: dict[str, str] = {}
        self._trial: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] = []
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section" and "trial" in classes:
            self._trial = a["id"]
            self.trials[self._trial] = {"attrs": a, "images": {}, "missing": [], "text": []}
        elif tag == "img" and self._trial is not None:
            self.trials[self._trial]["images"].setdefault(classes[0] if classes else "retrieved", []).append(a["src"])
        elif tag == "img" and "plot" in classes:
            self.plots[a["id"]] = a["src"]
        elif tag == "div" and "missing" in classes and self._trial is not None:
            self.trials[self._trial]["missing"].append(a["data-missing"])
        elif tag == "table" and "summary" in classes:
            self._in_summary = True
        elif tag in ("th", "td") and self._in_summary:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._trial = None
        elif tag == "table":
            self._in_summary = False
        elif tag in ("th", "td") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
            if len(self._row) == 2:
                self.summary[self._row[0]] = self._row[1]
                self._row = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._trial is not None:
            self.trials[self._trial]["text"].append(data)


def _decode(src: str) -> np.ndarray:
    prefix = "data:image/png;base64," if src.startswith("data:image/png") else "data:image/jpeg;base64,"
    assert src.startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src[len(prefix):]))))


def _close(thumbnail: np.ndarray, image: np.ndarray) -> bool:
    """A JPEG thumbnail of ``image`` (same size): its pixels correlate with the image's (images of
    other trials: about 0)."""
    return thumbnail.shape == image.shape and np.corrcoef(thumbnail.ravel(), np.ravel(image))[0, 1] > 0.9


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SessionReportData, dict]:
    rng = np.random.default_rng(3)
    trials = []
    for i, rank in enumerate(RANKS, start=1):
        seen = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        recon = None if i in NO_RECON else rng.random((3, 32, 32))  # float, channel-first
        retrieved = [f"s{i}", "s90", "s91"] if rank == 1 else ["s90", "s91", "s92"]
        stamps = {s: 10.0 * i + 0.05 * k + 0.001 * i * (k >= 5) for k, s in enumerate(STAGES)}
        trials.append(
            TrialRecord(
                run=1 + (i > 4), trial=i, stimulus_id=f"s{i}", seen_image=seen, reconstruction=recon,
                retrieved_ids=retrieved, retrieved_images=[rng.random((16, 16)) for _ in retrieved],
                correct_rank=rank, latencies=stage_durations(stamps, STAGES),
            )
        )
    params = np.cumsum(rng.normal(0, 0.03, (40, 6)), axis=0)
    fd = np.r_[np.nan, np.abs(np.diff(params, axis=0)).sum(1)]
    data = SessionReportData(
        "07", "02", "perception", "synthetic world's decoder (tiny unCLIP, 4 steps)", trials, gallery_size=20,
        motion=[MotionTrace(params, fd, tr=1.5, run=1), MotionTrace(params[::-1].copy(), fd, tr=1.5, run=2)],
        latency_stages=STAGES[1:], metrics={"live vs released beta r": 0.875},
    )
    out = tmp_path_factory.mktemp("report")
    summary = write_report(data, out)
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    return out, data, {"summary": summary, "page": page}


def test_every_trial_appears_with_its_images(written) -> None:
    _, data, result = written
    page: _Page = result["page"]
    assert len(page.trials) == len(data.trials)
    for trial in data.trials:
        shown = page.trials[f"trial-{trial.run}-{trial.trial}"]
        assert shown["attrs"]["data-stimulus"] == trial.stimulus_id
        assert _close(_decode(shown["images"]["seen"][0]), trial.seen_image)
        if trial.trial in NO_RECON:
            assert "reconstruction" not in shown["images"] and shown["missing"] == ["reconstruction"]
            assert "not reconstructed" in "".join(shown["text"])
        else:
            recon = _decode(shown["images"]["reconstruction"][0])
            assert _close(recon, np.round(np.moveaxis(trial.reconstruction, 0, -1) * 255))
            assert not _close(recon, np.round(np.moveaxis(data.trials[0].reconstruction, 0, -1) * 255)) or trial.trial == 1
            assert shown["missing"] == []
        assert len(shown["images"]["retrieved"]) == 3
        text = " ".join(shown["text"])
        if trial.correct_rank is not None:
            assert f"rank {trial.correct_rank} of 20" in text
        assert f"latency {trial.total_latency_s:.3f} s" in text


def test_accuracy_and_headline_figures(written) -> None:
    out, _, result = written
    summary, page = result["summary"], result["page"]
    assert summary.top1 == pytest.approx(3 / 7) and summary.top5 == pytest.approx(5 / 7)
    assert page.summary["Trials"] == "8" and page.summary["Decoded"] == "8"
    assert page.summary["Top-1 retrieval"] == "42.9% (chance 5.0%)"
    assert page.summary["Top-5 retrieval"] == "71.4% (chance 25.0%)"
    assert page.summary["live vs released beta r"] == "0.875"
    totals = [0.30 + 0.001 * i for i in range(1, 9)]
    assert summary.median_latency_s == pytest.approx(np.median(totals))
    assert page.summary["Latency, median"] == f"{np.median(totals):.3f} s"
    saved = json.loads((out / "summary.json").read_text())
    assert saved["report"] == str(out / "report.html") and saved["top5"] == pytest.approx(5 / 7)
    assert saved["decoder"] == "synthetic world's decoder (tiny unCLIP, 4 steps)"
    assert set(summary.headline()) == {"report", "trials", "decoded", "top1", "top5", "chance_top1", "median_latency_s",
                                       "two_way_clip", "pixcorr", "top1_by_release"}


def test_plots_are_embedded_and_decoder_named(written) -> None:
    out, _, result = written
    page: _Page = result["page"]
    assert set(page.plots) == {"accuracy-plot", "release-plot", "latency-plot", "motion-run-1", "motion-run-2"}
    for src in page.plots.values():
        assert _decode(src).shape[0] > 150
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "synthetic world&#x27;s decoder (tiny unCLIP, 4 steps)" in html
    assert "src=\"http" not in html and "<script" not in html  # self-contained


def test_report_without_timings_motion_or_ranks(tmp_path: Path) -> None:
    data = SessionReportData("01", "01", "imagery", "official MindEye2 + SDXL unCLIP", [TrialRecord(1, 1, "cue-dog")])
    summary = write_report(data, tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert summary.decoded == 0 and summary.top1 is None
    assert "No trial has a retrieval rank" in html and "No stage timings" in html and "No motion estimates" in html
    page = _Page()
    page.feed(html)
    assert page.trials["trial-1-1"]["missing"] == ["seen", "reconstruction"]
    assert "not decoded" in "".join(page.trials["trial-1-1"]["text"])


def test_renders_in_headless_chromium(written, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium installed")
    out, _, _ = written
    shot = tmp_path / "report.png"
    children.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,1600", f"--screenshot={shot}", (out / "report.html").as_uri()],
        check=True, capture_output=True, timeout=scaled(60),
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1600, 1200) and pixels.std() > 10  # a drawn page, not a blank one
