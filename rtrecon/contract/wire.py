"""The messages that pass between rtrecon's processes, and their wire encoding.

Every message is a frozen dataclass with a ``KIND`` and a schema ``VERSION``. On the wire a
message is a list of ZeroMQ frames::

    frame 0      JSON header: {"kind", "version", "fields": {...}, "arrays": [{"name", "dtype", "shape"}, ...]}
    frame 1..n   the raw bytes of each array field, in the order the header lists them

Nothing is pickled. :func:`decode` checks the header, the schema version, every field's type
(with pydantic: integers are true integers within 64 bits, never booleans; numbers are finite
except in a status message's ``metrics``), every array's dtype, shape (at most
:data:`MAX_NDIM` axes, each at most :data:`MAX_DIM`, sizes computed exactly, never overflowing)
and byte length, then what each message's values mean (:func:`validate`: a volume's TR is
positive and finite, its affine finite and invertible, an event's onset and duration possible,
...), and raises :class:`WireError` naming what is wrong. Any exception while decoding one
message becomes that message's :class:`WireError`, so a peer that receives garbage logs it and
carries on. :func:`validate` is also what a sender calls to refuse an item before it is sent.

Arrays travel little-endian in their own dtype (only numeric and boolean dtypes are allowed).
Times named ``*_time`` or kept in ``stamps`` are seconds: ``stamps`` holds ``time.time()``
values of the stages a message passed through (``"written"``, ``"seen"``, ``"read"``, ``"sent"``,
...), so that latencies can be measured per stage across processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, Strict, TypeAdapter, ValidationError

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
    "OperatorMessage",
    "ShownMessage",
    "MESSAGE_TYPES",
    "MAX_HEADER_BYTES",
    "MAX_NDIM",
    "MAX_DIM",
    "MAX_VOLUMES",
    "MAX_RUN_S",
    "MAX_TR_S",
    "encode",
    "decode",
    "validate",
]

_ALLOWED_DTYPE_KINDS = frozenset("biuf")
#: A JSON header larger than this is refused before it is parsed.
MAX_HEADER_BYTES = 1 << 20
#: Axes an array may have, and the largest extent of one axis.
MAX_NDIM = 8
MAX_DIM = 1 << 16
#: Volumes a run may hold (indices 0 .. MAX_VOLUMES - 1): 28 h at a TR of 1 s.
MAX_VOLUMES = 100_000
#: Seconds from a run's first trigger within which every event lies (onsets and durations).
MAX_RUN_S = 86_400.0
#: Longest repetition time accepted, in seconds.
MAX_TR_S = 60.0
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1


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
    """A task event from the stimulus PC, timed in seconds since the run's first trigger.

    ``pairmate`` is the stimulus id of the trial's pairmate (a similar image: the trial list's
    ``pairmate`` column; empty: none), against which the engine scores each result's CPD.
    """

    KIND: ClassVar[str] = "event"
    session: str
    run: int
    trial: int
    onset: float
    duration: float
    trial_type: str
    stimulus: str = ""
    pairmate: str = ""
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
    it is their key on the results link (:func:`rtrecon.contract.transport.result_key`).

    ``cpd`` is the pairmate distinctiveness of the decoded embedding (real-time MindEye's feedback
    score: +1 at the seen image, -1 at its ``pairmate``, 0 halfway; None: the trial has no
    pairmate, or nothing was decoded).
    """

    KIND: ClassVar[str] = "trial_result"
    session: str
    run: int
    trial: int
    stimulus: str = ""
    pairmate: str = ""
    cpd: float | None = None
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
    """Opens (or re-opens) a reliable link (:mod:`rtrecon.contract.transport`).

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
    """The receiver is done with every item of ``run`` up to and including key ``index``.

    Done is persisted or refused: ``refused`` is the key of an item among those that the
    receiver refused (-1: none), and ``reason`` says why, so that a bad item cannot block its
    link and its sender can tell the operator.
    """

    KIND: ClassVar[str] = "ack"
    session: str
    run: int
    index: int
    refused: int = -1
    reason: str = ""


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
    """Liveness from either end of a link.

    A sender's heartbeat also says how far ahead of the receiver it is: ``lead`` items sent and
    not yet acknowledged (-1: not said, as from a receiver), at most ``lead_bound`` (0: unbounded),
    so the receiving process can report the backlog live.
    """

    KIND: ClassVar[str] = "heartbeat"
    peer: str
    sent_time: float
    lead: int = -1
    lead_bound: int = 0


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


@dataclass(frozen=True, kw_only=True)
class OperatorMessage(Message):
    """The operator's standing controls, from the console to the stimulus program.

    The console publishes its whole current state at each change and once a heartbeat, so a
    program that starts or reconnects late has it within a heartbeat: ``feedback_paused`` (show
    no feedback while true), ``ended_runs`` (runs the operator ended: the program ends them as
    with its quit key), ``bad_trials`` (run -> trials the operator marked bad).
    """

    KIND: ClassVar[str] = "operator"
    session: str
    feedback_paused: bool = False
    ended_runs: list[int] = field(default_factory=list)
    bad_trials: dict[int, list[int]] = field(default_factory=dict)
    sent_time: float = 0.0


@dataclass(frozen=True, kw_only=True)
class ShownMessage(Message):
    """The stimulus program first showed release ``release`` (key ``sequence`` on the results link)
    of ``trial``: on the flip at ``shown`` (seconds since the run's first trigger), ``shown_wall``
    (``time.time()`` of the stimulus PC), ``received_to_shown_s`` after the result arrived there
    (one clock, so this latency holds whatever the two machines' clocks say).

    It goes back to the engine on the results link (:meth:`~rtrecon.contract.transport.ReliableReceiver.notify`,
    best effort: the stimulus program's own records keep every shown time), and the engine
    republishes it on its status feed for the operator console.
    """

    KIND: ClassVar[str] = "shown"
    session: str
    run: int
    trial: int
    release: int
    sequence: int
    shown: float
    shown_wall: float
    received_to_shown_s: float


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
            OperatorMessage,
            ShownMessage,
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


_MAX_STR = 1 << 16


def _wire_type(tp: Any, *, finite: bool, key: bool = False) -> Any:
    """``tp`` as the wire accepts it: strict scalars (no bool for an int, no "1.5" for a float),
    64-bit integers, finite floats (unless ``finite`` is False), bounded strings.

    JSON object keys are always strings, so an integer dict key is read from its decimal text.
    """
    if tp is int:
        bounds = Field(ge=_INT_MIN, le=_INT_MAX)
        return Annotated[int, bounds] if key else Annotated[int, Strict(), bounds]
    if tp is float:
        return Annotated[float, Strict(), Field(allow_inf_nan=not finite)]
    if tp is bool:
        return Annotated[bool, Strict()]
    if tp is str:
        return Annotated[str, Strict(), Field(max_length=_MAX_STR)]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is dict:
        return dict[_wire_type(args[0], finite=finite, key=True), _wire_type(args[1], finite=finite)]  # type: ignore[misc]
    if origin is list:
        return list[_wire_type(args[0], finite=finite)]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        mapped = tuple(_wire_type(a, finite=finite) for a in args)
        return typing.Union[mapped]  # type: ignore[return-value]
    if tp is type(None):
        return tp
    raise TypeError(f"no wire form for {tp!r}")


# Status metrics are for display and may say "not known yet" (the first volume's displacement).
_NON_FINITE_ALLOWED = frozenset({("status", "metrics")})


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
            finite = (cls.KIND, f.name) not in _NON_FINITE_ALLOWED
            adapters[f.name] = TypeAdapter(_wire_type(hints[f.name], finite=finite))
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
        raise WireError(f"{kind}: bad array descriptor {str(spec)[:200]}")
    name = spec["name"][:100]
    # Only a dtype string numpy reads back as itself: no structured, object or sub-array dtypes.
    if not isinstance(spec["dtype"], str) or len(spec["dtype"]) > 8:
        raise WireError(f"{kind}.{name}: unknown dtype {str(spec['dtype'])[:50]!r}")
    try:
        dtype = np.dtype(spec["dtype"])
    except (TypeError, ValueError, SyntaxError) as exc:
        raise WireError(f"{kind}.{name}: unknown dtype {spec['dtype']!r}") from exc
    if dtype.kind not in _ALLOWED_DTYPE_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"{kind}.{name}: dtype {dtype} is not allowed")
    shape = spec["shape"]
    # type() is int: a JSON true is a bool, which Python would otherwise count as 1.
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_NDIM
        or not all(type(n) is int and 0 <= n <= MAX_DIM for n in shape)
    ):
        raise WireError(f"{kind}.{name}: bad shape {str(shape)[:200]} (at most {MAX_NDIM} axes of 0..{MAX_DIM})")
    # Python integers: the product cannot overflow, so a huge shape cannot pass as 0 bytes.
    expected = math.prod(shape) * dtype.itemsize
    if len(frame) != expected:
        raise WireError(
            f"{kind}.{name}: {len(frame)} bytes for shape {shape} of {dtype} (expected {expected})"
        )
    return name, np.frombuffer(frame, dtype=dtype).reshape(shape)


def decode(frames: Sequence[bytes]) -> Message:
    """The message in ``frames``; :class:`WireError` if they are not a valid message.

    Whatever goes wrong while decoding is reported as a :class:`WireError` of this message.
    """
    try:
        return _decode(frames)
    except WireError:
        raise
    except Exception as exc:  # noqa: BLE001 - one message's garbage must never stop its receiver
        raise WireError(f"undecodable message: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _decode(frames: Sequence[bytes]) -> Message:
    if not frames:
        raise WireError("empty message")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(frames[0])} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(bytes(frames[0]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise WireError(f"header is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(header, dict) or not {"kind", "version", "fields", "arrays"} <= set(header):
        raise WireError("header lacks kind/version/fields/arrays")
    kind = header["kind"]
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message kind {repr(kind)[:100]}")
    # bool is an int in Python and 1.0 == 1: only a true integer names a schema version.
    if type(header["version"]) is not int or header["version"] != cls.VERSION:
        raise WireError(f"{kind}: schema version {repr(header['version'])[:50]} is not supported (this peer speaks {cls.VERSION})")
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
            raise WireError(f"{kind}: unknown field {name[:100]!r}")
        try:
            values[name] = adapter.validate_python(raw)
        except ValidationError as exc:
            raise WireError(f"{kind}.{name}: {exc.errors()[0]['msg']} (got {str(raw)[:100]})") from exc
    for spec, frame in zip(specs, frames[1:]):
        name, arr = _decode_array(kind, spec, frame)
        if name not in schema.arrays or name in values:
            raise WireError(f"{kind}: unexpected array {name!r}")
        values[name] = arr
    missing = schema.required - set(values)
    if missing:
        raise WireError(f"{kind}: missing field(s) {', '.join(sorted(missing))}")
    message = cls(**values)
    _check_meaning(message)
    return message


# -- what the values mean -------------------------------------------------------------------------


def _finite(kind: str, name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise WireError(f"{kind}.{name}: {value} is not a finite number")


def _at_least(kind: str, name: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        raise WireError(f"{kind}.{name}: {value} is outside {low}..{'' if high is None else high}")


def _all_finite(kind: str, name: str, values: Any) -> None:
    values = values.values() if isinstance(values, Mapping) else values
    for value in values:
        _finite(kind, name, value)


def _check_volume(m: VolumeMessage) -> None:
    k = m.KIND
    _at_least(k, "run", m.run, 0)
    _at_least(k, "index", m.index, 0, MAX_VOLUMES - 1)
    if not (math.isfinite(m.tr) and 0 < m.tr <= MAX_TR_S):
        raise WireError(f"{k}.tr: repetition time {m.tr} s is not in (0, {MAX_TR_S:g}]")
    voxels, affine = np.asarray(m.voxels), np.asarray(m.affine)
    if voxels.ndim != 3 or min(voxels.shape) < 1:
        raise WireError(f"{k}.voxels: shape {voxels.shape} is not a 3-D volume")
    if voxels.dtype.kind not in "iuf":
        raise WireError(f"{k}.voxels: dtype {voxels.dtype} is not a numeric image type")
    if affine.shape != (4, 4) or affine.dtype.kind not in "iuf":
        raise WireError(f"{k}.affine: shape {affine.shape} of {affine.dtype}, expected a 4×4 number matrix")
    if not np.all(np.isfinite(affine)):
        raise WireError(f"{k}.affine: NaN or infinite entries")
    if not np.isfinite(np.linalg.cond(affine[:3, :3].astype(np.float64))) or np.linalg.det(affine[:3, :3].astype(np.float64)) == 0:
        raise WireError(f"{k}.affine: its 3×3 part is singular (no voxel size)")
    if m.slice_times is not None:
        if len(m.slice_times) != voxels.shape[2]:
            raise WireError(f"{k}.slice_times: {len(m.slice_times)} times for {voxels.shape[2]} slices")
        if not all(math.isfinite(t) and 0 <= t <= m.tr for t in m.slice_times):
            raise WireError(f"{k}.slice_times: each must lie within the TR (0..{m.tr:g} s)")
    _finite(k, "acquisition_time", m.acquisition_time)
    _all_finite(k, "stamps", m.stamps)


def _check_event(m: EventMessage) -> None:
    k = m.KIND
    _at_least(k, "run", m.run, 0)
    _at_least(k, "trial", m.trial, 0)
    if not (math.isfinite(m.onset) and -MAX_RUN_S <= m.onset <= MAX_RUN_S):
        raise WireError(f"{k}.onset: {m.onset} s is not within ±{MAX_RUN_S:g} s of the run's start")
    if not (math.isfinite(m.duration) and 0 <= m.duration <= MAX_RUN_S):
        raise WireError(f"{k}.duration: {m.duration} s is not in 0..{MAX_RUN_S:g} s")
    if m.response_time is not None and not (math.isfinite(m.response_time) and abs(m.response_time) <= MAX_RUN_S):
        raise WireError(f"{k}.response_time: {m.response_time} s is not a possible time")
    _all_finite(k, "stamps", m.stamps)


def _check_result(m: TrialResultMessage) -> None:
    k = m.KIND
    _at_least(k, "run", m.run, 0)
    _at_least(k, "trial", m.trial, 0)
    _at_least(k, "release", m.release, 0)
    if len(m.scores) > len(m.retrieved):
        raise WireError(f"{k}.scores: {len(m.scores)} scores for {len(m.retrieved)} retrieved ids")
    if m.image is not None:
        image = np.asarray(m.image)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape) < 1 or image.dtype != np.uint8:
            raise WireError(f"{k}.image: shape {image.shape} of {image.dtype}, expected (height, width, 3) uint8")
    if m.embedding is not None:
        embedding = np.asarray(m.embedding)
        if embedding.ndim != 1:
            raise WireError(f"{k}.embedding: shape {embedding.shape}, expected one vector")
        if embedding.dtype.kind == "f" and not np.all(np.isfinite(embedding)):
            raise WireError(f"{k}.embedding: NaN or infinite values")
    if m.cpd is not None and not m.pairmate:
        raise WireError(f"{k}.cpd: a pairmate distinctiveness without a pairmate")
    _all_finite(k, "latencies", m.latencies)
    _all_finite(k, "stamps", m.stamps)


def _check_shown(m: ShownMessage) -> None:
    k = m.KIND
    for name in ("run", "trial", "release", "sequence"):
        _at_least(k, name, getattr(m, name), 0)
    if not -MAX_RUN_S <= m.shown <= MAX_RUN_S:
        raise WireError(f"{k}.shown: {m.shown} s is not within ±{MAX_RUN_S:g} s of the run's start")
    if not 0 <= m.received_to_shown_s <= MAX_RUN_S:
        raise WireError(f"{k}.received_to_shown_s: {m.received_to_shown_s} s is not in 0..{MAX_RUN_S:g} s")


def _check_hello(m: HelloMessage) -> None:
    for run, key in m.persisted.items():
        _at_least(m.KIND, "persisted run", run, 0)
        _at_least(m.KIND, f"persisted[{run}]", key, -1)
    _at_least(m.KIND, "attempt", m.attempt, 0)


def _check_sequence(m: SequenceMessage) -> None:
    k = m.KIND
    _at_least(k, "run", m.run, 0)
    _at_least(k, "key", m.key, 0)
    _at_least(k, "prev", m.prev, -1, m.key - 1)
    _at_least(k, "seq", m.seq, 0)


def _check_ack(m: AckMessage) -> None:
    _at_least(m.KIND, "run", m.run, 0)
    _at_least(m.KIND, "index", m.index, 0)
    _at_least(m.KIND, "refused", m.refused, -1, m.index)


def _check_heartbeat(m: HeartbeatMessage) -> None:
    _finite(m.KIND, "sent_time", m.sent_time)
    _at_least(m.KIND, "lead", m.lead, -1)
    _at_least(m.KIND, "lead_bound", m.lead_bound, 0)


def _check_run_end(m: RunEndMessage) -> None:
    _at_least(m.KIND, "run", m.run, 0)
    _at_least(m.KIND, "n_volumes", m.n_volumes, 0, MAX_VOLUMES)


def _check_missing(m: VolumeMissingMessage) -> None:
    _at_least(m.KIND, "run", m.run, 0)
    _at_least(m.KIND, "index", m.index, 0, MAX_VOLUMES - 1)


_CHECKS: Mapping[type[Message], Callable[[Any], None]] = types.MappingProxyType({
    VolumeMessage: _check_volume,
    EventMessage: _check_event,
    TrialResultMessage: _check_result,
    HelloMessage: _check_hello,
    SequenceMessage: _check_sequence,
    AckMessage: _check_ack,
    RunEndMessage: _check_run_end,
    VolumeMissingMessage: _check_missing,
    ShownMessage: _check_shown,
    StatusMessage: lambda m: _finite(m.KIND, "sent_time", m.sent_time),
    HeartbeatMessage: _check_heartbeat,
})


def validate(message: Message) -> None:
    """Raise :class:`WireError` naming the first value of ``message`` that :func:`decode` would refuse.

    The same checks as :func:`decode` (each field's type, finite numbers, 64-bit integers, then
    what the values mean), so a sender can refuse an item (a volume with a NaN TR, an event with
    a NaN onset) before it is spooled instead of having it refused by the receiver.
    """
    schema = _schema(type(message))
    for name, adapter in schema.adapters.items():
        try:
            adapter.validate_python(getattr(message, name))
        except ValidationError as exc:
            raise WireError(f"{message.KIND}.{name}: {exc.errors()[0]['msg']} (got {str(getattr(message, name))[:100]})") from exc
    _check_meaning(message)


def _check_meaning(message: Message) -> None:
    check = _CHECKS.get(type(message))
    if check is not None:
        check(message)
