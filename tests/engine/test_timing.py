"""Stage timing rows: wall times of every stage, milliseconds since the first one."""

from __future__ import annotations

import time

import pytest

from engine.timing import StageRecorder


def test_rows_hold_incoming_stamps_and_latencies():
    rec = StageRecorder(("received", "persisted", "done"))
    start = time.perf_counter()
    rec.mark(3, "received", {"sent": 100.0, "other": 5.0}, at=start)
    rec.mark(3, "persisted")
    rec.mark(3, "done", at=start + 0.25)
    row = rec.row(3, "volume")
    assert list(row) == rec.columns("volume")
    assert row["volume"] == 3 and row["sent_time"] == 100.0 and row["written_time"] is None
    assert row["done_ms"] == pytest.approx(250.0) and 0 <= row["persisted_ms"] < 250
    assert rec.elapsed_ms(3, "done", since="persisted") == pytest.approx(250.0 - row["persisted_ms"])
    assert row["done_time"] - row["received_time"] == pytest.approx(0.25, abs=1e-3)
    rec.forget(3)
    assert rec.row(3, "volume")["done_ms"] is None


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage"):
        StageRecorder(("a",)).mark(0, "b")
