"""Rebuilding a session's report from its folder: ranks, per-stage latencies, live vs released betas."""

from __future__ import annotations

import json

import numpy as np

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.collect import STAGES, SessionLayout, beta_correlation, build_report, trial_records
from rtrecon.demo.stimulus_pc import stimulus_folder


def _layout(demo_run) -> SessionLayout:
    folder = demo_run.session_dir
    return SessionLayout(folder, "01", "02", "perception", stimulus_folder(folder, "01", "02"))


def _gallery(demo_run):
    with np.load(demo_run.session_dir / "gallery.npz") as g:
        return g["embeddings"], [str(i) for i in g["ids"]]


def test_trial_records_rank_the_whole_gallery_and_time_every_stage(demo_run):
    gallery, ids = _gallery(demo_run)
    records = trial_records(_layout(demo_run), 1, gallery, ids, lambda names: [None] * len(names))
    assert len(records) == 63
    for r in records:
        assert 1 <= r.correct_rank <= len(ids)
        if r.correct_rank == 1:
            assert r.retrieved_ids[0] == r.stimulus_id
        elif r.correct_rank > 5:
            assert r.stimulus_id not in r.retrieved_ids
        assert [s for s in STAGES if s in r.latencies] == list(r.latencies)
        assert {"received", "realigned", "glm_updated", "betas", "decoded", "sent", "shown"} <= set(r.latencies)
        assert all(v >= 0 for v in r.latencies.values())


def test_report_rebuilt_from_the_folder_matches_the_demos(demo_run, tmp_path):
    gallery, ids = _gallery(demo_run)
    nsd = NSDDataset(demo_run.dataset)
    summary = build_report(_layout(demo_run), [1], nsd.tr, gallery, ids,
                           lambda names: [None] * len(names), "rebuilt", tmp_path)
    assert summary.top1 == demo_run.headline["top1"] and summary.trials == 63
    assert summary.mean_fd_mm is not None and "rebuilt" in (tmp_path / "report.html").read_text()
    assert len(json.loads((tmp_path / "trials.json").read_text())) == 63


def test_live_betas_correlate_with_the_released_ones(demo_run):
    nsd = NSDDataset(demo_run.dataset)
    released = nsd.betas(1, 2, mask=nsd.roi_mask(1))
    rows = {k: k for k in range(len(nsd.events(1, 2, 1)))}  # the engine's trial k: the run's k-th image
    r = beta_correlation(_layout(demo_run), 1, released, rows)
    assert r.shape == (released.shape[1],) and np.nanmedian(r) > 0.2
    shuffled = beta_correlation(_layout(demo_run), 1, released[::-1], rows)
    assert abs(np.nanmedian(shuffled)) < 0.2
