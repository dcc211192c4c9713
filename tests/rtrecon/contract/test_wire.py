"""Wire encoding: every message survives a round trip; every kind of garbage is refused clearly."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rtrecon.contract.wire import (
    MESSAGE_TYPES,
    AckMessage,
    EventMessage,
    HeartbeatMessage,
    HelloMessage,
    Message,
    OperatorMessage,
    RunEndMessage,
    SequenceMessage,
    ShownMessage,
    StatusMessage,
    TrialResultMessage,
    VolumeMessage,
    VolumeMissingMessage,
    WireError,
    decode,
    encode,
    validate,
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
    _volume(voxels=RNG.integers(0, 4000, size=(3, 3, 2)).astype(np.uint16).astype(">u2"), slice_times=[0.0, 0.75]),
    _volume(voxels=np.zeros((1, 1, 3), dtype=np.float64)),
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
    ShownMessage(session="s", run=1, trial=3, release=1, sequence=7, shown=21.25, shown_wall=1.5e9, received_to_shown_s=0.03),
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


# -- issue 20, failure 1: shapes that overflowed or raised past the WireError handler ------------


@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**70], [True, 2], [2, False, 3], [1.0, 2], [1] * 9, "5x4x3", None])
def test_shapes_that_crashed_receivers_are_wire_errors(shape) -> None:
    header, data = _header(_volume())
    header["arrays"][0]["shape"] = shape
    _rejects(_with(header, data), "volume.voxels", "bad shape")
    # A plausible shape whose exact byte count is far from the frame's: refused on the count.
    header["arrays"][0]["shape"] = [65536, 65536, 65536]
    _rejects(_with(header, data), "expected 562949953421312")


def test_any_exception_while_decoding_is_that_messages_wire_error() -> None:
    # A 5000-digit integer makes json.loads raise a plain ValueError (Python's int-digits limit).
    header, data = _header(_volume())
    header["fields"]["index"] = 123454321
    text = json.dumps(header).replace("123454321", "9" * 5000)
    _rejects([text.encode(), *data], "not JSON")
    _rejects([b"{" + b" " * (1 << 20) + b"}"], "header of")
    header, data = _header(_volume())
    header["arrays"][0]["dtype"] = "(2,)<i2"  # a sub-array dtype: numpy parses it, the wire must not
    _rejects(_with(header, data), "volume.voxels")


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("index", True, "volume.index"),
        ("run", 2.0, "volume.run"),
        ("index", 2**70, "volume.index"),
        ("index", -1, "volume.index"),
        ("index", 100_000, "volume.index"),
        ("tr", "1.5", "volume.tr"),
        ("tr", 0.0, "repetition time"),
        ("tr", -1.5, "repetition time"),
        ("tr", 1e300, "repetition time"),
        ("stamps", {"sent": "soon"}, "volume.stamps"),
    ],
)
def test_volume_fields_are_refused_with_their_name(field, value, needle) -> None:
    header, data = _header(_volume())
    header["fields"][field] = value
    _rejects(_with(header, data), needle)


# -- issue 20, failures 2 and 3: impossible events and volumes are refused at the wire -------------


def _event(**overrides) -> EventMessage:
    fields = dict(session="s", run=1, trial=3, onset=12.5, duration=3.0, trial_type="image")
    fields.update(overrides)
    return EventMessage(**fields)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"onset": float("nan")}, "event.onset"),
        ({"onset": float("inf")}, "event.onset"),
        ({"onset": 1e12}, "event.onset"),
        ({"onset": -1e9}, "event.onset"),
        ({"duration": float("nan")}, "event.duration"),
        ({"duration": float("-inf")}, "event.duration"),
        ({"duration": -3.0}, "event.duration"),
        ({"response_time": float("nan")}, "event.response_time"),
        ({"trial": -1}, "event.trial"),
    ],
)
def test_impossible_events_are_refused(overrides, needle) -> None:
    # Python's json writes NaN and Infinity (and reads them back): the check must be the wire's own.
    _rejects(encode(_event(**overrides)), needle)


def test_a_valid_event_with_an_early_onset_passes() -> None:
    # Control: an onset before the first trigger is possible (nilearn keeps events down to -24 s).
    assert decode(encode(_event(onset=-10.0, duration=0.0))).onset == -10.0


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"tr": float("nan")}, "volume.tr"),
        ({"tr": float("inf")}, "volume.tr"),
        ({"tr": 0.0}, "volume.tr"),
        ({"affine": np.full((4, 4), np.nan)}, "volume.affine"),
        ({"affine": np.diag([2.0, 2.0, np.inf, 1.0])}, "volume.affine"),
        ({"affine": np.zeros((4, 4))}, "singular"),
        ({"affine": np.eye(3)}, "volume.affine"),
        ({"voxels": np.zeros((4, 4, 3, 2), np.int16)}, "volume.voxels"),
        ({"voxels": np.zeros((4, 0, 3), np.int16)}, "volume.voxels"),
        ({"voxels": np.zeros((4, 4, 3), bool)}, "volume.voxels"),
        ({"slice_times": [0.0, float("nan"), 1.0]}, "volume.slice_times"),
        ({"slice_times": [0.0, 0.5]}, "volume.slice_times"),
        ({"acquisition_time": float("nan")}, "volume.acquisition_time"),
    ],
)
def test_impossible_volumes_are_refused(overrides, needle) -> None:
    _rejects(encode(_volume(**overrides)), needle)


def test_nan_voxels_still_travel() -> None:
    # Control: NaN voxels are data the engine already refuses itself with its own reason.
    voxels = np.full((5, 4, 3), np.nan, np.float32)
    assert np.isnan(decode(encode(_volume(voxels=voxels))).voxels).all()


@pytest.mark.parametrize(
    "message",
    [
        RunEndMessage(session="s", run=1, n_volumes=300_000),
        RunEndMessage(session="s", run=-1, n_volumes=3),
        VolumeMissingMessage(session="s", run=1, index=-4, reason="?"),
        SequenceMessage(session="s", run=1, key=4, prev=4, seq=0),
        AckMessage(session="s", run=1, index=-2),
        HelloMessage(peer="e", session="s", persisted={1: -2}),
        HeartbeatMessage(peer="e", sent_time=float("nan")),
        TrialResultMessage(session="s", run=1, trial=1, image=np.zeros((4, 4), np.uint8)),
        TrialResultMessage(session="s", run=1, trial=1, embedding=np.full(4, np.nan, np.float32)),
        TrialResultMessage(session="s", run=1, trial=1, retrieved=["a"], scores=[0.5, 0.2]),
        TrialResultMessage(session="s", run=1, trial=1, latencies={"decode_s": float("inf")}),
        TrialResultMessage(session="s", run=1, trial=1, pairmate="b", cpd=float("nan")),
        TrialResultMessage(session="s", run=1, trial=1, pairmate="b", cpd=float("-inf")),
        TrialResultMessage(session="s", run=1, trial=1, cpd=0.5),  # a CPD without a pairmate
        ShownMessage(session="s", run=1, trial=1, release=0, sequence=-1, shown=2.0, shown_wall=1.0, received_to_shown_s=0.0),
        ShownMessage(session="s", run=1, trial=1, release=0, sequence=0, shown=1e9, shown_wall=1.0, received_to_shown_s=0.0),
        ShownMessage(session="s", run=1, trial=1, release=0, sequence=0, shown=2.0, shown_wall=float("nan"), received_to_shown_s=0.0),
        ShownMessage(session="s", run=1, trial=1, release=0, sequence=0, shown=2.0, shown_wall=1.0, received_to_shown_s=-0.5),
    ],
    ids=lambda m: m.KIND,
)
def test_impossible_control_and_result_values_are_refused(message) -> None:
    _rejects(encode(message), message.KIND)


def test_status_metrics_may_be_unknown() -> None:
    # Control: the first volume's displacement is NaN ("not known yet") and is for display only.
    decoded = decode(encode(StatusMessage(process="engine", state="running", metrics={"fd_mm": float("nan")})))
    assert np.isnan(decoded.metrics["fd_mm"])


def test_pairmate_and_cpd_travel_and_are_checked() -> None:
    event = EventMessage(session="s", run=1, trial=2, onset=4.0, duration=3.0, trial_type="image", stimulus="a", pairmate="b")
    assert decode(encode(event)).pairmate == "b"
    result = TrialResultMessage(session="s", run=1, trial=2, stimulus="a", pairmate="b", cpd=-0.37)
    assert decode(encode(result)) == result
    assert decode(encode(TrialResultMessage(session="s", run=1, trial=2))).cpd is None  # none: no pairmate
    _rejects(encode(TrialResultMessage(session="s", run=1, trial=2, pairmate="b", cpd=float("nan"))), "trial_result.cpd")
    header, data = _header(result)
    header["fields"]["cpd"] = "0.5"  # a string is not a number
    _rejects(_with(header, data), "trial_result.cpd")
    with pytest.raises(WireError, match="trial_result.cpd: a pairmate distinctiveness without a pairmate"):
        validate(TrialResultMessage(session="s", run=1, trial=2, cpd=0.1))


def test_result_release_fields_travel_and_are_checked() -> None:
    message = TrialResultMessage(session="s", run=1, trial=2, release=1, release_s=9.6, final=True)
    assert decode(encode(message)) == message
    _rejects(encode(TrialResultMessage(session="s", run=1, trial=2, release=-1)), "trial_result.release")
    _rejects(encode(TrialResultMessage(session="s", run=1, trial=2, release_s=float("nan"))), "trial_result.release_s")
