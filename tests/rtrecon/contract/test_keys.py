"""CURVE keys: `rtrecon keys init`, encrypted links, and refusal of peers with unknown keys."""

from __future__ import annotations

import logging
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from rtrecon.cli import main
from rtrecon.contract.keys import CurveKeys, KeysError, init_keys, load_curve
from rtrecon.contract.transport import ReliableReceiver, ReliableSender, StatusPublisher, StatusSubscriber, result_key, trial_key, volume_key
from rtrecon.contract.wire import EventMessage, StatusMessage, TrialResultMessage, VolumeMessage
from rtrecon.testing import scaled

SESSION = "sub-01_ses-01"
HB = scaled(0.2)  # the links' heartbeat period in these tests


@pytest.fixture
def endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys"
    assert main(["keys", "init", str(path)]) == 0
    return path


def _volume(index: int) -> VolumeMessage:
    return VolumeMessage(session=SESSION, run=1, index=index, tr=2.0,
                         voxels=np.full((4, 4, 2), index, dtype=np.float32), affine=np.eye(4))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_key_pair_per_role_with_private_secrets(keys_dir: Path, capsys) -> None:
    for role in ("bridge", "engine", "stimulus", "console"):
        assert (keys_dir / "public" / f"{role}.key").is_file()
        secret = keys_dir / "private" / f"{role}.key_secret"
        assert _mode(secret) == 0o600
        assert b"secret-key" in secret.read_bytes()
        assert b"secret-key" not in (keys_dir / "public" / f"{role}.key").read_bytes()
    assert _mode(keys_dir / "private") == 0o700
    assert sorted(p.name for p in (keys_dir / "private").iterdir()) == [
        "bridge.key_secret", "console.key_secret", "engine.key_secret", "stimulus.key_secret"]
    bridge, engine = load_curve(keys_dir, "bridge"), load_curve(keys_dir, "engine")
    assert bridge.known == engine.known and set(bridge.known) == {"bridge", "engine", "stimulus", "console"}
    assert bridge.server_key("engine") == engine.public != bridge.public
    assert len(bridge.public) == len(bridge.secret) == 40  # Z85 of 32 bytes
    # Existing keys are never replaced silently.
    capsys.readouterr()
    assert main(["keys", "init", str(keys_dir)]) == 1
    assert "keys already exist" in capsys.readouterr().err
    assert load_curve(keys_dir, "bridge") == bridge


def test_force_and_custom_roles(tmp_path: Path) -> None:
    init_keys(tmp_path, ["scanner", "dashboard"])
    before = load_curve(tmp_path, "scanner")
    assert set(before.known) == {"scanner", "dashboard"}
    assert main(["keys", "init", str(tmp_path), "--roles", "scanner", "dashboard", "--force"]) == 0
    assert load_curve(tmp_path, "scanner").public != before.public
    with pytest.raises(KeysError, match="not a plain name"):
        init_keys(tmp_path / "other", ["../evil"])


def test_load_refuses_missing_and_unsafe_keys(tmp_path: Path) -> None:
    init_keys(tmp_path)
    with pytest.raises(KeysError, match="no secret key for role 'operator'"):
        load_curve(tmp_path, "operator")
    with pytest.raises(KeysError, match="no public key for role 'scanner'"):
        load_curve(tmp_path, "bridge").server_key("scanner")
    secret = tmp_path / "private" / "engine.key_secret"
    secret.chmod(0o644)
    with pytest.raises(KeysError, match="engine.key_secret: secret key is readable by others"):
        load_curve(tmp_path, "engine")
    (tmp_path / "public" / "bridge.key").unlink()
    with pytest.raises(KeysError, match="bridge.key: missing or does not match"):
        load_curve(tmp_path, "bridge")


def _exchange(tx: ReliableSender, rx: ReliableReceiver, n: int, timeout_s: float) -> list:
    got: list = []
    deadline = time.monotonic() + scaled(timeout_s)
    while (len(got) < n or tx.pending) and time.monotonic() < deadline:
        tx.poll(0.005)
        message = rx.recv(0.01)
        if message is not None:
            got.append(message)
            rx.ack(message)
    return got


def test_encrypted_links_carry_messages(keys_dir: Path, endpoint: str, tmp_path: Path) -> None:
    engine, bridge = load_curve(keys_dir, "engine"), load_curve(keys_dir, "bridge")
    with ReliableReceiver(endpoint, SESSION, curve=engine, heartbeat_s=HB) as rx, \
            ReliableSender(endpoint, SESSION, tmp_path, curve=bridge, server_role="engine", heartbeat_s=HB) as tx:
        for index in range(3):
            tx.send(_volume(index))
        got = _exchange(tx, rx, 3, timeout_s=10)
        assert [m.index for m in got] == [0, 1, 2] and tx.pending == 0
        np.testing.assert_array_equal(got[2].voxels, _volume(2).voxels)


def test_encrypted_status_feed(keys_dir: Path, endpoint: str) -> None:
    message = StatusMessage(process="engine", state="running")
    with StatusPublisher(endpoint, curve=load_curve(keys_dir, "engine")) as pub, \
            StatusSubscriber(endpoint, curve=load_curve(keys_dir, "stimulus"), server_role="engine") as sub:
        got = None
        deadline = time.monotonic() + scaled(10)
        while got is None and time.monotonic() < deadline:
            pub.publish(message)
            got = sub.recv(0.05)
        assert got == message


def test_unknown_key_and_plaintext_peers_get_nothing_through(
    keys_dir: Path, endpoint: str, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.keys")
    engine = load_curve(keys_dir, "engine")
    # A key pair made elsewhere, by someone who knows the engine's public key (it is public).
    stranger = load_curve(init_keys(tmp_path / "elsewhere"), "bridge")
    intruder = CurveKeys(role="bridge", public=stranger.public, secret=stranger.secret,
                         known={"engine": engine.public})
    with ReliableReceiver(endpoint, SESSION, curve=engine, heartbeat_s=HB) as rx:
        with ReliableSender(endpoint, SESSION, tmp_path / "a", curve=intruder, heartbeat_s=HB) as tx, \
                ReliableSender(endpoint, SESSION, tmp_path / "b", heartbeat_s=HB) as plain:
            for sender in (tx, plain):
                sender.send(_volume(0))
            deadline = time.monotonic() + scaled(1.5)
            while time.monotonic() < deadline:
                tx.poll(0.01)
                plain.poll(0.01)
                assert rx.recv(0.01) is None
            assert not tx.connected and not plain.connected and tx.pending == plain.pending == 1
            assert not rx.peer_alive
        refusals = [r.getMessage() for r in caplog.records]
        assert any(f"unknown CURVE public key {stranger.public.decode()}" in r for r in refusals), refusals
        # The receiver is unharmed: a known sender still gets through.
        with ReliableSender(endpoint, SESSION, tmp_path / "c", curve=load_curve(keys_dir, "bridge"),
                            heartbeat_s=HB) as tx:
            tx.send(_volume(0))
            assert [m.index for m in _exchange(tx, rx, 1, timeout_s=10)] == [0]


# -- issue 20: keys bound to roles; links that recover from a mechanism mismatch -----------------


@pytest.mark.parametrize(
    ("key", "server", "admitted", "refused"),
    [
        (volume_key, "engine", "bridge", "stimulus"),  # failure 6: the stimulus key was accepted on the volume link
        (trial_key, "engine", "stimulus", "bridge"),
        (result_key, "stimulus", "engine", "console"),
    ],
)
def test_a_key_is_accepted_only_on_its_roles_links(
    keys_dir: Path, endpoint: str, tmp_path: Path, caplog, key, server, admitted, refused
) -> None:
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.keys")
    make = {
        volume_key: _volume,
        trial_key: lambda i: EventMessage(session=SESSION, run=1, trial=i, onset=1.0, duration=1.0, trial_type="image"),
        result_key: lambda i: TrialResultMessage(session=SESSION, run=1, trial=i, sequence=i),
    }[key]
    with ReliableReceiver(endpoint, SESSION, key=key, curve=load_curve(keys_dir, server), heartbeat_s=HB) as rx:
        with ReliableSender(endpoint, SESSION, tmp_path / "wrong", key=key, curve=load_curve(keys_dir, refused),
                            server_role=server, heartbeat_s=HB) as tx:
            tx.send(make(0))
            deadline = time.monotonic() + scaled(1.5)
            while time.monotonic() < deadline:
                tx.poll(0.01)
                assert rx.recv(0.01) is None
            assert tx.pending == 1 and not tx.connected
        assert any(f"CURVE key of role {refused!r}" in r.getMessage() for r in caplog.records)
        with ReliableSender(endpoint, SESSION, tmp_path / "right", key=key, curve=load_curve(keys_dir, admitted),
                            server_role=server, heartbeat_s=HB) as tx:
            tx.send(make(0))
            assert len(_exchange(tx, rx, 1, timeout_s=10)) == 1


@pytest.mark.parametrize("keyed", ["sender", "receiver"])
def test_link_recovers_after_a_peer_without_the_same_encryption_held_the_port(
    keys_dir: Path, endpoint: str, tmp_path: Path, caplog, keyed: str
) -> None:
    # Failure 5: after one handshake with a plaintext peer, libzmq stopped re-dialling for good.
    caplog.set_level(logging.WARNING, logger="rtrecon.contract.transport")
    sender_curve = load_curve(keys_dir, "bridge") if keyed == "sender" else None
    receiver_curve = load_curve(keys_dir, "engine") if keyed == "receiver" else None
    # The wrong peer: a receiver with the other encryption setting holds the port first.
    with ReliableReceiver(endpoint, SESSION, curve=receiver_curve, heartbeat_s=HB) as wrong, \
            ReliableSender(endpoint, SESSION, tmp_path, curve=sender_curve, heartbeat_s=HB) as tx:
        tx.send(_volume(0))
        deadline = time.monotonic() + scaled(1.0)
        while time.monotonic() < deadline:
            tx.poll(0.01)
            assert wrong.recv(0.01) is None
        wrong.close()
        # The right peer (same setting as the sender) takes the port over: the sender finds it.
        with ReliableReceiver(endpoint, SESSION, curve=load_curve(keys_dir, "engine") if sender_curve else None,
                              heartbeat_s=HB) as rx:
            assert [m.index for m in _exchange(tx, rx, 1, timeout_s=10)] == [0]
    told = [r.getMessage() for r in caplog.records if "handshake" in r.getMessage()]
    assert any("failed" in m and "re-dialling" in m for m in told) and any("the link is back" in m for m in told), told
