"""``rtrecon replay nsd``: replay an NSD session (real or synthetic) through the live processes.

::

    rtrecon replay nsd --root NSD --subject 1 --session 2 [--runs 1 2] [--checkpoint last.pth]
                       [--decoder-subject 0] [--targets tokens.npy] [--unclip DIR] [--speed 1] [--out DIR]

The same processes as ``rtrecon demo`` (:mod:`rtrecon.demo.live`): the bridge streams the
session's time series (``rtrecon bridge replay-nsd``), the stimulus program's virtual participant
plays the design's events (and shows the results), the engine estimates betas live and decodes every trial with ``--checkpoint`` (an
official MindEye2 ``last.pth`` or an rtrecon-trained one; ``--decoder-subject`` is the adapter
of this participant). The gallery is the session's images, embedded by ``--targets`` (an
``.npy`` of CLIP tokens in 73k-id order, row ``id - 1``); a synthetic root brings its own
(``synthetic_truth/embeddings.npy``) and, without ``--checkpoint``, a decoder is trained for it
(cached): pretrained on the other subjects, fine-tuned on this subject's other sessions.

The report adds what an NSD user compares: the live betas against NSD's released betas of the
same trials (median per-voxel correlation, ``live_vs_released_beta_r``), and retrieval against
the ground-truth images. The last line printed is the same JSON object as the demo's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from rtrecon.demo.command import add_live_arguments
from rtrecon.contract.layout import session_id

__all__ = ["configure", "replay_nsd"]


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(title="sources", metavar="SOURCE")
    nsd = sub.add_parser("nsd", help="replay a session of an NSD root (real or synthetic) live, and report it")
    nsd.add_argument("--root", type=Path, required=True, help="NSD root (holds nsddata/, nsddata_timeseries/, ...)")
    nsd.add_argument("--subject", type=int, required=True, help="NSD subject (1-based)")
    nsd.add_argument("--session", type=int, required=True, help="scan session to replay (1-based)")
    nsd.add_argument("--runs", type=int, nargs="+", help="runs of the session to replay (default: all)")
    nsd.add_argument("--checkpoint", type=Path, help="MindEye2 checkpoint (.pth / .safetensors); a synthetic root may omit it")
    nsd.add_argument("--decoder-subject", type=int, default=0, help="this participant's adapter in the checkpoint (default %(default)s)")
    nsd.add_argument("--targets", type=Path, help="CLIP tokens of the images, .npy in 73k-id order (a synthetic root has its own)")
    nsd.add_argument("--unclip", type=Path, help="unCLIP folder (`rtrecon convert-unclip` output); the checkpoint "
                     "needs its diffusion prior (default: retrieval only)")
    nsd.add_argument("--speed", type=float, default=1.0, help="replay speed, × the scanner's TR pace (default %(default)s)")
    add_live_arguments(nsd)
    nsd.add_argument("--out", type=Path, default=Path("rtrecon_out") / "replay", help="where the session is written (default: %(default)s)")
    nsd.add_argument("--cache", type=Path, help="cache for a decoder trained on a synthetic root")
    nsd.set_defaults(func=replay_nsd)


def _clip_seed(root: Path) -> int | None:
    """The synthetic world's CLIP embedder seed (None for a real NSD root: no two-way identification)."""
    world = root / "synthetic_truth" / "world.json"
    return json.loads(world.read_text())["embedder"]["seed"] if world.is_file() else None


def _targets(ns: argparse.Namespace):
    import numpy as np

    path = ns.targets or ns.root / "synthetic_truth" / "embeddings.npy"
    if not path.is_file():
        raise ValueError(f"{path}: no CLIP tokens of the images (give --targets, an .npy in 73k-id order)")
    targets = np.load(path, mmap_mode="r")
    if targets.ndim < 2:
        raise ValueError(f"{path}: expected (n_images, ...) tokens, got shape {targets.shape}")
    return targets


def replay_nsd(ns: argparse.Namespace) -> int:
    from rtrecon.data.nsd import NSDDataset, NSDLayoutError
    from rtrecon.demo.live import LiveSpec, run_session
    from rtrecon.demo.processes import ProcessFailed

    console = Console(stderr=True, soft_wrap=True)
    started = time.monotonic()
    try:
        nsd = NSDDataset(ns.root)
        available = nsd.runs(ns.subject, ns.session)
        # Checked before anything trains: a session that is not there was found only minutes later.
        if not available:
            sessions = nsd.sessions(ns.subject)
            raise ValueError(f"{ns.root}: subject {ns.subject} has no session {ns.session} "
                             + (f"(its sessions: {', '.join(map(str, sessions))})" if sessions
                                else f"(subjects found: {', '.join(map(str, nsd.subjects())) or 'none'})"))
        if unknown := sorted(set(ns.runs or ()) - set(available)):
            raise ValueError(f"{ns.root}: subject {ns.subject} session {ns.session} has no run(s) "
                             f"{', '.join(map(str, unknown))} (its runs: {', '.join(map(str, available))})")
        runs = tuple(ns.runs or available)
        targets = _targets(ns)
        checkpoint, description = ns.checkpoint, f"MindEye2 checkpoint {ns.checkpoint} (adapter {ns.decoder_subject})"
        if checkpoint is None:
            checkpoint, description = _synthetic_decoder(ns, nsd, console)
        elif not checkpoint.is_file():
            raise ValueError(f"{checkpoint}: no such checkpoint")
        if ns.unclip is None:
            description += ". Retrieval only: no unCLIP model is configured, so no images are reconstructed."
        elif not (ns.unclip / "unclip.json").is_file():
            raise ValueError(f"{ns.unclip}: not an unCLIP folder (no unclip.json)")
        else:
            description += f". Reconstructions by the unCLIP model {ns.unclip} from the prior's image tokens."
        out = ns.out / f"{session_id(f'{ns.subject:02d}', f'{ns.session:02d}')}_{time.strftime('%Y%m%dT%H%M%S')}"
        console.print(f"replaying subject {ns.subject} session {ns.session} run(s) {', '.join(map(str, runs))} "
                      f"of {ns.root} at {ns.speed:g}× → {out}")
        spec = LiveSpec(root=ns.root, subject=ns.subject, session=ns.session, runs=runs, checkpoint=checkpoint,
                        targets=targets, out=out, decoder_subject=ns.decoder_subject, decoder_description=description,
                        speed=ns.speed, releases_s=tuple(ns.releases), unclip=ns.unclip,
                        clip_seed=_clip_seed(ns.root), metric_weights=tuple(ns.metric_weights))
        summary = run_session(spec, console)
    except (NSDLayoutError, ValueError, FileNotFoundError, ProcessFailed) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    from rtrecon.demo.command import _print_summary

    _print_summary(console, summary, time.monotonic() - started)
    print(json.dumps(summary.headline()), flush=True)
    return 0


def _synthetic_decoder(ns: argparse.Namespace, nsd, console: Console) -> tuple[Path, str]:
    from rtrecon.demo.cache import cached_decoder
    from rtrecon.demo.training import DecoderRecipe

    if not (ns.root / "synthetic_truth").is_dir():
        raise ValueError(f"{ns.root}: not a synthetic dataset; give --checkpoint")
    others = {s: nsd.sessions(s) for s in nsd.subjects() if s != ns.subject}
    own = [s for s in nsd.sessions(ns.subject) if s != ns.session]
    if not others or not own:
        raise ValueError(f"{ns.root}: training a decoder needs another subject and another session of subject {ns.subject}")
    console.print(f"training a decoder: pretrain on subjects {', '.join(map(str, others))}, fine-tune on sessions {own}")
    checkpoint, hit = cached_decoder(ns.root, others, ns.subject, own, DecoderRecipe(), root=ns.cache)
    console.print(f"    {'cached' if hit else 'trained'}: {checkpoint}")
    return checkpoint, (f"rtrecon-trained MindEye2 pretrained on synthetic subjects {', '.join(map(str, others))}, "
                        f"fine-tuned on subject {ns.subject} sessions {own}")
