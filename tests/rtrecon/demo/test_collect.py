"""Rebuilding a session's report from its folder: ranks, per-stage latencies, live vs released betas."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.collect import STAGES, LiveSessionFiles, beta_correlation, build_report, decoded_betas, trial_records
from rtrecon.demo.stimulus_pc import stimulus_folder


def _layout(demo_run) -> LiveSessionFiles:
    folder = demo_run.session_dir
    return LiveSessionFiles(folder, "01", "02", "perception", stimulus_folder(folder, "01", "02"))


def _gallery(demo_run):
    with np.load(demo_run.session_dir / "gallery.npz") as g:
        return g["embeddings"], [str(i) for i in g["ids"]]


def test_trial_records_rank_the_whole_gallery_and_time_every_stage(demo_run):
    gallery, ids = _gallery(demo_run)
    nsd = NSDDataset(demo_run.dataset)
    records = trial_records(_layout(demo_run), 1, gallery, ids, lambda names: [None] * len(names), tr=nsd.tr)
    first = [r for r in records if r.release == min(x.release for x in records if x.trial == r.trial)]
    first_ids = {id(r) for r in first}
    assert len(first) == 63
    events = pd.read_csv(_layout(demo_run).events(1), sep="\t")
    onsets = dict(zip(events["trial"], events["onset"]))  # the onsets the stimulus program sent, as it ran them
    for r in first:
        assert r.onset_s == pytest.approx(onsets[r.trial])
        assert 0 < r.release_s < 30 and r.fd_mm is not None and r.fd_mm >= 0
        assert -1 <= r.score <= 1
    # each trial's feedback shows the newest release there is at its slot (the first, or a later one)
    shown = [r for r in records if r.feedback_delay_s is not None]
    assert sorted({r.trial for r in shown}) == list(range(63))
    assert all(r.feedback_delay_s > r.release_s for r in shown)  # feedback comes after the volumes the beta needs
    for r in records:
        assert 1 <= r.correct_rank <= len(ids)
        if r.correct_rank == 1:
            assert r.retrieved_ids[0] == r.stimulus_id
        elif r.correct_rank > 5:
            assert r.stimulus_id not in r.retrieved_ids
        assert [s for s in STAGES if s in r.latencies] == list(r.latencies)
        if id(r) in first_ids:
            assert {"received", "realigned", "glm_updated", "betas", "decoded", "sent"} <= set(r.latencies)
        # the shown stage is the shown release's (the newest at the trial's slot)
        assert ("shown" in r.latencies) == (r.feedback_delay_s is not None)
        assert all(v >= 0 for v in r.latencies.values())


def test_report_rebuilt_from_the_folder_matches_the_demos(demo_run, tmp_path):
    gallery, ids = _gallery(demo_run)
    nsd = NSDDataset(demo_run.dataset)
    summary = build_report(_layout(demo_run), [1], nsd.tr, gallery, ids,
                           lambda names: [None] * len(names), "rebuilt", tmp_path)
    assert summary.top1 == demo_run.headline["top1"] and summary.trials == 63
    assert summary.mean_fd_mm is not None and "rebuilt" in (tmp_path / "report.html").read_text()
    records = [(r["trial"], r["release"]) for r in json.loads((tmp_path / "trials.json").read_text())]
    assert len(records) == len(set(records)) and sorted({t for t, _ in records}) == list(range(63))  # every release once


def test_live_betas_correlate_with_the_released_ones(demo_run):
    nsd = NSDDataset(demo_run.dataset)
    released = nsd.betas(1, 2, mask=nsd.roi_mask(1))
    rows = {k: k for k in range(len(nsd.events(1, 2, 1)))}  # the engine's trial k: the run's k-th image
    r = beta_correlation(_layout(demo_run), 1, released, rows)
    assert r.shape == (released.shape[1],) and np.nanmedian(r) > 0.2
    shuffled = beta_correlation(_layout(demo_run), 1, released[::-1], rows)
    assert abs(np.nanmedian(shuffled)) < 0.2
    # the betas actually decoded (each release's) correlate less than the end-of-run ones
    expected = demo_run.release_trials()
    for release, (trials, betas) in decoded_betas(_layout(demo_run), 1).items():
        assert sorted(trials) == expected[release] and betas.shape == (len(trials), released.shape[1])
        early = beta_correlation(_layout(demo_run), 1, released, rows, release)
        assert 0 < np.nanmedian(early) <= np.nanmedian(r) + 0.05


def test_the_decoded_betas_carry_what_the_decoder_cannot_exceed(demo_run):
    """The oracle ceiling of the betas the engine decoded bounds the live top-1 from above."""
    from rtrecon.data.synthetic import ceiling_ranks

    nsd = NSDDataset(demo_run.dataset)
    ids = nsd.events(1, 2, 1)["image_id"].to_numpy()
    gallery = np.unique(ids)
    trials, betas = decoded_betas(_layout(demo_run), 1)[0]
    ceiling = np.mean(ceiling_ranks(demo_run.dataset, 1, betas, ids[trials], gallery) == 1)
    chance = 1 / len(gallery)
    top1 = demo_run.headline["top1"]
    assert ceiling > chance + 3 * np.sqrt(chance * (1 - chance) / 63)
    assert top1 <= ceiling + 3 * np.sqrt(ceiling * (1 - ceiling) / 63)
