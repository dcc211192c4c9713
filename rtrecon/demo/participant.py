"""The demo's virtual stimulus PC: plays a run's NSD events to the engine and receives its results.

Run as its own process (the demo starts it beside the bridge and the engine)::

    python -m rtrecon.demo.participant --config session.toml --root NSD --subject 1 --session 2 \\
        --run 1 --out DIR [--speed 10]

It sends each image onset of the run's design (:meth:`rtrecon.data.nsd.NSDDataset.events`) as an
:class:`~rtrecon.wire.EventMessage` (``stimulus="nsd:<73k id>"``, trial = the design slot,
onset in seconds since the run's first volume) on the session's events link when its onset comes
(``onset / speed`` seconds after the start, the pace of the bridge's replay), and binds the
results link: every :class:`~rtrecon.wire.TrialResultMessage` is stamped ``shown`` on arrival
(this participant has no window: arrival is when a screen would show it), appended to
``DIR/results_run-RR.jsonl`` (fsynced; a reconstruction goes to ``DIR/recon_run-RR_trial-TTT.npy``)
and only then acknowledged. It exits once every trial of the run has a result, after
``--idle-exit`` seconds without a result once every event is sent, or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from rtrecon.config import load_config
from rtrecon.data.nsd import NSDDataset
from rtrecon.transport import ReliableReceiver, ReliableSender, trial_key
from rtrecon.wire import EventMessage, TrialResultMessage

__all__ = ["results_path", "read_results", "run_events", "main"]


def results_path(out: str | Path, run: int) -> Path:
    return Path(out) / f"results_run-{run:02d}.jsonl"


def read_results(out: str | Path, run: int) -> list[dict]:
    """The results recorded for ``run`` (a torn last line, from a kill mid-write, is dropped)."""
    path = results_path(out, run)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def run_events(nsd: NSDDataset, subject: int, session: int, run: int, link_session: str) -> list[EventMessage]:
    """The run's image onsets as events of ``link_session`` (run ``run`` on the link)."""
    events = nsd.events(subject, session, run)
    return [
        EventMessage(session=link_session, run=run, trial=int(row.trial), onset=float(row.onset),
                     duration=float(row.duration), trial_type="image", stimulus=f"nsd:{int(row.image_id)}")
        for row in events.itertuples()
    ]


def _record(result: TrialResultMessage, shown: float, out: Path) -> dict:
    row = {
        "run": result.run, "trial": result.trial, "stimulus": result.stimulus, "decoder": result.decoder,
        "retrieved": list(result.retrieved), "scores": list(result.scores), "latencies": dict(result.latencies),
        "stamps": {**result.stamps, "shown": shown},
        "embedding": None if result.embedding is None else np.asarray(result.embedding, np.float32).tolist(),
        "image": None,
    }
    if result.image is not None:
        name = f"recon_run-{result.run:02d}_trial-{result.trial:03d}.npy"
        np.save(out / name, np.asarray(result.image))
        row["image"] = name
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rtrecon.demo.participant", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True, help="NSD root")
    parser.add_argument("--subject", type=int, required=True)
    parser.add_argument("--session", type=int, required=True, help="NSD session")
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--idle-exit", type=float, default=60.0)
    ns = parser.parse_args(argv)

    config = load_config(ns.config)
    link_session = f"sub-{config.session.subject}_ses-{config.session.session}"
    events = run_events(NSDDataset(ns.root), ns.subject, ns.session, ns.run, link_session)
    ns.out.mkdir(parents=True, exist_ok=True)
    done = {row["trial"] for row in read_results(ns.out, ns.run)}
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
    hb = config.network.heartbeat_s
    start = time.monotonic()
    last = start
    with (
        ReliableSender(config.network.events, link_session, ns.out / "event_spool", key=trial_key,
                       server_role="engine", heartbeat_s=hb, name="participant") as sender,
        ReliableReceiver(config.network.results, link_session, {ns.run: max(done, default=-1)}, key=trial_key,
                         heartbeat_s=hb, name="participant-results") as results,
        open(results_path(ns.out, ns.run), "a", encoding="utf-8") as log,
    ):
        resume_after = sender.spooled.get(ns.run, -1)  # a restarted participant does not resend
        pending = [e for e in events if e.trial > resume_after]
        while not stopping:
            now = time.monotonic()
            while pending and (now - start) * ns.speed >= pending[0].onset:
                sender.send(pending.pop(0))
            sender.poll()
            message = results.recv(timeout_s=0.01)
            if isinstance(message, TrialResultMessage):
                row = _record(message, time.time(), ns.out)
                log.write(json.dumps(row) + "\n")
                log.flush()
                os.fsync(log.fileno())
                results.ack(message)
                done.add(message.trial)
                last = time.monotonic()
            if not pending and {e.trial for e in events} <= done:
                break
            if not pending and time.monotonic() - last > ns.idle_exit:
                print(f"participant: no result for {ns.idle_exit:g} s, stopping", file=sys.stderr)
                break
        sender.wait_acked(timeout_s=5.0)
    print(f"participant: {len(done)} of {len(events)} trial results received", flush=True)
    return 0 if {e.trial for e in events} <= done else 1


if __name__ == "__main__":
    sys.exit(main())
