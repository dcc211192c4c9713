"""Wire encoding: every message survives a round trip; every kind of garbage is refused clearly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rtrecon.wire import (
    MESSAGE_TYPES,
    AckMessage,
    EventMessage,
    HeartbeatMessage,
    HelloMessage,
    Message,
    OperatorMessage,
    RunEndMessage,
    SequenceMessage,
    StatusMessage,
    TrialResultMessage,
    VolumeMessage,
    VolumeMissingMessage,
    WireError,
    decode,
    encode,
)

RNG = np.random.default_rng(0)


def _volume(**overrides) -> VolumeMessage:
    fields = dict(
        session="sub-01_ses-01",
        run=2,
        index=17,
        tr=1.5,
        voxels=RNG.integers(-3000, 3000, size=(5, 4, 3)).astype(np.int16),
        affine=np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.5, -72], [0, 0, 0, 1]]),
        slice_times=[0.0, 0.5, 1.0],
        acquisition_time=36000.125,
        stamps={"written": 1.0e9, "read": 1.0e9 + 0.004},
    )
    fields.update(overrides)
    return VolumeMessage(**fields)


EXAMPLES: list[Message] = [
    _volume(),
    _volume(voxels=RNG.standard_normal((6, 5, 4)).astype(np.float32), slice_times=None, acquisition_time=None),
    _volume(voxels=RNG.integers(0, 4000, size=(3, 3, 2)).astype(np.uint16).astype(">u2")),
    _volume(voxels=np.zeros((0, 4, 2), dtype=np.float64)),
    EventMessage(session="s", run=1, trial=3, onset=12.5, duration=3.0, trial_type="image",
                 stimulus="nsd_00042", response="1", response_time=0.62, feedback=True),
    TrialResultMessage(session="s", run=1, trial=3, stimulus="nsd_00042", retrieved=["nsd_00042", "nsd_00007"],
                       scores=[0.9, 0.4], image=RNG.integers(0, 256, size=(8, 8, 3)).astype(np.uint8),
                       embedding=RNG.standard_normal(16).astype(np.float16), decoder="mindeye2",
                       latencies={"decode": 0.12}),
    TrialResultMessage(session="s", run=1, trial=4, embedding=np.array([True, False, True])),
    StatusMessage(process="engine", state="running", message="run 1", metrics={"fd_mm": 0.2}, sent_time=5.0),
    HelloMessage(peer="engine", session="s", persisted={0: 41, 1: -1}),
    AckMessage(session="s", run=1, index=9),
    SequenceMessage(session="s", run=1, key=9, prev=7, seq=120),
    HeartbeatMessage(peer="bridge", sent_time=1.5e9),
    RunEndMessage(session="s", run=1, n_volumes=300),
    VolumeMissingMessage(session="s", run=1, index=12, reason="file never completed"),
    OperatorMessage(session="s", feedback_paused=True, ended_runs=[1], bad_trials={1: [3, 7]}, sent_time=1.5e9),
]


def _assert_same(a: Message, b: Message) -> None:
    assert type(a) is type(b)
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and y.shape == x.shape
            assert y.dtype == x.dtype.newbyteorder("<")
            np.testing.assert_array_equal(y, x)
        else:
            assert y == x, f.name


def test_examples_cover_every_message_type() -> None:
    assert {type(m) for m in EXAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.KIND)
def test_round_trip(message: Message) -> None:
    frames = encode(message)
    header = json.loads(frames[0])
    assert header["kind"] == message.KIND and header["version"] == message.VERSION
    _assert_same(message, decode(frames))


def test_hello_run_keys_survive_json() -> None:
    # JSON object keys are strings; the decoded map must have int runs again.
    decoded = decode(encode(HelloMessage(peer="e", session="s", persisted={3: 7})))
    assert decoded.persisted == {3: 7}


def _header(message: Message) -> tuple[dict, list[bytes]]:
    frames = encode(message)
    return json.loads(frames[0]), frames[1:]


def _with(header: dict, data: list[bytes]) -> list[bytes]:
    return [json.dumps(header).encode(), *data]


def _rejects(frames: list[bytes], *needles: str) -> None:
    with pytest.raises(WireError) as info:
        decode(frames)
    for needle in needles:
        assert needle in str(info.value)


def test_rejects_non_json_header() -> None:
    _rejects([b"\x00\xffnot json"], "not JSON")
    _rejects([b"[" * 100_000], "not JSON")
    _rejects([], "empty")


def test_rejects_header_without_kind() -> None:
    _rejects([b'{"kind": "volume"}'], "lacks")


def test_rejects_unknown_kind() -> None:
    header, data = _header(AckMessage(session="s", run=1, index=1))
    header["kind"] = "telemetry"
    _rejects(_with(header, data), "unknown message kind", "telemetry")


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, True])
def test_rejects_unknown_version(version) -> None:
    header, data = _header(AckMessage(session="s", run=1, index=1))
    header["version"] = version
    _rejects(_with(header, data), "ack", "version", "not supported")


def test_rejects_wrong_byte_count() -> None:
    header, data = _header(_volume())
    _rejects(_with(header, [data[0][:-2], data[1]]), "volume.voxels", "expected 120")
    _rejects(_with(header, data[:1]), "2 arrays but 1 data frames")


def test_rejects_object_and_other_disallowed_dtypes() -> None:
    with pytest.raises(WireError, match="dtype object cannot be sent"):
        encode(_volume(voxels=np.array([[[object()]]], dtype=object)))
    header, data = _header(_volume())
    for bad in ("|O", "<U4", "<M8[s]", "no-such-dtype", [["a", "<i4"]]):
        header["arrays"][0]["dtype"] = bad
        _rejects(_with(header, data), "volume.voxels")


def test_rejects_bad_array_descriptor() -> None:
    header, data = _header(_volume())
    header["arrays"][0]["shape"] = [5, -4, 3]
    _rejects(_with(header, data), "bad shape")
    header, data = _header(_volume())
    header["arrays"][0]["name"] = ["voxels"]
    _rejects(_with(header, data), "bad array descriptor")
    header, data = _header(_volume())
    header["arrays"][0]["name"] = "brain"
    _rejects(_with(header, data), "unexpected array 'brain'")


def test_rejects_unknown_field() -> None:
    header, data = _header(_volume())
    header["fields"]["PatientName"] = "Doe^John"
    _rejects(_with(header, data), "unknown field 'PatientName'")


def test_rejects_missing_field() -> None:
    header, data = _header(_volume())
    del header["fields"]["tr"]
    _rejects(_with(header, data), "missing field(s) tr")
    header, data = _header(_volume())
    header["arrays"] = header["arrays"][1:]
    _rejects(_with(header, data[1:]), "missing field(s) voxels")


def test_rejects_wrong_field_type() -> None:
    header, data = _header(_volume())
    header["fields"]["index"] = "seventeen"
    _rejects(_with(header, data), "volume.index", "seventeen")
    header, data = _header(HelloMessage(peer="e", session="s"))
    header["fields"]["persisted"] = {"one": 3}
    _rejects(_with(header, data), "hello.persisted")
