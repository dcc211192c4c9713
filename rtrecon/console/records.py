"""The operator's controls, recorded in the session's records.

Every control the operator gives on the console page (pause or resume feedback, mark a trial bad
or good again, end the run) is appended as one JSON line to the session's console events file::

    OUT/sourcedata/console/sub-XX/ses-YY/sub-XX_ses-YY_console-events.jsonl

with the wall time (``time.time()``), the action and its run and trial. Lines are fsynced one by
one before the page is told the control was taken, and a line torn by a crash is skipped when
the file is read back, so a restarted console shows the controls given before.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from rtrecon.contract.layout import SessionLayout, fsync_dir

__all__ = ["ACTIONS", "ControlError", "ControlRecords"]

#: action -> the fields it needs besides the action
ACTIONS: dict[str, tuple[str, ...]] = {
    "pause_feedback": (),
    "resume_feedback": (),
    "mark_bad": ("run", "trial"),
    "unmark_bad": ("run", "trial"),
    "end_run": ("run",),
}


class ControlError(ValueError):
    """A control request that names an unknown action or lacks what its action needs."""


class ControlRecords:
    """The console events file of one session (see the module docstring)."""

    def __init__(self, layout: SessionLayout) -> None:
        self.path = layout.sourcedata_dir("console") / f"{layout.session_id}_console-events.jsonl"

    def read(self) -> list[dict[str, Any]]:
        """Every control recorded so far, oldest first."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line, torn by a crash
                continue
            if isinstance(record, dict) and record.get("action") in ACTIONS:
                out.append(record)
        return out

    def record(self, request: dict[str, Any]) -> dict[str, Any]:
        """Check ``request`` (``action`` and the fields it needs), append it durably, return the record."""
        action = request.get("action")
        if action not in ACTIONS:
            raise ControlError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        record: dict[str, Any] = {"time": time.time(), "action": action}
        for name in ACTIONS[action]:
            value = request.get(name)
            if type(value) is not int or value < 0:
                raise ControlError(f"{action} needs {name} as a non-negative integer (got {value!r})")
            record[name] = value
        note = request.get("note", "")
        if not isinstance(note, str) or len(note) > 500:
            raise ControlError("note must be a string of at most 500 characters")
        if note:
            record["note"] = note
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if created:  # the new file's name must survive a power cut too
            fsync_dir(self.path.parent)
        return record
