"""Reliable links over real ZeroMQ sockets: order, resume after SIGKILL of either end, bad frames, heartbeats."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from rtrecon.contract import children
from rtrecon.contract.transport import (
    ReliableReceiver,
    ReliableSender,
    StatusPublisher,
    StatusSubscriber,
    trial_key,
    volume_key,
)
from rtrecon.contract.wire import (
    AckMessage,
    EventMessage,
    HeartbeatMessage,
    HelloMessage,
    RunEndMessage,
    SequenceMessage,
    StatusMessage,
    VolumeMessage,
    VolumeMissingMessage,
    WireError,
    decode,
    encode,
)
from rtrecon.testing import scaled

SESSION = "sub-01_ses-01"
HB = scaled(0.2)  # heartbeat period in these tests: a dead peer is noticed after three missed beats

# A volume's voxels all equal its index, so a mixed-up or corrupted volume shows.
VOLUME_CODE = """
import numpy as np
from rtrecon.contract.wire import VolumeMessage
def volume(session, index):
    return VolumeMessage(session=session, run=1, index=index, tr=2.0,
                         voxels=np.full((6, 5, 4), index, dtype=np.int16), affine=np.eye(4))
"""

# The engine's side in miniature: persists each volume to its own file, then acknowledges it;
# on start, tells the transport what its store holds. It records any duplicate or out-of-order
# volume in errors.txt, and stops once the run end is persisted.
RECEIVER_PROGRAM = """
import logging, os, sys
from pathlib import Path
import numpy as np
from rtrecon.contract.transport import ReliableReceiver
from rtrecon.contract.wire import RunEndMessage
logging.basicConfig(level=logging.INFO)
endpoint, session, store = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store.mkdir(exist_ok=True)
def write(path, data):
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
def error(text):
    with open(store / "errors.txt", "a") as fh:
        fh.write(text + "\\n")
indices = sorted(int(p.stem) for p in store.glob("*.npy"))
last = indices[-1] if indices else -1
persisted = {1: int((store / "end").read_text())} if (store / "end").exists() else ({1: last} if indices else {})
with ReliableReceiver(endpoint, session, persisted, heartbeat_s=float(sys.argv[4])) as rx:
    while True:
        msg = rx.recv(timeout_s=0.05)
        if msg is None:
            continue
        if isinstance(msg, RunEndMessage):
            write(store / "end", str(msg.n_volumes).encode())
            rx.ack(msg)
            break
        path = store / f"{msg.index:04d}.npy"
        if path.exists():
            error(f"duplicate {msg.index}")
        if msg.index != last + 1:
            error(f"out of order: {msg.index} after {last}")
        last = msg.index
        with open(path.with_suffix(".tmp"), "wb") as fh:
            np.save(fh, msg.voxels)
        os.replace(path.with_suffix(".tmp"), path)
        rx.ack(msg)
"""

# The bridge's side in miniature: a restarted sender resumes its source after what it spooled.
SENDER_PROGRAM = VOLUME_CODE + """
import logging, sys, time
from rtrecon.contract.transport import ReliableSender
from rtrecon.testing import scaled
from rtrecon.contract.wire import RunEndMessage
logging.basicConfig(level=logging.INFO)
endpoint, session, spool, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with ReliableSender(endpoint, session, spool, heartbeat_s=float(sys.argv[5])) as tx:
    for index in range(tx.spooled.get(1, -1) + 1, n):
        tx.send(volume(session, index))
        tx.poll(0.01)
    if tx.spooled.get(1, -1) < n:
        tx.send(RunEndMessage(session=session, run=1, n_volumes=n))
    sys.exit(0 if tx.wait_acked(scaled(20)) else 3)
"""


def _volume(index: int, run: int = 1, session: str = SESSION) -> VolumeMessage:
    return VolumeMessage(session=session, run=run, index=index, tr=2.0,
                         voxels=np.full((6, 5, 4), index, dtype=np.int16), affine=np.eye(4))


@pytest.fixture
def endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def _start(program: str, args: list[str], log_file: Path) -> subprocess.Popen:
    with open(log_file, "ab") as log:
        return children.start([sys.executable, "-c", program, *args], stdout=log, stderr=subprocess.STDOUT)


def _until(condition: Callable[[], bool], step: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + scaled(timeout_s)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        step()


def _exchange(tx: ReliableSender, rx: ReliableReceiver, n: int, timeout_s: float = 10.0) -> list:
    got: list = []

    def step() -> None:
        tx.poll(0.002)
        message = rx.recv(0.01)
        if message is not None:
            got.append(message)
            rx.ack(message)

    _until(lambda: len(got) >= n and tx.pending == 0, step, timeout_s, f"{n} items")
    return got


def test_delivers_in_order_once_across_runs(endpoint: str, tmp_path: Path) -> None:
    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx, \
            ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx:
        sent = [_volume(0), _volume(1), VolumeMissingMessage(session=SESSION, run=1, index=2, reason="never came"),
                _volume(5), _volume(0, run=2), RunEndMessage(session=SESSION, run=1, n_volumes=6), _volume(1, run=2)]
        for message in sent:
            tx.send(message)
        got = _exchange(tx, rx, len(sent))
        assert [volume_key(m) for m in got] == [volume_key(m) for m in sent]
        assert [type(m) for m in got] == [type(m) for m in sent]
        np.testing.assert_array_equal(got[3].voxels, sent[3].voxels)
        assert tx.acked == rx.persisted == {1: 6, 2: 1}
        assert tx.connected and rx.peer_alive and tx.peer_alive
        for _ in range(10):  # nothing more comes: no duplicates after the fact
            tx.poll(0.005)
            assert rx.recv(0.005) is None


def test_a_receivers_notices_reach_its_sender(endpoint: str, tmp_path: Path, caplog) -> None:
    from rtrecon.contract.wire import ShownMessage

    def shown(trial: int, session: str = SESSION) -> ShownMessage:
        return ShownMessage(session=session, run=1, trial=trial, release=0, sequence=trial, shown=2.0 + trial,
                            shown_wall=1.5e9, received_to_shown_s=0.01)

    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx, \
            ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx:
        tx.send(_volume(0))
        _exchange(tx, rx, 1)  # the link is up: the receiver knows its sender
        for trial in (0, 1):
            rx.notify(shown(trial))
        rx.notify(shown(2, session="sub-99_ses-01"))  # another session's: dropped by the sender
        got: list = []
        _until(lambda: len(got) >= 2, lambda: (tx.poll(0.01), got.extend(tx.notices())), 5.0, "2 notices")
        assert got == [shown(0), shown(1)] and tx.notices() == []
        with pytest.raises(ValueError, match="not a notice"):
            rx.notify(_volume(1))
        with pytest.raises(WireError, match="shown.received_to_shown_s"):
            rx.notify(dataclasses.replace(shown(3), received_to_shown_s=-1.0))


def test_send_refuses_what_would_break_the_sequence(endpoint: str, tmp_path: Path) -> None:
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx:
        tx.send(_volume(3))
        with pytest.raises(ValueError, match="keys must increase"):
            tx.send(_volume(3))
        with pytest.raises(ValueError, match="session 'other'"):
            tx.send(_volume(4, session="other"))
        with pytest.raises(ValueError, match="does not travel on a volume link"):
            tx.send(EventMessage(session=SESSION, run=1, trial=4, onset=0.0, duration=1.0, trial_type="x"))
        assert tx.pending == 1 and tx.spooled == {1: 3}


def test_restarted_sender_resends_its_spool(endpoint: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB) as tx:  # no receiver yet
        for index in range(3):
            tx.send(_volume(index))
        tx.poll(0.05)
        assert tx.pending == 3 and not tx.connected
        with pytest.raises(RuntimeError, match="spool in use by another sender"):
            ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB)
    (spool / SESSION / ".0000000003.frames.tmp").write_bytes(b"half a write")
    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx, \
            ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB) as tx:
        assert tx.spooled == {1: 2} and tx.pending == 3
        tx.send(_volume(3))
        got = _exchange(tx, rx, 4)
        assert [m.index for m in got] == [0, 1, 2, 3]
    assert not (spool / SESSION / ".0000000003.frames.tmp").exists()


def test_torn_last_spool_file_is_dropped_other_corruption_is_named(endpoint: str, tmp_path: Path, caplog) -> None:
    spool = tmp_path / "spool"
    with ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB) as tx:
        tx.send(_volume(0))
        tx.send(_volume(1))
    first, last = spool / SESSION / "0000000000.frames", spool / SESSION / "0000000001.frames"
    last.write_bytes(last.read_bytes()[:100])  # what an OS crash before the fsync can leave
    with ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB) as tx:
        assert tx.spooled == {1: 0} and tx.pending == 1
        assert not last.exists()
        assert "removing the torn last spool file" in caplog.text
        tx.send(_volume(1))
    first.write_bytes(first.read_bytes()[:40])
    with pytest.raises(WireError, match="0000000000.frames: corrupt spool file"):
        ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB)


def test_receiver_word_is_final_and_acks_are_cumulative(endpoint: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    events = [EventMessage(session=SESSION, run=1, trial=t, onset=4.0 * t, duration=3.0, trial_type="image")
              for t in (1, 2, 4, 7)]
    with ReliableSender(endpoint, SESSION, spool, key=trial_key, heartbeat_s=HB) as tx:
        for event in events:
            tx.send(event)
        # A receiver that already holds trials up to 2 is sent only the rest.
        with ReliableReceiver(endpoint, SESSION, {1: 2}, key=trial_key, heartbeat_s=HB) as rx:
            got: list = []
            _until(lambda: len(got) == 2, lambda: _collect(tx, rx, got), 10, "two events")
            assert [e.trial for e in got] == [4, 7]
            rx.ack(got[1])  # persisted out of order: nothing is acknowledged past the gap
            for _ in range(5):
                tx.poll(0.01)
                rx.recv(0.01)
            assert tx.acked == {1: 2} and rx.persisted == {1: 2}
            rx.ack(got[0])
            _until(lambda: tx.pending == 0, lambda: (tx.poll(0.01), rx.recv(0.01)), 10, "acks")
            assert tx.acked == {1: 7}
        # A new receiver with an empty store (it lost its data) gets everything again.
        with ReliableReceiver(endpoint, SESSION, None, key=trial_key, heartbeat_s=HB) as rx:
            got = _exchange(tx, rx, 4)
            assert [e.trial for e in got] == [1, 2, 4, 7]


def _collect(tx: ReliableSender, rx: ReliableReceiver, got: list) -> None:
    tx.poll(0.002)
    message = rx.recv(0.01)
    if message is not None:
        got.append(message)


def _store_count(store: Path) -> int:
    return len(list(store.glob("*.npy")))


def test_receiver_killed_mid_run_loses_and_duplicates_nothing(endpoint: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rtrecon.contract.transport")
    n, store, log_file = 60, tmp_path / "store", tmp_path / "receiver.log"
    args = [endpoint, SESSION, str(store), str(HB)]
    receiver = _start(RECEIVER_PROGRAM, args, log_file)
    try:
        with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx:
            sent = 0

            def step() -> None:
                nonlocal sent
                if sent < n:
                    tx.send(_volume(sent))
                    sent += 1
                tx.poll(0.01)

            _until(lambda: tx.connected, lambda: tx.poll(0.01), 20, "the receiver to start")
            _until(lambda: _store_count(store) >= 15, step, 20, "15 volumes persisted")
            assert sent < n
            receiver.send_signal(signal.SIGKILL)
            receiver.wait()
            # Heartbeats tell the sender its peer died; it keeps spooling meanwhile.
            _until(lambda: not tx.peer_alive, step, 10, "the dead receiver to be noticed")
            assert not tx.connected
            assert any("receiver on" in r.message and "considered dead" in r.message for r in caplog.records)
            before = _store_count(store)
            for _ in range(5):
                step()
            assert _store_count(store) == before  # nothing goes anywhere while the receiver is down
            receiver = _start(RECEIVER_PROGRAM, args, log_file)
            _until(lambda: sent == n, step, 20, "all volumes sent")
            tx.send(RunEndMessage(session=SESSION, run=1, n_volumes=n))
            assert tx.wait_acked(scaled(20)), log_file.read_text()
            assert receiver.wait(scaled(10)) == 0
    finally:
        children.kill(receiver)
    assert not (store / "errors.txt").exists(), (store / "errors.txt").read_text()
    assert sorted(int(p.stem) for p in store.glob("*.npy")) == list(range(n))
    for index in (0, 14, 15, n - 1):
        assert np.all(np.load(store / f"{index:04d}.npy") == index)
    assert (store / "end").read_text() == str(n)


def test_sender_killed_mid_run_loses_and_duplicates_nothing(endpoint: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rtrecon.contract.transport")
    n, log_file = 60, tmp_path / "sender.log"
    args = [endpoint, SESSION, str(tmp_path / "spool"), str(n), str(HB)]
    got: list = []
    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx:

        unacked: list = []

        def step() -> None:
            # Persists in batches, so the restarted sender resends items delivered but not yet acked.
            message = rx.recv(0.01)
            if message is not None:
                got.append(message)
                unacked.append(message)
            if len(unacked) > 3 or isinstance(message, RunEndMessage):
                for persisted in unacked:
                    rx.ack(persisted)
                unacked.clear()

        sender = _start(SENDER_PROGRAM, args, log_file)
        try:
            _until(lambda: len(got) >= 15, step, 20, "15 volumes")
            assert len(got) < n
            sender.send_signal(signal.SIGKILL)
            sender.wait()
            _until(lambda: not rx.peer_alive, step, 10, "the dead sender to be noticed")
            assert any("sender on" in r.message and "considered dead" in r.message for r in caplog.records)
            sender = _start(SENDER_PROGRAM, args, log_file)
            _until(lambda: sender.poll() is not None, step, 30, "the sender to finish")
            assert sender.returncode == 0, log_file.read_text()
        finally:
            children.kill(sender)
    assert [volume_key(m) for m in got] == [(1, i) for i in range(n + 1)]
    assert isinstance(got[-1], RunEndMessage) and got[-1].n_volumes == n
    assert all(np.all(m.voxels == m.index) for m in got[:-1])


def test_bad_frames_are_logged_dropped_and_survived(endpoint: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.transport")
    good = encode(_volume(0))
    header = json.loads(good[0])

    def seq(**fields) -> bytes:
        values = dict(session=SESSION, run=1, key=0, prev=-1, seq=0) | fields
        return encode(SequenceMessage(**values))[0]

    bad_messages = [
        ([b"\x89PNG garbage"], "not JSON"),
        ([b""], "not JSON"),
        ([json.dumps(header | {"kind": "exploit"}).encode()], "unknown message kind 'exploit'"),
        ([json.dumps({"kind": "ack", "version": 99, "fields": {}, "arrays": []}).encode()], "version 99"),
        ([seq(), good[0], good[1][:-1], good[2]], "volume.voxels"),
        (good, "2 arrays but 0 data frames"),  # an item without its sequence frame
        ([seq(key=5), *good], "sequence frame says run 1 key 5"),
        ([seq(session="other"), *encode(_volume(0, session="other"))], "session 'other'"),
        ([encode(HeartbeatMessage(peer="x", sent_time=0.0))[0], b"extra"], "extra frame"),
    ]
    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB, name="engine") as rx:
        context = zmq.Context.instance()
        raw = context.socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(endpoint)
        try:
            for frames, _ in bad_messages:
                raw.send_multipart(frames)
            deadline = time.monotonic() + scaled(5)
            while len(caplog.records) < len(bad_messages) and time.monotonic() < deadline:
                assert rx.recv(0.02) is None
        finally:
            raw.close()
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == len(bad_messages)
        for warning, (_, reason) in zip(warnings, bad_messages):
            assert warning.startswith("engine: dropped") and "127.0.0.1" in warning and reason in warning, warning
        with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx:
            for index in range(3):
                tx.send(_volume(index))
            assert [m.index for m in _exchange(tx, rx, 3)] == [0, 1, 2]


def test_sender_survives_a_bad_receiver(endpoint: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.transport")
    context = zmq.Context.instance()
    raw = context.socket(zmq.ROUTER)
    raw.linger = 0
    raw.bind(endpoint)
    try:
        with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB, name="bridge") as tx:
            tx.send(_volume(0))
            _until(lambda: raw.poll(0), lambda: tx.poll(0.01), 10, "the sender's hello")
            identity = raw.recv_multipart()[0]
            raw.send_multipart([identity, b"{not json"])
            raw.send_multipart([identity, *encode(HelloMessage(peer="impostor", session="other"))])
            raw.send_multipart([identity, *encode(AckMessage(session=SESSION, run=1, index=0)), b"extra"])
            _until(lambda: len(caplog.records) >= 3, lambda: tx.poll(0.01), 10, "three warnings")
            assert not tx.connected and tx.pending == 1
    finally:
        raw.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "bridge: dropped a message from receiver 127.0.0.1: header is not JSON" in text
    assert "receiver impostor (127.0.0.1) is in session 'other'" in text
    assert "ack: header lists 0 arrays but 1 data frames came" in text


def test_status_feed(endpoint: str) -> None:
    with StatusPublisher(endpoint) as pub, StatusSubscriber(endpoint) as sub:
        message = StatusMessage(process="engine", state="running", metrics={"volumes": 12.0}, sent_time=time.time())
        got = None
        deadline = time.monotonic() + scaled(10)
        while got is None and time.monotonic() < deadline:  # a subscriber misses what came before it joined
            assert pub.publish(message)
            got = sub.recv(0.05)
        assert got == message


# -- issue 20: hostile items are refused with their reason, and the link goes on -----------------


def _raw_item(frames_of_item: list[bytes], key: int, prev: int, seq: int) -> list[bytes]:
    return [encode(SequenceMessage(session=SESSION, run=1, key=key, prev=prev, seq=seq))[0], *frames_of_item]


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**70], [True, 2]])
def test_shapes_that_killed_receivers_are_refused_and_the_link_goes_on(endpoint: str, shape, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.transport")
    good = encode(_volume(0))
    header = json.loads(good[0])
    header["arrays"][0]["shape"] = shape
    bad = [json.dumps(header).encode(), b"", good[2]]
    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(endpoint)
        try:
            raw.send_multipart(encode(HelloMessage(peer="bridge", session=SESSION, attempt=1)))
            raw.send_multipart(_raw_item(bad, key=0, prev=-1, seq=0))
            raw.send_multipart(_raw_item(encode(_volume(1)), key=1, prev=0, seq=1))
            got = None
            deadline = time.monotonic() + scaled(5)
            while got is None and time.monotonic() < deadline:
                got = rx.recv(0.05)
            assert got is not None and got.index == 1  # the next item of the same sender still comes
            rx.ack(got)
            acks = []
            while raw.poll(500):
                message = decode(raw.recv_multipart())
                if isinstance(message, AckMessage):
                    acks.append(message)
                    if message.index == 1:
                        break
        finally:
            raw.close()
    refused = [a for a in acks if a.refused == 0]
    assert refused and "bad shape" in refused[0].reason
    assert any("refused item 0 of run 1" in r.getMessage() and "bad shape" in r.getMessage() for r in caplog.records)


def test_impossible_items_from_a_sender_are_refused_acknowledged_and_reported(endpoint: str, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.transport")
    nan_tr = VolumeMessage(session=SESSION, run=1, index=1, tr=float("nan"),
                           voxels=np.ones((6, 5, 4), np.int16), affine=np.eye(4))
    with (
        ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx,
        ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx,
    ):
        tx.send(_volume(0))
        tx.send(nan_tr)
        tx.send(_volume(2))
        got = _exchange(tx, rx, 2)
        assert [m.index for m in got] == [0, 2]
        assert tx.pending == 0 and tx.acked == {1: 2}
        assert "volume.tr" in tx.refused[(1, 1)]
    assert any("refused item 1 of run 1" in r.getMessage() for r in caplog.records)


def test_application_refusal_is_acknowledged_with_its_reason(endpoint: str, tmp_path: Path) -> None:
    with (
        ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx,
        ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx,
    ):
        for index in range(3):
            tx.send(_volume(index))
        got: list = []

        def step() -> None:
            tx.poll(0.002)
            message = rx.recv(0.01)
            if message is not None:
                got.append(message)
                (rx.refuse(message, "shape changed") if message.index == 1 else rx.ack(message))

        _until(lambda: len(got) == 3 and tx.pending == 0, step, 10, "3 items")
        assert tx.refused == {(1, 1): "shape changed"}
        assert rx.persisted == {1: 2}


def test_key_jumps_beyond_the_bound_are_refused(endpoint: str, tmp_path: Path) -> None:
    with (
        ReliableReceiver(endpoint, SESSION, heartbeat_s=HB, max_key_jump=10) as rx,
        ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx,
    ):
        for index in (0, 1, 11, 340, 341):
            tx.send(_volume(index))
        tx.send(RunEndMessage(session=SESSION, run=1, n_volumes=342))
        got = _exchange(tx, rx, 2)
        _until(lambda: tx.pending == 0, lambda: (tx.poll(0.002), rx.recv(0.01)), 10, "all acknowledged")
    # 11 is 10 ahead of 1 (allowed); 340 and everything after it are measured from 11.
    assert [m.index for m in got] == [0, 1, 11]
    assert set(tx.refused) == {(1, 340), (1, 341), (1, 342)}
    assert "jumps from 11" in tx.refused[(1, 340)]


@pytest.mark.parametrize(
    ("limit", "size_mb", "read"),
    [("default", 200, False), (None, 2, True)],  # control: without a limit the frame is read (and dropped as garbage)
)
def test_a_200_mb_frame_is_refused_before_it_is_read(endpoint: str, tmp_path: Path, limit, size_mb, read, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.transport")
    kwargs = {} if limit == "default" else {"max_message_bytes": limit}
    with ReliableReceiver(endpoint, SESSION, heartbeat_s=HB, **kwargs) as rx:
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(endpoint)
        try:
            huge = np.zeros(size_mb * 1024 * 1024, np.uint8)
            raw.send_multipart([_raw_item([b"{}"], 0, -1, 0)[0], b"{}", memoryview(huge)], copy=False)
            del huge
            deadline = time.monotonic() + scaled(3)
            while time.monotonic() < deadline and not caplog.records:
                assert rx.recv(0.05) is None
        finally:
            raw.close()
        assert any("item" in r.getMessage() for r in caplog.records) == read
        # The link still serves its real sender.
        with ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB) as tx:
            tx.send(_volume(0))
            assert [m.index for m in _exchange(tx, rx, 1)] == [0]


def test_sender_lead_is_bounded_and_reported(endpoint: str, tmp_path: Path) -> None:
    # Issue 20, failure 8: a --fast replay ran 39 s ahead and the engine held 2.3 GB of queued volumes.
    with (
        ReliableReceiver(endpoint, SESSION, heartbeat_s=HB) as rx,
        ReliableSender(endpoint, SESSION, tmp_path / "spool", heartbeat_s=HB, max_in_flight=3) as tx,
    ):
        for index in range(20):
            tx.send(_volume(index))
        # The receiver reads without acknowledging: nothing beyond the bound reaches it.
        held: list = []

        def step() -> None:
            tx.poll(0.005)
            message = rx.recv(0.005)
            if message is not None:
                held.append(message)

        _until(lambda: len(held) == 3, step, 10, "the first items")
        for _ in range(30):
            step()
        assert [m.index for m in held] == [0, 1, 2] and tx.lead == 3 and tx.pending == 20
        # The sender's heartbeats tell the receiving process its lead and bound, live.
        _until(lambda: rx.peer_lead == (3, 3), step, 10, "the lead in a heartbeat")
        for message in held:
            rx.ack(message)
        got = _exchange(tx, rx, 17)
        assert [m.index for m in got] == list(range(3, 20)) and tx.max_lead == 3 and tx.lead == 0
        _until(lambda: rx.peer_lead == (0, 3), step, 10, "the lead back to 0 once all is acknowledged")


def test_the_link_starts_without_fcntl_as_on_windows(endpoint: str, tmp_path: Path, monkeypatch) -> None:
    # The stimulus program's modules import where fcntl does not exist (a Windows stimulus PC).
    code = "import sys; sys.modules['fcntl'] = None; import rtrecon.contract.transport, stimulus.link; print('imported')"
    done = children.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=scaled(120))
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
    control = children.run([sys.executable, "-c", "import sys; sys.modules['fcntl'] = None; import fcntl"],
                           capture_output=True, text=True, timeout=scaled(120))
    assert control.returncode != 0  # the patch does hide fcntl

    # Without fcntl a sender locks its spool with msvcrt (here backed by this machine's flock).
    import fcntl
    import types

    calls: list[int] = []

    def locking(fd: int, mode: int, nbytes: int) -> None:
        calls.append(mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PermissionError(13, "Permission denied") from exc  # what msvcrt raises

    monkeypatch.setitem(sys.modules, "fcntl", None)
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(LK_NBLCK=2, locking=locking))
    spool = tmp_path / "spool"
    with ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB):
        with pytest.raises(RuntimeError, match="spool in use by another sender"):
            ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB)
    with ReliableSender(endpoint, SESSION, spool, heartbeat_s=HB) as tx:  # released on close
        tx.send(_volume(0))
    assert calls == [2, 2, 2]
