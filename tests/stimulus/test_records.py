from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.config import StimulusSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.feedback import ReceivedResult
from stimulus.records import EventRecord, RunPaths, RunRecord, frame_stats
from stimulus.timeline import build_timeline
from stimulus.trials import Trial
from stimulus.trigger import KeyPress, ScannerTrigger


def test_frame_stats_finds_the_late_frames():
    flips = [0.0, 1 / 60, 2 / 60, 5 / 60, 6 / 60]
    stats = frame_stats(flips, 1 / 60)
    assert stats.n_frames == 5 and stats.dropped == 1
    assert stats.dropped_at == pytest.approx((5 / 60,))
    assert stats.max_interval == pytest.approx(3 / 60) and stats.median_interval == pytest.approx(1 / 60)
    assert frame_stats([0.0], 1 / 60).dropped == 0


def test_paths_follow_bids_and_a_recorded_run_is_refused(tmp_path: Path):
    paths = RunPaths(tmp_path, "01", "02", "perception", 3)
    folder = tmp_path / "sourcedata/stimulus/sub-01/ses-02"
    assert paths.events == folder / "func/sub-01_ses-02_task-perception_run-03_events.tsv"
    assert paths.source("frames.json") == folder / "func/sub-01_ses-02_task-perception_run-03_frames.json"
    assert paths.link_dir == folder / "link"
    paths.check_free()
    paths.events.parent.mkdir(parents=True)
    paths.events.write_text("onset\tduration\n")
    with pytest.raises(FileExistsError, match="run 3 is already recorded"):
        paths.check_free()


def test_write_every_file(tmp_path: Path):
    trials = [
        Trial(index=0, line=2, trial_type="image", stim_file=tmp_path / "img" / "a.png", stim_id="73", feedback=True),
        Trial(index=1, line=3, trial_type="image", stim_file=tmp_path / "img" / "b.png"),
    ]
    timeline = build_timeline("perception", trials, StimulusSection.model_validate({"feedback": {"window_s": 2}}))
    image0, feedback0, image1 = timeline.events()
    paths = RunPaths(tmp_path / "out", "01", "01", "perception", 1)
    record = RunRecord(paths, trials_file=tmp_path / "run.tsv", zero=100.0, wall_offset=1000.0)
    record.events = [EventRecord(image0, 0.004, 3.0, "new", 0.61), EventRecord(image1, 6.01, 3.5)]  # image 1 stayed 0.5 s too long
    record.feedback_rows = [{"onset": 4.52, "duration": 1.48, "trial_type": "feedback", "trial": 0, "release": 0,
                             "feedback_status": "shown", "planned_onset": feedback0.start, "planned_duration": feedback0.duration}]
    msg = TrialResultMessage(session="sub-01_ses-01", run=1, trial=0, stimulus="73", retrieved=["73", "5"], scores=[0.9, 0.2], image=np.zeros((2, 2, 3), np.uint8), latencies={"decode": 0.05}, stamps={"sent": 1104.4})
    record.results[0] = ReceivedResult(msg, received=104.5, shown=104.52)
    record.flips = [0.004 + i / 60 for i in range(100)]
    trigger = ScannerTrigger(tr=2.0)
    trigger.feed([KeyPress("5", 100.0), KeyPress("5", 102.0), KeyPress("5", 104.01)])
    record.write(trigger, 1 / 60)

    with paths.events.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert list(rows[0]) == ["onset", "duration", "trial_type", "trial", "stim_file", "stim_id", "response", "response_time",
                             "planned_onset", "planned_duration", "result_received", "result_shown", "release", "feedback_status"]
    assert [(r["trial_type"], r["trial"], r["feedback_status"]) for r in rows] == [("image", "0", "n/a"), ("feedback", "0", "shown"), ("image", "1", "n/a")]
    assert rows[1]["release"] == "0" and rows[1]["result_received"] == "4.500000" and rows[1]["planned_onset"] == "4.000000"
    assert rows[0]["planned_duration"] == "3.000000" and rows[2]["duration"] == "3.500000"
    assert rows[0]["onset"] == "0.004000" and rows[0]["response"] == "new" and rows[0]["response_time"] == "0.610000"
    assert rows[0]["result_received"] == "4.500000" and rows[0]["result_shown"] == "4.520000"
    assert rows[2]["response"] == "n/a" and rows[2]["stim_id"] == "n/a" and rows[2]["result_shown"] == "n/a"
    sidecar = json.loads(paths.events.with_suffix(".json").read_text())
    assert "onset" in sidecar and "Levels" in sidecar["feedback_status"]
    timing = sidecar["StimulusTiming"]  # image 1's 0.5 s too long is a slip; image 0's 4 ms late onset is not
    assert (timing["stimuli"], timing["slipped"]) == (2, 1) and timing["slipped_events"][0]["trial"] == 1
    assert timing["max_duration_error_s"] == pytest.approx(0.5) and timing["max_onset_error_s"] == pytest.approx(0.01)

    with paths.source("psychopy.csv").open(encoding="utf-8-sig") as f:
        psy = list(csv.DictReader(f))
    assert [r["trial_type"] for r in psy] == ["image", "feedback", "image"] and psy[0]["participant"] == "01"
    assert paths.source("psychopy.psydat").is_file()

    with paths.source("results.tsv").open() as f:
        (res,) = list(csv.DictReader(f, delimiter="\t"))
    assert res["trial"] == "0" and res["retrieved"] == "73,5" and res["received_to_shown"] == "0.020000"
    assert json.loads(res["engine_latencies"]) == {"decode": 0.05}
    assert json.loads(res["stamps"]) == pytest.approx({"sent": 1104.4, "received": 1104.5, "shown": 1104.52})

    summary = json.loads(paths.source("frames.json").read_text())
    assert summary["frames"]["n_frames"] == 100 and summary["frames"]["dropped"] == 0
    assert summary["triggers"]["n_triggers"] == 3 and summary["triggers"]["max_abs_deviation"] == pytest.approx(0.01)
    with paths.source("triggers.tsv").open() as f:
        assert [r["time"] for r in csv.DictReader(f, delimiter="\t")] == ["0.000000", "2.000000", "4.010000"]


def test_journal_lines_survive_a_torn_write_and_results_round_trip(tmp_path: Path):
    from stimulus.records import RunJournal, read_journal, result_from_entry

    paths = RunPaths(tmp_path, "01", "01", "perception", 1)
    journal = RunJournal(paths, clock=lambda: 10.0)
    assert journal.previous == [] and journal.started is None
    journal.begin({"t": "start", "zero_monotonic": 5.0, "speed": 2.0})
    journal.post({"t": "onset", "segment": 0, "onset": 0.5})
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    msg = TrialResultMessage(session="sub-01_ses-01", run=1, trial=3, stimulus="nsd:9", retrieved=["nsd:9", "nsd:2"], scores=[0.7, 0.1],
                             image=image, embedding=np.array([0.5, -1.0], np.float32), stamps={"sent": 1000.0})
    journal.record_result(msg, 11.0)
    journal.close()
    with paths.journal.open("a") as f:
        f.write('{"t": "shown", "tri')  # killed mid-write

    entries = read_journal(paths.journal)
    # posted lines come from the journal's thread, results from the link's: in either order
    assert entries[0]["t"] == "start" and sorted(e["t"] for e in entries[1:]) == ["onset", "result"]
    result = next(e for e in entries if e["t"] == "result")
    assert result["received_monotonic"] == pytest.approx(11.0 + journal.clock_offset)
    # the wall time of receipt, not of the write (which follows the PNG's encoding and may follow the flip)
    assert result["received_wall"] == 11.0 + journal.wall_offset
    assert journal.wall_offset == pytest.approx(time.time() - 10.0, abs=5.0)
    back = result_from_entry(result, paths.folder)
    np.testing.assert_array_equal(back.image, image)  # the reconstruction, kept as a PNG
    np.testing.assert_array_equal(back.embedding, msg.embedding)
    assert (back.trial, back.retrieved, back.scores, back.stamps) == (3, msg.retrieved, msg.scores, msg.stamps)

    # the next program finds the run started, ends the torn line, and its lines read back
    again = RunJournal(paths)
    assert again.started == {"t": "start", "zero_monotonic": 5.0, "speed": 2.0}
    again.append({"t": "shown", "trial": 3, "shown": 4.0, "shown_wall": 1001.0})
    again.append({"t": "end", "aborted": False})
    again.close()
    assert [e["t"] for e in read_journal(paths.journal)][3:] == ["shown", "end"]
    assert RunJournal(paths).started is None  # ended: a new run, not a resumed one
    assert read_journal(tmp_path / "none.jsonl") == []


def test_times_at_speed_are_scanner_seconds(tmp_path: Path):
    paths = RunPaths(tmp_path, "01", "01", "perception", 1)
    record = RunRecord(paths, zero=100.0, speed=10.0)
    assert record.run_time(100.5) == pytest.approx(5.0) and record.clock_time(5.0) == pytest.approx(100.5)
    record.flips = [0.0 + i * 10 / 60 for i in range(61)]  # 60 Hz on the display, in scanner seconds
    trigger = ScannerTrigger(tr=2.0)
    trigger.feed([KeyPress("5", 100.0), KeyPress("5", 100.2), KeyPress("5", 100.4)])  # every TR / speed
    record.write(trigger, 1 / 60)
    with paths.source("triggers.tsv").open() as f:
        assert [r["time"] for r in csv.DictReader(f, delimiter="\t")] == ["0.000000", "2.000000", "4.000000"]
    summary = json.loads(paths.source("frames.json").read_text())
    assert summary["triggers"]["max_abs_deviation"] == pytest.approx(0.0, abs=1e-9)
    assert summary["frames"]["median_interval"] == pytest.approx(1 / 60) and summary["frames"]["dropped"] == 0
    assert summary["speed"] == 10.0
