"""The messages that pass between rtrecon's processes, and their wire encoding.

Every message is a frozen dataclass with a ``KIND`` and a schema ``VERSION``. On the wire a
message is a list of ZeroMQ frames::

    frame 0      JSON header: {"kind", "version", "fields": {...}, "arrays": [{"name", "dtype", "shape"}, ...]}
    frame 1..n   the raw bytes of each array field, in the order the header lists them

Nothing is pickled. :func:`decode` checks the header, the schema version, every field's type
(with pydantic) and every array's dtype and byte length, and raises :class:`WireError` naming
what is wrong, so a peer that receives garbage logs it and carries on.

Arrays travel little-endian in their own dtype (only numeric and boolean dtypes are allowed).
Times named ``*_time`` or kept in ``stamps`` are seconds: ``stamps`` holds ``time.time()``
values of the stages a message passed through (``"written"``, ``"seen"``, ``"read"``, ``"sent"``,
...), so that latencies can be measured per stage across processes.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from pydantic import TypeAdapter, ValidationError

__all__ = [
    "WireError",
    "Message",
    "VolumeMessage",
    "EventMessage",
    "TrialResultMessage",
    "StatusMessage",
    "HelloMessage",
    "AckMessage",
    "SequenceMessage",
    "HeartbeatMessage",
    "RunEndMessage",
    "VolumeMissingMessage",
    "MESSAGE_TYPES",
    "encode",
    "decode",
]

_ALLOWED_DTYPE_KINDS = frozenset("biuf")


class WireError(ValueError):
    """A received message is malformed, of an unknown kind, or of an unsupported version."""


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every wire message."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


@dataclass(frozen=True, kw_only=True)
class VolumeMessage(Message):
    """One acquired volume: voxels, geometry and acquisition timing, never DICOM headers.

    ``voxels`` is (x, y, z) in NIfTI voxel order and ``affine`` maps voxel indices to RAS+ mm,
    as in a NIfTI written by dcm2niix. ``index`` counts volumes from 0 within ``run`` and is the
    run's sequence number on the wire. ``slice_times`` are seconds from the volume start, in the
    order of the z axis. ``acquisition_time`` is the scanner's clock (seconds since midnight)
    when the header has it.
    """

    KIND: ClassVar[str] = "volume"
    session: str
    run: int
    index: int
    tr: float
    voxels: np.ndarray
    affine: np.ndarray
    slice_times: list[float] | None = None
    acquisition_time: float | None = None
    stamps: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class EventMessage(Message):
    """A task event from the stimulus PC, timed in seconds since the run's first trigger."""

    KIND: ClassVar[str] = "event"
    session: str
    run: int
    trial: int
    onset: float
    duration: float
    trial_type: str
    stimulus: str = ""
    response: str = ""
    response_time: float | None = None
    feedback: bool = False
    stamps: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrialResultMessage(Message):
    """What the engine decoded for one trial.

    ``retrieved`` are gallery stimulus ids best first with their ``scores``; ``image`` is the
    reconstruction (height, width, 3) uint8 when one was generated; ``embedding`` the decoded
    retrieval embedding; ``latencies`` the seconds each stage took.

    A trial is released several times (the engine's ``releases_s`` schedule, then at run end), each
    release refining the last: ``release`` is the 0-based index of the release in the trial's
    schedule (the end-of-run release is the last one, ``final`` true: no newer one follows), and
    ``release_s`` the seconds from the trial's onset to the start of the last volume its beta used.
    ``sequence`` numbers the results of a run 0, 1, 2, ... in the order the engine released them:
    it is their key on the results link (:func:`rtrecon.transport.result_key`).
    """

    KIND: ClassVar[str] = "trial_result"
    session: str
    run: int
    trial: int
    stimulus: str = ""
    retrieved: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    image: np.ndarray | None = None
    embedding: np.ndarray | None = None
    decoder: str = ""
    release: int = 0
    release_s: float = 0.0
    final: bool = False
    latencies: dict[str, float] = field(default_factory=dict)
    stamps: dict[str, float] = field(default_factory=dict)
    sequence: int = 0


@dataclass(frozen=True, kw_only=True)
class StatusMessage(Message):
    """A process's state for the operator (published, never waited for)."""

    KIND: ClassVar[str] = "status"
    process: str
    state: str
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    sent_time: float = 0.0


@dataclass(frozen=True, kw_only=True)
class HelloMessage(Message):
    """Opens (or re-opens) a reliable link (:mod:`rtrecon.transport`).

    A sender sends it (with ``persisted`` empty) until the receiver answers; the receiver answers
    with, for each run, the key of the last item it has persisted (-1: none). Keys are the
    per-run sequence numbers of the link: the volume index on the volume link, the trial number
    on the event link, the result's ``sequence`` on the result link. The sender then sends every item after those, so a restart
    of either end loses nothing and duplicates nothing. ``attempt`` numbers a sender's Hellos
    (1, 2, ...); an answer repeats the attempt it answers, and is 0 when the receiver greets a
    sender unasked (a connection it has not heard before), so a sender can tell a late answer to
    an old Hello from news.
    """

    KIND: ClassVar[str] = "hello"
    peer: str
    session: str
    persisted: dict[int, int] = field(default_factory=dict)
    attempt: int = 0


@dataclass(frozen=True, kw_only=True)
class AckMessage(Message):
    """The receiver has persisted every item of ``run`` up to and including key ``index``."""

    KIND: ClassVar[str] = "ack"
    session: str
    run: int
    index: int


@dataclass(frozen=True, kw_only=True)
class SequenceMessage(Message):
    """Leads every item on a reliable link: where the item sits in its run's sequence.

    On the wire the item's own frames follow this message's single frame. ``key`` is the item's
    per-run sequence number, ``prev`` the key of the item sent before it in the same run (-1 for
    the first), so the receiver sees a gap even when keys are not consecutive. ``seq`` counts
    every item of the sender's session, in sending order.
    """

    KIND: ClassVar[str] = "sequence"
    session: str
    run: int
    key: int
    prev: int
    seq: int


@dataclass(frozen=True, kw_only=True)
class HeartbeatMessage(Message):
    """Liveness from either end of a link."""

    KIND: ClassVar[str] = "heartbeat"
    peer: str
    sent_time: float


@dataclass(frozen=True, kw_only=True)
class RunEndMessage(Message):
    """The run is over: it holds ``n_volumes`` volumes (indices 0 .. n_volumes-1, some maybe missing)."""

    KIND: ClassVar[str] = "run_end"
    session: str
    run: int
    n_volumes: int


@dataclass(frozen=True, kw_only=True)
class VolumeMissingMessage(Message):
    """Volume ``index`` of ``run`` never arrived (or could not be read); the stream went on."""

    KIND: ClassVar[str] = "volume_missing"
    session: str
    run: int
    index: int
    reason: str


MESSAGE_TYPES: Mapping[str, type[Message]] = types.MappingProxyType(
    {
        cls.KIND: cls
        for cls in (
            VolumeMessage,
            EventMessage,
            TrialResultMessage,
            StatusMessage,
            HelloMessage,
            AckMessage,
            SequenceMessage,
            HeartbeatMessage,
            RunEndMessage,
            VolumeMissingMessage,
        )
    }
)


@dataclass(frozen=True)
class _Schema:
    arrays: tuple[str, ...]
    optional_arrays: frozenset[str]
    adapters: Mapping[str, TypeAdapter]
    required: frozenset[str]


def _is_array_type(tp: Any) -> tuple[bool, bool]:
    """(is an ndarray field, may be None)."""
    if tp is np.ndarray:
        return True, False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and np.ndarray in args:
        return True, type(None) in args
    return False, False


@lru_cache(maxsize=None)
def _schema(cls: type[Message]) -> _Schema:
    hints = typing.get_type_hints(cls)
    arrays: list[str] = []
    optional: set[str] = set()
    adapters: dict[str, TypeAdapter] = {}
    required: set[str] = set()
    for f in dataclasses.fields(cls):
        is_array, nullable = _is_array_type(hints[f.name])
        if is_array:
            arrays.append(f.name)
            if nullable:
                optional.add(f.name)
        else:
            adapters[f.name] = TypeAdapter(hints[f.name])
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    return _Schema(tuple(arrays), frozenset(optional), types.MappingProxyType(adapters), frozenset(required))


def encode(message: Message) -> list[bytes]:
    """Frames for ``message``: a JSON header, then one frame per (non-None) array field."""
    schema = _schema(type(message))
    fields: dict[str, Any] = {}
    arrays: list[dict[str, Any]] = []
    frames: list[bytes] = []
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        if f.name in schema.arrays:
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.dtype.kind not in _ALLOWED_DTYPE_KINDS:
                raise WireError(f"{message.KIND}.{f.name}: dtype {arr.dtype} cannot be sent")
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            arrays.append({"name": f.name, "dtype": arr.dtype.str, "shape": list(arr.shape)})
            frames.append(arr.tobytes())
        else:
            fields[f.name] = schema.adapters[f.name].dump_python(value, mode="json")
    header = {"kind": message.KIND, "version": message.VERSION, "fields": fields, "arrays": arrays}
    return [json.dumps(header, separators=(",", ":")).encode(), *frames]


def _decode_array(kind: str, spec: Any, frame: bytes) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or set(spec) != {"name", "dtype", "shape"} or not isinstance(spec["name"], str):
        raise WireError(f"{kind}: bad array descriptor {spec!r}")
    try:
        dtype = np.dtype(spec["dtype"])
    except (TypeError, ValueError) as exc:
        raise WireError(f"{kind}.{spec['name']}: unknown dtype {spec['dtype']!r}") from exc
    if dtype.kind not in _ALLOWED_DTYPE_KINDS:
        raise WireError(f"{kind}.{spec['name']}: dtype {dtype} is not allowed")
    shape = spec["shape"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise WireError(f"{kind}.{spec['name']}: bad shape {shape!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(frame) != expected:
        raise WireError(
            f"{kind}.{spec['name']}: {len(frame)} bytes for shape {shape} of {dtype} (expected {expected})"
        )
    return spec["name"], np.frombuffer(frame, dtype=dtype).reshape(shape)


def decode(frames: Sequence[bytes]) -> Message:
    """The message in ``frames``; :class:`WireError` if they are not a valid message."""
    if not frames:
        raise WireError("empty message")
    try:
        header = json.loads(bytes(frames[0]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise WireError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or not {"kind", "version", "fields", "arrays"} <= set(header):
        raise WireError("header lacks kind/version/fields/arrays")
    kind = header["kind"]
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message kind {kind!r}")
    # bool is an int in Python and 1.0 == 1: only a true integer names a schema version.
    if type(header["version"]) is not int or header["version"] != cls.VERSION:
        raise WireError(f"{kind}: schema version {header['version']!r} is not supported (this peer speaks {cls.VERSION})")
    fields, specs = header["fields"], header["arrays"]
    if not isinstance(fields, dict) or not isinstance(specs, list):
        raise WireError(f"{kind}: fields must be an object and arrays a list")
    if len(specs) != len(frames) - 1:
        raise WireError(f"{kind}: header lists {len(specs)} arrays but {len(frames) - 1} data frames came")
    schema = _schema(cls)
    values: dict[str, Any] = {}
    for name, raw in fields.items():
        adapter = schema.adapters.get(name)
        if adapter is None:
            raise WireError(f"{kind}: unknown field {name!r}")
        try:
            values[name] = adapter.validate_python(raw)
        except ValidationError as exc:
            raise WireError(f"{kind}.{name}: {exc.errors()[0]['msg']} (got {raw!r})") from exc
    for spec, frame in zip(specs, frames[1:]):
        name, arr = _decode_array(kind, spec, frame)
        if name not in schema.arrays or name in values:
            raise WireError(f"{kind}: unexpected array {name!r}")
        values[name] = arr
    missing = schema.required - set(values)
    if missing:
        raise WireError(f"{kind}: missing field(s) {', '.join(sorted(missing))}")
    return cls(**values)
