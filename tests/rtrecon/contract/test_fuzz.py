"""Property-based fuzzing (Hypothesis) of the wire and of both directions of every reliable link.

Decode level: generated messages of every type, their JSON headers with fields, dtypes and shapes
replaced by arbitrary JSON, and raw frames: decoding either returns a message equal to what was
encoded and valid, or raises :class:`WireError`, never anything else. Socket level: a hostile peer
speaks to each end of the volume, event and result links (receiver and sender side); each end
then still serves valid traffic. In CI this decodes 10 300 generated messages (1 500 generated,
500 × 8 with mangled headers, 300 × 8 with mangled frames, 300 × 8 raw) and sends 20 batches of
1 to 10 hostile messages to each of the six link ends; set ``RTRECON_FUZZ=N`` for N times more.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import time
import typing
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rtrecon.contract.transport import ReliableReceiver, ReliableSender, result_key, trial_key, volume_key
from rtrecon.contract.wire import (
    MAX_HEADER_BYTES,
    MESSAGE_TYPES,
    EventMessage,
    HelloMessage,
    Message,
    SequenceMessage,
    TrialResultMessage,
    VolumeMessage,
    WireError,
    decode,
    encode,
    validate,
)
from rtrecon.testing import scaled

SCALE = max(1, int(os.environ.get("RTRECON_FUZZ", "1")))
SESSION = "sub-01_ses-01"


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples * SCALE, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# -- strategies -------------------------------------------------------------------------------------

INTS = st.one_of(st.integers(-3, 400), st.integers(-(2**80), 2**80), st.sampled_from([2**31, 2**32, 2**63, 2**64]))
FLOATS = st.one_of(st.floats(-100.0, 100.0), st.floats(allow_nan=True, allow_infinity=True))
TEXT = st.text(max_size=20)
DTYPES = st.sampled_from(["<i2", "<u2", "<f4", "<f8", "|u1", "|i1", "<i8", ">i2"])
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), INTS, FLOATS, TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)


def _array(shape: st.SearchStrategy) -> st.SearchStrategy:
    # Bytes reinterpreted (any bit pattern: NaN, Inf, denormals) are far cheaper to draw than elements.
    def build(dtype: str, dims: tuple[int, ...]) -> st.SearchStrategy:
        size = math.prod(dims) * np.dtype(dtype).itemsize
        return st.binary(min_size=size, max_size=size).map(
            lambda raw: np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.replace("|b1", "?"))
        )

    return st.tuples(DTYPES, shape).flatmap(lambda args: build(*args))


def _for_type(tp: typing.Any, name: str) -> st.SearchStrategy:
    if name == "voxels":
        return _array(hnp.array_shapes(min_dims=2, max_dims=4, min_side=0, max_side=4))
    if name == "affine":
        return st.one_of(_array(st.just((4, 4))), st.just(np.diag([2.0, 2.0, 2.5, 1.0])))
    if name in ("image", "embedding"):
        return st.one_of(st.none(), _array(hnp.array_shapes(min_dims=1, max_dims=3, max_side=4)))
    if name == "session":
        return st.one_of(st.just(SESSION), TEXT)
    if tp is int:
        return INTS
    if tp is float:
        return FLOATS
    if tp is bool:
        return st.booleans()
    if tp is str:
        return TEXT
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list:
        return st.lists(_for_type(args[0], ""), max_size=4)
    if origin is dict:
        return st.dictionaries(_for_type(args[0], ""), _for_type(args[1], ""), max_size=4)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return st.one_of(*(st.none() if a is type(None) else _for_type(a, name) for a in args))
    raise TypeError(tp)


def _messages_of(cls: type[Message]) -> st.SearchStrategy:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: _for_type(hints[f.name], f.name) for f in dataclasses.fields(cls)})


MESSAGES = st.one_of(*(_messages_of(cls) for cls in MESSAGE_TYPES.values()))


def _same(a: Message, b: Message) -> bool:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if not (isinstance(y, np.ndarray) and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")):
                return False
        elif isinstance(x, float) and math.isnan(x):
            if not (isinstance(y, float) and math.isnan(y)):
                return False
        elif x != y and not (isinstance(x, dict) and json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)):
            return False
    return True


def _decodes_safely(frames: list[bytes]) -> Message | None:
    """The decoded message (valid, as validate says), or None for a WireError; anything else fails."""
    try:
        message = decode(frames)
    except WireError:
        return None
    validate(message)
    return message


# -- decode level -----------------------------------------------------------------------------------


@_settings(1500)
@given(MESSAGES)
def test_generated_messages_round_trip_or_are_refused(message: Message) -> None:
    frames = encode(message)
    decoded = _decodes_safely(frames)
    if decoded is not None:
        assert type(decoded) is type(message) and _same(message, decoded)
    elif len(frames[0]) <= MAX_HEADER_BYTES:
        # What the receiver refuses, the sender's own check refuses too (so it never spools it).
        with pytest.raises(WireError):
            validate(message)


MUTANTS = 8  # messages derived from each generated one


@_settings(500)
@given(MESSAGES, st.data())
def test_headers_with_arbitrary_json_values_never_escape_as_other_errors(message: Message, data: st.DataObject) -> None:
    frames = encode(message)
    for _ in range(MUTANTS):
        _decodes_safely(_mutated_header(frames, data))


def _mutated_header(frames: list[bytes], data: st.DataObject) -> list[bytes]:
    header = json.loads(frames[0])
    target = data.draw(st.sampled_from(["field", "field", "array", "kind", "version", "extra", "drop"]))
    if target == "field" and header["fields"]:
        header["fields"][data.draw(st.sampled_from(sorted(header["fields"])))] = data.draw(JSON)
    elif target == "array" and header["arrays"]:
        spec = data.draw(st.sampled_from(header["arrays"]))
        spec[data.draw(st.sampled_from(["name", "dtype", "shape"]))] = data.draw(
            st.one_of(JSON, st.lists(INTS, max_size=4), st.lists(st.booleans(), max_size=3), st.text(max_size=8))
        )
    elif target in ("kind", "version"):
        header[target] = data.draw(JSON)
    elif target == "extra":
        header["fields"][data.draw(TEXT)] = data.draw(JSON)
    elif target == "drop" and header["fields"]:
        del header["fields"][data.draw(st.sampled_from(sorted(header["fields"])))]
    return [json.dumps(header).encode(), *frames[1:]]


@_settings(300)
@given(MESSAGES, st.data())
def test_frames_cut_grown_or_dropped_never_escape_as_other_errors(message: Message, data: st.DataObject) -> None:
    original = encode(message)
    for _ in range(MUTANTS):
        _decodes_safely(_mutated_frames(list(original), data))


def _mutated_frames(frames: list[bytes], data: st.DataObject) -> list[bytes]:
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = frames[index]
    how = data.draw(st.sampled_from(["cut", "grow", "drop", "add", "flip"]))
    if how == "cut":
        frames[index] = frame[: data.draw(st.integers(0, max(0, len(frame) - 1)))]
    elif how == "grow":
        frames[index] = frame + data.draw(st.binary(min_size=1, max_size=16))
    elif how == "drop":
        del frames[index]
    elif how == "add":
        frames.insert(index, data.draw(st.binary(max_size=32)))
    elif frame:
        pos = data.draw(st.integers(0, len(frame) - 1))
        frames[index] = frame[:pos] + bytes([frame[pos] ^ data.draw(st.integers(1, 255))]) + frame[pos + 1:]
    return frames


RAW = st.lists(st.one_of(st.binary(max_size=64), JSON.map(lambda v: json.dumps(v).encode())), max_size=4)


@_settings(300)
@given(st.lists(RAW, min_size=MUTANTS, max_size=MUTANTS))
def test_raw_frames_never_escape_as_other_errors(messages: list[list[bytes]]) -> None:
    for frames in messages:
        _decodes_safely(frames)


# -- socket level: both directions of every reliable link ------------------------------------------


def _endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _hostile(message: Message, data: st.DataObject, seq: int) -> list[bytes]:
    """What a hostile peer sends: a generated item behind a plausible sequence frame, or mangled frames."""
    frames = encode(message)
    how = data.draw(st.sampled_from(["item", "item", "bare", "mangled"]))
    if how == "bare":
        return frames
    if how == "mangled":
        header = json.loads(frames[0])
        if header["arrays"]:
            header["arrays"][0]["shape"] = data.draw(st.lists(INTS, max_size=3) | st.lists(st.booleans(), max_size=2))
        frames = [json.dumps(header).encode(), *frames[1:]]
    key = data.draw(st.integers(0, 50))
    head = SequenceMessage(session=SESSION, run=data.draw(st.integers(0, 3)), key=key, prev=data.draw(st.integers(-1, key - 1)), seq=seq)
    return [encode(head)[0], *frames]


def _volume(index: int, run: int) -> VolumeMessage:
    return VolumeMessage(session=SESSION, run=run, index=index, tr=2.0, voxels=np.full((4, 4, 3), index, np.int16),
                         affine=np.eye(4))


def _event(trial: int, run: int) -> EventMessage:
    return EventMessage(session=SESSION, run=run, trial=trial, onset=2.0 * trial, duration=1.0, trial_type="image")


def _result(trial: int, run: int) -> TrialResultMessage:
    return TrialResultMessage(session=SESSION, run=run, trial=trial, sequence=trial, embedding=np.ones(8, np.float32))


LINKS = {"volumes": (volume_key, _volume), "events": (trial_key, _event), "results": (result_key, _result)}
VALID_RUN = 123_457  # hostile traffic uses other runs (0..400 mostly), so its acks cannot stand for these


def _serves_valid_traffic(rx: ReliableReceiver, tx: ReliableSender, make) -> None:
    for key in range(3):
        tx.send(make(key, VALID_RUN))
    got: list[Message] = []
    deadline = time.monotonic() + scaled(15)
    while (len(got) < 3 or tx.pending) and time.monotonic() < deadline:
        tx.poll(0.002)
        message = rx.recv(0.01)
        if message is not None:
            rx.ack(message)
            if message.run == VALID_RUN:
                got.append(message)
    key = next(key for key, maker in LINKS.values() if maker is make)
    assert [key(m) for m in got] == [(VALID_RUN, k) for k in range(3)]
    assert tx.pending == 0


@pytest.mark.parametrize("link", sorted(LINKS))
def test_hostile_sender_then_the_receiver_still_serves(link: str, tmp_path: Path) -> None:
    key, make = LINKS[link]
    endpoint = _endpoint()
    with ReliableReceiver(endpoint, SESSION, key=key, heartbeat_s=scaled(0.2), max_key_jump=100) as rx:
        context = zmq.Context()  # its own, so that term() releases the port before the real peer binds
        raw = context.socket(zmq.DEALER)
        raw.linger = 0
        raw.connect(endpoint)
        raw.send_multipart(encode(HelloMessage(peer="hostile", session=SESSION, attempt=1)))
        sent = [0]

        @_settings(20)
        @given(st.lists(MESSAGES, min_size=1, max_size=10), st.data())
        def fuzz(messages: list[Message], data: st.DataObject) -> None:
            for message in messages:
                raw.send_multipart(_hostile(message, data, sent[0]))
                sent[0] += 1
            for _ in range(len(messages)):
                got = rx.recv(0.001)
                if got is not None:
                    validate(got)
                    rx.ack(got)

        try:
            fuzz()
            while rx.recv(0.05) is not None:
                pass
        finally:
            raw.close()
            context.term()
        assert sent[0] >= 20
        with ReliableSender(endpoint, SESSION, tmp_path / "spool", key=key, heartbeat_s=scaled(0.2)) as tx:
            _serves_valid_traffic(rx, tx, make)


@pytest.mark.parametrize("link", sorted(LINKS))
def test_hostile_receiver_then_the_sender_still_serves(link: str, tmp_path: Path) -> None:
    key, make = LINKS[link]
    endpoint = _endpoint()
    with ReliableSender(endpoint, SESSION, tmp_path / "spool", key=key, heartbeat_s=scaled(0.2)) as tx:
        context = zmq.Context()  # its own, so that term() releases the port before the real peer binds
        raw = context.socket(zmq.ROUTER)
        raw.linger = 0
        raw.bind(endpoint)
        identity: list[bytes] = []
        deadline = time.monotonic() + scaled(10)
        while not identity and time.monotonic() < deadline:
            tx.poll(0.01)
            if raw.poll(10):
                identity.append(raw.recv_multipart()[0])
        assert identity, "the sender never said hello"
        sent = [0]

        @_settings(20)
        @given(st.lists(MESSAGES, min_size=1, max_size=10), st.data())
        def fuzz(messages: list[Message], data: st.DataObject) -> None:
            for message in messages:
                frames = encode(message)
                if data.draw(st.booleans()):
                    header = json.loads(frames[0])
                    if header["fields"]:
                        header["fields"][data.draw(st.sampled_from(sorted(header["fields"])))] = data.draw(JSON)
                    frames = [json.dumps(header).encode(), *frames[1:]]
                raw.send_multipart([identity[0], *frames])
                sent[0] += 1
            tx.poll(0.001)

        try:
            fuzz()
            tx.poll(0.3)  # take in all the hostile traffic before the real receiver comes
        finally:
            raw.close()
            context.term()
        assert sent[0] >= 20
        # The real receiver comes up on the same port; the sender finds it and delivers.
        with ReliableReceiver(endpoint, SESSION, key=key, heartbeat_s=scaled(0.2)) as rx:
            _serves_valid_traffic(rx, tx, make)
