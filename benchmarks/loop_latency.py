"""Closed-loop latency: the last volume a trial needs acquired → its decoded result shown.

Runs one live session through the real processes (bridge replaying at the TR pace, engine with
the decoding stage, the PsychoPy stimulus program with a virtual participant; :mod:`rtrecon.demo.live`)
on a synthetic subject and measures, per trial, the time from its last needed volume being acquired
to the flip that first shows the result on the participant's window, broken down by stage (:data:`rtrecon.demo.collect.STAGES`). The decoder
is a MindEye2 of the real-time shape (hidden 1024) with random weights: latency does not depend
on the weights' values, and training one for an NSD-size subject is a separate job.

Baseline, measured in the same run: the per-volume path alone (volume acquired → GLM updated,
median over every volume of the run), the floor any trial's latency sits on.

    python benchmarks/loop_latency.py            # NSD-size subject (81×104×83, 15,724 ROI voxels), TR pace
    python benchmarks/loop_latency.py --quick    # small subject at 20× the TR pace (under a minute when cached)

The last line printed is ``{"benchmark": "loop_latency", "machine": ..., "results": {...}}`` with
``median_s``, ``p95_s``, ``trials``, the per-stage medians and the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _report import emit


def _checkpoint(dataset: Path, n_voxels: int, tokens: tuple[int, int], cache: Path) -> Path:
    import torch

    from rtrecon.models import MindEye2, MindEye2Config, save_checkpoint

    path = cache / f"loop_latency_random_{n_voxels}_{tokens[0]}x{tokens[1]}.pth"
    if not path.is_file():
        torch.manual_seed(0)
        config = MindEye2Config.realtime((n_voxels,)).replace(clip_tokens=tokens[0], clip_dim=tokens[1], use_prior=False)
        save_checkpoint(MindEye2(config), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small subject at 20× the TR pace")
    parser.add_argument("--speed", type=float, help="replay speed (default: 1, the TR pace; --quick: 20)")
    parser.add_argument("--cache", type=Path, help="dataset cache (default: $RTRECON_CACHE or ~/.cache/rtrecon)")
    ns = parser.parse_args(argv)

    from rtrecon.data.nsd import NSDDataset
    from rtrecon.data.synthetic import load_truth
    from rtrecon.demo.cache import cache_root, cached_dataset
    from rtrecon.demo.collect import LiveSessionFiles
    from rtrecon.demo.live import LiveSpec, run_session

    size = "small" if ns.quick else "nsd"
    speed = ns.speed or (20.0 if ns.quick else 1.0)
    cache = ns.cache or cache_root()
    dataset, _ = cached_dataset(1, 1, 1, size, 0, root=cache)
    nsd = NSDDataset(dataset)
    targets = load_truth(dataset)["embeddings"]
    checkpoint = _checkpoint(dataset, int(nsd.roi_mask(1).sum()), targets.shape[1:], cache)
    with tempfile.TemporaryDirectory(prefix="loop_latency_") as tmp:
        out = Path(tmp)
        spec = LiveSpec(root=dataset, subject=1, session=1, runs=(1,), checkpoint=checkpoint, targets=targets,
                        out=out, decoder_description="random-weight MindEye2 (real-time shape)", speed=speed,
                        released_betas=False)
        summary = run_session(spec)
        layout = LiveSessionFiles(out, "01", "01", "perception", out / "stimulus")
        volumes = layout.table(1, "volumetimings")
        floor = (volumes["glm_updated_time"] - volumes["read_time"]).dropna().to_numpy()
    results = {
        "median_s": summary.median_latency_s,
        "p95_s": summary.p95_latency_s,
        "trials": summary.trials,
        "decoded": summary.decoded,
        "stage_median_s": summary.stage_median_s,
        "baseline_volume_median_s": float(np.median(floor)),
        "decode_overhead_median_s": summary.median_latency_s - float(np.median(floor)),
        "speed": speed,
        "size": size,
        "roi_voxels": int(nsd.roi_mask(1).sum()),
    }
    emit("loop_latency", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
