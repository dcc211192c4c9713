"""The operator's controls in the session's console events file."""

from __future__ import annotations

import json

import pytest

from rtrecon.console.records import ControlError, ControlRecords
from rtrecon.contract.layout import SessionLayout


def test_controls_are_appended_and_read_back(tmp_path):
    records = ControlRecords(SessionLayout(tmp_path, "01", "02", "perception"))
    assert records.path == tmp_path / "sourcedata/console/sub-01/ses-02/sub-01_ses-02_console-events.jsonl"
    assert records.read() == []
    first = records.record({"action": "mark_bad", "run": 1, "trial": 4, "note": "eyes closed"})
    records.record({"action": "pause_feedback"})
    records.record({"action": "end_run", "run": 1})
    lines = [json.loads(line) for line in records.path.read_text().splitlines()]
    assert [r["action"] for r in lines] == ["mark_bad", "pause_feedback", "end_run"]
    assert lines[0] == first and first["trial"] == 4 and first["note"] == "eyes closed" and first["time"] > 0
    # A restarted console reads them back; a line torn by a crash is skipped.
    with open(records.path, "a") as f:
        f.write('{"time": 1.0, "action": "resume_fe')
    again = ControlRecords(SessionLayout(tmp_path, "01", "02", "perception")).read()
    assert [r["action"] for r in again] == ["mark_bad", "pause_feedback", "end_run"]


@pytest.mark.parametrize("request_, reason", [
    ({"action": "delete_session"}, "unknown action"),
    ({"action": "mark_bad", "run": 1}, "mark_bad needs trial"),
    ({"action": "mark_bad", "run": 1, "trial": "3"}, "mark_bad needs trial"),
    ({"action": "end_run", "run": -1}, "end_run needs run"),
    ({"action": "end_run", "run": True}, "end_run needs run"),
    ({"action": "pause_feedback", "note": 5}, "note must be a string"),
])
def test_malformed_controls_are_refused_and_not_recorded(tmp_path, request_, reason):
    records = ControlRecords(SessionLayout(tmp_path, "01", "01", "perception"))
    with pytest.raises(ControlError, match=reason):
        records.record(request_)
    assert records.read() == []
