"""The virtual stimulus PC: the events it plays and the results it records."""

from __future__ import annotations

import json

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.participant import read_results, results_path, run_events


def test_events_are_the_runs_design(demo_run):
    nsd = NSDDataset(demo_run.dataset)
    events = run_events(nsd, 1, 2, 1, "sub-01_ses-02")
    design = nsd.events(1, 2, 1)
    assert [e.stimulus for e in events] == [f"nsd:{i}" for i in design["image_id"]]
    assert [e.onset for e in events] == list(design["onset"]) and all(e.session == "sub-01_ses-02" for e in events)
    assert [e.trial for e in events] == sorted(e.trial for e in events)


def test_every_result_was_recorded_with_its_stamps(demo_run):
    rows = read_results(demo_run.session_dir / "stimulus", 1)
    assert len(rows) == 63 and len({r["trial"] for r in rows}) == 63
    for row in rows:
        assert row["stamps"]["decoded"] <= row["stamps"]["sent"] <= row["stamps"]["shown"]
        assert len(row["retrieved"]) == 5 and row["stimulus"].startswith("nsd:")


def test_a_torn_last_line_is_dropped(tmp_path):
    path = results_path(tmp_path, 2)
    path.write_text(json.dumps({"trial": 1}) + "\n" + '{"trial": 2, "ret')
    assert read_results(tmp_path, 2) == [{"trial": 1}]
    assert read_results(tmp_path, 3) == []
