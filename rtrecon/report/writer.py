"""Write a session's HTML report: one self-contained file, every image and plot embedded.

>>> summary = write_report(data, "derivatives/rtrecon/sub-01/ses-01")
>>> print(json.dumps(summary.headline()))       # the demo's last line

:func:`write_report` writes ``report.html`` (no external file, script or font: images and plots
are base64 PNG, the style is inline) and ``summary.json`` (:meth:`ReportSummary.as_dict`), and
returns the :class:`~rtrecon.report.records.ReportSummary`. The page has, in order: the session
and the decoder that produced the reconstructions (and any notes, e.g. the synthetic world); the
headline table (trials, decoded, top-1/top-5 of each trial's first release with chance beside
them, CLIP two-way identification, PixCorr, SSIM, the most retrieved image and its share,
latency median/p95, stimulus onset → feedback shown, motion); the metrics of external networks
(values, or why they were not computed); the retrieval accuracy plot, the per-release table
(delay, top-1/top-5, hubness, reconstruction metrics, beta correlations) and the accuracy against
release delay; the latency of every stage per trial (stacked plot and a table of per-stage median
and p95); the motion traces and FD of every run; the worst trials (links to their cards); and a
card per trial, sorted by the true image's rank at the first release (best first): the seen image
beside the reconstruction (or a marked gap when there is none), the retrieved images with the
correct one outlined, and onset, release delay, FD during the trial, rank and score of the true
image (and its rank at each later release), the participant's response, a repeat marker, the
closed-loop delay and the total latency. Card images are JPEG thumbnails (96 px, retrieved 46
px), so a 750-trial session's report stays a few MB.
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

from rtrecon.report.figures import accuracy_png, image_jpeg, latency_png, motion_png, release_png
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
.repeat { background: #fff3cd; padding: 0 0.3em; border-radius: 3px; }
.notes { color: #444; margin: 0.3em 0; }
.worst td img { width: 40px; height: 40px; object-fit: cover; vertical-align: middle; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _thumb_uri(image: np.ndarray, side: int) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(image_jpeg(image, side)).decode("ascii")


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


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
        f'<figure class="{role}"><img class="{role}" alt="{html.escape(alt)}" src="{_thumb_uri(image, 96)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _trial_html(trial: TrialRecord, gallery_size: int | None, later: Sequence[TrialRecord] = ()) -> str:
    """The card of one trial: its first release, with the ranks of its ``later`` releases."""
    sid = html.escape(str(trial.stimulus_id))
    parts = [
        f'<section class="trial" id="trial-{trial.run}-{trial.trial}" data-run="{trial.run}" '
        f'data-trial="{trial.trial}" data-stimulus="{sid}" data-rank="{trial.correct_rank or ""}">',
        f"<h3>run {trial.run} · trial {trial.trial} · stimulus {sid}"
        + (f' <span class="repeat">repeat ({_ordinal(trial.presentation)} showing)</span>' if trial.presentation > 1 else "")
        + "</h3>",
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
                f'<img alt="retrieved {html.escape(str(rid))}" src="{_thumb_uri(trial.retrieved_images[i], 46)}">'
                if trial.retrieved_images
                else ""
            )
            parts.append(f"<span{hit}>{thumb}{html.escape(str(rid))}</span>")
        parts.append("</div>")
    meta = []
    if trial.correct_rank is not None:
        of = f" of {gallery_size}" if gallery_size else ""
        cls = ' class="rank1"' if trial.correct_rank == 1 else ""
        score = f" (score {trial.score:.3f})" if trial.score is not None else ""
        meta.append(f"<span{cls}>rank {trial.correct_rank}{of}</span>{score}")
    elif trial.decoded:
        meta.append("not ranked")
    else:
        meta.append("not decoded")
    for r in later:
        if r.correct_rank is not None:
            when = f"{r.release_s:.1f} s" if r.release_s is not None else f"release {r.release}"
            meta.append(f"rank {r.correct_rank} at {when}{' (end of run)' if r.final else ''}")
    if trial.cpd is not None:
        meta.append(f'<span class="cpd">CPD {trial.cpd:+.2f} vs pairmate {html.escape(trial.pairmate)}</span>')
    if trial.onset_s is not None:
        meta.append(f"onset {trial.onset_s:.1f} s")
    if trial.release_s is not None:
        meta.append(f"released {trial.release_s:.1f} s after onset")
    if trial.fd_mm is not None:
        meta.append(f"FD max {trial.fd_mm:.2f} mm")
    meta.append(f"response {html.escape(trial.response)}" if trial.response else "no response")
    if trial.feedback_delay_s is not None:
        meta.append(f"onset → feedback {trial.feedback_delay_s:.1f} s")
    if trial.total_latency_s is not None:
        meta.append(f"latency {trial.total_latency_s:.3f} s")
    parts.append(f'<p class="meta">{" · ".join(meta) or "&nbsp;"}</p></section>')
    return "".join(parts)


def _rank_key(trial: TrialRecord) -> tuple:
    return (trial.correct_rank is None, trial.correct_rank or 0, trial.run, trial.trial)


def _worst_section(first: Sequence[TrialRecord], gallery_size: int | None, n: int = 10) -> str:
    ranked = sorted((t for t in first if t.correct_rank is not None), key=lambda t: (-t.correct_rank, t.run, t.trial))[:n]
    if not ranked:
        return ""
    rows = []
    for t in ranked:
        seen = f'<img alt="seen" src="{_thumb_uri(t.seen_image, 40)}">' if t.seen_image is not None else ""
        recon = f'<img alt="reconstruction" src="{_thumb_uri(t.reconstruction, 40)}">' if t.reconstruction is not None else ""
        top = html.escape(t.top1_id or "")
        rows.append(
            f'<tr><td><a href="#trial-{t.run}-{t.trial}">run {t.run} · trial {t.trial}</a></td>'
            f'<td class="num">{t.correct_rank}{f" of {gallery_size}" if gallery_size else ""}</td>'
            f"<td>{seen} {html.escape(str(t.stimulus_id))}</td><td>{recon}</td><td>{top}</td>"
            f'<td class="num">{_fmt(t.fd_mm, ".2f", " mm")}</td></tr>'
        )
    return (
        f'<h2>Worst trials</h2><p>The {len(ranked)} trials whose true image ranked lowest at their first release.</p>'
        '<table class="worst"><tr><th>trial</th><th>rank</th><th>seen</th><th>reconstructed</th><th>retrieved first</th>'
        f'<th>FD max</th></tr>{"".join(rows)}</table>'
    )


def _release_section(summary: ReportSummary) -> str:
    if not summary.by_release:
        return ""
    columns = [("median_release_s", "delay (s)", ".1f"), ("trials", "trials", "d"), ("top1", "top-1", "%"),
               ("top5", "top-5", "%"), ("hub_share", "most retrieved: share", "%"), ("pixcorr", "PixCorr", ".3f"),
               ("ssim", "SSIM", ".3f"), ("two_way_clip", "CLIP two-way", "%"),
               ("beta_r_end", "r(decoded betas, end-of-run)", ".3f"),
               ("live_vs_released_beta_r", "r(decoded betas, released)", ".3f")]
    shown = [c for c in columns if any(m.get(c[0]) is not None for m in summary.by_release.values())]

    def cell(value, spec):
        if value is None:
            return "n/a"
        return _pct(value) if spec == "%" else format(value, spec)

    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in shown)
    rows = "".join(
        f"<tr><td>{r}</td>" + "".join(f'<td class="num">{cell(m.get(k), spec)}</td>' for k, _, spec in shown)
        + f"<td>{html.escape(str(m.get('hub_id') or ''))}</td></tr>"
        for r, m in summary.by_release.items()
    )
    plot = (
        f'<img class="plot" id="release-plot" alt="accuracy against release delay" '
        f'src="{_data_uri(release_png(summary.by_release, summary.chance_top1, summary.chance_top5))}">'
        if any(m.get("top1") is not None for m in summary.by_release.values()) else ""
    )
    return (
        "<h3>By release</h3><p>Every release of a trial is decoded; correlations are per voxel across trials "
        "(median over voxels) of the betas that release actually decoded.</p>"
        f'<table class="releases"><tr><th>release</th>{head}<th>most retrieved</th></tr>{rows}</table>{plot}'
    )


def _external_section(summary: ReportSummary) -> str:
    if not summary.external_metrics:
        return ""
    rows = "".join(
        f'<tr><td>{html.escape(k)}</td><td class="num">{html.escape(v if isinstance(v, str) else format(v, ".4g"))}</td></tr>'
        for k, v in summary.external_metrics.items()
    )
    return f'<h3>Metrics of external networks (MindEye2\'s table)</h3><table class="external">{rows}</table>'


def _summary_table(summary: ReportSummary) -> str:
    hub = (f"{html.escape(summary.hub_id)} ({_pct(summary.hub_share)} of trials)" if summary.hub_id is not None else "n/a")
    rows = [
        ("Trials", str(summary.trials)),
        ("Decoded", str(summary.decoded)),
        ("Top-1 retrieval", f'{_pct(summary.top1)} <span class="chance">(chance {_pct(summary.chance_top1)})</span>'),
        ("Top-5 retrieval", f'{_pct(summary.top5)} <span class="chance">(chance {_pct(summary.chance_top5)})</span>'),
        ("Trials with a retrieval rank", str(summary.retrieval_trials)),
        ("Most retrieved image", hub),
        ("CLIP two-way identification", f'{_pct(summary.two_way_clip)} <span class="chance">(chance 50.0%)</span>'),
        ("PixCorr", _fmt(summary.pixcorr)),
        ("SSIM", _fmt(summary.ssim)),
        ("Latency, median", _fmt(summary.median_latency_s, ".3f", " s")),
        ("Latency, 95th percentile", _fmt(summary.p95_latency_s, ".3f", " s")),
        ("Stimulus onset → feedback shown, median / p95",
         f"{_fmt(summary.median_feedback_delay_s, '.2f')} / {_fmt(summary.p95_feedback_delay_s, '.2f')} s"),
        ("Framewise displacement, mean / max", f"{_fmt(summary.mean_fd_mm)} / {_fmt(summary.max_fd_mm)} mm"),
        ("Volumes above the FD threshold", str(summary.high_motion_volumes)),
    ]
    rows += [(html.escape(name), _fmt(value, ".4g")) for name, value in summary.metrics.items()]
    body = "".join(f'<tr><th>{name}</th><td class="num">{value}</td></tr>' for name, value in rows)
    return f'<table class="summary">{body}</table>'


def _imagery_section(summary: ReportSummary) -> str:
    """Imagery retrieval among each trial's target set: overall, per set, per vividness rating."""
    m = summary.imagery
    if not m:
        return ""
    chance = f'<span class="chance">(chance {_pct(m["chance"])})</span>'
    rows = [("All imagery trials", f"{_pct(m['top1'])} {chance}", str(m["trials"]))]
    rows += [(f"Target set {html.escape(name)}", _pct(value), "") for name, value in m["per_set"].items()]
    rows += [(f"Vividness {html.escape(rating)}", _pct(value), str(m["trials_per_vividness"][rating]))
             for rating, value in m["per_vividness"].items()]
    body = "".join(f'<tr><th>{name}</th><td class="num">{value}</td><td class="num">{n}</td></tr>' for name, value, n in rows)
    return ('<h2 id="imagery">Mental imagery</h2><p>Top-1 retrieval of each trial\'s target among its target set '
            "(NSD-Imagery's scoring), first releases.</p>"
            f'<table class="summary"><tr><th></th><th>top-1</th><th>trials</th></tr>{body}</table>')


def _pairmate_section(summary: ReportSummary) -> str:
    """Per-run mean pairmate distinctiveness and pairmate two-way accuracy (trials with a pairmate)."""
    m = summary.pairmates
    if not m:
        return ""
    rows = [(f"Run {run}", f) for run, f in m["per_run"].items()] + [("All runs", m)]
    body = "".join(f'<tr><th>{name}</th><td class="num">{f["mean_cpd"]:+.3f}</td><td class="num">{_pct(f["two_way"])}</td>'
                   f'<td class="num">{f["trials"]}</td></tr>' for name, f in rows)
    return ('<h2 id="pairmates">Pairmate distinctiveness</h2><p>Each trial\'s first release: CPD (+1 at the seen '
            "image, -1 at its pairmate, 0 halfway) and two-way accuracy (decoded nearer the seen image than its "
            'pairmate; chance 50%).</p><table class="summary"><tr><th></th><th>mean CPD</th><th>two-way</th>'
            f"<th>trials</th></tr>{body}</table>")


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
    first = data.first_releases()
    later: dict[tuple[int, int], list[TrialRecord]] = {}
    firsts = {id(t) for t in first}
    for t in sorted(data.trials, key=lambda t: t.release):
        if id(t) not in firsts:
            later.setdefault((t.run, t.trial), []).append(t)
    cards = sorted(first, key=_rank_key)
    trial_sections = (
        '<p>Each trial\'s first release (what the participant saw first), best rank first.</p><div class="trials">'
        + "".join(_trial_html(t, data.gallery_size, later.get((t.run, t.trial), ())) for t in cards)
        + "</div>"
    ) if cards else ""
    notes = "".join(f'<p class="notes">{html.escape(n)}</p>' for n in data.notes)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>rtrecon report: {html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>rtrecon session report</h1><p class=\"subtitle\">{html.escape(title)} · written {created}</p>"
        f'<p class="decoder" id="decoder">Reconstructions by: {html.escape(data.decoder_description)}</p>{notes}'
        f"<h2>Summary</h2>{_summary_table(summary)}{_external_section(summary)}"
        f"<h2>Retrieval</h2>{accuracy}{_release_section(summary)}{_imagery_section(summary)}"
        f"{_pairmate_section(summary)}"
        f"{_latency_section(data, summary, stages)}"
        f"{_motion_section(data)}"
        f"{_worst_section(first, data.gallery_size)}"
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
