"""`rtrecon bridge watch|receive|replay|listen` through the real command line entry point."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pynetdicom import AE

from rtrecon.cli import main
from rtrecon.testing import scaled
from scanner_bridge.commands.bridge import VolumeStore

EP2D = "siemens_mosaic_ep2d_vd13"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_thread(argv: list[str]) -> tuple[threading.Thread, list[int]]:
    code: list[int] = []
    thread = threading.Thread(target=lambda: code.append(main(argv)))
    thread.start()
    return thread, code


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def ref(dicom_dir: Path) -> Path:
    return dicom_dir / EP2D / "ref" / "2_ep2d_Asc.nii"


def test_replay_to_listen(tmp_path: Path, ref: Path, capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    listener, listen_code = _in_thread(["bridge", "listen", endpoint, "--out", str(tmp_path / "out"), "--json", "--runs", "1"])
    code = main(["bridge", "replay", str(ref), "--to", endpoint, "--fast", "--run", "2", "--spool", str(tmp_path / "spool")])
    listener.join(timeout=scaled(60))
    assert (code, listen_code) == (0, [0])

    records = _json_lines(capsys.readouterr().out)
    volumes = [r for r in records if r.get("kind") == "volume"]
    assert [(r["run"], r["index"]) for r in volumes] == [(2, i) for i in range(6)]
    assert all(r["shape"] == [64, 64, 36] and r["dtype"] == "int16" and r["tr"] == 3.2 for r in volumes)
    assert all(r["transit_ms"] >= 0 and r["latency_ms"] >= r["transit_ms"] for r in volumes)
    assert records[-1] == {"summary": True, "volumes": 6, "missing": 0, "run_ends": 1, "refused": 0,
                           "median_latency_ms": pytest.approx(float(np.median([r["latency_ms"] for r in volumes])))}
    stored = nib.load(tmp_path / "out" / "run-02_bold.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), np.asanyarray(nib.load(ref).dataobj))
    assert stored.header.get_zooms()[3] == pytest.approx(3.2)
    sidecar = json.loads((tmp_path / "out" / "run-02_bold.json").read_text())
    assert sidecar["RepetitionTime"] == 3.2 and len(sidecar["SliceTiming"]) == 36
    assert VolumeStore(tmp_path / "out").persisted() == {2: 6}  # a restarted listener resumes after the run end


def test_watch_and_listen_from_a_session_config(tmp_path: Path, dicom_dir: Path, ref: Path, capsys) -> None:
    export = tmp_path / "export"
    export.mkdir()
    for path in sorted((dicom_dir / EP2D / "dicom").iterdir())[:3]:
        shutil.copy(path, export / path.name)
    config = tmp_path / "session.toml"
    config.write_text(
        '[session]\nsubject = "07"\n'
        f'[network]\nvolumes = "tcp://127.0.0.1:{_free_port()}"\nheartbeat_s = {scaled(0.2)}\n'
        '[bridge]\nwatch_dir = "export"\nspool_dir = "spool"\nwatch_mode = "poll"\n'
    )
    listener, listen_code = _in_thread(["bridge", "listen", "--config", str(config), "--out", str(tmp_path / "out"), "--runs", "1"])
    code = main(["bridge", "watch", "--config", str(config), "--exit-after-idle", str(scaled(0.3))])
    listener.join(timeout=scaled(60))
    assert (code, listen_code) == (0, [0])

    out = capsys.readouterr().out
    assert "session sub-07_ses-01" in out and "run 1 volume 2: 64×64×36 " in out and " sent\n" in out
    assert "run 1 ended: 3 volume(s)" in out and "received 3 volume(s), 0 missing, 1 run(s) ended" in out
    assert (tmp_path / "spool" / "sub-07_ses-01").is_dir()  # [bridge] spool_dir, relative to the config
    stored = np.asanyarray(nib.load(tmp_path / "out" / "run-01_bold.nii.gz").dataobj)
    np.testing.assert_array_equal(stored, np.asanyarray(nib.load(ref).dataobj)[..., :3])


def test_receive_as_a_dicom_node(tmp_path: Path, dicom_dir: Path, ref: Path, capsys) -> None:
    endpoint, dicom_port = f"tcp://127.0.0.1:{_free_port()}", _free_port()
    listener, listen_code = _in_thread(["bridge", "listen", endpoint, "--json", "--runs", "1"])
    node, node_code = _in_thread(["bridge", "receive", "--ae-title", "RTNODE", "--host", "127.0.0.1", "--port", str(dicom_port),
                                  "--allowed-caller", "CONSOLE", "--to", endpoint, "--spool", str(tmp_path / "spool"),
                                  "--exit-after-idle", str(scaled(2.0))])
    datasets = [pydicom.dcmread(p) for p in sorted((dicom_dir / EP2D / "dicom").iterdir())]
    ae = AE(ae_title="CONSOLE")
    ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    deadline = time.monotonic() + scaled(30)
    while not (assoc := ae.associate("127.0.0.1", dicom_port, ae_title="RTNODE")).is_established:
        assert time.monotonic() < deadline, "the DICOM node never came up"
        time.sleep(0.1)
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0] * 6
    assoc.release()
    node.join(timeout=scaled(60))
    listener.join(timeout=scaled(60))
    assert (node_code, listen_code) == ([0], [0])
    records = _json_lines(capsys.readouterr().out)
    assert [r["index"] for r in records if r.get("kind") == "volume"] == list(range(6))
    assert [r["n_volumes"] for r in records if r.get("kind") == "run_end"] == [6]


def test_encrypted_link_with_curve_keys(tmp_path: Path, ref: Path, capsys) -> None:
    keys = tmp_path / "keys"
    assert main(["keys", "init", str(keys)]) == 0
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    listener, listen_code = _in_thread(["bridge", "listen", endpoint, "--keys", str(keys), "--json", "--runs", "1"])
    code = main(["bridge", "replay", str(ref), "--to", endpoint, "--fast", "--keys", str(keys), "--spool", str(tmp_path / "spool")])
    listener.join(timeout=scaled(60))
    assert (code, listen_code) == (0, [0])
    out = capsys.readouterr().out
    assert "CURVE" in out
    assert [r["index"] for r in _json_lines(out) if r.get("kind") == "volume"] == list(range(6))


def test_bad_input_is_named_with_exit_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[bridge]\nwatch_mode = \"sometimes\"\n")
    assert main(["bridge", "watch", "--config", str(bad)]) == 2
    assert main(["bridge", "watch", "--to", "tcp://127.0.0.1:1"]) == 2
    assert main(["bridge", "watch", str(tmp_path / "nowhere"), "--to", "tcp://127.0.0.1:1"]) == 2
    assert main(["bridge", "replay", str(tmp_path / "none.nii.gz"), "--to", "tcp://127.0.0.1:1"]) == 2
    assert main(["bridge", "listen", "tcp://127.0.0.1:1", "--keys", str(tmp_path / "nokeys")]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: bridge.watch_mode" in err
    assert "no folder given" in err
    assert "nowhere: the export folder does not exist" in err
    assert "none.nii.gz: no such file" in err
    assert "nokeys" in err
    with pytest.raises(SystemExit):
        main(["bridge", "replay", "x.nii", "--speed", "2", "--fast"])  # one pace only


def test_listen_out_refuses_what_crashed_it_and_restarts(tmp_path: Path, capsys) -> None:
    # Issue 20, failure 4: a NaN affine, a shape change before run end and a run end claiming
    # 300 000 volumes crashed `listen --out` (and again after each restart, never acknowledged).
    from rtrecon.contract.transport import ReliableSender
    from rtrecon.contract.wire import RunEndMessage, VolumeMessage

    session = "sub-01_ses-01"

    def volume(run: int, index: int, shape=(4, 4, 3), affine=np.eye(4), tr=2.0) -> VolumeMessage:
        return VolumeMessage(session=session, run=run, index=index, tr=tr,
                             voxels=np.full(shape, index + 1, np.int16), affine=affine)

    items = [
        volume(1, 0), volume(1, 1, affine=np.full((4, 4), np.nan)), volume(1, 2, shape=(5, 4, 3)), volume(1, 3),
        RunEndMessage(session=session, run=1, n_volumes=4),
        volume(2, 0), RunEndMessage(session=session, run=2, n_volumes=300_000),
        volume(3, 0), RunEndMessage(session=session, run=3, n_volumes=5_000),
        volume(4, 0), volume(4, 1, tr=2.5), RunEndMessage(session=session, run=4, n_volumes=2),
    ]
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    out = tmp_path / "out"
    refused: dict = {}
    for attempt in range(2):  # the second listener restarts on the same folder
        listener, code = _in_thread(["bridge", "listen", endpoint, "--out", str(out), "--json", "--exit-after-idle", str(scaled(1.5))])
        with ReliableSender(endpoint, session, tmp_path / "spool", heartbeat_s=scaled(0.2)) as tx:
            if attempt == 0:
                for item in items:
                    tx.send(item)
            assert tx.wait_acked(scaled(30))
            refused.update(tx.refused)
        listener.join(timeout=scaled(60))
        assert code == [0]
    assert set(refused) == {(1, 1), (1, 2), (2, 300_000), (3, 5_000), (4, 1)}
    assert "volume.affine" in refused[(1, 1)] and "(5, 4, 3)" in refused[(1, 2)]
    assert "TR 2.5 s, the run's is 2 s" in refused[(4, 1)]
    assert "run_end.n_volumes" in refused[(2, 300_000)] and "jumps" in refused[(3, 5_000)]
    records = _json_lines(capsys.readouterr().out)
    # The others never reach the store; those the store does not hold are refused again after the restart.
    assert [r["run"] for r in records if r.get("kind") == "refused"] == [1, 4]
    stored = nib.load(out / "run-01_bold.nii.gz")
    assert stored.shape == (4, 4, 3, 4) and stored.header.get_zooms()[3] == 2.0
    assert json.loads((out / "run-01_bold.json").read_text())["MissingVolumes"] == [1, 2]
    assert json.loads((out / "run-04_bold.json").read_text())["MissingVolumes"] == [1]


def test_dicom_node_listens_where_the_config_says_and_refuses_other_callers(tmp_path: Path, dicom_dir: Path, caplog, capsys) -> None:
    # Issue 20, failure 7: the node listened on 0.0.0.0:11112 and stored a push from any caller.
    import logging

    caplog.set_level(logging.WARNING, logger="scanner_bridge.dicom_node")
    assert main(["bridge", "receive", "--to", "tcp://127.0.0.1:1", "--spool", str(tmp_path / "s0")]) == 2
    assert "no calling AE title is allowed" in capsys.readouterr().err
    endpoint, dicom_port = f"tcp://127.0.0.1:{_free_port()}", _free_port()
    config = tmp_path / "session.toml"
    config.write_text(f'[network]\nvolumes = "{endpoint}"\n[bridge]\ndicom_port = {dicom_port}\n'
                      f'dicom_ae_title = "RTNODE"\ndicom_allowed_callers = ["CONSOLE"]\nspool_dir = "spool"\n')
    listener, listen_code = _in_thread(["bridge", "listen", "--config", str(config), "--json", "--runs", "1"])
    node, node_code = _in_thread(["bridge", "receive", "--config", str(config), "--exit-after-idle", str(scaled(2.0))])
    datasets = [pydicom.dcmread(p) for p in sorted((dicom_dir / EP2D / "dicom").iterdir())][:2]

    def associate(calling: str):
        ae = AE(ae_title=calling)
        ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
        return ae.associate("127.0.0.1", dicom_port, ae_title="RTNODE")

    deadline = time.monotonic() + scaled(30)
    while not (assoc := associate("CONSOLE")).is_established:
        assert time.monotonic() < deadline, "the DICOM node never came up"
        time.sleep(0.1)
    intruder = associate("INTRUDER")
    assert not intruder.is_established and intruder.is_rejected
    assert [assoc.send_c_store(ds).Status for ds in datasets] == [0, 0]
    assoc.release()
    node.join(timeout=scaled(60))
    listener.join(timeout=scaled(60))
    assert (node_code, listen_code) == ([0], [0])
    out = capsys.readouterr().out
    assert f"listening on 127.0.0.1:{dicom_port} for CONSOLE" in out
    assert [r["index"] for r in _json_lines(out) if r.get("kind") == "volume"] == [0, 1]
    assert any("refused an association from INTRUDER" in r.getMessage() for r in caplog.records)


def test_bridge_checks_its_spool_and_keys_before_reading_anything(tmp_path: Path, ref: Path, capsys) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    args = ["bridge", "replay", str(ref), "--to", "tcp://127.0.0.1:1", "--fast"]
    assert main([*args, "--spool", str(blocked / "spool"), "--keys", str(tmp_path / "nokeys")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("rtrecon bridge: ") for line in lines)
    assert "bridge.spool_dir" in lines[0] and "security.keys_dir" in lines[1] and "nokeys" in lines[1]
