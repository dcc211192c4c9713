"""The ``rtrecon`` command.

Each subcommand lives in the module that owns its concern and exposes
``configure(parser: argparse.ArgumentParser) -> None``, which adds its arguments and sets
``func`` (called with the parsed namespace; its return value is the exit status). Modules are
imported only when their subcommand runs, so ``rtrecon --help`` is instant and a broken optional
dependency affects only the commands that need it. This module alone may import the other
top-level packages (ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMANDS", "main"]


@dataclass(frozen=True)
class Command:
    module: str
    summary: str


COMMANDS: dict[str, Command] = {
    "dicom2nii": Command("scanner_bridge.commands.dicom2nii", "convert a DICOM series folder to NIfTI + JSON sidecar (the live assembly path, offline)"),
    "bridge": Command("scanner_bridge.commands.bridge", "scanner bridge: watch an export folder, receive DICOM, replay NIfTI, or listen"),
    "keys": Command("rtrecon.contract.keys", "make ZeroMQ CURVE key pairs for encrypted, authenticated links"),
    "train": Command("rtrecon.train.command", "MindEye2 shared-subject pretraining / new-subject fine-tuning (accelerate; resumable)"),
    "train-compare": Command("rtrecon.train.compare", "shared-subject (pretrained + fine-tuned) vs subject-only model: held-out retrieval among 300"),
    "synth": Command("rtrecon.data.synthetic", "write synthetic subjects (with ground truth) in the NSD layout"),
    "session": Command("rtrecon.session", "session config: write a commented template (init), validate a config and its paths (check)"),
    "stimulus": Command("stimulus.commands", "PsychoPy perception / imagery / feedback tasks locked to the scanner trigger (check a trial list, run)"),
    "demo": Command("rtrecon.demo.command", "the whole closed loop on the synthetic world: data, decoder, live session, report (no downloads)"),
    "replay": Command("rtrecon.demo.replay", "replay an NSD session (real or synthetic) through the live processes, with its report"),
    "console": Command("rtrecon.console.command", "operator console: the live session in a web page (rtrecon console --config session.toml)"),
    "engine": Command("engine.commands", "real-time engine: realign, incremental GLM, trial betas (rtrecon engine --config session.toml)"),
    "convert-unclip": Command("rtrecon.reconstruction.convert_cli", "convert MindEye2's SDXL unCLIP checkpoint (sgm .ckpt) to a diffusers folder"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(len(name) for name in COMMANDS)
    listing = "\n".join(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items())
    return argparse.ArgumentParser(
        prog="rtrecon",
        description="rtrecon: real-time closed-loop fMRI reconstruction (MindEye2 made live).",
        epilog=f"commands:\n{listing}\n\nRun 'rtrecon COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="rtrecon [-h] COMMAND [ARGS ...]",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rtrecon`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not args or args[0] in ("-h", "--help"):
        top.print_help()
        return 0 if args else 2
    name, rest = args[0], args[1:]
    command = COMMANDS.get(name)
    if command is None:
        top.error(f"unknown command {name!r} (choose from {', '.join(COMMANDS)})")
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"rtrecon {name}", description=command.summary)
    module.configure(parser)
    ns = parser.parse_args(rest)
    if not hasattr(ns, "func"):
        parser.print_help()
        return 2
    return int(ns.func(ns) or 0)


if __name__ == "__main__":
    sys.exit(main())
