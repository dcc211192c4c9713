from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from rtrecon.cli import main
from rtrecon.contract import children
from rtrecon.testing import scaled


@pytest.fixture
def files(tmp_path: Path, make_image):
    make_image(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "run-01.tsv").write_text("stim_file\nred.png\nred.png\n")
    (tmp_path / "run-02.tsv").write_text("stim_file\nred.png\nblue.png\n")
    (tmp_path / "session.toml").write_text(
        '[session]\nsubject = "07"\ntask = "perception"\noutput_dir = "out"\n'
        '[stimulus]\ntrial_lists = ["run-01.tsv", "run-02.tsv"]\nlead_in_s = 0.1\n'
        "[stimulus.window]\nsize = [160, 120]\n[stimulus.perception]\nimage_s = 0.2\ngap_s = 0.1\n"
    )
    return tmp_path


def test_check_every_run_of_the_session(files: Path, capsys):
    assert main(["stimulus", "check", "--config", str(files / "session.toml")]) == 1
    captured = capsys.readouterr()
    assert "run 1: " in captured.out and "2 perception trials, 2 events (0 feedback periods, trial), 0.7 s after the first trigger" in captured.out
    assert "sub-07_ses-01_task-perception_run-01_events.tsv" in captured.out
    assert f"{files / 'run-02.tsv'}, line 3: stim_file: image file" in captured.err and "blue.png does not exist" in captured.err
    assert main(["stimulus", "check", "--config", str(files / "session.toml"), "--run", "1"]) == 0
    assert main(["stimulus", "check"]) == 1
    assert "nothing to check" in capsys.readouterr().err


def test_run_with_a_virtual_participant(files: Path, xvfb: str, capsys):
    args = ["stimulus", "run", "--config", str(files / "session.toml"), "--run", "1", "--virtual", "--tr", "0.3", "--offline"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "finished: 2 events in" in out
    events = files / "out/sourcedata/stimulus/sub-07/ses-01/func/sub-07_ses-01_task-perception_run-01_events.tsv"
    with events.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["trial"], r["response"]) for r in rows] == [("0", "new"), ("1", "old")]
    assert main(args) == 1  # the run is recorded: not run over
    assert "run 1 is already recorded" in capsys.readouterr().err


def test_speed_needs_the_virtual_participant(files: Path, capsys):
    assert main(["stimulus", "run", "--config", str(files / "session.toml"), "--run", "1", "--speed", "4", "--offline"]) == 1
    assert "--speed 4 replays a run faster than the scanner" in capsys.readouterr().err


def test_a_killed_run_resumes_where_the_scanner_is(tmp_path: Path, make_image, xvfb: str):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from stimulus.records import read_journal

    make_image(tmp_path / "red.png", (255, 0, 0))
    # 23 s: 12 s at speed 2. Killed with trial 1 on screen (3 s into the run), the program was back 6-9 s
    # into it (measured on a busy 2-core machine): long before the last trials, which must be on time.
    onsets = [2.0 * i + 1.0 for i in range(12)]
    (tmp_path / "run.tsv").write_text("stim_file\tonset\n" + "".join(f"red.png\t{o}\n" for o in onsets))
    (tmp_path / "session.toml").write_text(
        '[session]\nsubject = "07"\ntask = "perception"\noutput_dir = "out"\n[stimulus]\ntrial_lists = ["run.tsv"]\n'
        "[stimulus.window]\nsize = [160, 120]\n[stimulus.perception]\nimage_s = 1.0\ngap_s = 0.5\n[stimulus.trigger]\ntr = 1.0\n"
    )
    folder = tmp_path / "out/sourcedata/stimulus/sub-07/ses-01/func"
    journal = folder / "sub-07_ses-01_task-perception_run-01_journal.jsonl"
    cmd = [sys.executable, "-m", "rtrecon.cli", "stimulus", "run", "--config", str(tmp_path / "session.toml"), "--run", "1",
           "--virtual", "--tr", "1", "--speed", "2", "--offline"]
    first = children.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + scaled(60)
    # segments: fixation, then per trial image, gap, fixation (images: 1, 4, 7, ...)
    while sum(e["t"] == "onset" and e["segment"] >= 4 for e in read_journal(journal)) == 0:  # trial 1 is on screen
        assert first.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = read_journal(journal)
    assert not (folder / "sub-07_ses-01_task-perception_run-01_events.tsv").exists()

    again = children.run(cmd, capture_output=True, text=True, timeout=scaled(120))
    assert again.returncode == 0, again.stderr
    assert "resumed at" in again.stdout
    with (folder / "sub-07_ses-01_task-perception_run-01_events.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    shown_before = [e["onset"] for e in before if e["t"] == "onset" and e["segment"] % 3 == 1]
    # the events of the first life are kept as they were; the run went on with the scanner's clock
    assert [float(r["onset"]) for r in rows[: len(shown_before)]] == pytest.approx(shown_before, abs=1e-6)
    line = next((x for x in again.stdout.splitlines() if x.startswith("missed while the program was down: trial(s) ")), "")
    missed = [int(t) for t in line.rpartition(") ")[2].split(", ")] if line else []
    # every trial was either shown (in one life or the other) or missed while the program was down
    assert sorted([int(r["trial"]) for r in rows] + missed) == list(range(len(onsets)))
    for row in rows:
        assert float(row["onset"]) >= float(row["planned_onset"]) - 0.2  # never early: late only after the restart
    assert float(rows[-1]["onset"]) == pytest.approx(onsets[-1], abs=0.3)  # back on the scanner's time
    with (folder / "sub-07_ses-01_task-perception_run-01_triggers.tsv").open() as f:
        triggers = [float(r["time"]) for r in csv.DictReader(f, delimiter="\t")]
    assert triggers[0] == 0.0 and np.allclose(triggers, np.round(triggers), atol=0.05)  # one time zero for both lives
    assert json.loads((folder / "sub-07_ses-01_task-perception_run-01_frames.json").read_text())["aborted"] is False


def _toml(sections: dict) -> str:
    import json

    def value(v):
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return json.dumps(str(v.resolve()) if isinstance(v, Path) else str(v))

    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) for name, keys in sections.items())


def _verdicts(config: Path, capsys) -> tuple[int, int, str]:
    stimulus = main(["stimulus", "check", "--config", str(config)])
    session = main(["session", "check", str(config), "--role", "stimulus"])
    return stimulus, session, capsys.readouterr().err


def test_session_check_plans_the_runs_as_stimulus_check_does(tmp_path: Path, make_image, capsys):
    make_image(tmp_path / "red.png", (255, 0, 0))
    # NSD's timing: a trial every 4 s, one blank slot; a feedback period after each trial cannot fit
    (tmp_path / "run.tsv").write_text("stim_file\tonset\tfeedback\n" + "".join(f"red.png\t{o}\t1\n" for o in (2.0, 6.0, 14.0)))
    sections = {"session": {"output_dir": tmp_path / "out"}, "stimulus": {"trial_lists": [tmp_path / "run.tsv"]},
                "stimulus.perception": {"image_s": 3.0, "gap_s": 0.9}, "stimulus.feedback": {"window_s": 4.0}}
    config = tmp_path / "session.toml"
    config.write_text(_toml(sections))
    stimulus, session, err = _verdicts(config, capsys)
    assert (stimulus, session) == (1, 1)
    assert f"error: stimulus.trial_lists[0]: {tmp_path / 'run.tsv'}: line 3: onset 6.0 s overlaps" in err
    # the design's own free stretch as the feedback slot: both agree it is fine
    sections["stimulus.feedback"]["when"] = "slot"
    config.write_text(_toml(sections))
    assert _verdicts(config, capsys)[:2] == (0, 0)


@pytest.fixture(scope="module")
def tiny_nsd(tmp_path_factory) -> Path:
    from dataclasses import replace

    from rtrecon.data.synthetic import PRESETS, generate

    tiny = replace(PRESETS["small"], name="tiny", grid=(16, 19, 16), voxel_mm=6.75, roi_voxels=300, image_size=48)
    return generate(tmp_path_factory.mktemp("nsd") / "root", n_subjects=1, n_sessions=1, n_runs=1, size=tiny, seed=7, progress=False)


def test_the_demos_own_config_passes_stimulus_check(tiny_nsd: Path, tmp_path: Path, capsys):
    """The demo's trial lists and [stimulus] tables (rtrecon.demo.stimulus_pc), as the demo writes them."""
    from rtrecon.data.nsd import NSDDataset
    from rtrecon.demo.stimulus_pc import stimulus_settings, write_trial_lists

    nsd = NSDDataset(tiny_nsd)
    lists = write_trial_lists(nsd, 1, 1, tmp_path / "stimulus")
    sections = {"session": {"output_dir": tmp_path / "out"}, **stimulus_settings(lists, nsd.tr, tmp_path / "stimulus" / "images")}
    config = tmp_path / "session.toml"
    config.write_text(_toml(sections))
    stimulus, session, err = _verdicts(config, capsys)
    assert stimulus == session  # the two checks agree, whatever the demo's settings
    if sections["stimulus.feedback"].get("when") != "slot":
        # the demo's settings before its fix: a feedback period after each NSD trial overlaps the next
        assert stimulus == 1 and "overlaps" in err
        sections["stimulus.feedback"]["when"] = "slot"  # the fix (rtrecon/demo/stimulus_pc.py, stimulus_settings)
        config.write_text(_toml(sections))
        stimulus, session, err = _verdicts(config, capsys)
    assert (stimulus, session) == (0, 0), err
    assert main(["stimulus", "check", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    n_blank = sum(1 for a, b in zip(nsd.events(1, 1, 1)["onset"], nsd.events(1, 1, 1)["onset"][1:]) if b - a > 6)
    assert n_blank > 0 and f"({n_blank} feedback periods, slot)" in out  # one at each blank trial


def test_run_refuses_a_config_with_missing_paths_before_any_window(files: Path, xvfb: str, capsys, monkeypatch):
    import stimulus.app

    def no_window(*args, **kwargs):
        raise AssertionError("a window was opened before the start-up check")

    monkeypatch.setattr(stimulus.app, "open_window", no_window)
    config = files / "session.toml"
    text = config.read_text()
    config.write_text(text.replace('"run-01.tsv"', '"run-00.tsv"') + '[security]\nkeys_dir = "no-keys"\n')
    args = ["stimulus", "run", "--config", str(config), "--run", "1", "--virtual", "--tr", "0.3"]
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in captured.err and captured.out == ""
    keys, trials = sorted(lines)  # one line each, naming the file, the key and the path
    assert keys == f"rtrecon stimulus: {config}: security.keys_dir: {files / 'no-keys'}: does not exist"
    assert trials.startswith(f"rtrecon stimulus: {config}: stimulus.trial_lists[0]: ") and "run-00.tsv" in trials
    assert not (files / "out").exists()
    # the control: with run 1's list and no keys folder it runs (run 2's bad list is for stimulus check to report)
    config.write_text(text)
    monkeypatch.undo()
    assert main(args + ["--offline"]) == 0


def test_run_follows_the_consoles_end_run(files: Path, xvfb: str, capsys):
    import json
    import threading

    from rtrecon.contract.transport import StatusPublisher
    from rtrecon.contract.wire import OperatorMessage

    (files / "run-01.tsv").write_text("stim_file\n" + "red.png\n" * 10)  # 3 s: the operator ends it first
    config = files / "session.toml"
    config.write_text(config.read_text() + f'[network]\nevents = "ipc://{files}/ev"\nresults = "ipc://{files}/res"\n'
                      f'operator = "ipc://{files}/operator"\n')
    folder = files / "out/sourcedata/stimulus/sub-07/ses-01/func"
    journal = folder / "sub-07_ses-01_task-perception_run-01_journal.jsonl"
    stop = threading.Event()

    def console() -> None:  # once trial 1 is on screen, the run's end: published each 0.1 s as the console's heartbeat
        with StatusPublisher(f"ipc://{files}/operator", name="console") as publisher:
            while not stop.wait(0.1):
                started = journal.is_file() and '"t": "onset", "segment": 3,' in journal.read_text()  # trial 1's image
                publisher.publish(OperatorMessage(session="sub-07_ses-01", ended_runs=[1] if started else []))

    thread = threading.Thread(target=console, daemon=True)
    thread.start()
    try:
        status = main(["stimulus", "run", "--config", str(config), "--run", "1", "--virtual", "--tr", "0.3"])
    finally:
        stop.set()
        thread.join(scaled(10))
    assert status == 2
    assert "ended by the operator: " in capsys.readouterr().out
    with (folder / "sub-07_ses-01_task-perception_run-01_events.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert 2 <= len(rows) < 10 and rows[1]["trial"] == "1"
    sidecar = json.loads((folder / "sub-07_ses-01_task-perception_run-01_events.json").read_text())
    assert [a["action"] for a in sidecar["OperatorActions"]["actions"]] == ["run_ended"]
