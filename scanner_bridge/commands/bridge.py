"""``rtrecon bridge``: the scanner side of a session, and a listener to test the link.

::

    rtrecon bridge watch DIR --to tcp://engine:5555            # follow a scanner export folder
    rtrecon bridge receive --allowed-caller SCANNER --to tcp://engine:5555   # DICOM node
    rtrecon bridge replay FILE.nii.gz --to tcp://engine:5555 [--speed X | --fast]
    rtrecon bridge listen tcp://*:5555 [--out DIR]              # receive and report volumes

Every command takes ``--config session.toml`` (its ``[network] volumes``, ``[bridge]``,
``[security] keys_dir`` and ``[session]`` give the defaults; options given on the command line
win) and ``--keys DIR`` for CURVE encryption (``rtrecon keys init DIR``; the bridge plays the
``bridge`` role, the listener the ``engine`` role by default). The senders spool every item
under ``--spool`` and resume after a restart; they stop on SIGINT/SIGTERM (or after
``--exit-after-idle`` seconds without input), end their runs, and wait for the receiver to
acknowledge everything.

``listen`` persists each item before acknowledging it, as the engine does, in ``--out``
(:class:`VolumeStore`: ``run-01/vol-00000.nii``, ..., and at each run's end the 4D
``run-01_bold.nii.gz`` with a JSON sidecar); restarted on the same folder it resumes where it
stopped. It prints one line per item (``--json``: one JSON object per line, with the latency
from the volume's ``written`` stamp to its reception).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from rtrecon.contract.config import ConfigError, SessionConfig, load_config
from rtrecon.contract.layout import atomic_write, session_id
from rtrecon.contract.logs import configure_logging
from rtrecon.contract.wire import Message, RunEndMessage, VolumeMessage, VolumeMissingMessage
from scanner_bridge.sources import FileRejected, RunStarted, SourceEvent, VolumeMissing, VolumeReady, VolumeSource

if TYPE_CHECKING:
    from rtrecon.contract.keys import CurveKeys

__all__ = ["VolumeStore", "configure", "session_name"]

logger = logging.getLogger("scanner_bridge.bridge")


def session_name(config: SessionConfig) -> str:
    """The link's session name: ``sub-<subject>_ses-<session>``."""
    return session_id(config.session.subject, config.session.session)


# -- the listener's store ------------------------------------------------------------------------


class VolumeStore:
    """Received volumes on disk, one NIfTI per volume, written (fsynced, renamed) before the ack.

    Layout under ``root``: ``run-NN/vol-IIIII.nii`` per volume, ``run-NN/vol-IIIII.missing.json``
    per missing volume, and at the run's end ``run-NN/run_end.json`` plus ``run-NN_bold.nii.gz``
    (the run as 4D, missing volumes as zeros) and ``run-NN_bold.json`` (RepetitionTime,
    SliceTiming, MissingVolumes). :meth:`persisted` reads the folder back for a restart.
    """

    def __init__(self, root: str | os.PathLike[str], *, max_index_jump: int = 100) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_index_jump = max_index_jump
        self._grids: dict[int, tuple[tuple[int, ...], np.dtype]] = {}

    def _grid(self, run: int) -> tuple[tuple[int, ...], np.dtype] | None:
        """(shape, dtype) of the run's stored volumes, from the first one stored."""
        if run not in self._grids:
            first = next(iter(sorted((self.root / f"run-{run:02d}").glob("vol-*[0-9].nii"))), None)
            if first is None:
                return None
            header = nib.load(first).header
            self._grids[run] = (tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype())
        return self._grids[run]

    def problem(self, message: Message) -> str | None:
        """Why ``message`` cannot join what is stored (None: it can); the listener refuses it then."""
        if isinstance(message, VolumeMessage):
            grid = self._grid(message.run)
            voxels = np.asarray(message.voxels)
            if grid is not None and (voxels.shape, voxels.dtype.newbyteorder("=")) != (grid[0], grid[1].newbyteorder("=")):
                return (f"volume {message.index} is {voxels.shape} {voxels.dtype}, "
                        f"the run's volumes are {grid[0]} {grid[1]} (a new run needs a new run number)")
            timing = self.root / f"run-{message.run:02d}" / "timing.json"
            if timing.is_file():
                run_tr = float(json.loads(timing.read_text())["RepetitionTime"])
                if not math.isclose(message.tr, run_tr, rel_tol=1e-6):
                    return f"volume {message.index} has TR {message.tr:g} s, the run's is {run_tr:g} s"
        elif isinstance(message, RunEndMessage):
            held = self.persisted().get(message.run, -1)
            if message.n_volumes > held + 1 + self.max_index_jump:
                return (f"run end claims {message.n_volumes} volumes, {held + 1} arrived "
                        f"(more than {self.max_index_jump} missing at the end)")
        return None

    def _run_dir(self, run: int) -> Path:
        folder = self.root / f"run-{run:02d}"
        folder.mkdir(exist_ok=True)
        return folder

    def persisted(self) -> dict[int, int]:
        """run -> last key held (a volume's index; a finished run's ``n_volumes``)."""
        held: dict[int, int] = {}
        for folder in self.root.glob("run-*"):
            if not folder.is_dir():
                continue
            run = int(folder.name.split("-")[1])
            keys = [int(p.name[4:9]) for p in folder.glob("vol-*") if p.name[4:9].isdigit()]
            end = folder / "run_end.json"
            if end.is_file():
                keys.append(json.loads(end.read_text())["n_volumes"])
            if keys:
                held[run] = max(keys)
        return held

    def write(self, message: Message) -> Path:
        """Persist one item of the volume link; returns the file written."""
        if isinstance(message, VolumeMessage):
            folder = self._run_dir(message.run)
            img = nib.Nifti1Image(np.asarray(message.voxels), np.asarray(message.affine, dtype=np.float64))
            img.header.set_xyzt_units("mm", "sec")
            path = folder / f"vol-{message.index:05d}.nii"
            atomic_write(path, img.to_bytes())
            timing = folder / "timing.json"
            if not timing.exists():
                atomic_write(timing, json.dumps({"RepetitionTime": message.tr, "SliceTiming": message.slice_times}).encode())
            return path
        if isinstance(message, VolumeMissingMessage):
            path = self._run_dir(message.run) / f"vol-{message.index:05d}.missing.json"
            atomic_write(path, json.dumps({"reason": message.reason}).encode())
            return path
        if isinstance(message, RunEndMessage):
            path = self._write_run(message.run, message.n_volumes)
            atomic_write(self._run_dir(message.run) / "run_end.json", json.dumps({"n_volumes": message.n_volumes}).encode())
            return path
        raise TypeError(f"a {message.KIND} message is not stored by the volume store")

    def _write_run(self, run: int, n_volumes: int) -> Path:
        folder = self._run_dir(run)
        volumes = {i: folder / f"vol-{i:05d}.nii" for i in range(n_volumes)}
        present = {i: nib.load(p) for i, p in volumes.items() if p.is_file()}
        out = self.root / f"run-{run:02d}_bold.nii.gz"
        if not present:
            return out
        first = next(iter(present.values()))
        data = np.zeros(first.shape + (n_volumes,), dtype=first.get_data_dtype())
        for i, img in present.items():
            data[..., i] = np.asanyarray(img.dataobj)
        timing_file = folder / "timing.json"
        timing = json.loads(timing_file.read_text())  # written with the first volume, before its ack
        img4d = nib.Nifti1Image(data, first.affine)
        img4d.header.set_xyzt_units("mm", "sec")
        img4d.header.set_zooms(first.header.get_zooms()[:3] + (float(timing["RepetitionTime"]),))
        # Level 1: the run file is written while the session goes on; size matters less than time.
        atomic_write(out, gzip.compress(img4d.to_bytes(), compresslevel=1))
        sidecar = {**timing, "MissingVolumes": sorted(set(range(n_volumes)) - set(present))}
        atomic_write(self.root / f"run-{run:02d}_bold.json", json.dumps(sidecar, indent=1).encode())
        return out


# -- running a source into the link ---------------------------------------------------------------


def _load(ns: argparse.Namespace) -> SessionConfig:
    return load_config(ns.config) if ns.config else SessionConfig()


def _curve(keys_dir: Path | None, role: str) -> CurveKeys | None:
    if keys_dir is None:
        return None
    from rtrecon.contract.keys import load_curve

    return load_curve(keys_dir, role)


def _on_signals(stop: Callable[[], None]) -> None:
    """SIGINT/SIGTERM call ``stop`` once; a second signal acts as usual."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        logger.info("%s: finishing (again to abort)", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _print_event(event: SourceEvent, message: Message | None) -> None:
    if isinstance(event, VolumeReady):
        v = event.volume
        shape = "×".join(str(n) for n in v.voxels.shape)
        state = "sent" if message is not None else "already sent before a restart"
        print(f"run {event.run} volume {v.index}: {shape} {v.voxels.dtype} {state}", flush=True)
    elif isinstance(event, VolumeMissing):
        print(f"run {event.run} volume {event.index}: MISSING ({event.reason})", flush=True)
    elif isinstance(event, RunStarted):
        print(f"run {event.run} started: {event.description}", flush=True)
    elif isinstance(event, FileRejected):
        print(f"rejected {event.origin}: {event.reason}", flush=True)


def _send(ns: argparse.Namespace, config: SessionConfig, make_source: Callable[[SessionConfig], VolumeSource]) -> int:
    from rtrecon.contract.transport import ReliableSender
    from scanner_bridge.sender import BridgeSender

    from rtrecon.session import startup_problems

    endpoint = ns.to or config.network.volumes
    session = ns.session or session_name(config)
    spool = ns.spool or config.bridge.spool_dir
    keys = ns.keys or config.security.keys_dir
    # What this command will use (the command line wins), checked before any source is opened;
    # the export folder is the watcher's to check.
    used = config.model_copy(update={
        "bridge": config.bridge.model_copy(update={"spool_dir": spool, "watch_dir": None}),
        "security": config.security.model_copy(update={"keys_dir": keys}),
    })
    if problems := startup_problems(used, "bridge"):
        for problem in problems:
            print(f"rtrecon bridge: {problem}", file=sys.stderr)
        return 2
    curve = _curve(keys, "bridge")
    source = make_source(config)
    _on_signals(source.close)
    with ReliableSender(endpoint, session, spool, curve=curve, server_role=ns.server_role,
                        heartbeat_s=config.network.heartbeat_s, max_in_flight=config.bridge.max_lead) as link:
        print(f"bridge: session {session} → {endpoint} (spool {spool}{', CURVE' if curve else ''})", flush=True)
        report = BridgeSender(link, drain_timeout_s=ns.drain_timeout, on_event=_print_event,
                              ack_warn_trs=config.bridge.ack_warn_trs).run(source)
    print(
        f"bridge: {report.volumes} volume(s) sent, {report.already_spooled} already sent before, "
        f"{report.missing} missing, {report.rejected} file(s) rejected, {report.run_ends} run(s) ended, "
        f"at most {report.max_lead} ahead of the receiver (bound {config.bridge.max_lead}); "
        + ("all acknowledged" if report.all_acknowledged else "NOT all acknowledged (kept in the spool)"),
        flush=True,
    )
    if report.already_spooled:
        print(f"bridge: items already in the spool of session {session} were not sent again "
              "(a new session needs a new --session or --spool)", flush=True)
    return 0 if report.all_acknowledged else 1


def _watch(ns: argparse.Namespace, config: SessionConfig) -> int:
    from scanner_bridge.watcher import FolderWatcher

    b = config.bridge
    directory = ns.dir or b.watch_dir
    if directory is None:
        print("rtrecon bridge watch: no folder given (DIR or [bridge] watch_dir)", file=sys.stderr)
        return 2

    def make(config: SessionConfig) -> VolumeSource:
        return FolderWatcher(
            directory,
            mode=ns.mode or b.watch_mode,
            poll_interval_s=ns.poll_interval or b.poll_interval_s,
            missing_timeout_s=ns.missing_timeout or b.missing_timeout_s,
            skip_existing=ns.skip_existing or b.skip_existing,
            idle_exit_s=ns.exit_after_idle,
        )

    return _send(ns, config, make)


def _receive(ns: argparse.Namespace, config: SessionConfig) -> int:
    from scanner_bridge.dicom_node import DicomNode

    b = config.bridge
    callers = ns.allowed_caller or list(b.dicom_allowed_callers)
    if not callers:
        print("rtrecon bridge receive: no calling AE title is allowed to store (give the scanner's with "
              "--allowed-caller AE or [bridge] dicom_allowed_callers)", file=sys.stderr)
        return 2
    ae_title = ns.ae_title or b.dicom_ae_title
    host = ns.host or b.dicom_host
    port = b.dicom_port if ns.port is None else ns.port

    def make(config: SessionConfig) -> VolumeSource:
        node = DicomNode(
            ae_title, host, port,
            allowed_callers=callers,
            missing_timeout_s=ns.missing_timeout or config.bridge.missing_timeout_s,
            idle_exit_s=ns.exit_after_idle,
            store_dir=ns.store or (ns.spool or config.bridge.spool_dir) / "dicom_node" / (ns.session or session_name(config)),
        )
        print(f"DICOM node {ae_title} listening on {node.host}:{node.port} for {', '.join(callers)}", flush=True)
        return node

    return _send(ns, config, make)


def _replay(ns: argparse.Namespace, config: SessionConfig) -> int:
    from scanner_bridge.replay import NiftiReplaySource

    return _send(ns, config, lambda config: NiftiReplaySource(ns.file, speed=ns.speed, fast=ns.fast, tr=ns.tr, run=ns.run))


def _replay_nsd(ns: argparse.Namespace, config: SessionConfig) -> int:
    from scanner_bridge.nsd_replay import NsdReplaySource

    return _send(ns, config, lambda config: NsdReplaySource(
        ns.root, ns.subject, ns.nsd_session, ns.run, space=ns.space, speed=ns.speed, fast=ns.fast))


def _listen(ns: argparse.Namespace, config: SessionConfig) -> int:
    from rtrecon.contract.transport import ReliableReceiver

    endpoint = ns.addr or config.network.volumes
    session = ns.session or session_name(config)
    curve = _curve(ns.keys or config.security.keys_dir, ns.role)
    store = VolumeStore(ns.out, max_index_jump=config.network.max_index_jump) if ns.out else None
    persisted = store.persisted() if store else {}
    stop = threading.Event()
    _on_signals(stop.set)
    counts = {"volumes": 0, "missing": 0, "run_ends": 0, "refused": 0}
    latencies: list[float] = []
    with ReliableReceiver(endpoint, session, persisted, curve=curve, heartbeat_s=config.network.heartbeat_s,
                          name="listener", max_key_jump=config.network.max_index_jump,
                          max_message_bytes=config.network.max_message_bytes) as rx:
        if ns.json:
            print(json.dumps({"kind": "listening", "endpoint": endpoint, "session": session, "persisted": persisted}), flush=True)
        else:
            print(f"listening on {endpoint} for session {session}" + (f", resuming after {persisted}" if persisted else ""), flush=True)
        last = time.monotonic()
        while not stop.is_set():
            message = rx.recv(timeout_s=0.1)
            if message is None:
                if ns.exit_after_idle is not None and time.monotonic() - last >= ns.exit_after_idle:
                    break
                continue
            received = time.time()
            last = time.monotonic()
            problem = store.problem(message) if store is not None else None
            if problem is not None:
                # Refused and acknowledged with the reason: a bad item must not stop the listener
                # nor come back after its restart.
                rx.refuse(message, problem)
                counts["refused"] += 1
                print(json.dumps({"kind": "refused", "run": message.run, "reason": problem}) if ns.json
                      else f"run {message.run}: REFUSED ({problem})", flush=True)
                continue
            if store is not None:
                store.write(message)
            rx.ack(message)
            record = _record(message, received)
            if isinstance(message, VolumeMessage):
                counts["volumes"] += 1
                if "latency_ms" in record:
                    latencies.append(record["latency_ms"])
            elif isinstance(message, VolumeMissingMessage):
                counts["missing"] += 1
            elif isinstance(message, RunEndMessage):
                counts["run_ends"] += 1
            print(json.dumps(record) if ns.json else _describe(record), flush=True)
            if ns.runs is not None and counts["run_ends"] >= ns.runs:
                break
    summary = {"summary": True, **counts}
    if latencies:
        summary["median_latency_ms"] = float(np.median(latencies))
    print(json.dumps(summary) if ns.json else
          f"received {counts['volumes']} volume(s), {counts['missing']} missing, {counts['run_ends']} run(s) ended"
          + (f", {counts['refused']} refused" if counts["refused"] else ""), flush=True)
    return 0


def _record(message: Message, received: float) -> dict:
    if isinstance(message, VolumeMessage):
        record = {
            "kind": "volume", "run": message.run, "index": message.index,
            "shape": list(message.voxels.shape), "dtype": str(message.voxels.dtype), "tr": message.tr,
            "received": received, "stamps": message.stamps,
        }
        if "written" in message.stamps:
            record["latency_ms"] = (received - message.stamps["written"]) * 1000
        if "sent" in message.stamps:
            record["transit_ms"] = (received - message.stamps["sent"]) * 1000
        return record
    if isinstance(message, VolumeMissingMessage):
        return {"kind": "missing", "run": message.run, "index": message.index, "reason": message.reason, "received": received}
    if isinstance(message, RunEndMessage):
        return {"kind": "run_end", "run": message.run, "n_volumes": message.n_volumes, "received": received}
    return {"kind": message.KIND, "received": received}


def _describe(record: dict) -> str:
    if record["kind"] == "volume":
        shape = "×".join(str(n) for n in record["shape"])
        latency = f", {record['latency_ms']:.1f} ms after written" if "latency_ms" in record else ""
        return f"run {record['run']} volume {record['index']}: {shape} {record['dtype']} TR {record['tr']:g} s{latency}"
    if record["kind"] == "missing":
        return f"run {record['run']} volume {record['index']}: MISSING ({record['reason']})"
    if record["kind"] == "run_end":
        return f"run {record['run']} ended: {record['n_volumes']} volume(s)"
    return record["kind"]


# -- arguments ------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, session_flag: str = "--session") -> None:
    parser.add_argument("--config", type=Path, help="session config (TOML) giving the defaults")
    parser.add_argument(session_flag, dest="session",
                        help="session name on the link (default: sub-<subject>_ses-<session> of the config)")
    parser.add_argument("--keys", type=Path, help="CURVE keys folder made by `rtrecon keys init` (encrypt and authenticate)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _sender(parser: argparse.ArgumentParser, session_flag: str = "--session") -> None:
    _common(parser, session_flag)
    parser.add_argument("--to", help="receiver endpoint, e.g. tcp://engine:5555 (default: [network] volumes)")
    parser.add_argument("--spool", type=Path, help="spool folder (default: [bridge] spool_dir)")
    parser.add_argument("--server-role", default="engine", help="CURVE role of the receiver (default: %(default)s)")
    parser.add_argument("--missing-timeout", type=float, help="seconds before a volume that never came is reported missing")
    parser.add_argument("--exit-after-idle", type=float, metavar="S", help="stop after S seconds without input")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="once the source ends, give up after this many seconds without an acknowledgement (default 30)")


def _runner(func: Callable[[argparse.Namespace, SessionConfig], int]) -> Callable[[argparse.Namespace], int]:
    def run(ns: argparse.Namespace) -> int:
        from rtrecon.contract.keys import KeysError
        from scanner_bridge.replay import ReplayError

        configure_logging("bridge", ns.log_level)
        try:
            return func(ns, _load(ns))
        except (ConfigError, KeysError, ReplayError, NotADirectoryError) as exc:
            print(f"rtrecon bridge: {exc}", file=sys.stderr)
            return 2

    return run


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rtrecon bridge``."""
    sub = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")

    watch = sub.add_parser("watch", help="follow a scanner export folder and send its volumes")
    watch.add_argument("dir", nargs="?", type=Path, help="export folder (default: [bridge] watch_dir)")
    _sender(watch)
    watch.add_argument("--mode", choices=["auto", "inotify", "poll"], help="inotify, poll, or auto (poll on network shares)")
    watch.add_argument("--poll-interval", type=float, help="seconds between rescans in poll mode")
    watch.add_argument("--skip-existing", action="store_true", default=False, help="ignore files already in the folder")
    watch.set_defaults(func=_runner(_watch))

    receive = sub.add_parser("receive", help="run a DICOM storage node (C-STORE SCP) and send its volumes")
    receive.add_argument("--ae-title", help="this node's AE title (default: [bridge] dicom_ae_title, RTRECON)")
    receive.add_argument("--host", help="address to listen on (default: [bridge] dicom_host, 127.0.0.1)")
    receive.add_argument("--port", type=int, help="port to listen on (default: [bridge] dicom_port, 11112)")
    receive.add_argument("--store", type=Path, help="folder where each received object is persisted before the scanner is told it "
                         "is stored, and re-read after a restart (default: SPOOL/dicom_node/SESSION; holds full DICOM headers, "
                         "scanner side only)")
    receive.add_argument("--allowed-caller", action="append", metavar="AE",
                         help="admit this calling AE title (repeatable; default: [bridge] dicom_allowed_callers; "
                         "one is needed, others are refused)")
    _sender(receive)
    receive.set_defaults(func=_runner(_receive))

    replay = sub.add_parser("replay", help="stream a 4D NIfTI at its TR")
    replay.add_argument("file", type=Path, help="4D .nii or .nii.gz (TR from its JSON sidecar or header)")
    _sender(replay)
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="speed factor (default: %(default)s)")
    pace.add_argument("--fast", action="store_true", help="as fast as possible")
    replay.add_argument("--tr", type=float, help="repetition time in seconds (overrides sidecar and header)")
    replay.add_argument("--run", type=int, default=1, help="run number on the link (default: %(default)s)")
    replay.set_defaults(func=_runner(_replay))

    replay_nsd = sub.add_parser("replay-nsd", help="stream one run of an NSD root (real or synthetic) at its TR")
    replay_nsd.add_argument("--root", type=Path, required=True, help="NSD root folder (holds nsddata/ and nsddata_timeseries/)")
    replay_nsd.add_argument("--subject", type=int, required=True, help="NSD subject number (1-8)")
    replay_nsd.add_argument("--session", dest="nsd_session", type=int, required=True,
                            help="NSD scan session number (1-based)")
    replay_nsd.add_argument("--run", type=int, required=True, help="run number within the session (1-based)")
    replay_nsd.add_argument("--space", choices=("func1pt8mm", "func1mm"), default="func1pt8mm",
                            help="preprocessed space (default: %(default)s)")
    _sender(replay_nsd, session_flag="--link-session")
    pace_nsd = replay_nsd.add_mutually_exclusive_group()
    pace_nsd.add_argument("--speed", type=float, default=1.0, help="speed factor (default: %(default)s)")
    pace_nsd.add_argument("--fast", action="store_true", help="as fast as possible")
    replay_nsd.set_defaults(func=_runner(_replay_nsd))

    from scanner_bridge.commands import demo

    demo.configure(sub.add_parser("demo", help="a real DICOM series through a simulated scanner → bridge → listener, "
                                               "with per-volume latency (no downloads)"))

    listen = sub.add_parser("listen", help="receive volumes and report them (test the link)")
    listen.add_argument("addr", nargs="?", help="endpoint to bind, e.g. tcp://*:5555 (default: [network] volumes)")
    _common(listen)
    listen.add_argument("--role", default="engine", help="CURVE role this listener plays (default: %(default)s)")
    listen.add_argument("--out", type=Path, help="persist received volumes here as NIfTI (resumes on restart)")
    listen.add_argument("--json", action="store_true", help="one JSON object per line")
    listen.add_argument("--runs", type=int, help="exit after this many runs have ended")
    listen.add_argument("--exit-after-idle", type=float, metavar="S", help="exit after S seconds without input")
    listen.set_defaults(func=_runner(_listen))
