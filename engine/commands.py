"""``rtrecon engine --config session.toml``: run the real-time engine of a session.

The config's ``[session]``, ``[network]`` and ``[security]`` sections name the subject, the
output folder, the ZeroMQ endpoints and the CURVE keys; its ``[engine]`` section the ROI mask,
reference, GLM options and release schedule. The engine
resumes a session already in the output folder (after a crash, start it again the same way).
SIGINT or SIGTERM stop it cleanly.

``rtrecon engine replay RUN --events events.tsv --out DIR``: the same engine on a recorded run,
offline (:mod:`engine.replay`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from rtrecon.contract.config import ConfigError
from rtrecon.contract.logs import configure_logging

__all__ = ["configure", "main"]


def main(args: argparse.Namespace) -> int:
    from engine.server import serve
    from engine.startup import startup_problems

    if args.config is None:
        print("rtrecon engine: error: --config is required (or: rtrecon engine replay --help)", file=sys.stderr)
        return 2
    configure_logging("engine", args.log_level)
    if problems := startup_problems(args.config):  # before any data is accepted: one line each
        for problem in problems:
            print(f"rtrecon engine: {problem}", file=sys.stderr)
        return 2
    stopping = []

    def _stop(signum, frame) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return serve(args.config, stop=lambda: bool(stopping))
    except ConfigError as exc:
        logging.getLogger("engine").error("%s", exc)
        return 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("rtrecon engine --config CONFIG [--log-level LEVEL]\n"
                    "       rtrecon engine replay RUN --events EVENTS --out DIR [--config CONFIG] (see replay --help)")
    parser.add_argument("--config", help="session config (TOML) with an [engine] section (required to serve)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=main)
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    from engine import replay  # light: the engine's heavy imports come when it runs

    replay.configure(actions.add_parser("replay", prog="rtrecon engine replay", help="run a recorded run (DICOM folder or 4-D NIfTI) through the "
                                        "live engine, offline, as fast as it goes"))
