"""Write a session's HTML report: one self-contained file, every image and plot embedded.

>>> summary = write_report(data, "derivatives/rtrecon/sub-01/ses-01")
>>> print(json.dumps(summary.headline()))       # the demo's last line

:func:`write_report` writes ``report.html`` (no external file, script or font: images and plots
are base64 PNG, the style is inline) and ``summary.json`` (:meth:`ReportSummary.as_dict`), and
returns the :class:`~rtrecon.report.records.ReportSummary`. The page has, in order: the session
and the decoder that produced the reconstructions; the headline table (trials, decoded,
top-1/top-5 with chance beside them, latency median/p95, motion); the retrieval accuracy plot;
the latency of every stage per trial (stacked plot and a table of per-stage median and p95); the
motion traces and FD of every run; and every trial, run by run: the seen image beside the
reconstruction (or a marked gap when there is none), the retrieved images with the correct one
outlined, the rank and the total latency.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rtrecon.report.figures import accuracy_png, image_png, latency_png, motion_png
from rtrecon.report.records import ReportSummary, SessionReportData, TrialRecord, summarise

__all__ = ["write_report", "render_html"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 1.2em 1.5em 3em; color: #1b1f24; background: #fafafa; }
h1 { font-size: 1.6em; margin: 0.2em 0; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1em; margin: 0 0 0.4em; }
.subtitle { color: #555; margin: 0 0 1em; }
.decoder { background: #eef4fb; border-left: 4px solid #1f77b4; padding: 0.5em 0.8em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.25em 0.9em; border-bottom: 1px solid #e2e2e2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.chance { color: #888; }
img.plot { max-width: 100%; background: white; border: 1px solid #e2e2e2; margin: 0.4em 0; }
.trials { display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 12px; }
.trial { background: white; border: 1px solid #ddd; border-radius: 6px; padding: 0.6em; }
.pair { display: flex; gap: 6px; }
figure { margin: 0; flex: 1; text-align: center; }
figure img, .missing { width: 100%; aspect-ratio: 1 / 1; object-fit: contain; background: #f0f0f0; }
figcaption { font-size: 0.8em; color: #555; }
.missing { display: flex; align-items: center; justify-content: center; color: #999;
           font-size: 0.85em; border: 1px dashed #bbb; box-sizing: border-box; }
.retrieved { display: flex; gap: 3px; margin-top: 6px; flex-wrap: wrap; }
.retrieved span { font-size: 0.7em; color: #555; text-align: center; width: 46px; overflow: hidden; }
.retrieved img { width: 46px; height: 46px; object-fit: cover; display: block; border: 2px solid transparent; }
.retrieved .hit img { border-color: #2ca02c; } .retrieved .hit { color: #2ca02c; font-weight: 600; }
.meta { font-size: 0.8em; color: #444; margin: 0.4em 0 0; }
.rank1 { color: #2ca02c; font-weight: 600; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value: float | None, spec: str = ".3f", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:{spec}}{unit}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _image_figure(image: np.ndarray | None, role: str, caption: str, missing: str, alt: str) -> str:
    if image is None:
        return (
            f'<figure class="{role}"><div class="missing" data-missing="{role}">{html.escape(missing)}</div>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    return (
        f'<figure class="{role}"><img class="{role}" alt="{html.escape(alt)}" src="{_data_uri(image_png(image, 192))}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _trial_html(trial: TrialRecord, gallery_size: int | None) -> str:
    sid = html.escape(str(trial.stimulus_id))
    parts = [
        f'<section class="trial" id="trial-{trial.run}-{trial.trial}" data-run="{trial.run}" '
        f'data-trial="{trial.trial}" data-stimulus="{sid}">',
        f"<h3>run {trial.run} · trial {trial.trial} · stimulus {sid}</h3>",
        '<div class="pair">',
        _image_figure(trial.seen_image, "seen", "seen", "no seen image", f"seen: stimulus {trial.stimulus_id}"),
        _image_figure(
            trial.reconstruction, "reconstruction", "reconstructed", "not reconstructed",
            f"reconstruction: run {trial.run} trial {trial.trial}",
        ),
        "</div>",
    ]
    if trial.retrieved_ids:
        parts.append('<div class="retrieved" title="retrieved, best first">')
        for i, rid in enumerate(trial.retrieved_ids):
            hit = ' class="hit"' if str(rid) == str(trial.stimulus_id) else ""
            thumb = (
                f'<img alt="retrieved {html.escape(str(rid))}" src="{_data_uri(image_png(trial.retrieved_images[i], 64))}">'
                if trial.retrieved_images
                else ""
            )
            parts.append(f"<span{hit}>{thumb}{html.escape(str(rid))}</span>")
        parts.append("</div>")
    meta = []
    if trial.correct_rank is not None:
        of = f" of {gallery_size}" if gallery_size else ""
        cls = ' class="rank1"' if trial.correct_rank == 1 else ""
        meta.append(f"<span{cls}>rank {trial.correct_rank}{of}</span>")
    elif trial.decoded:
        meta.append("not ranked")
    else:
        meta.append("not decoded")
    if trial.total_latency_s is not None:
        meta.append(f"latency {trial.total_latency_s:.3f} s")
    parts.append(f'<p class="meta">{" · ".join(meta) or "&nbsp;"}</p></section>')
    return "".join(parts)


def _summary_table(summary: ReportSummary) -> str:
    rows = [
        ("Trials", str(summary.trials)),
        ("Decoded", str(summary.decoded)),
        ("Top-1 retrieval", f'{_pct(summary.top1)} <span class="chance">(chance {_pct(summary.chance_top1)})</span>'),
        ("Top-5 retrieval", f'{_pct(summary.top5)} <span class="chance">(chance {_pct(summary.chance_top5)})</span>'),
        ("Trials with a retrieval rank", str(summary.retrieval_trials)),
        ("Latency, median", _fmt(summary.median_latency_s, ".3f", " s")),
        ("Latency, 95th percentile", _fmt(summary.p95_latency_s, ".3f", " s")),
        ("Framewise displacement, mean / max", f"{_fmt(summary.mean_fd_mm)} / {_fmt(summary.max_fd_mm)} mm"),
        ("Volumes above the FD threshold", str(summary.high_motion_volumes)),
    ]
    rows += [(html.escape(name), _fmt(value, ".4g")) for name, value in summary.metrics.items()]
    body = "".join(f'<tr><th>{name}</th><td class="num">{value}</td></tr>' for name, value in rows)
    return f'<table class="summary">{body}</table>'


def _latency_section(data: SessionReportData, summary: ReportSummary, stages: Sequence[str]) -> str:
    if not any(t.latencies for t in data.trials):
        return "<h2>Latency</h2><p>No stage timings were recorded.</p>"
    rows = "".join(
        f'<tr><td>{html.escape(s)}</td><td class="num">{summary.stage_median_s[s]:.3f}</td>'
        f'<td class="num">{summary.stage_p95_s[s]:.3f}</td></tr>'
        for s in stages
    )
    total = (
        f'<tr><th>total</th><th class="num">{_fmt(summary.median_latency_s)}</th>'
        f'<th class="num">{_fmt(summary.p95_latency_s)}</th></tr>'
    )
    return (
        "<h2>Latency</h2>"
        f'<img class="plot" id="latency-plot" alt="latency per stage and trial" '
        f'src="{_data_uri(latency_png(data.trials, stages))}">'
        '<table class="stages"><tr><th>stage</th><th>median (s)</th><th>p95 (s)</th></tr>'
        f"{rows}{total}</table>"
    )


def _motion_section(data: SessionReportData) -> str:
    if not data.motion:
        return "<h2>Head motion</h2><p>No motion estimates were recorded.</p>"
    plots = "".join(
        f'<img class="plot motion" id="motion-run-{m.run}" alt="motion, run {m.run}" '
        f'src="{_data_uri(motion_png(m, data.fd_threshold_mm))}">'
        for m in sorted(data.motion, key=lambda m: m.run)
    )
    return (
        "<h2>Head motion</h2>"
        f"<p>Realignment parameters and framewise displacement (Power; threshold {data.fd_threshold_mm:g} mm).</p>"
        f"{plots}"
    )


def render_html(data: SessionReportData, summary: ReportSummary) -> str:
    """The report page for ``data`` with its ``summary`` (see the module docstring)."""
    stages = data.stages()
    title = f"sub-{data.subject} ses-{data.session} task-{data.task}"
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    accuracy = (
        f'<img class="plot" id="accuracy-plot" alt="retrieval accuracy" src="{_data_uri(accuracy_png(summary))}">'
        if summary.top1 is not None
        else "<p>No trial has a retrieval rank.</p>"
    )
    runs: dict[int, list[TrialRecord]] = {}
    for trial in sorted(data.trials, key=lambda t: (t.run, t.trial)):
        runs.setdefault(trial.run, []).append(trial)
    trial_sections = "".join(
        f'<h3 class="run">Run {run} ({len(trials)} trials)</h3><div class="trials">'
        + "".join(_trial_html(t, data.gallery_size) for t in trials)
        + "</div>"
        for run, trials in runs.items()
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>rtrecon report: {html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>rtrecon session report</h1><p class=\"subtitle\">{html.escape(title)} · written {created}</p>"
        f'<p class="decoder" id="decoder">Reconstructions by: {html.escape(data.decoder_description)}</p>'
        f"<h2>Summary</h2>{_summary_table(summary)}"
        f"<h2>Retrieval</h2>{accuracy}"
        f"{_latency_section(data, summary, stages)}"
        f"{_motion_section(data)}"
        f"<h2>Trials: seen and reconstructed</h2>{trial_sections or '<p>No trials.</p>'}"
        "</body></html>"
    )


def write_report(data: SessionReportData, out_dir: str | Path) -> ReportSummary:
    """Write ``report.html`` and ``summary.json`` into ``out_dir``; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    summary = summarise(data, path)
    page = render_html(data, summary)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)  # a reader never sees half a report
    (out_dir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n", encoding="utf-8")
    return summary
