"""``rtrecon stimulus``: check a session's trial lists, or run a task on the participant's screen.

::

    rtrecon stimulus check [--config session.toml] [--run N] [--trials run.tsv] [--task imagery]
    rtrecon stimulus run   [--config session.toml] [--run N] [--trials run.tsv] [--task imagery]
                           [--virtual [--tr 1.6]] [--offline] [--overwrite]

Settings come from the session config's ``[stimulus]`` table (built-in defaults without
``--config``); run N's trial list is ``--trials``, else ``stimulus.trial_lists[N-1]``; the task
(perception or imagery) follows the session's task label unless ``--task`` names it.

``check`` loads and plans each run (every run of ``stimulus.trial_lists`` unless ``--run`` or
``--trials`` picks one) without opening a window, printing every problem with its file and line
(exit status 1) or each run's length. ``run`` does the same checks, then runs the task:
triggers and buttons from the keyboard (and the serial port when ``[stimulus.trigger] source =
"serial"``), events to and results from the engine at the session config's endpoints
(``--offline``: no engine); ``--virtual`` adds a virtual participant that plays the scanner
(a trigger every ``--tr`` seconds) and answers from the design. Exit status: 0 done, 1 bad input
or no trigger, 2 ended with the quit key.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rtrecon.config import ConfigError, SessionConfig, load_config
from rtrecon.keys import KeysError, load_curve

from .trials import TrialListError

__all__ = ["configure"]

_BAD_INPUT = (ConfigError, TrialListError, FileExistsError, ValueError)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="session config (TOML); default: built-in defaults")
    parser.add_argument("--run", type=int, help="run number (BIDS run-NN)")
    parser.add_argument("--trials", type=Path, help="the run's trial list (default: the run's entry in stimulus.trial_lists)")
    parser.add_argument("--task", choices=("perception", "imagery"), help="task routine (default: from the session's task label)")
    parser.add_argument("--overwrite", action="store_true", help="record over an existing run of the same number")


def _config(args: argparse.Namespace) -> SessionConfig:
    return load_config(args.config) if args.config else SessionConfig()


def _check(args: argparse.Namespace) -> int:
    from .app import prepare_run

    try:
        config = _config(args)
        if args.run is None and args.trials is None:
            runs = list(range(1, len(config.stimulus.trial_lists) + 1))
            if not runs:
                raise ValueError("nothing to check: give --trials, or list stimulus.trial_lists in the session config")
        else:
            runs = [args.run or 1]
    except _BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = 0
    for run in runs:
        try:
            setup = prepare_run(config, run, trials_file=args.trials, task=args.task, overwrite=args.overwrite)
        except _BAD_INPUT as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        n_events = len(setup.timeline.events())
        print(f"run {run}: {setup.trials_file}: {len(setup.trials)} {setup.task} trials, {n_events} events, {setup.timeline.end:.1f} s after the first trigger")
        print(f"  events will be written to {setup.paths.events}")
    return status


def _run(args: argparse.Namespace) -> int:
    from .app import prepare_run

    try:
        config = _config(args)
        setup = prepare_run(config, args.run or 1, trials_file=args.trials, task=args.task, overwrite=args.overwrite)
    except _BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print("error: no display (DISPLAY is unset); on a headless machine run under Xvfb at 24-bit depth: xvfb-run -s '-screen 0 1280x1024x24' rtrecon stimulus run ...", file=sys.stderr)
        return 1
    from .app import StimulusProgram
    from .link import EngineLink, Link, OfflineLink
    from .participant import VirtualParticipant
    from .trigger import KeyInput, MergedKeys, PsychopyKeys, SerialKeys, psychopy_time

    trig = config.stimulus.trigger
    keys: KeyInput = PsychopyKeys()
    serial = None
    link: Link = OfflineLink()
    try:
        if trig.source == "serial":
            serial = SerialKeys(trig.serial_port, trig.serial_baudrate)
            keys = MergedKeys([keys, serial])
        participant = VirtualParticipant(tr=args.tr or trig.tr or 1.0, trigger_key=trig.keys[0]) if args.virtual else None
        if not args.offline:
            curve = load_curve(config.security.keys_dir, "stimulus") if config.security.keys_dir else None
            link_dir = setup.paths.link_dir
            link = EngineLink(
                config.network.events, config.network.results, setup.session_label,
                link_dir / "event_spool", link_dir / "results.json",
                clock=psychopy_time, curve=curve, heartbeat_s=config.network.heartbeat_s,
            )
            link.check_run(setup.run)
    except (OSError, ValueError, KeysError) as exc:
        link.close()
        if serial is not None:
            serial.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        record = StimulusProgram(setup, link=link, keys=keys, participant=participant).run()
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        link.close()
        if serial is not None:
            serial.close()
    shown = sum(r.shown is not None for r in record.results.values())
    print(f"{'aborted' if record.aborted else 'finished'}: {len(record.events)} events in {setup.paths.events}")
    print(f"{len(record.flips)} frames, results received {len(record.results)}, shown {shown}; frame timing in {setup.paths.source('frames.json')}")
    return 2 if record.aborted else 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` and ``run`` subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    check = sub.add_parser("check", help="check trial lists and plan the runs, without a window")
    _common(check)
    check.set_defaults(func=_check)
    run = sub.add_parser("run", help="run a task on the participant's screen")
    _common(run)
    run.add_argument("--virtual", action="store_true", help="a virtual participant presses the trigger and answers")
    run.add_argument("--tr", type=float, help="the virtual scanner's TR in seconds (default: stimulus.trigger.tr, else 1)")
    run.add_argument("--offline", action="store_true", help="no engine: record the run without sending events")
    run.set_defaults(func=_run)
