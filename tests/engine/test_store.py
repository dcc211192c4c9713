"""The BIDS session store: appends survive a crash at any byte, and read back as BIDS."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from engine.store import AppendTable, RealignmentLog, SessionStore

AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])


def _volumes(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 3000, (n, 6, 5, 4)).astype(np.int16)


def test_run_is_bids_and_readable_while_live(tmp_path):
    store = SessionStore(tmp_path, "01", "02", "perception")
    vols = _volumes(5)
    for v in vols:
        store.append_volume(3, v, AFFINE, tr=1.5, slice_times=[0.0, 0.5, 1.0, 0.25])
    live = store.bold_path(3)
    assert live.name == "sub-01_ses-02_task-perception_run-03_bold.nii"
    img = nib.load(live)
    assert img.shape == (6, 5, 4, 5) and img.header.get_zooms()[3] == 1.5
    np.testing.assert_array_equal(np.moveaxis(np.asarray(img.dataobj), -1, 0), vols)
    np.testing.assert_allclose(img.affine, AFFINE)
    sidecar = json.loads((store.func / "sub-01_ses-02_task-perception_run-03_bold.json").read_text())
    assert sidecar["RepetitionTime"] == 1.5 and sidecar["SliceTiming"][2] == 1.0
    assert store.persisted() == {3: 4}
    store.end_run(3)
    assert store.is_ended(3) and store.persisted() == {3: 5} and store.uncompressed_ended_runs() == [3]
    final = store.compress_run(3)
    assert final.name.endswith("_bold.nii.gz") and not live.exists() and store.uncompressed_ended_runs() == []
    np.testing.assert_array_equal(np.moveaxis(np.asarray(nib.load(final).dataobj), -1, 0), vols)
    assert store.n_volumes(3) == 5 and store.is_ended(3) and store.persisted() == {3: 5}
    with pytest.raises(ValueError, match="has ended"):
        store.append_volume(3, vols[0], AFFINE, 1.5)


@pytest.mark.parametrize("torn_bytes", [1, 100, 239])
def test_torn_volume_write_is_dropped(tmp_path, torn_bytes):
    store = SessionStore(tmp_path, "01", "01", "t")
    vols = _volumes(3)
    for v in vols[:2]:
        store.append_volume(1, v, AFFINE, 2.0)
    # A crash in the middle of the third volume's bytes: the header still counts two.
    with open(store.bold_path(1), "ab") as f:
        f.write(np.asfortranarray(vols[2]).tobytes(order="F")[:torn_bytes])
    reopened = SessionStore(tmp_path, "01", "01", "t")
    assert reopened.n_volumes(1) == 2
    reopened.append_volume(1, vols[2], AFFINE, 2.0)
    np.testing.assert_array_equal(reopened.volume(1, 2), vols[2])
    np.testing.assert_array_equal(np.asarray(nib.load(reopened.bold_path(1)).dataobj)[..., 1], vols[1])


def test_missing_volumes_and_bad_shapes(tmp_path):
    store = SessionStore(tmp_path, "01", "01", "t")
    with pytest.raises(ValueError, match="geometry"):
        store.append_missing(1)
    vols = _volumes(2)
    for invented in (0.0, float("nan")):  # a run's TR is never made up
        with pytest.raises(ValueError, match="repetition time"):
            store.append_volume(1, vols[0], AFFINE, invented)
    assert store.runs() == []
    store.append_volume(1, vols[0], AFFINE, 2.0)
    assert store.append_missing(1) == 1
    assert store.volume(1, 1) is None
    with pytest.raises(ValueError, match="shape"):
        store.append_volume(1, np.zeros((3, 3, 3), np.int16), AFFINE, 2.0)
    assert store.n_volumes(1) == 2


def test_events_and_tables_drop_torn_rows(tmp_path):
    store = SessionStore(tmp_path, "01", "01", "t")
    store.append_event(2, {"onset": 1.25, "duration": 3.0, "trial_type": "image", "trial": 0, "stimulus": "a.png"})
    store.append_event(2, {"onset": 5.5, "duration": 3.0, "trial_type": "image", "trial": 1, "response_time": None})
    path = store.func / "sub-01_ses-01_task-t_run-02_events.tsv"
    with open(path, "ab") as f:
        f.write(b"9.0\t3.0\tima")
    reopened = SessionStore(tmp_path, "01", "01", "t")
    rows = reopened.events(2)
    assert [r["trial"] for r in rows] == ["0", "1"] and rows[1]["response_time"] == "n/a"
    frame = pd.read_csv(path, sep="\t", na_values="n/a")
    assert list(frame.columns[:3]) == ["onset", "duration", "trial_type"] and frame.onset.tolist() == [1.25, 5.5]
    table = AppendTable(tmp_path / "x.tsv", ["a", "b"])
    table.append({"a": 1, "b": float("nan")})
    assert len(table) == 1 and table.rows() == [{"a": "1", "b": "n/a"}]
    with pytest.raises(ValueError, match="columns"):
        AppendTable(tmp_path / "x.tsv", ["a", "c"])


def test_geometry_is_what_a_restart_reads_back(tmp_path):
    """The engine computes with :meth:`SessionStore.geometry`: the same values live, after a restart
    and after compression, even for an affine and TR that float32 cannot hold."""
    affine = np.array([[3.1, 0.03, 0, -33.3], [-0.03, 3.1, 0.2, -36.1], [0, -0.2, 3.5, -28.7], [0, 0, 0, 1]])
    store = SessionStore(tmp_path, "01", "01", "t")
    vols = _volumes(2)
    store.append_volume(1, vols[0], affine, tr=1.3)
    live_affine, live_tr = store.geometry(1)
    assert live_tr == 1.3  # the sidecar's, not the header's float32 1.2999999523
    assert not np.array_equal(live_affine, affine)  # float32 in the header ...
    np.testing.assert_allclose(live_affine, affine, atol=1e-5)
    np.testing.assert_array_equal(live_affine, nib.load(store.bold_path(1)).affine)  # ... as any reader gets it
    store.append_volume(1, vols[1], affine, tr=1.3)
    reopened = SessionStore(tmp_path, "01", "01", "t")
    assert reopened.geometry(1)[1] == live_tr
    np.testing.assert_array_equal(reopened.geometry(1)[0], live_affine)
    store.end_run(1)
    store.compress_run(1)
    compressed = SessionStore(tmp_path, "01", "01", "t")
    np.testing.assert_array_equal(compressed.geometry(1)[0], live_affine)
    assert compressed.geometry(1)[1] == live_tr
    store.save_image("desc-reference_boldref", vols[0].astype(np.float32), affine)
    np.testing.assert_array_equal(store.load_image("desc-reference_boldref")[1], live_affine)


def test_a_volume_of_another_dtype_is_refused_not_wrapped(tmp_path):
    # Issue 20, failure 8: a float32 volume in an int16 run was stored wrapped (3.2e6 -> 32744).
    store = SessionStore(tmp_path, "01", "01", "test")
    store.append_volume(1, _volumes(1)[0], AFFINE, tr=1.5)
    with pytest.raises(ValueError, match="dtype float32 differs from run 1's int16"):
        store.append_volume(1, np.full((6, 5, 4), 3.2e6, np.float32), AFFINE, tr=1.5)
    assert store.n_volumes(1) == 1 and store.volume_dtype(1) == np.int16
    store.append_volume(1, _volumes(2)[1].astype(">i2"), AFFINE, tr=1.5)  # control: same dtype, other byte order
    assert store.n_volumes(1) == 2


def test_realignment_log_gives_back_exact_records_and_drops_damaged_ones(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "run-1_desc-realigned.bin"
    records = {i: (rng.normal(size=6), int(i % 5), rng.normal(size=50).astype(np.float32).astype(np.float64))
               for i in (0, 1, 3, 4)}  # volume 2 was missing: no record
    log = RealignmentLog(path, 50)
    for i, (params, iterations, roi) in records.items():
        assert log.append(i, params, iterations, roi)
    # Refused: a volume already recorded, and ROI values float32 cannot hold exactly.
    assert not log.append(4, *records[4]) and not log.append(5, records[4][0], 1, np.full(50, 0.1))
    reopened = RealignmentLog(path, 50)
    for i, (params, iterations, roi) in records.items():
        got = reopened.get(i)
        assert np.array_equal(got[0], params) and got[1] == iterations and np.array_equal(got[2], roi)
    assert reopened.get(2) is None
    # A torn last record is dropped (and truncated, so appends follow the whole ones) ...
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x01" * 100)
    assert RealignmentLog(path, 50).get(4) is not None and path.stat().st_size == whole
    # ... and a record that fails its CRC is dropped with every later one.
    raw = bytearray(path.read_bytes())
    raw[whole // 4 + 80] ^= 0x01
    path.write_bytes(bytes(raw))
    damaged = RealignmentLog(path, 50)
    assert damaged.get(0) is not None and damaged.get(1) is None and damaged.get(3) is None
    assert path.stat().st_size == whole // 4 and damaged.append(1, *records[1])
