"""``rtrecon demo --task imagery``: the closed loop on a synthetic mental imagery session.

The same machinery as the perception demo (:mod:`rtrecon.demo.live`: bridge, engine, stimulus
program, console, report), on an imagery session in NSD-Imagery's protocol:

1. the synthetic dataset (the perception demo's, from the same cache);
2. the decoder: a linear head (:class:`rtrecon.models.linear_head.LinearHead`, ridge from the
   nsdgeneral voxels to the world's CLIP tokens) trained on every perception session of the demo
   subject, its betas z-scored per session as the engine z-scores live betas. A perception-trained
   linear decoder, because that is what generalises from vision to imagery in the published
   results (NSD-Imagery, Kneeland et al. 2025; MIRAGE 2026; ``shared/reference/nsd_imagery.md``);
   the head retrieves only, so the feedback shows the retrieved targets, not a generated image;
3. the imagery session (:func:`rtrecon.data.imagery.write_live_session`, cached beside the
   dataset): one run per target set (simple, naturalistic, conceptual), 6 targets × 8 repeats, a
   letter cue, an imagery period, a vividness rating; the engine's gallery is the session's
   targets, and the stimulus program shows each result in the fixation after a later trial;
4. the report scores each trial's target among its run's 6 targets (NSD-Imagery's retrieval,
   chance 1/6), overall, per target set and per vividness rating; the last line has the
   perception demo's keys with that retrieval as ``top1``/``top5``/``chance_top1``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from rtrecon.data.nsd import NSDDataset
from rtrecon.models.linear_head import LinearHead

__all__ = ["train_linear_head", "imagery_spec"]


def train_linear_head(nsd: NSDDataset, subject: int, sessions: Sequence[int], targets: np.ndarray, path: Path) -> LinearHead:
    """Fit the ridge head on ``subject``'s perception ``sessions`` (z-scored per session) and save it to ``path``."""
    from rtrecon.demo.training import subject_data

    data = subject_data(nsd, subject, sessions)
    head = LinearHead().fit(data.betas, np.asarray(targets, np.float32)[data.image_ids])
    head.save(path)
    return head


def imagery_spec(ns: argparse.Namespace, console: Console, dataset: Path, started: float, notes: tuple[str, ...]):
    """The :class:`~rtrecon.demo.live.LiveSpec` of the imagery demo (steps 2 and 3 of the module docstring)."""
    from rtrecon.contract.layout import session_id
    from rtrecon.data.imagery import read_imagery
    from rtrecon.data.synthetic import load_truth
    from rtrecon.demo.cache import cached_imagery
    from rtrecon.demo.live import LiveSpec

    nsd = NSDDataset(dataset)
    sessions = nsd.sessions(ns.subject)
    truth = load_truth(dataset)
    root, hit = cached_imagery(dataset, ns.subject, ns.seed, root=ns.cache)
    imagery = NSDDataset(root)
    (session,) = imagery.sessions(ns.subject)
    trials = read_imagery(root, ns.subject).trials
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = ns.out / f"{session_id(f'{ns.subject:02d}', f'{session:02d}')}_{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"2/4 decoder: a linear head (ridge, voxels → CLIP tokens) trained on subject {ns.subject}'s perception "
                  f"session(s) {sessions[0]}-{sessions[-1]}")
    head = train_linear_head(nsd, ns.subject, sessions, truth["embeddings"], out / "linear_head.npz")
    console.print(f"    trained: {out / 'linear_head.npz'} (alpha {head.alpha:g}, {head.n_voxels} voxels; "
                  f"{time.monotonic() - started:.0f} s)")
    runs = tuple(imagery.runs(ns.subject, session)[: ns.live_runs])
    sets = trials.groupby("run")["target_set"].first()
    console.print(f"3/4 live imagery session: {'cached' if hit else 'written'} {root}; subject {ns.subject} session {session} "
                  f"run(s) {', '.join(f'{r} ({sets[r]})' for r in runs)} at {ns.speed:g}× the TR pace → {out}")
    description = (f"Linear head (ridge from nsdgeneral voxels to the synthetic world's CLIP tokens, alpha {head.alpha:g} by "
                   f"cross-validation) trained on subject {ns.subject}'s perception sessions {sessions[0]}-{sessions[-1]} only, "
                   "applied to mental imagery (the decoder that generalises from vision to imagery in NSD-Imagery and MIRAGE). "
                   "Retrieval only: the feedback shows the retrieved targets, no image is generated.")
    return LiveSpec(root=root, subject=ns.subject, session=session, runs=runs, checkpoint=out / "linear_head.npz",
                    targets=truth["embeddings"], out=out, decoder_description=description, speed=ns.speed,
                    releases_s=tuple(ns.releases), metric_weights=tuple(ns.metric_weights), head="linear",
                    imagery=trials,
                    notes=notes + ("Mental imagery in NSD-Imagery's protocol (synthetic): each trial's target is scored "
                                   "among its run's 6 targets (chance 1/6), as NSD-Imagery scores retrieval.",))
