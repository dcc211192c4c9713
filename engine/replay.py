"""``rtrecon engine replay``: a recorded run through the live engine, offline, as fast as it goes.

The run comes as a DICOM folder (assembled by the bridge's own
:class:`~scanner_bridge.assembly.VolumeAssembler`, as ``rtrecon dicom2nii`` does) or a 4-D NIfTI
(:class:`~scanner_bridge.replay.NiftiReplaySource`, TR from its sidecar or header), and its task
events as a BIDS ``events.tsv`` (``onset`` and ``duration`` in seconds from the start of the first
volume; ``trial_type``, ``trial``, ``stimulus`` or ``stim_file``, and ``pairmate`` when present). Each volume
becomes the :class:`~rtrecon.contract.wire.VolumeMessage` the bridge would send
(:func:`scanner_bridge.sender.volume_message`) and each event the
:class:`~rtrecon.contract.wire.EventMessage` the stimulus PC would send when its onset has passed (before
the first volume starting at or after it), and they go through :meth:`engine.server.Engine.handle`
in that order, then the run's end: the live code path, with the session config's ``[engine]``
settings (defaults without ``--config``) and its ``[decoder]`` when one is configured. The session
store under ``--out`` then holds exactly what a live session that received the same messages
holds: the BIDS run and events, the confounds (with each volume's transform), the releases and
the final betas. A store that already has other runs of the session is resumed first, as a
restarted engine would, so a run can be added to a session.

Bad input (a missing or unreadable file, an events file without onsets, a folder with no usable
volume or with several runs, a run the output already holds) stops the replay with one line that
names the file and the reason.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rtrecon.contract.config import ConfigError, SessionConfig, load_config
from rtrecon.contract.layout import session_id
from rtrecon.contract.wire import EventMessage, Message, RunEndMessage, VolumeMessage, VolumeMissingMessage

if TYPE_CHECKING:  # the engine (nilearn, scipy) is imported when a replay runs, not for --help
    from engine.server import Engine

__all__ = ["ReplayError", "read_events", "volume_messages", "replay_messages", "replay", "configure", "main"]

log = logging.getLogger("engine.replay")


class ReplayError(ValueError):
    """The run cannot be replayed; the message names the file and the reason."""


def read_events(path: str | Path, session: str, run: int) -> list[EventMessage]:
    """The trial events of a BIDS ``events.tsv``, in onset order, as the stimulus PC sends them."""
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False, dtype=str)
    except FileNotFoundError as exc:
        raise ReplayError(f"{path}: no such events file") from exc
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ReplayError(f"{path}: cannot be read as a tab-separated events file: {exc}") from exc
    missing = [c for c in ("onset", "duration") if c not in table.columns]
    if missing:
        raise ReplayError(f"{path}: no {' or '.join(missing)} column (it has {', '.join(table.columns) or 'none'})")
    stimulus_column = next((c for c in ("stimulus", "stim_file") if c in table.columns), None)
    events, trials = [], set()
    for row_number, row in enumerate(table.to_dict("records")):
        line = row_number + 2  # the header is line 1

        def number(column: str, default: float | None = None) -> float:
            value = row.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                if default is not None:
                    return default
                raise ReplayError(f"{path}, line {line}: no {column}")
            try:
                parsed = float(value)
            except ValueError:
                raise ReplayError(f"{path}, line {line}: {column} {value!r} is not a number") from None
            if not math.isfinite(parsed):
                raise ReplayError(f"{path}, line {line}: {column} {value!r} is not a finite number")
            return parsed

        onset, duration = number("onset"), number("duration")
        if duration < 0:
            raise ReplayError(f"{path}, line {line}: negative duration {duration}")
        trial = row_number
        if "trial" in table.columns:
            value = number("trial")
            if value != int(value):
                raise ReplayError(f"{path}, line {line}: trial {row['trial']!r} is not a whole number")
            trial = int(value)
        if trial in trials:
            raise ReplayError(f"{path}, line {line}: trial {trial} appears twice")
        trials.add(trial)

        def text(column: str | None) -> str:
            value = row.get(column) if column else None
            return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

        events.append(EventMessage(
            session=session, run=run, trial=trial, onset=onset, duration=duration,
            trial_type=text("trial_type") or "event", stimulus=text(stimulus_column),
            pairmate=text("pairmate"),
        ))
    if not events:
        raise ReplayError(f"{path}: no events")
    return sorted(events, key=lambda e: e.onset)


def _dicom_events(folder: Path) -> Iterator[object]:
    """The bridge's assembly events for every file under ``folder`` (as ``rtrecon dicom2nii`` reads it)."""
    from scanner_bridge.assembly import FileRejected, VolumeAssembler
    from scanner_bridge.dicom_file import IncompleteDicomError

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise ReplayError(f"{folder}: the folder holds no files")
    # Offline, nothing more will arrive: only finish() gives volumes up, never a timeout.
    assembler = VolumeAssembler(missing_timeout_s=math.inf)
    for path in files:
        try:
            yield from assembler.add_file(path)
        except IncompleteDicomError as exc:
            yield FileRejected(str(path), f"incomplete: {exc.reason}")
    yield from assembler.finish()


def volume_messages(source: str | Path, session: str, run: int) -> Iterator[VolumeMessage | VolumeMissingMessage]:
    """The messages the bridge would send for the run in ``source`` (a DICOM folder or a 4-D NIfTI)."""
    from scanner_bridge.assembly import FileRejected, RunStarted, VolumeMissing, VolumeReady
    from scanner_bridge.replay import NiftiReplaySource
    from scanner_bridge.replay import ReplayError as NiftiError
    from scanner_bridge.sender import volume_message

    source = Path(source)
    if source.is_dir():
        events: Iterable[object] = _dicom_events(source)
    elif source.is_file():
        try:
            events = NiftiReplaySource(source, fast=True)
        except NiftiError as exc:
            raise ReplayError(str(exc)) from exc
    else:
        raise ReplayError(f"{source}: no such DICOM folder or NIfTI file")
    series, rejected, sent = None, 0, 0
    for event in events:
        if isinstance(event, RunStarted):
            if series is not None:
                raise ReplayError(f"{source}: holds more than one run ({series!r} and {event.description!r}); "
                                  "give the folder of one run")
            series = event.description
        elif isinstance(event, VolumeReady):
            sent += 1
            yield volume_message(session, run, event.volume)
        elif isinstance(event, VolumeMissing):
            log.warning("%s: volume %d missing (%s)", source, event.index, event.reason)
            yield VolumeMissingMessage(session=session, run=run, index=event.index, reason=event.reason)
        elif isinstance(event, FileRejected):
            rejected += 1
            log.warning("skipped %s: %s", event.origin, event.reason)
    if not sent:
        raise ReplayError(f"{source}: no fMRI volume could be assembled ({rejected} file(s) skipped)")


def replay_messages(
    volumes: Iterable[VolumeMessage | VolumeMissingMessage], events: list[EventMessage],
) -> Iterator[Message]:
    """Volumes and events interleaved as they reach a live engine: each event when its onset has
    passed, before the first volume that starts at or after it; the run's end last."""
    pending = sorted(events, key=lambda e: e.onset)
    tr, last, run, session = None, -1, None, None
    for message in volumes:
        if isinstance(message, VolumeMessage):
            tr = message.tr
        run, session = message.run, message.session
        if tr is not None:
            while pending and pending[0].onset <= message.index * tr:
                yield pending.pop(0)
        yield message
        last = max(last, message.index)
    yield from pending
    if run is not None:
        yield RunEndMessage(session=session, run=run, n_volumes=last + 1)


def replay(
    config: SessionConfig, source: str | Path, events_path: str | Path, out: str | Path, *, run: int = 1,
    on_message: Callable[[Message], None] | None = None,
) -> Engine:
    """Replay the run at ``source`` with the events at ``events_path`` into the session store under
    ``out``, with ``config``'s engine (and decoder) settings; returns the engine once it is done."""
    from engine.server import Engine
    from engine.store import SessionStore

    s = config.session
    session = session_id(s.subject, s.session)
    events = read_events(events_path, session, run)
    store = SessionStore(out, s.subject, s.session, s.task)
    if store.n_volumes(run) or store.events(run):
        raise ReplayError(f"{store.func}: already holds run {run}; give another --out or --run")
    decoder = None
    if config.decoder.decodes:
        from engine.decoding import BackgroundDecoder, DecodingStage

        decoder = BackgroundDecoder(DecodingStage.from_config(config, lambda message: None, store))
    engine = Engine(config.engine, store, decoder=decoder)
    engine.recover()
    try:
        for message in replay_messages(volume_messages(source, session, run), events):
            engine.handle(message)
            engine.poll()
            if on_message is not None:
                on_message(message)
        while decoder is not None and decoder.pending:  # offline: every release is decoded
            engine.poll(timeout_s=0.5)
    finally:
        if decoder is not None:
            decoder.close(timeout_s=1.0)
        engine.join_background()
    if not store.is_ended(run):
        raise ReplayError(f"{source}: the engine did not end run {run} (see the errors above)")
    return engine


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.logging import RichHandler
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    logging.basicConfig(level=args.log_level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    try:
        config = load_config(args.config) if args.config is not None else SessionConfig()
        read_events(args.events, "", args.run)  # a bad events file is reported before anything is written
        if not args.source.exists():
            raise ReplayError(f"{args.source}: no such DICOM folder or NIfTI file")
        total = None
        if args.source.is_file():
            import nibabel as nib

            try:
                shape = nib.load(args.source).shape
                total = shape[3] if len(shape) == 4 else None
            except Exception:  # the replay itself reports what is wrong with the file
                total = None
        with Progress(TextColumn("[bold]replay[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False) as progress:
            task = progress.add_task(f"run {args.run}", total=total)

            def advance(message: Message) -> None:
                if isinstance(message, (VolumeMessage, VolumeMissingMessage)):
                    progress.advance(task)

            engine = replay(config, args.source, args.events, args.out, run=args.run, on_message=advance)
    except (ReplayError, ConfigError) as exc:
        print(f"rtrecon engine replay: error: {exc}", file=sys.stderr)
        return 2
    from engine.server import TRIAL_COLUMNS

    store = engine.store
    rows = store.table(args.run, "trials", TRIAL_COLUMNS).rows()
    print(f"run {args.run}: {store.n_volumes(args.run)} volumes, {len({r['trial'] for r in rows})} trials, "
          f"{len(rows)} releases -> {store.root}")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a recorded run through the live engine (the Engine class, the same store and outputs), offline and as "
        "fast as it goes: a DICOM folder (assembled as the bridge does) or a 4-D NIfTI, with its BIDS events.tsv "
        "and the session config's engine settings."
    )
    parser.epilog = (
        "Writes the BIDS session a live engine would (raw run, events, confounds with each volume's\n"
        "transform xfm_00..xfm_23, the trials table, each release's beta, the final betas) under --out.\n"
        "example:\n  rtrecon engine replay dicom/run1 --events run1_events.tsv --config session.toml --out replayed"
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("source", type=Path, help="the run: a DICOM folder (one series) or a 4-D NIfTI (.nii, .nii.gz)")
    parser.add_argument("--events", type=Path, required=True,
                        help="BIDS events.tsv: onset and duration (s from the start of the first volume); "
                        "trial_type, trial and stimulus (or stim_file) if present")
    parser.add_argument("--out", type=Path, required=True, help="the session folder to write (BIDS, as a live session's output_dir)")
    parser.add_argument("--config", type=Path, default=None,
                        help="session config: its [session] names, [engine] settings and [decoder] (default: the defaults)")
    parser.add_argument("--run", type=int, default=1, help="the run number to store it as (default: 1)")
    parser.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=main)

