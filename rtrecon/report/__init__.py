"""The HTML session report: seen vs reconstructed images, retrieval accuracy, latency, motion.

Build a :class:`SessionReportData` from plain arrays and numbers, then::

    from rtrecon.report import write_report
    summary = write_report(data, out_dir)      # out_dir/report.html + out_dir/summary.json
    summary.headline()                         # {"report", "trials", "decoded", "top1", ..., "top1_by_release"}

Modules: :mod:`~rtrecon.report.records` (the input records, :func:`load_confounds`,
:func:`stage_durations`, :func:`summarise`), :mod:`~rtrecon.report.metrics` (MindEye2's
reconstruction and retrieval metrics), :mod:`~rtrecon.report.figures` (plots and thumbnails) and
:mod:`~rtrecon.report.writer` (the page).
"""

from rtrecon.report.records import (
    MotionTrace,
    ReportSummary,
    SessionReportData,
    TrialRecord,
    load_confounds,
    stage_durations,
    summarise,
)
from rtrecon.report.writer import render_html, write_report

__all__ = [
    "MotionTrace",
    "ReportSummary",
    "SessionReportData",
    "TrialRecord",
    "load_confounds",
    "stage_durations",
    "summarise",
    "render_html",
    "write_report",
]
