"""``rtrecon replay nsd``: a session replayed through the live processes, and its input errors."""

from __future__ import annotations

import json

from rtrecon.cli import main
from rtrecon.reconstruction.weights import synthetic_reconstructor_path


def test_replay_a_session_with_a_given_checkpoint(demo_run, tmp_path, capsys):
    """The demo subject's live session again, decoded with the demo's trained checkpoint given as
    ``--checkpoint`` (the path an NSD user takes with an official one), reconstructed by ``--unclip``,
    each trial released at ``--releases 8`` s and at run end: two reconstructions a trial where the
    default schedule (the demo's, test_command.py) makes three, the cost of this test."""
    (checkpoint,) = (demo_run.cache / "decoders").glob("*/finetune/last.pth")
    unclip = synthetic_reconstructor_path()
    args = ["replay", "nsd", "--root", str(demo_run.dataset), "--subject", "1", "--session", "2", "--speed", "80",
            "--checkpoint", str(checkpoint), "--unclip", str(unclip), "--releases", "8", "--out", str(tmp_path / "replay")]
    assert main(args) == 0
    headline = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(headline) == demo_run.HEADLINE_KEYS
    assert headline["trials"] == headline["decoded"] == 63
    assert headline["chance_top1"] == demo_run.headline["chance_top1"]
    (session,) = (tmp_path / "replay").iterdir()
    assert session.name.startswith("sub-01_ses-02_")
    report = session / "derivatives" / "rtrecon" / "sub-01" / "ses-02" / "report"
    summary = json.loads((report / "summary.json").read_text())
    # what an NSD user compares: the betas decoded live against the released ones of the same trials
    assert summary["metrics"]["live_vs_released_beta_r"] > 0
    assert set(summary["by_release"]) == {"0", "1"}  # --releases reached the engine: 8 s after onset, then run end
    assert all("live_vs_released_beta_r" in release for release in summary["by_release"].values())
    assert str(checkpoint) in summary["decoder"] and f"unCLIP model {unclip}" in summary["decoder"]
    html = (report / "report.html").read_text()
    assert str(checkpoint) in html and "live_vs_released_beta_r" in html
    trials = json.loads((report / "trials.json").read_text())
    first = [t for t in trials if t["release"] == 0]
    assert len(first) == 63 and all("generated" in t["latencies"] for t in first)  # every trial reconstructed


def test_replay_errors_name_the_problem(demo_run, tmp_path, capsys):
    (tmp_path / "nsd").mkdir()
    assert main(["replay", "nsd", "--root", str(tmp_path / "nsd"), "--subject", "1", "--session", "1"]) == 2
    assert "error" in capsys.readouterr().err
    args = ["replay", "nsd", "--root", str(demo_run.dataset), "--subject", "1", "--session", "2", "--out", str(tmp_path)]
    assert main([*args, "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "none.pth: no such checkpoint" in capsys.readouterr().err
    assert main([*args, "--targets", str(tmp_path / "none.npy")]) == 2
    assert "none.npy: no CLIP tokens" in capsys.readouterr().err


def test_a_session_or_run_that_is_not_there_is_named_before_any_training(tmp_path, capsys):
    # Issue 20, failure 9: `replay nsd` trained for minutes before finding the session absent.
    root = tmp_path / "nsd"
    series = root / "nsddata_timeseries" / "ppdata" / "subj01" / "func1pt8mm" / "timeseries"
    series.mkdir(parents=True)
    for session in (1, 2):
        (series / f"timeseries_session{session:02d}_run01.nii.gz").write_bytes(b"")
    (root / "synthetic_truth").mkdir()  # a synthetic root: without a checkpoint it would train a decoder
    args = ["replay", "nsd", "--root", str(root), "--subject", "1", "--out", str(tmp_path / "out")]
    assert main([*args, "--session", "7"]) == 2
    err = capsys.readouterr().err
    assert "subject 1 has no session 7" in err and "its sessions: 1, 2" in err and "training" not in err
    assert main([*args[:5], "3", *args[6:], "--session", "1"]) == 2
    assert "subject 3 has no session 1" in capsys.readouterr().err
    assert main([*args, "--session", "1", "--runs", "1", "4"]) == 2
    assert "has no run(s) 4" in capsys.readouterr().err
