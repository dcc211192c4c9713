"""NsdReplaySource: one NSD run (NSD's own layout) streamed at NSD's TR, with its image events."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.contract.wire import EventMessage, decode, encode
from rtrecon.testing import scaled
from scanner_bridge.assembly import RunStarted, VolumeReady
from scanner_bridge.nsd_replay import NsdReplaySource
from scanner_bridge.replay import ReplayError


def _write_run(root: Path, n_vols: int = 226, subject: int = 2, session: int = 3, run: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A small run in NSD's layout: header TR deliberately wrong (NSD's TR must win)."""
    base = root / "nsddata_timeseries" / "ppdata" / f"subj{subject:02d}" / "func1pt8mm"
    (base / "timeseries").mkdir(parents=True)
    (base / "design").mkdir(parents=True)
    data = np.arange(3 * 4 * 2 * n_vols, dtype=np.int16).reshape(3, 4, 2, n_vols)
    img = nib.Nifti1Image(data, np.diag([1.8, 1.8, 1.8, 1.0]))
    img.header.set_zooms((1.8, 1.8, 1.8, 1.0))
    nib.save(img, base / "timeseries" / f"timeseries_session{session:02d}_run{run:02d}.nii.gz")
    design = np.zeros(n_vols - 1, np.int64)
    design[[9, 12, 24]] = [46003, 61883, 828]  # trials 3, 4 and 8 (trial 5-7 blank)
    np.savetxt(base / "design" / f"design_session{session:02d}_run{run:02d}.tsv", design, fmt="%d")
    return data, design


def test_streams_all_but_the_last_volume_with_nsd_tr_and_events(tmp_path: Path) -> None:
    data, design = _write_run(tmp_path)
    source = NsdReplaySource(tmp_path, subject=2, session=3, run=4, fast=True, link_run=1)
    assert source.tr == 1.333171 and source.n_volumes == 225
    events = list(source)
    assert isinstance(events[0], RunStarted) and events[0].run == 1
    volumes = [e.volume for e in events[1:] if isinstance(e, VolumeReady)]
    assert [v.index for v in volumes] == list(range(225))
    np.testing.assert_array_equal(volumes[17].voxels, data[..., 17])
    assert all(v.tr == 1.333171 for v in volumes)
    assert [(t.trial, t.image_id) for t in source.events] == [(3, 46003), (4, 61883), (8, 828)]
    assert source.events[2].onset == pytest.approx(24 * 1.333171) and source.events[0].duration == 3.0
    messages = source.event_messages(session="sub-02_ses-03")
    assert [m.stimulus for m in messages] == ["nsd:46003", "nsd:61883", "nsd:828"]
    back = decode(encode(messages[1]))
    assert isinstance(back, EventMessage) and back.run == 1 and back.trial == 4 and back.trial_type == "image"


def test_paces_volumes_at_the_tr_over_speed_and_stops_on_close(tmp_path: Path) -> None:
    _write_run(tmp_path)
    source = NsdReplaySource(tmp_path, subject=2, session=3, run=4, speed=1.333171 / 0.02)  # 20 ms a volume
    got = []
    timer = threading.Timer(0.5, source.close)
    timer.start()
    start = time.monotonic()
    for event in source:
        if isinstance(event, VolumeReady):
            got.append(event.volume.index)
    elapsed = time.monotonic() - start
    timer.cancel()
    assert 0 < len(got) < 225  # closed mid-run, not read as fast as possible
    assert elapsed >= (len(got) - 1) * 0.02


def test_bad_layouts_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match=r"timeseries_session01_run01.nii.gz: no such file"):
        NsdReplaySource(tmp_path, subject=1, session=1, run=1)
    _write_run(tmp_path, n_vols=30)
    design = tmp_path / "nsddata_timeseries/ppdata/subj02/func1pt8mm/design/design_session03_run04.tsv"
    np.savetxt(design, np.zeros(5, int), fmt="%d")
    with pytest.raises(ReplayError, match=r"design_session03_run04.tsv: 5 rows, expected one fewer than the 30 volumes"):
        NsdReplaySource(tmp_path, subject=2, session=3, run=4)
    design.write_text("1.5\n0\n")
    with pytest.raises(ReplayError, match="design_session03_run04.tsv: expected one column"):
        NsdReplaySource(tmp_path, subject=2, session=3, run=4)
    with pytest.raises(ReplayError, match="unknown NSD space"):
        NsdReplaySource(tmp_path, subject=2, session=3, run=4, space="fsaverage")


def test_the_replay_nsd_command_streams_the_run_to_a_listener(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import socket

    from rtrecon.cli import main

    data, _ = _write_run(tmp_path / "nsd", n_vols=30)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    code: list[int] = []
    listener = threading.Thread(target=lambda: code.append(main(
        ["bridge", "listen", endpoint, "--out", str(tmp_path / "out"), "--json", "--runs", "1"])))
    listener.start()
    status = main(["bridge", "replay-nsd", "--root", str(tmp_path / "nsd"), "--subject", "2", "--session", "3",
                   "--run", "4", "--fast", "--to", endpoint, "--spool", str(tmp_path / "spool")])
    listener.join(timeout=scaled(60))
    assert (status, code) == (0, [0])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["index"] for r in records if r.get("kind") == "volume"] == list(range(29))
    stored = nib.load(tmp_path / "out" / "run-04_bold.nii.gz")  # the NSD run number is the link run
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), data[..., :29])
    assert stored.header.get_zooms()[3] == pytest.approx(1.333171)
