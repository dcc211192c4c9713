"""The demo's stimulus PC: the real stimulus program, its inputs, its display, and its records read back.

The demo and ``rtrecon replay nsd`` run ``rtrecon stimulus run`` (the :mod:`stimulus` package,
started as a process: :mod:`rtrecon` never imports it) with a virtual participant. This module
prepares and reads what that program uses and leaves:

- :func:`write_trial_lists`: one trial list TSV per run of the session, from the NSD design
  (``stim_file`` a PNG written from the dataset's stimuli, ``stim_id`` ``nsd:<73k id>`` -- the
  gallery's ids --, ``onset`` the design's onset, ``feedback`` 1), in ``OUT/stimulus/``, and
  every image of the session as ``OUT/stimulus/images/nsd:<id>.png`` (trial images and the
  feedback's gallery of retrieved images);
- :func:`write_imagery_trial_lists`: the same for an imagery session (NSD-Imagery's protocol, see
  :func:`rtrecon.data.imagery.write_live_session`): per trial the letter ``cue``, the target's
  image as ``stim_file`` (shown beside the feedback), the design's onset and, as ``response``,
  the trial's vividness rating, which the virtual participant gives;
  :func:`imagery_settings`: its ``[stimulus]`` tables (cue, 3-s imagery period, rating, and a
  feedback slot in the rest of each 8-s trial);
- :func:`stimulus_settings`: the session config's ``[stimulus]`` tables (a small window, the
  trigger's TR, feedback of the retrieved images and the reconstruction);
- :func:`stimulus_command`: the program's command line for one run (``--virtual --speed S
  --live-feedback``: results are shown in the design's free stretches (``when = "slot"``: NSD's
  blank trials and the end of the run), never over a trial, since NSD's 4 s trials leave no
  period after each one; ``--start-file``: the virtual scanner's first trigger comes when the
  supervisor creates that file);
- :func:`start_display`: ``DISPLAY`` from the environment, else a private ``Xvfb`` (24-bit: at
  16 the window hangs) started in the session's :class:`~rtrecon.demo.processes.ProcessGroup`;
- :func:`read_results`: a run's results as the program recorded them, from its journal
  (``OUT/sourcedata/stimulus/sub-XX/ses-YY/func/..._journal.jsonl``, written line by line as the
  run goes, fsynced; a torn line from a kill is skipped): per trial the result's retrieved ids,
  scores, decoded embedding, stage stamps with ``result_received`` and ``shown`` (``time.time()`` of the
  flip that first showed it) added, ``shown_run_s`` (that flip in run seconds), and the
  reconstruction's PNG; keyed by trial and release (a journal without releases: release 0).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.processes import ProcessFailed, ProcessGroup
from rtrecon.contract.layout import SessionLayout, safe_filename

__all__ = ["WINDOW_SIZE", "write_trial_lists", "write_imagery_trial_lists", "stimulus_settings", "imagery_settings",
           "stimulus_command", "stimulus_folder", "journal_path", "start_display", "read_results"]

#: The participant's window: small, because under Xvfb every pixel is drawn by the CPU the engine needs.
WINDOW_SIZE = (480, 360)


def write_trial_lists(nsd: NSDDataset, subject: int, session: int, folder: Path) -> list[Path]:
    """One trial list per run of the session (run order), and the session's images; returns the lists."""
    runs = nsd.runs(subject, session)
    events = {run: nsd.events(subject, session, run) for run in runs}
    _write_images(nsd, sorted({int(i) for table in events.values() for i in table["image_id"]}), folder / "images")
    lists = []
    for run in runs:
        rows = ["stim_file\tstim_id\tonset\tfeedback"]
        rows += [f"images/{safe_filename(f'nsd:{int(r.image_id)}')}.png\tnsd:{int(r.image_id)}\t{float(r.onset)!r}\t1"
                 for r in events[run].itertuples()]
        path = folder / f"run-{run:02d}_trials.tsv"
        path.write_text("\n".join(rows) + "\n")
        lists.append(path)
    return lists


def _write_images(nsd: NSDDataset, ids: list[int], images: Path) -> None:
    images.mkdir(parents=True, exist_ok=True)
    for image_id, pixels in zip(ids, nsd.images(ids)):
        path = images / f"{safe_filename(f'nsd:{image_id}')}.png"
        if not path.is_file():
            Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def write_imagery_trial_lists(nsd: NSDDataset, subject: int, session: int, trials: pd.DataFrame, folder: Path) -> list[Path]:
    """One imagery trial list per run of the session (``trials``: its trial table, with ``run``,
    ``image_id``, ``cue``, ``vividness`` in each run's trial order), and the targets' images."""
    _write_images(nsd, sorted({int(i) for i in trials["image_id"]}), folder / "images")
    lists = []
    for run in nsd.runs(subject, session):
        table = trials[trials["run"] == run]
        onsets = nsd.events(subject, session, run)["onset"].to_numpy()
        if len(onsets) != len(table):
            raise ValueError(f"{nsd.design_path(subject, session, run)}: {len(onsets)} onsets for {len(table)} imagery trials")
        rows = ["stim_file\tstim_id\tonset\tcue\tfeedback\tresponse"]
        rows += [f"images/{safe_filename(f'nsd:{int(r.image_id)}')}.png\tnsd:{int(r.image_id)}\t{float(onset)!r}\t{r.cue}\t1\t{int(r.vividness)}"
                 for r, onset in zip(table.itertuples(), onsets)]
        path = folder / f"run-{run:02d}_trials.tsv"
        path.write_text("\n".join(rows) + "\n")
        lists.append(path)
    return lists


def imagery_settings(trial_lists: list[Path], tr: float, images: Path, cue_s: float) -> dict[str, dict[str, Any]]:
    """The ``[stimulus]`` tables of an imagery session (:func:`write_imagery_trial_lists`; 8-s trials)."""
    settings = stimulus_settings(trial_lists, tr, images)
    # cue, 3 s of imagery (the evoked period), a 1.5-s vividness rating: 5.5 s of each 8-s trial; the
    # 2.5 s left are fixation, where the slot policy shows the results waiting (2 s), never over a cue
    settings["stimulus.imagery"] = {"cue_s": cue_s, "imagery_s": 3.0, "rest_s": 0.0, "vividness": True, "vividness_s": 1.5}
    settings["stimulus.feedback"].update(window_s=2.0, show_target=True)
    return settings


def stimulus_settings(trial_lists: list[Path], tr: float, images: Path) -> dict[str, dict[str, Any]]:
    """The ``[stimulus]`` tables of the session config (table name -> keys)."""
    return {
        "stimulus": {"trial_lists": trial_lists},
        "stimulus.window": {"size": list(WINDOW_SIZE), "fullscreen": False, "image_size": 0.5},
        "stimulus.trigger": {"tr": tr},
        # NSD: 3 s image, then a gap until the next trial (its trials come every 3 TR = 3.9995 s)
        "stimulus.perception": {"image_s": 3.0, "gap_s": 0.9},
        # a 4-s feedback period, as long as one NSD trial
        "stimulus.feedback": {"when": "slot", "window_s": 4.0, "show_target": False, "show_image": True, "top_k": 3,
                              "score_bar": False, "gallery_dir": images},
    }


def stimulus_command(config: Path, run: int, tr: float, n_volumes: int, speed: float, start_file: Path | None = None,
                     wait_results_s: float = 120.0) -> list[str]:
    """``python`` arguments that run ``run``'s task with a virtual participant at ``speed`` × the scanner."""
    args = ["-m", "rtrecon.cli", "stimulus", "run", "--config", str(config), "--run", str(run), "--virtual",
            "--tr", repr(tr), "--volumes", str(n_volumes), "--speed", repr(speed), "--live-feedback",
            "--wait-results", repr(wait_results_s)]
    if start_file is not None:
        args += ["--start-file", str(start_file)]
    return args


def stimulus_folder(out: Path, subject: str, session: str, task: str = "perception") -> Path:
    """Where the stimulus program writes its runs (the session config's ``output_dir`` is ``out``)."""
    return SessionLayout(out, subject, session, task).stimulus_dir


def journal_path(folder: Path, subject: str, session: str, task: str, run: int) -> Path:
    return folder / f"{SessionLayout(folder, subject, session, task).stem(run)}_journal.jsonl"


def _free_display() -> int:
    for number in range(90, 400):
        if not Path(f"/tmp/.X11-unix/X{number}").exists() and not Path(f"/tmp/.X{number}-lock").exists():
            return number
    raise ProcessFailed("no free X display number in :90-:399")


def start_display(group: ProcessGroup, size: tuple[int, int] = WINDOW_SIZE, timeout_s: float = 20.0) -> str:
    """The display the stimulus program draws on: ``$DISPLAY``, else a private Xvfb started in ``group``.

    Sets ``DISPLAY`` in the group's environment; raises ProcessFailed when there is neither a
    display nor Xvfb (naming the apt package), or Xvfb does not come up.
    """
    if os.environ.get("DISPLAY"):
        group.env["DISPLAY"] = os.environ["DISPLAY"]
        return os.environ["DISPLAY"]
    if shutil.which("Xvfb") is None:
        raise ProcessFailed("no display: DISPLAY is unset and Xvfb is not installed, so the stimulus program has no "
                            "window (install it: apt-get install xvfb xauth libgl1-mesa-dri libglu1-mesa; or set DISPLAY)")
    number = _free_display()
    # Depth 24: at 16 bits PsychoPy's window hangs. The screen is a little larger than the window.
    group.start_program("xvfb", ["Xvfb", f":{number}", "-screen", "0", f"{size[0] + 64}x{size[1] + 64}x24", "-nolisten", "tcp"])
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + timeout_s
    while not socket.exists():
        group.check("xvfb")
        if group.returncode("xvfb") is not None or time.monotonic() > deadline:
            raise ProcessFailed(f"Xvfb :{number} did not start (log {group.children['xvfb'].log}):\n{group.tail('xvfb')}")
        time.sleep(0.05)
    group.env["DISPLAY"] = f":{number}"
    return f":{number}"


def read_results(journal: Path) -> list[dict[str, Any]]:
    """The results a run's journal holds, in arrival order (see the module docstring).

    Each: ``trial``, ``release`` (0 when the journal does not say), ``stimulus``, ``retrieved``,
    ``scores``, ``embedding`` (list or None), ``stamps`` (the engine's, with ``result_received``
    and, once shown, ``shown``), ``shown_run_s`` (None until shown), ``image`` (the
    reconstruction's PNG path or None), ``copies`` (how many times it was received: 1 unless the
    engine sent it again). ``shown`` goes to the release that the flip showed (the journal's
    ``shown`` line names it). A run restarted after a kill has one journal, so the results of every life of
    the program are there.
    """
    try:
        lines = journal.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    results: dict[tuple[int, int], dict[str, Any]] = {}
    shown: dict[tuple[int, int], tuple[float, float | None]] = {}
    run = None
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill mid-write
        kind = entry.get("t")
        if kind == "start":
            run = entry.get("run")
        elif kind == "result" and (entry["trial"], entry.get("release", 0)) in results and entry["run"] == run:
            results[entry["trial"], entry.get("release", 0)]["copies"] += 1
        elif kind == "result" and (run is None or entry["run"] == run):
            results[entry["trial"], entry.get("release", 0)] = {
                "trial": entry["trial"], "release": entry.get("release", 0), "stimulus": entry["stimulus"],
                "retrieved": list(entry["retrieved"]), "shown_run_s": None,
                "scores": list(entry["scores"]), "embedding": entry["embedding"],
                "stamps": {**entry["stamps"], "result_received": entry["received_wall"]},
                "image": journal.parent / entry["image"] if entry.get("image") else None,
                "copies": 1,
            }
        elif kind == "shown":
            shown.setdefault((entry["trial"], entry.get("release", 0)), (entry["shown_wall"], entry.get("shown")))
    for key, (wall, run_s) in shown.items():
        if key in results:
            results[key]["stamps"]["shown"] = wall
            results[key]["shown_run_s"] = run_s
    return list(results.values())
