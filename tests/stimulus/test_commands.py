from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rtrecon.cli import main


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
    assert "run 1: " in captured.out and "2 perception trials, 2 events, 0.7 s after the first trigger" in captured.out
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
