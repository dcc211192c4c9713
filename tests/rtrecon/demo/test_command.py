"""``rtrecon demo`` end to end (shortened): its last line, its report, what it prints."""

from __future__ import annotations

import json
import re

from rtrecon.cli import main


def test_demo_ends_with_the_headline_json_and_writes_the_report(demo_run):
    headline = demo_run.headline
    assert set(headline) == demo_run.HEADLINE_KEYS
    # The live session is one NSD-timed run: 63 image trials, every one decoded.
    assert headline["trials"] == 63 and headline["decoded"] == 63
    assert 0.0 <= headline["top1"] <= headline["top5"] <= 1.0
    gallery_size = round(1 / headline["chance_top1"])
    assert 30 < gallery_size <= 63  # the session's distinct images (NSD repeats some)
    assert headline["median_latency_s"] > 0
    report = demo_run.session_dir / "derivatives" / "rtrecon" / "sub-01" / "ses-02" / "report" / "report.html"
    assert headline["report"] == str(report)
    html = report.read_text()
    # every trial is reconstructed by default, by the decoder shipped for the synthetic world
    assert "own unCLIP model shipped with rtrecon" in html and "sub-01" in html
    summary = json.loads((report.parent / "summary.json").read_text())
    assert summary["top1"] == headline["top1"] and summary["metrics"]["live_vs_released_beta_r"] > 0
    # per release (one or several, as the engine releases): retrieval of the betas decoded, their
    # correlation with the end-of-run betas, and the reconstructions' metrics
    first = min(summary["by_release"], key=int)
    assert headline["top1_by_release"][first] == headline["top1"]
    assert set(headline["top1_by_release"]) == set(summary["by_release"])
    expected = demo_run.release_trials()
    assert sorted(map(int, summary["by_release"])) == sorted(expected) and len(expected[0]) == 63
    for key, release in summary["by_release"].items():
        assert release["trials"] == release["reconstructions"] == len(expected[int(key)])
        assert 0 < release["beta_r_end"] <= 1 and 0 <= release["two_way_clip"] <= 1 and -1 <= release["ssim"] <= 1
        assert 0 < release["hub_share"] <= 1 and release["median_release_s"] > 0
        assert 0 < release["live_vs_released_beta_r"] < 1
    assert headline["two_way_clip"] == summary["by_release"][first]["two_way_clip"]
    assert -1 <= headline["pixcorr"] <= 1 and summary["median_feedback_delay_s"] > 0
    assert all(v.startswith("not computed") for v in summary["external_metrics"].values())
    # cards sorted by rank, worst trials, the world named
    assert "Worst trials" in html and 'id="release-plot"' in html and "Synthetic world: typical" in html
    ranks = [int(r) for r in re.findall(r'data-rank="(\d+)"', html)]
    assert len(ranks) == 63 and ranks == sorted(ranks)
    assert "report:" in demo_run.stderr and "1/4 synthetic dataset" in demo_run.stderr
    assert "world typical (median ncsnr" in demo_run.stderr and "fine-tune on subject 1 session(s) 1" in demo_run.stderr


def test_demo_starts_the_operator_console_and_prints_its_address(demo_run):
    assert re.search(r"operator console: http://127\.0\.0\.1:\d+/\n", demo_run.stderr)
    log = (demo_run.session_dir / "logs" / "console.log").read_text()
    assert "console up: http://127.0.0.1:" in log and "Traceback" not in log


def test_a_second_demo_finds_its_dataset_and_decoder_in_the_cache(demo_run, tmp_path, capsys, monkeypatch):
    """A second ``rtrecon demo`` with the same cache and settings generates and trains nothing. Its live
    session, which the cache does not change, is left out: the test stops the demo where it would start."""
    import rtrecon.demo.live
    from rtrecon.demo.processes import ProcessFailed

    specs = []

    def stop_before_the_live_session(spec, console):
        specs.append(spec)
        raise ProcessFailed("stopped by the test before the live session")

    monkeypatch.setattr(rtrecon.demo.live, "run_session", stop_before_the_live_session)
    assert main(["demo", "--out", str(tmp_path), "--cache", str(demo_run.cache), *demo_run.args]) == 1
    err = capsys.readouterr().err
    (checkpoint,) = (demo_run.cache / "decoders").glob("*/finetune/last.pth")
    assert f"cached: {demo_run.dataset}" in err and f"cached: {checkpoint}" in err
    assert "written:" not in err and "trained:" not in err
    assert [(s.root, s.checkpoint) for s in specs] == [(demo_run.dataset, checkpoint)]


def test_demo_refuses_a_world_it_cannot_train_on(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--cache", str(tmp_path), "--sessions", "1"]) == 2
    assert "2+ sessions" in capsys.readouterr().err
