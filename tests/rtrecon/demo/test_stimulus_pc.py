"""The demo's stimulus PC: trial lists from the design, the display, and the stimulus program's records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.processes import ProcessFailed, ProcessGroup
from rtrecon.demo.stimulus_pc import journal_path, read_results, start_display, stimulus_folder


def test_trial_lists_and_images_follow_the_design(demo_run):
    nsd = NSDDataset(demo_run.dataset)
    folder = demo_run.session_dir / "stimulus"
    trials = pd.read_csv(folder / "run-01_trials.tsv", sep="\t")
    design = nsd.events(1, 2, 1)
    assert list(trials["stim_id"]) == [f"nsd:{i}" for i in design["image_id"]]  # the gallery's ids
    np.testing.assert_array_equal(trials["onset"], design["onset"])
    assert set(trials["feedback"]) == {1}
    first = int(design["image_id"][0])
    np.testing.assert_array_equal(np.asarray(Image.open(folder / trials["stim_file"][0])), nsd.images([first])[0])


def _journal(demo_run) -> Path:
    return journal_path(stimulus_folder(demo_run.session_dir, "01", "02"), "01", "02", "perception", 1)


def test_every_result_was_shown_on_a_flip_of_the_participants_window(demo_run):
    results = read_results(_journal(demo_run))
    # every trial's results (one per release the engine sent), each release recorded once
    releases = [(r["trial"], r["release"]) for r in results]
    assert len(releases) == len(set(releases)) and sorted({t for t, _ in releases}) == list(range(63))
    for row in results:
        stamps = row["stamps"]
        assert row["copies"] == 1 and len(row["retrieved"]) == 5 and row["stimulus"].startswith("nsd:")
        assert stamps["decoded"] <= stamps["sent"] <= stamps["result_received"]
        if "shown" in stamps:  # the flip that first showed this release
            # received and shown are both the program's clock mapped to wall time by one offset, so a
            # result is never shown before it was received (the journal's write came after the
            # flip once, when it stamped time.time() itself)
            assert stamps["result_received"] <= stamps["shown"]
    lines = [json.loads(line) for line in _journal(demo_run).read_text().splitlines()]
    flips = np.array([t for e in lines if e["t"] == "flips" for t in e["times"]])
    speed = next(e for e in lines if e["t"] == "start")["speed"]
    shown = np.array([e["shown"] for e in lines if e["t"] == "shown"])
    onsets = np.array([e["onset"] for e in lines if e["t"] == "onset"])
    assert {e["trial"] for e in lines if e["t"] == "shown"} == set(range(63))  # every trial's result was shown
    # "shown" and every onset are flips of the window, stamped right after the flip: typically within a
    # ms, and never half a frame away even when the busy machine deschedules the program in between
    frame = np.median(np.diff(flips))
    for times in (shown, onsets):
        gaps = np.abs(times[:, None] - flips[None, :]).min(axis=1)
        assert np.median(gaps) < 1e-3 * speed and gaps.max() < 0.5 * frame
    # what the engine received is what the program recorded: the flips' onsets, in scanner seconds
    func = demo_run.session_dir / "sub-01" / "ses-02" / "func"
    engine = pd.read_csv(func / "sub-01_ses-02_task-perception_run-01_events.tsv", sep="\t")
    program = pd.read_csv(_journal(demo_run).with_name("sub-01_ses-02_task-perception_run-01_events.tsv"), sep="\t")
    program = program[program["trial_type"] != "feedback"]  # the program's own feedback periods
    np.testing.assert_allclose(engine.sort_values("trial")["onset"], program.sort_values("trial")["onset"], atol=1e-5)


def test_read_results_skips_a_torn_line_and_counts_copies(tmp_path):
    journal = tmp_path / "journal.jsonl"
    result = {"t": "result", "run": 1, "trial": 4, "stimulus": "nsd:3", "retrieved": ["nsd:3"], "scores": [0.5],
              "embedding": None, "stamps": {"sent": 10.0}, "received_wall": 10.5, "image": "trial-004_recon.png"}
    lines = [{"t": "start", "run": 1}, {**result, "run": 2, "trial": 9}, result, {"t": "shown", "trial": 4, "shown_wall": 11.0}]
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"t": "res\n' + json.dumps(result) + "\n")
    (row,) = read_results(journal)  # the other run's result is not this run's
    assert row["stamps"] == {"sent": 10.0, "result_received": 10.5, "shown": 11.0}
    assert row["copies"] == 2 and row["image"] == tmp_path / "trial-004_recon.png"
    assert read_results(tmp_path / "none.jsonl") == []


def test_read_results_keeps_each_release_and_shows_the_first(tmp_path):
    journal = tmp_path / "journal.jsonl"
    result = {"t": "result", "run": 1, "trial": 4, "stimulus": "nsd:3", "retrieved": ["nsd:3"], "scores": [0.5],
              "embedding": None, "stamps": {"sent": 10.0}, "received_wall": 10.5, "image": None}
    lines = [{"t": "start", "run": 1}, {**result, "release": 0}, {"t": "shown", "trial": 4, "shown_wall": 11.0, "shown": 30.0},
             {**result, "release": 1, "stamps": {"sent": 20.0}}]
    journal.write_text("".join(json.dumps(x) + "\n" for x in lines))
    first, second = sorted(read_results(journal), key=lambda r: r["release"])
    assert (first["release"], second["release"]) == (0, 1) and first["copies"] == second["copies"] == 1
    assert first["stamps"]["shown"] == 11.0 and first["shown_run_s"] == 30.0
    assert "shown" not in second["stamps"] and second["shown_run_s"] is None


def test_without_a_display_or_xvfb_the_error_names_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with ProcessGroup(tmp_path) as group, pytest.raises(ProcessFailed, match="apt-get install xvfb"):
        start_display(group)


def test_a_private_xvfb_while_the_session_runs(tmp_path, monkeypatch):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed")
    monkeypatch.delenv("DISPLAY", raising=False)
    with ProcessGroup(tmp_path) as group:
        display = start_display(group)
        assert group.env["DISPLAY"] == display and Path(f"/tmp/.X11-unix/X{display[1:]}").exists()
        assert group.returncode("xvfb") is None
    assert group.returncode("xvfb") is not None  # stopped with the session
    monkeypatch.setenv("DISPLAY", ":7")
    with ProcessGroup(tmp_path) as group:
        assert start_display(group) == ":7" and "xvfb" not in group.children
