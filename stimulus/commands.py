"""``rtrecon stimulus``: check a session's trial lists, or run a task on the participant's screen.

::

    rtrecon stimulus check [--config session.toml] [--run N] [--trials run.tsv] [--task imagery]
    rtrecon stimulus run   [--config session.toml] [--run N] [--trials run.tsv] [--task imagery]
                           [--virtual [--tr 1.6] [--volumes N] [--speed 10] [--start-file FILE]]
                           [--offline] [--overwrite]
                           [--live-feedback] [--wait-results 30]

Settings come from the session config's ``[stimulus]`` table (built-in defaults without
``--config``); run N's trial list is ``--trials``, else ``stimulus.trial_lists[N-1]``; the task
(perception or imagery) follows the session's task label unless ``--task`` names it.

``check`` loads and plans each run (every run of ``stimulus.trial_lists`` unless ``--run`` or
``--trials`` picks one) without opening a window, printing every problem with its file and line
(exit status 1) or each run's length. ``run`` does the same checks, then runs the task:
triggers and buttons from the keyboard (and the device ``[stimulus.trigger] source`` names: a
serial port, parallel-port pins or a PsychoPy button box), events to and results from the engine at the session config's endpoints
(``--offline``: no engine); ``--virtual`` adds a virtual participant that plays the scanner
(``--volumes`` triggers, one every ``--tr`` seconds; with ``--start-file``, from when that
file appears) and
answers from the design. ``--speed S`` (virtual runs only) replays the run S times faster than
the scanner, every recorded and sent time staying in scanner seconds
(:class:`~stimulus.app.StimulusProgram`). ``--live-feedback`` shows each result as it arrives, in
the design's free stretches (``[stimulus.feedback] when = "slot"``: designs without feedback
periods, such as NSD's), never over a trial; ``--wait-results S`` keeps the end screen on until
every result still owed is shown, or none came for S seconds. ``check --json`` prints every
run's problems as one JSON line: ``rtrecon session check`` runs it, so the two agree.

A run that was killed (its journal holds a first trigger and no end) is resumed where the scanner
is now, not refused (see :mod:`stimulus.app`).

Before anything else ``run`` checks every path and key the config names
(:func:`rtrecon.session.startup_problems`, role ``stimulus``), printing one line per problem.
Unless ``--offline``, the operator's controls from ``rtrecon console`` (``[network] operator``:
pause feedback, end the run, mark trials bad) are followed and recorded
(:class:`~stimulus.operator.OperatorControls`). Exit status: 0 done, 1 bad input or no trigger,
2 ended with the quit key or by the operator, or the start-up check failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rtrecon.contract.config import ConfigError, SessionConfig, load_config
from rtrecon.contract.keys import KeysError, load_curve
from rtrecon.contract.logs import configure_logging

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


def _problems(exc: Exception) -> list[str]:
    if isinstance(exc, TrialListError):
        return [reason if line == 0 else f"line {line}: {reason}" for line, reason in exc.problems]
    return [str(exc)]


def _check(args: argparse.Namespace) -> int:
    from .app import prepare_run

    if args.json:  # for rtrecon session check: each run's problems, one JSON line
        return _check_json(args)
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
        n_feedback = sum(s.phase == "feedback" for s in setup.timeline.segments)
        print(f"run {run}: {setup.trials_file}: {len(setup.trials)} {setup.task} trials, {n_events} events "
              f"({n_feedback} feedback periods, {setup.feedback}), {setup.timeline.end:.1f} s after the first trigger")
        print(f"  events will be written to {setup.paths.events}")
    return status


def _check_json(args: argparse.Namespace) -> int:
    """``{"runs": [{"run", "trials_file", "problems"}]}`` for every run of the config's trial lists."""
    import json

    from .app import prepare_run

    try:
        config = _config(args)
    except _BAD_INPUT as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    runs = []
    for run in range(1, len(config.stimulus.trial_lists) + 1):
        try:
            prepare_run(config, run, task=args.task, overwrite=True)
            problems: list[str] = []
        except _BAD_INPUT as exc:
            problems = _problems(exc)
        runs.append({"run": run, "trials_file": str(config.stimulus.trial_lists[run - 1]), "problems": problems})
    print(json.dumps({"runs": runs}))
    return int(any(r["problems"] for r in runs))


def _run(args: argparse.Namespace) -> int:
    from .app import prepare_run

    try:
        if args.speed <= 0:
            raise ValueError(f"--speed {args.speed:g} must be positive")
        if args.speed != 1 and not args.virtual:
            raise ValueError(f"--speed {args.speed:g} replays a run faster than the scanner, which only a virtual "
                             "participant can follow: add --virtual, or run at speed 1 with a person and a real scanner")
        config = _config(args)
    except _BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from rtrecon.session import startup_problems

    # every path and key the config names, before any window opens: one line each. Of the trial
    # lists only this run's counts (none with --trials): the others are ``check``'s to report.
    this_list = None if args.trials is not None else f"stimulus.trial_lists[{(args.run or 1) - 1}]"
    problems = [p for p in startup_problems(config, "stimulus")
                if not p.key.startswith("stimulus.trial_lists[") or p.key == this_list]
    if problems:
        where = f"{args.config}: " if args.config else ""
        for problem in problems:
            print(f"rtrecon stimulus: {where}{problem}", file=sys.stderr)
        return 2
    try:
        live_feedback = args.live_feedback or config.stimulus.feedback.when == "live"
        setup = prepare_run(config, args.run or 1, trials_file=args.trials, task=args.task, overwrite=args.overwrite,
                            live_feedback=live_feedback)
    except _BAD_INPUT as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print("error: no display (DISPLAY is unset); on a headless machine run under Xvfb at 24-bit depth: xvfb-run -s '-screen 0 1280x1024x24' rtrecon stimulus run ...", file=sys.stderr)
        return 1
    from .app import StimulusProgram
    from .link import EngineLink, Link, OfflineLink
    from .operator import OperatorControls, console_role
    from .participant import VirtualParticipant
    from .records import RunJournal
    from .sound import SoundError
    from .trigger import KeyInput, MergedKeys, PsychopyKeys, hardware_keys, psychopy_time

    configure_logging("stimulus", logging.INFO, stream=sys.stdout, force=True)
    trig = config.stimulus.trigger
    keys: KeyInput = PsychopyKeys()
    hardware = None
    link: Link = OfflineLink()
    controls = None
    journal = RunJournal(setup.paths, clock=psychopy_time)
    try:
        hardware = hardware_keys(trig)
        if hardware is not None:
            keys = MergedKeys([keys, hardware])
        participant = None
        if args.virtual:
            participant = VirtualParticipant(tr=args.tr or trig.tr or 1.0, n_volumes=args.volumes, trigger_key=trig.keys[0],
                                             speed=args.speed, start_file=args.start_file)
        if not args.offline:
            curve = load_curve(config.security.keys_dir, "stimulus") if config.security.keys_dir else None
            link_dir = setup.paths.link_dir
            link = EngineLink(
                config.network.events, config.network.results, setup.session_label,
                link_dir / "event_spool", link_dir / "results.json",
                clock=psychopy_time, curve=curve, heartbeat_s=config.network.heartbeat_s,
                on_result=journal.record_result,
            )
            if journal.started is None:  # a resumed run has sent events already
                link.check_run(setup.run)
            keys_dir = config.security.keys_dir
            controls = OperatorControls(config.network.operator, setup.session_label, curve=curve,
                                        server_role=console_role(keys_dir) if keys_dir else "engine")
    except (OSError, ValueError, KeysError) as exc:
        link.close()
        if controls is not None:
            controls.close()
        if hardware is not None:
            hardware.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        program = StimulusProgram(setup, link=link, keys=keys, participant=participant, speed=args.speed, journal=journal,
                                  live_feedback=live_feedback, results_timeout_s=args.wait_results, controls=controls)
        record = program.run()
    except (TimeoutError, ValueError, SoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        link.close()
        if controls is not None:
            controls.close()
        if hardware is not None:
            hardware.close()
    shown = sum(r.shown is not None for r in record.results.values())
    outcome = ("ended by the operator" if record.ended_by == "operator" else "aborted") if record.aborted else "finished"
    print(f"{outcome}: {len(record.events)} events in {setup.paths.events}")
    print(f"{len(record.flips)} frames, results received {len(record.results)}, shown {shown}; frame timing in {setup.paths.source('frames.json')}")
    if program.missed:
        print(f"missed while the program was down: trial(s) {', '.join(map(str, program.missed))}")
    return 2 if record.aborted else 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``check`` and ``run`` subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    check = sub.add_parser("check", help="check trial lists and plan the runs, without a window")
    _common(check)
    check.add_argument("--json", action="store_true", help="every run of the config's trial lists: its problems as one JSON line "
                       "(what rtrecon session check reports)")
    check.set_defaults(func=_check)
    run = sub.add_parser("run", help="run a task on the participant's screen")
    _common(run)
    run.add_argument("--virtual", action="store_true", help="a virtual participant presses the trigger and answers")
    run.add_argument("--tr", type=float, help="the virtual scanner's TR in seconds (default: stimulus.trigger.tr, else 1)")
    run.add_argument("--volumes", type=int, default=10_000, help="with --virtual: the scanner's volumes (triggers) in the run")
    run.add_argument("--speed", type=float, default=1.0, help="with --virtual: replay the run S times faster than the scanner (default 1)")
    run.add_argument("--start-file", type=Path, help="with --virtual: the scanner starts when this file appears")
    run.add_argument("--live-feedback", action="store_true",
                     help="show each result as it arrives: on the participant's screen in the design's free stretches "
                          '(as [stimulus.feedback] when = "slot"), never over a trial; on the operator\'s window at once')
    run.add_argument("--wait-results", type=float, default=0.0, metavar="S",
                     help="after the last trial, wait for the feedback trials' results (at most S seconds without one)")
    run.add_argument("--offline", action="store_true", help="no engine: record the run without sending events")
    run.set_defaults(func=_run)
