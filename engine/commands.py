"""``rtrecon engine --config session.toml``: run the real-time engine of a session.

The config's ``[session]``, ``[network]`` and ``[security]`` sections name the subject, the
output folder, the ZeroMQ endpoints and the CURVE keys; its ``[engine]`` section the ROI mask,
reference, GLM options and trial delay. The engine
resumes a session already in the output folder (after a crash, start it again the same way).
SIGINT or SIGTERM stop it cleanly.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from rtrecon.config import ConfigError

__all__ = ["configure", "main"]


def main(args: argparse.Namespace) -> int:
    from engine.server import serve
    from engine.startup import startup_problems

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
    parser.add_argument("--config", required=True, help="session config (TOML) with an [engine] section")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=main)
