"""``rtrecon demo --task imagery`` end to end, shortened: one imagery run on the shortened demo's cached world."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def imagery_run(demo_run, tmp_path_factory):
    """The imagery demo on the perception demo's cache (its dataset is reused; no MindEye2 is trained)."""
    out = tmp_path_factory.mktemp("imagery_demo")
    cmd = [sys.executable, "-m", "rtrecon.cli", "demo", "--task", "imagery", "--out", str(out), "--cache", str(demo_run.cache),
           *demo_run.args, "--live-runs", "1", "--speed", "40"]  # 40x: 48 cued trials drawn in 10 s, not 5, on busy cores
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"the imagery demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done, out


def test_the_imagery_demo_ends_with_the_perception_headline_keys_scored_among_the_runs_targets(imagery_run, demo_run):
    done, out = imagery_run
    headline = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(headline) == demo_run.HEADLINE_KEYS
    # one run of NSD-Imagery's protocol: 6 targets x 8 repeats, every trial decoded, retrieval among the 6
    assert headline["trials"] == 48 and headline["decoded"] == 48
    assert headline["chance_top1"] == pytest.approx(1 / 6) and 0 <= headline["top1"] <= headline["top5"] <= 1
    assert headline["two_way_clip"] is None and headline["pixcorr"] is None  # the linear head retrieves only
    summary = json.loads((out / headline["report"]).parent.joinpath("summary.json").read_text())
    imagery = summary["imagery"]
    assert imagery["top1"] == headline["top1"] and imagery["trials"] == 48 and set(imagery["per_set"]) == {"simple"}
    # the virtual participant's vividness ratings (the synthetic trials') reach the report per rating
    assert set(imagery["per_vividness"]) <= {"1", "2", "3", "4"} and sum(imagery["trials_per_vividness"].values()) == 48
    assert 'id="imagery"' in (out / headline["report"]).read_text()
    assert "linear head" in done.stderr and "live imagery session" in done.stderr
    assert f"cached: {demo_run.dataset}" in done.stderr  # the perception demo's dataset, not written again
    (session,) = [p for p in out.iterdir() if p.is_dir()]
    assert "head = \"linear\"" in (session / "session.toml").read_text()
    events = (session / "sourcedata" / "stimulus" / "sub-01" / "ses-03" / "func" / "sub-01_ses-03_task-imagery_run-01_events.tsv")
    assert {"cue", "imagery", "vividness", "feedback"} <= {line.split("\t")[2] for line in events.read_text().splitlines()[1:]}


def test_the_imagery_demos_own_config_passes_the_stimulus_and_session_checks(imagery_run):
    from rtrecon.cli import main

    _, out = imagery_run
    (session,) = [p for p in out.iterdir() if p.is_dir()]
    config = str(session / "session.toml")
    # run 2 (not replayed with --live-runs 1): cues, imagery periods and feedback slots never overlap
    assert main(["stimulus", "check", "--config", config, "--run", "2"]) == 0
    assert main(["session", "check", config]) == 0
