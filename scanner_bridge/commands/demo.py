"""``rtrecon bridge demo``: the bridge on a real DICOM series, through a simulated scanner.

::

    rtrecon bridge demo [--series DIR] [--speed X] [--out DIR]

What happens, all on this machine and nothing downloaded:

1. ``rtrecon bridge listen`` starts in its own process (the engine's place), persisting what it
   receives under ``--out``;
2. ``rtrecon bridge watch`` starts in another process on an empty temporary export folder;
3. the scanner simulator copies the series (default: the shared Siemens mosaic
   ``siemens_mosaic_ep2d_vd13``) into that folder at TR pace (``--speed`` times faster);
4. the volumes travel over ZeroMQ on localhost; progress is shown as they are written and
   received; when all have arrived the bridge is stopped, which ends the run.

It prints each volume's latency (the simulator closing the file → the listener receiving the
volume), writes the run as NIfTI (``OUT/<date-time>/run-01_bold.nii.gz`` and one file per volume), checks it
against the series' dcm2niix reference when the folder has one, and ends with one JSON line::

    {"demo": "bridge", "series": ..., "volumes": 6, "received": 6, "median_latency_ms": ...,
     "max_latency_ms": ..., "matches_reference": true, "nifti": ..., "wall_s": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from rtrecon.contract import children
from scanner_bridge.assembly import VolumeAssembler, VolumeReady
from scanner_bridge.simulator import ScannerSimulator, WrittenFile, series_volumes

__all__ = ["configure", "default_series"]

_REPO = Path(__file__).resolve().parents[2]


def default_series() -> Path:
    """The shared Siemens 64×64×36 mosaic series beside the checkout."""
    return _REPO.parent / "shared" / "data" / "dicom" / "siemens_mosaic_ep2d_vd13"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Child:
    """An ``rtrecon`` subprocess whose stdout lines land in a queue (its own group, dying with this process)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._err = open(log, "wb")
        self.proc = children.start(
            [sys.executable, "-m", "rtrecon.cli", *args], cwd=_REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE, stderr=self._err, text=True,
        )
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def stop(self, timeout: float = 30.0) -> int:
        """Wait up to ``timeout`` for the child to end, then kill its group (the child if still running, and
        whatever it left behind); its exit status."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self._err.close()
        return children.kill(self.proc)


def _dicom_folder(series: Path) -> Path:
    return series / "dicom" if (series / "dicom").is_dir() else series


def _reference(series: Path) -> Path | None:
    for pattern in ("ref/*.nii*", "ref_local/*.nii*"):
        found = sorted(series.glob(pattern))
        if found:
            return found[0]
    return None


def _run(ns: argparse.Namespace) -> int:
    console = Console()
    started = time.monotonic()
    series: Path = ns.series
    if not _dicom_folder(series).is_dir():
        print(f"rtrecon bridge demo: {series}: no such DICOM series folder", file=sys.stderr)
        return 2
    if not ns.speed > 0:
        print(f"rtrecon bridge demo: --speed must be positive (got {ns.speed})", file=sys.stderr)
        return 2
    volumes = series_volumes(_dicom_folder(series))
    tr = _series_tr(volumes[0])
    # A fresh folder each time: a listener resumes from what its folder holds.
    out: Path = ns.out.resolve() / time.strftime("%Y%m%d-%H%M%S")
    endpoint = f"tcp://127.0.0.1:{ns.port or _free_port()}"
    console.print(f"[bold]rtrecon bridge demo[/bold]: {series.name}, {len(volumes)} volumes, TR {tr:g} s at {ns.speed:g}× → "
                  f"a volume every {tr / ns.speed:.2f} s, over ZeroMQ {endpoint}")

    with tempfile.TemporaryDirectory(prefix="rtrecon_demo_") as tmp:
        tmp_path = Path(tmp)
        export = tmp_path / "scanner_export"
        export.mkdir()
        listener = _Child(["bridge", "listen", endpoint, "--out", str(out), "--json", "--runs", "1", "--session", "demo"],
                          tmp_path / "listen.log")
        bridge = _Child(["bridge", "watch", str(export), "--to", endpoint, "--spool", str(tmp_path / "spool"),
                         "--session", "demo", "--missing-timeout", str(max(5.0, 3 * tr / ns.speed))],
                        tmp_path / "bridge.log")
        written: dict[int, float] = {}
        received: dict[int, float] = {}
        done_writing = threading.Event()
        try:
            _wait_for_line(listener, '{"kind": "listening"', timeout=60)
            _wait_for_line(bridge, "bridge: session", timeout=60)
            time.sleep(0.5)  # the link's handshake and the folder watch start right after
            sim = ScannerSimulator(volumes, export, tr=tr, speed=ns.speed,
                                   on_written=lambda w: _note_written(w, written))
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("{task.fields[info]}"), console=console) as progress:
                scan_task = progress.add_task("scanner writes", total=len(volumes), info="")
                recv_task = progress.add_task("engine receives", total=len(volumes), info="")
                threading.Thread(target=lambda: (sim.run(), done_writing.set()), daemon=True).start()
                deadline = time.monotonic() + 60 + len(volumes) * tr / ns.speed
                run_ended = stopping = False
                while not run_ended:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the volumes did not all arrive")
                    if len(received) == len(volumes) and done_writing.is_set() and not stopping:
                        bridge.proc.send_signal(signal.SIGTERM)  # the scan is over: end the run
                        stopping = True
                    try:
                        line = listener.lines.get(timeout=0.05)
                    except queue.Empty:
                        line = None
                    if line and line.startswith("{"):
                        record = json.loads(line)
                        if record.get("kind") == "volume":
                            received[record["index"]] = record["received"]
                            latency = (record["received"] - written.get(record["index"], record["received"])) * 1000
                            progress.update(recv_task, completed=len(received), info=f"volume {record['index']}: {latency:.1f} ms")
                        elif record.get("kind") == "run_end" or record.get("summary"):
                            run_ended = True
                    elif listener.proc.poll() is not None and listener.lines.empty():
                        raise RuntimeError("the listener stopped:\n" + listener.log.read_text())
                    progress.update(scan_task, completed=len(written), info=f"{len(written)} written")
        except (TimeoutError, RuntimeError) as exc:
            for child in (bridge, listener):
                children.kill(child.proc)
            print(f"rtrecon bridge demo: {exc}\n" + bridge.log.read_text()[-2000:], file=sys.stderr)
            return 1
        finally:
            bridge_code, listen_code = bridge.stop(), listener.stop()

    latencies = {i: (received[i] - written[i]) * 1000 for i in sorted(received) if i in written}
    table = Table(title="file closed → volume received", min_width=40)
    table.add_column("volume", justify="right")
    table.add_column("latency (ms)", justify="right")
    for index, ms in latencies.items():
        table.add_row(str(index), f"{ms:.1f}")
    console.print(table)

    nifti = out / "run-01_bold.nii.gz"
    reference = _reference(series)
    matches = None
    if reference is not None and nifti.is_file():
        ours, ref = np.asanyarray(nib.load(nifti).dataobj), np.asanyarray(nib.load(reference).dataobj)
        # A reference may hold more volumes than the folder (the interoperability example).
        matches = bool(ours.shape[:3] == ref.shape[:3] and np.array_equal(ours, ref[..., : ours.shape[3]]))
        console.print(f"received run vs dcm2niix reference {reference.name}: "
                      + ("[green]identical voxels[/green]" if matches else "[red]DIFFERENT[/red]"))
    console.print(f"NIfTI written to {out}")
    values = list(latencies.values())
    summary = {
        "demo": "bridge",
        "series": series.name,
        "volumes": len(volumes),
        "received": len(received),
        "median_latency_ms": float(np.median(values)) if values else None,
        "max_latency_ms": float(np.max(values)) if values else None,
        "matches_reference": matches,
        "nifti": str(nifti),
        "exit_codes": {"bridge": bridge_code, "listener": listen_code},
        "wall_s": round(time.monotonic() - started, 2),
    }
    print(json.dumps(summary), flush=True)
    ok = len(received) == len(volumes) and matches is not False and bridge_code == 0 and listen_code == 0
    return 0 if ok else 1


def _note_written(record: WrittenFile, written: dict[int, float]) -> None:
    if record.kind == "volume" and record.volume is not None:
        written[record.volume] = record.closed_at


def _series_tr(first_volume: list[Path]) -> float:
    assembler = VolumeAssembler()
    events = [e for path in first_volume for e in assembler.add_file(path)] + assembler.finish()
    (ready,) = [e for e in events if isinstance(e, VolumeReady)]
    return float(ready.volume.tr)


def _wait_for_line(child: _Child, prefix: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if child.lines.get(timeout=0.1).startswith(prefix):
                return
        except queue.Empty:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.log.stem} stopped:\n{child.log.read_text()}") from None
    raise TimeoutError(f"{child.log.stem} did not start")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rtrecon bridge demo``."""
    parser.add_argument("--series", type=Path, default=default_series(),
                        help="a DICOM series folder (with dicom/ and ref/, as in shared/data/dicom; default: %(default)s)")
    parser.add_argument("--speed", type=float, default=4.0, help="how many times faster than the scanner's TR (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("rtrecon_out/demo"), help="the received NIfTI go in a new dated folder here (default: %(default)s)")
    parser.add_argument("--port", type=int, help="TCP port of the volume link (default: a free one)")
    parser.set_defaults(func=_run)
