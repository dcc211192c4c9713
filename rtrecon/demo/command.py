"""``rtrecon demo``: the whole closed loop on the built-in synthetic world, nothing downloaded.

::

    rtrecon demo [--out rtrecon_out/demo] [--speed 10] [--world high-snr] [--subjects 4 --sessions 4 --runs 1]
    rtrecon demo --task imagery      # mental imagery (NSD-Imagery's protocol): rtrecon.demo.imagery

1. the synthetic dataset (NSD layout, :mod:`rtrecon.data.synthetic`), cached by its parameters.
   ``--world high-snr`` (the default) is a world at the top of NSD's SNR range (median ncsnr over
   nsdgeneral 0.63-0.71, measured the NSD way); ``--world typical`` one typical of NSD's nsdgeneral
   voxels (0.33-0.39), where single trials of a few sessions decode far less visibly;
2. the small decoder (:mod:`rtrecon.demo.training`), cached by everything that changes it:
   MindEye2 of the real-time shape pretrained on every other subject (all sessions), then a new
   adapter fine-tuned on all the demo subject's sessions but the live one (what a lab has after
   a training visit);
3. a live session of the demo subject's last session (:mod:`rtrecon.demo.live`): the bridge
   replaying its volumes at ``--speed`` × the TR pace, the engine decoding every trial
   (retrieval among the session's images), and the stimulus program (PsychoPy, on ``DISPLAY`` or
   a private Xvfb) with a virtual participant playing the design's events at the same speed and
   showing each result as it arrives -- separate processes over ZeroMQ on localhost;
4. the BIDS session, derivatives and HTML report under ``OUT/<session folder>``; the headline
   figures are printed (the world first: the demo says it runs in a high-SNR world), and the last line is one JSON object with the keys ``report``, ``trials``,
   ``decoded``, ``top1``, ``top5``, ``chance_top1``, ``median_latency_s`` (``top1``/``top5``: the first
   release of each trial, what the participant saw first), ``top1_by_release`` (release → top-1),
   ``two_way_clip`` and ``pixcorr`` (of the first releases' reconstructions; ``None`` with ``--no-unclip``).

Reconstructions: the decoder is trained with its diffusion prior, and the engine reconstructs every
trial from the prior's image tokens through the synthetic world's own unCLIP model, which ships
with rtrecon (:mod:`rtrecon.reconstruction.weights`; the official SDXL unCLIP reads bigG tokens, not the
synthetic world's). ``--unclip DIR`` names another unCLIP folder for the synthetic world's tokens
(e.g. one trained by ``python -m rtrecon.reconstruction.train_synthetic``); ``--no-unclip`` decodes by
retrieval only and trains no prior. The report says which.

``--task imagery`` runs the closed loop on a synthetic mental imagery session instead (cue →
imagine → the decoded result shown as feedback), decoded by a linear head trained on the
subject's perception sessions: :mod:`rtrecon.demo.imagery`. Its last line has the same keys,
``top1``/``top5``/``chance_top1`` being retrieval of each trial's target among its run's 6 targets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console

from rtrecon.contract.config import EngineSection
from rtrecon.data.synthetic import WORLDS
from rtrecon.contract.layout import session_id

__all__ = ["configure", "run_demo"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("perception", "imagery"), default="perception",
                        help="perception (default): the live session shows images; imagery: a synthetic mental imagery "
                             "session in NSD-Imagery's protocol (a letter cue, imagine the target, rate its vividness; "
                             "one run per target set), decoded by a linear head (ridge) trained on the subject's "
                             "perception sessions -- the decoder that generalises from vision to imagery in NSD-Imagery "
                             "and MIRAGE; retrieval among each run's 6 targets, no generated images (so no MindEye2 "
                             "training, --unclip or --epochs)"),
    parser.add_argument("--out", type=Path, default=Path("rtrecon_out") / "demo", help="where sessions are written (default: %(default)s)")
    parser.add_argument("--cache", type=Path, help="cache folder for the dataset and the decoder (default: $RTRECON_CACHE or ~/.cache/rtrecon)")
    parser.add_argument("--subjects", type=int, default=4, help="synthetic subjects (the demo subject + pretraining ones; default %(default)s)")
    parser.add_argument("--sessions", type=int, default=4,
                        help="sessions per subject (the last is the live one, the others train the decoder; default %(default)s)")
    parser.add_argument("--runs", type=int, default=1, help="runs per session (default %(default)s)")
    parser.add_argument("--live-runs", type=int, help="runs of the live session to replay (default: all)")
    parser.add_argument("--size", choices=("small", "nsd"), default="small", help="synthetic brain size preset (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed (default %(default)s)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="high-snr",
                        help="the synthetic world's noise: high-snr (median ncsnr 0.63-0.71, the top of NSD's range; default) "
                             "or typical (0.33-0.39, typical of NSD's nsdgeneral voxels)")
    parser.add_argument("--subject", type=int, default=1, help="the demo subject (default %(default)s)")
    parser.add_argument("--speed", type=float, default=10.0, help="replay speed, × the scanner's TR pace (default %(default)s)")
    # 80 fine-tuning epochs: at 20 the diffusion prior barely uses the brain (its loss stays at the
    # tokens' variance around their mean; its tokens' two-way 0.77 on released betas, a ridge's 0.97);
    # at 80, 0.92, and the live reconstructions' CLIP two-way rises 6-8 points at every release.
    parser.add_argument("--epochs", type=int, nargs=2, default=(10, 80), metavar=("PRETRAIN", "FINETUNE"),
                        help="training epochs (default: %(default)s)")
    parser.add_argument("--hidden-dim", type=int, default=256, help="decoder width (default %(default)s)")
    parser.add_argument("--unclip", type=Path, help="an unCLIP folder for the synthetic world's tokens (default: the "
                        "synthetic world's unCLIP model shipped with rtrecon); the decoder gets a diffusion prior and every trial "
                        "is also reconstructed from the prior's tokens")
    parser.add_argument("--no-unclip", action="store_true", help="retrieval only: no diffusion prior, no reconstructions")
    add_live_arguments(parser)
    parser.set_defaults(func=run_demo)


def run_demo(ns: argparse.Namespace) -> int:
    from rtrecon.demo.cache import cached_dataset
    from rtrecon.demo.live import run_session
    from rtrecon.demo.processes import ProcessFailed

    console = Console(stderr=True, soft_wrap=True)
    if ns.sessions < 2 or ns.subjects < 2 or not 1 <= ns.subject <= ns.subjects:
        console.print("[red]error:[/] the demo needs 2+ subjects (one to pretrain on) and 2+ sessions "
                      "(one to fine-tune on, one live), and --subject among them")
        return 2
    started = time.monotonic()
    console.rule("rtrecon demo")
    console.print(f"1/4 synthetic dataset: {ns.subjects} subjects × {ns.sessions} sessions × {ns.runs} runs ({ns.size}), "
                  f"world {ns.world} ({WORLD_NOTES[ns.world]})")
    dataset, hit = cached_dataset(ns.subjects, ns.sessions, ns.runs, ns.size, ns.seed, ns.world, root=ns.cache)
    console.print(f"    {'cached' if hit else 'written'}: {dataset} ({time.monotonic() - started:.0f} s)")
    world_note = f"Synthetic world: {ns.world} ({WORLD_NOTES[ns.world]})"
    if ns.task == "imagery":
        from rtrecon.demo.imagery import imagery_spec

        spec = imagery_spec(ns, console, dataset, started, (world_note + ".",))
    else:
        spec = _perception_spec(ns, console, dataset, started, world_note)
        if spec is None:
            return 2
    try:
        summary = run_session(spec, console)
    except ProcessFailed as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    console.print(f"4/4 report ({time.monotonic() - started:.0f} s)")
    _print_summary(console, summary, time.monotonic() - started)
    print(json.dumps(summary.headline()), flush=True)
    return 0


def _perception_spec(ns: argparse.Namespace, console: Console, dataset: Path, started: float, world_note: str):
    """The perception demo's decoder (steps 2) and live session (step 3); None after an error printed."""
    from rtrecon.data.nsd import NSDDataset
    from rtrecon.data.synthetic import load_truth
    from rtrecon.reconstruction.weights import synthetic_reconstructor_path
    from rtrecon.demo.cache import cached_decoder
    from rtrecon.demo.live import LiveSpec
    from rtrecon.demo.training import DecoderRecipe

    others = [s for s in range(1, ns.subjects + 1) if s != ns.subject]
    sessions = list(range(1, ns.sessions + 1))
    live_session, own_sessions = sessions[-1], sessions[:-1]
    unclip = None if ns.no_unclip else ns.unclip or synthetic_reconstructor_path()
    if unclip is not None and not (unclip / "unclip.json").is_file():
        console.print(f"[red]error:[/] {unclip}: not an unCLIP folder (no unclip.json)")
        return None
    recipe = DecoderRecipe(hidden_dim=ns.hidden_dim, pretrain_epochs=ns.epochs[0], finetune_epochs=ns.epochs[1],
                           use_prior=unclip is not None, seed=ns.seed)
    console.print(f"2/4 decoder: pretrain on subjects {', '.join(map(str, others))} (sessions {sessions[0]}-{sessions[-1]}), "
                  f"fine-tune on subject {ns.subject} session(s) {_span(own_sessions)}"
                  + (" (no diffusion prior: --no-unclip)" if unclip is None else " (with its diffusion prior)"))
    checkpoint, hit = cached_decoder(dataset, {s: sessions for s in others}, ns.subject, own_sessions, recipe, root=ns.cache)
    console.print(f"    {'cached' if hit else 'trained'}: {checkpoint} ({time.monotonic() - started:.0f} s)")
    nsd = NSDDataset(dataset)
    runs = tuple(nsd.runs(ns.subject, live_session)[: ns.live_runs])
    out = ns.out / f"{session_id(f'{ns.subject:02d}', f'{live_session:02d}')}_{time.strftime('%Y%m%dT%H%M%S')}"
    console.print(f"3/4 live session: subject {ns.subject} session {live_session} run(s) {', '.join(map(str, runs))} "
                  f"at {ns.speed:g}× the TR pace → {out}")
    description = (
        f"rtrecon-trained MindEye2 (real-time shape, hidden {recipe.hidden_dim}, {recipe.n_blocks} blocks): pretrained on "
        f"synthetic subjects {', '.join(map(str, others))}, fine-tuned on subject {ns.subject} session(s) {_span(own_sessions)}, "
        f"world {ns.world} ({WORLD_NOTES[ns.world]}). "
        + ("Retrieval only (--no-unclip): no images are reconstructed." if unclip is None else
           f"Reconstructions: its diffusion prior's tokens decoded by the synthetic world's "
           f"{'own unCLIP model shipped with rtrecon' if ns.unclip is None else 'unCLIP model'} {unclip} "
           "(trained on the synthetic images; not the official SDXL unCLIP weights).")
    )
    return LiveSpec(root=dataset, subject=ns.subject, session=live_session, runs=runs, checkpoint=checkpoint,
                    targets=load_truth(dataset)["embeddings"], out=out, decoder_description=description,
                    speed=ns.speed, releases_s=tuple(ns.releases), unclip=unclip,
                    clip_seed=load_truth(dataset)["world"]["embedder"]["seed"], metric_weights=tuple(ns.metric_weights),
                    notes=(f"{world_note}; the decoder was fine-tuned on "
                           f"subject {ns.subject}'s sessions {_span(own_sessions)}, the live session is {live_session}.",))


#: What each world is, as the demo prints it and its report says (measured: :mod:`rtrecon.data.synthetic`).
WORLD_NOTES = {
    "high-snr": "median ncsnr 0.63-0.71, the top of NSD's SNR range",
    "typical": "median ncsnr 0.33-0.39, typical of NSD's nsdgeneral voxels",
}


def add_live_arguments(parser: argparse.ArgumentParser) -> None:
    """The live session's options that ``rtrecon demo`` and ``rtrecon replay nsd`` share."""
    parser.add_argument("--metric-weights", type=metric_weights, nargs="+", default=[], metavar="NAME=FILE",
                        help="local torchvision weights for MindEye2's metrics of external networks "
                             "(alexnet2, alexnet5, inception, effnet, swav); without them those are reported as not computed")
    parser.add_argument("--releases", type=float, nargs="+", default=list(EngineSection().releases_s), metavar="S",
                        help="seconds after onset at which each trial is released and decoded, besides run end "
                             "(default: %(default)s, the engine's [engine] releases_s)")


def metric_weights(text: str) -> tuple[str, Path]:
    """``NAME=FILE`` of ``--metric-weights``: a known metric and an existing file."""
    from rtrecon.report.metrics import EXTERNAL_METRICS

    name, sep, path = text.partition("=")
    if not sep or name not in EXTERNAL_METRICS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=FILE with NAME among {', '.join(EXTERNAL_METRICS)}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such weights file for {name}")
    return name, Path(path)


def _span(values: list[int]) -> str:
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _print_summary(console: Console, summary, wall_s: float) -> None:
    console.print(f"    report: {summary.report}")
    console.print(f"    trials decoded: {summary.decoded} of {summary.trials}")
    console.print(f"    retrieval at the first release: top-1 {_fmt(summary.top1, '.1%')} (chance {_fmt(summary.chance_top1, '.1%')}), "
                  f"top-5 {_fmt(summary.top5, '.1%')} (chance {_fmt(summary.chance_top5, '.1%')}); most retrieved "
                  f"{summary.hub_id} in {_fmt(summary.hub_share, '.0%')} of trials")
    if summary.imagery:
        m = summary.imagery
        console.print(f"    imagery retrieval among each run's targets: top-1 {m['top1']:.1%} (chance {m['chance']:.1%}); per set "
                      + ", ".join(f"{k} {v:.1%}" for k, v in m["per_set"].items()) + "; per vividness rating "
                      + ", ".join(f"{k}: {v:.1%}" for k, v in m["per_vividness"].items()))
    for release, m in summary.by_release.items():
        console.print(f"    release {release} (median {_fmt(m.get('median_release_s'), '.1f')} s after onset): "
                      f"top-1 {_fmt(m.get('top1'), '.1%')}, top-5 {_fmt(m.get('top5'), '.1%')}, "
                      f"CLIP two-way {_fmt(m.get('two_way_clip'), '.1%')}, PixCorr {_fmt(m.get('pixcorr'), '.3f')}, "
                      f"SSIM {_fmt(m.get('ssim'), '.3f')}, r(decoded, end-of-run betas) {_fmt(m.get('beta_r_end'), '.3f')}")
    console.print(f"    latency last volume acquired → result shown: median {_fmt(summary.median_latency_s, '.3f')} s, "
                  f"p95 {_fmt(summary.p95_latency_s, '.3f')} s")
    console.print(f"    stimulus onset → feedback shown (run seconds): median {_fmt(summary.median_feedback_delay_s, '.2f')} s, "
                  f"p95 {_fmt(summary.p95_feedback_delay_s, '.2f')} s")
    for name, value in summary.metrics.items():
        console.print(f"    {name}: {value:.3f}")
    console.print(f"    done in {wall_s:.0f} s")
