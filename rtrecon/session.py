"""``rtrecon session``: write a session config template, and check a config before the scan.

::

    rtrecon session init [FILE] [--force]        # commented template, every key at its default
    rtrecon session check FILE [--role ROLE]     # validate FILE and every path it names

:func:`check_config` returns one :class:`Problem` per fault: the key, the path and the reason.
What is checked, per key (unset keys are skipped):

====================================  ========================================================
key                                   checked
====================================  ========================================================
``session.output_dir``                a writable folder, or one that can be made
``bridge.spool_dir``                  a writable folder, or one that can be made
``bridge.watch_dir``                  a readable folder
``security.keys_dir``                 has ``public/*.key`` (made by ``rtrecon keys init``)
``engine.roi_mask``                   a 3-D NIfTI with at least one voxel in the mask
``engine.reference``                  a 3-D NIfTI with finite values
``engine.zscore_stats``               a ``.npz`` with 1-D ``mean`` and ``std`` of one length
                                      (the ROI's voxel count when ``roi_mask`` is set)
``engine.early.training_session``     a folder with at least one ``*_bold.nii[.gz]`` that has its
                                      ``*_events.tsv`` beside it (searched recursively)
``decoder.checkpoint``                a ``.safetensors`` file whose header reads, or a
                                      ``torch.save`` file (zip or pickle)
``decoder.linear_head``               a ridge head ``.npz`` that ``LinearHead.load`` reads whose
                                      voxel count is the ROI's (when ``roi_mask`` is set)
``decoder.gallery``                   ``.npz``/``.npy``/``.h5`` that opens, or a folder of images
``reconstruction.unclip``             a folder with ``unclip.json``, ``unet/`` and ``vae/``
                                      (the layout ``rtrecon convert-unclip`` writes)
``stimulus.trial_lists``              each TSV parses (header, same field count on every row,
                                      at least one trial) and its ``stim_file``/``cue_file``
                                      files exist (relative to the list's folder)
``stimulus.feedback.gallery_dir``     a readable folder
``stimulus.feedback.embeddings``      ``.npz``/``.npy``/``.h5`` that opens
``network.*``                         no two links share an endpoint
====================================  ========================================================

Each trial list that parses is then planned as the stimulus program will run it (onsets that
overlap a trial or a feedback period, responses the task does not take, pairmates missing from
the embeddings, ...): ``check`` runs ``rtrecon stimulus check --json`` on the same file, in a
process of its own (:mod:`rtrecon` never imports the ``stimulus`` package), so that the two
commands never disagree. Where the ``stimulus`` package is not installed (the engine's PC), that
planning is skipped and said so.

``--role`` limits the check to the paths one machine needs (the bridge PC does not have the
decoder's checkpoint). The exit status is 0 when nothing is wrong, 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import zipfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtrecon.contract.config import ConfigError, SessionConfig, config_template, load_config

__all__ = ["Problem", "ROLES", "check_config", "plan_trial_lists", "startup_problems", "write_template", "configure"]

ROLES = ("all", "bridge", "engine", "stimulus")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class Problem:
    """One fault of a config: the dotted key, the path (or endpoint) it names, and why it is wrong."""

    key: str
    path: Path | str
    reason: str

    def __str__(self) -> str:
        return f"{self.key}: {self.path}: {self.reason}"


def _readable_file(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a file"
    if not os.access(path, os.R_OK):
        return "is not readable"
    return None


def _readable_dir(path: Path) -> str | None:
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return "is not readable"
    return None


def _writable_dir(path: Path) -> str | None:
    """A folder the session can write to, now or once made (the nearest existing parent is writable)."""
    if path.exists():
        if not path.is_dir():
            return "exists and is not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be made: {parent} is not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be made: {parent} is not writable"


def _nifti_3d(path: Path) -> tuple[str | None, np.ndarray | None]:
    import nibabel as nib

    if err := _readable_file(path):
        return err, None
    try:
        image = nib.load(path)
        shape = image.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            return f"is not 3-D (shape {tuple(image.shape)})", None
        data = np.asarray(image.dataobj).reshape(shape)
    except Exception as exc:  # nibabel raises many types for a corrupt or foreign file
        return f"is not a readable NIfTI image: {exc}", None
    return None, data


def _check_mask(path: Path) -> tuple[str | None, int | None]:
    err, data = _nifti_3d(path)
    if err:
        return err, None
    # > 0, as the engine reads it: NSD's ROI files mark the voxels outside the brain -1
    count = int(np.count_nonzero(np.nan_to_num(data) > 0))
    if count == 0:
        return "is an empty mask (no voxel above 0)", None
    return None, count


def _check_reference(path: Path) -> str | None:
    err, data = _nifti_3d(path)
    if err:
        return err
    if not np.all(np.isfinite(data)):
        return "has NaN or infinite voxels"
    return None


def _check_stats(path: Path, n_voxels: int | None) -> str | None:
    if err := _readable_file(path):
        return err
    try:
        with np.load(path, allow_pickle=False) as stats:
            if "mean" not in stats or "std" not in stats:
                return f"needs arrays 'mean' and 'std' (has {', '.join(sorted(stats.files)) or 'none'})"
            mean, std = stats["mean"], stats["std"]
    except (OSError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        return f"is not a readable .npz: {exc}"
    if mean.ndim != 1 or mean.shape != std.shape:
        return f"mean {mean.shape} and std {std.shape} must be 1-D and of one length"
    if n_voxels is not None and mean.shape[0] != n_voxels:
        return f"has statistics for {mean.shape[0]} voxels, the ROI mask has {n_voxels}"
    if not (np.all(np.isfinite(std)) and np.all(std >= 0)):
        return "std has negative, NaN or infinite values"
    return None


def _check_checkpoint(path: Path) -> str | None:
    if err := _readable_file(path):
        return err
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="numpy") as f:
                if not list(f.keys()):
                    return "holds no tensors"
        except Exception as exc:  # safetensors raises its own error types for a bad header
            return f"is not a readable safetensors file: {exc}"
        return None
    if zipfile.is_zipfile(path):
        return None
    with path.open("rb") as f:
        first = f.read(1)
    if first == b"\x80":  # a pickle protocol header: torch.save's legacy format
        return None
    return "is neither a safetensors file nor a torch.save checkpoint (zip or pickle)"


def _check_linear_head(path: Path, n_voxels: int | None) -> str | None:
    # Read with numpy, not LinearHead: this module is the light contract (no model stack).
    if err := _readable_file(path):
        return err
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("weights", "mean", "std", "y_mean") if k not in arrays.files]
            if missing:
                return f"is not a linear head file (no {', '.join(missing)}; written by rtrecon train --head linear)"
            count = int(arrays["mean"].shape[0])
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"cannot be read as a linear head .npz: {exc}"
    if n_voxels is not None and count != n_voxels:
        return f"takes {count} voxels, the ROI (engine.roi_mask) has {n_voxels}"
    return None


def _check_gallery(path: Path) -> str | None:
    if path.is_dir():
        if err := _readable_dir(path):
            return err
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            return f"is a folder without images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        return None
    if err := _readable_file(path):
        return err
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                if not arrays.files:
                    return "holds no arrays"
        elif suffix == ".npy":
            np.load(path, mmap_mode="r", allow_pickle=False)
        elif suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                if not list(f.keys()):
                    return "holds no datasets"
        else:
            return f"has an unknown gallery format {suffix!r} (use .npz, .npy, .h5 or an image folder)"
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"cannot be read: {exc}"
    return None


def _check_unclip(path: Path) -> str | None:
    if err := _readable_dir(path):
        return err
    missing = [name for name in ("unclip.json", "unet", "vae") if not (path / name).exists()]
    if missing:
        return f"is not an unCLIP folder (missing {', '.join(missing)}; make one with rtrecon convert-unclip)"
    try:
        json.loads((path / "unclip.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"unclip.json cannot be read: {exc}"
    return None


def _check_keys(path: Path) -> str | None:
    if err := _readable_dir(path):
        return err
    if not list((path / "public").glob("*.key")):
        return "has no public/*.key (make the keys with rtrecon keys init)"
    return None


def _check_trial_list(path: Path) -> list[str]:
    if err := _readable_file(path):
        return [err]
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [f"cannot be read as a TSV: {exc}"]
    if not rows or not any(cell.strip() for cell in rows[0]):
        return ["has no header row"]
    header = [cell.strip() for cell in rows[0]]
    problems = []
    if "" in header:
        problems.append(f"header has an empty column name: {rows[0]}")
    body = [(line, row) for line, row in enumerate(rows[1:], start=2) if any(cell.strip() for cell in row)]
    if not body:
        problems.append("has no trials (only a header)")
    for line, row in body:
        if len(row) != len(header):
            problems.append(f"line {line}: {len(row)} fields, the header has {len(header)}")
            continue
        for column in ("stim_file", "cue_file"):
            if column in header:
                value = row[header.index(column)].strip()
                if value and value != "n/a" and (err := _readable_file(path.parent / value)):
                    problems.append(f"line {line}: {column} {value} {err}")
    return problems


def _check_training_session(folder: Path) -> str | None:
    if (err := _readable_dir(folder)) is not None:
        return err
    for bold in sorted(folder.rglob("*_bold.nii*")):
        if bold.name.endswith((".nii", ".nii.gz")) and bold.with_name(bold.name.split("_bold.nii")[0] + "_events.tsv").exists():
            return None
    return "has no *_bold.nii[.gz] run with its *_events.tsv (a session folder written by the engine)"


def _checks(config: SessionConfig, role: str) -> Iterator[tuple[str, Path, Callable[[], list[str]]]]:
    """The (key, path, check) of every path the config names that ``role`` needs."""
    def one(result: str | None) -> list[str]:
        return [result] if result else []

    def wanted(*roles: str) -> bool:
        return role == "all" or role in roles

    if wanted("engine", "stimulus"):
        yield "session.output_dir", config.session.output_dir, lambda: one(_writable_dir(config.session.output_dir))
    if wanted("bridge"):
        if (watch := config.bridge.watch_dir) is not None:
            yield "bridge.watch_dir", watch, lambda: one(_readable_dir(watch))
        yield "bridge.spool_dir", config.bridge.spool_dir, lambda: one(_writable_dir(config.bridge.spool_dir))
    if (keys := config.security.keys_dir) is not None:
        yield "security.keys_dir", keys, lambda: one(_check_keys(keys))
    if wanted("engine"):
        engine, decoder = config.engine, config.decoder
        n_voxels: list[int] = []
        if (mask := engine.roi_mask) is not None:
            def mask_check() -> list[str]:
                err, count = _check_mask(mask)
                n_voxels.extend([count] if count else [])
                return one(err)
            yield "engine.roi_mask", mask, mask_check
        if (reference := engine.reference) is not None:
            yield "engine.reference", reference, lambda: one(_check_reference(reference))
        if (stats := engine.zscore_stats) is not None:
            yield "engine.zscore_stats", stats, lambda: one(_check_stats(stats, n_voxels[0] if n_voxels else None))
        if (training := engine.early.training_session) is not None:
            yield "engine.early.training_session", training, lambda: one(_check_training_session(training))
        if (checkpoint := decoder.checkpoint) is not None:
            yield "decoder.checkpoint", checkpoint, lambda: one(_check_checkpoint(checkpoint))
        if decoder.head == "linear" and (head := decoder.linear_head) is not None:
            yield "decoder.linear_head", head, lambda: one(_check_linear_head(head, n_voxels[0] if n_voxels else None))
        if (gallery := decoder.gallery) is not None:
            yield "decoder.gallery", gallery, lambda: one(_check_gallery(gallery))
        if (unclip := config.reconstruction.unclip) is not None:
            yield "reconstruction.unclip", unclip, lambda: one(_check_unclip(unclip))
    if wanted("stimulus"):
        for i, trial_list in enumerate(config.stimulus.trial_lists):
            yield f"stimulus.trial_lists[{i}]", trial_list, lambda t=trial_list: _check_trial_list(t)
        if (gallery_dir := config.stimulus.feedback.gallery_dir) is not None:
            yield "stimulus.feedback.gallery_dir", gallery_dir, lambda: one(_readable_dir(gallery_dir))
        if (embeddings := config.stimulus.feedback.embeddings) is not None:
            yield "stimulus.feedback.embeddings", embeddings, lambda: one(_check_gallery(embeddings))


def plan_trial_lists(config_file: Path, skip: Collection[int] = ()) -> list[Problem] | None:
    """The problems ``rtrecon stimulus check`` finds planning each run of ``config_file`` (the runs
    in ``skip``, 1-based, left out); None when the stimulus package is not installed here."""
    import importlib.util

    from rtrecon.contract import children

    if importlib.util.find_spec("stimulus") is None:
        return None
    proc = children.run([sys.executable, "-m", "rtrecon.cli", "stimulus", "check", "--config", str(config_file), "--json"],
                        capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return [Problem("stimulus.trial_lists", config_file, f"rtrecon stimulus check failed: {proc.stderr.strip()[-500:]}")]
    report = json.loads(lines[-1])
    if "error" in report:
        return [Problem("stimulus", config_file, report["error"])]
    return [Problem(f"stimulus.trial_lists[{r['run'] - 1}]", Path(r["trials_file"]), f"{reason} (as rtrecon stimulus check plans run {r['run']})")
            for r in report["runs"] if r["run"] not in skip for reason in r["problems"]]


def check_config(config: SessionConfig, role: str = "all") -> tuple[list[Problem], int]:
    """Check every path ``config`` names that ``role`` needs; returns the problems and the paths checked."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (choose from {', '.join(ROLES)})")
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for name in ("volumes", "events", "results", "status"):
        endpoint = getattr(config.network, name)
        if endpoint in seen:
            reason = f"is also network.{seen[endpoint]}: two links cannot share an endpoint"
            problems.append(Problem(f"network.{name}", endpoint, reason))
        seen.setdefault(endpoint, name)
    checked = 0
    for key, path, check in _checks(config, role):
        checked += 1
        problems += [Problem(key, path, reason) for reason in check()]
    return problems, checked


def startup_problems(config: SessionConfig, role: str) -> list[Problem]:
    """What must stop ``role``'s program before it accepts data: :func:`check_config`'s problems
    for the role, and the role's own CURVE key pair when the links are encrypted."""
    from rtrecon.contract.keys import KeysError, load_curve

    problems, _ = check_config(config, role)
    keys = config.security.keys_dir
    if keys is not None and role != "all" and not any(p.key == "security.keys_dir" for p in problems):
        try:
            load_curve(keys, role)
        except KeysError as exc:
            problems.append(Problem("security.keys_dir", keys, str(exc)))
    return problems


def write_template(path: str | Path, *, force: bool = False) -> Path:
    """Write the commented config template to ``path`` (refuses to overwrite unless ``force``)."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_template(), encoding="utf-8")
    return path


def _init(ns: argparse.Namespace) -> int:
    if str(ns.file) == "-":
        sys.stdout.write(config_template())
        return 0
    try:
        path = write_template(ns.file, force=ns.force)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}: edit it, then run: rtrecon session check {path}")
    return 0


def _check(ns: argparse.Namespace) -> int:
    try:
        config = load_config(ns.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problems, checked = check_config(config, ns.role)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if ns.role in ("all", "stimulus") and config.stimulus.trial_lists:
        # a list with problems of its own is not planned again (its errors would come twice)
        faulty = {i + 1 for i in range(len(config.stimulus.trial_lists)) if any(p.key == f"stimulus.trial_lists[{i}]" for p in problems)}
        planned = plan_trial_lists(ns.file, faulty)
        if planned is None:
            print("note: the stimulus package is not installed here: trial lists were parsed, not planned "
                  "(run rtrecon session check --role stimulus on the stimulus PC)", file=sys.stderr)
        else:
            for problem in planned:
                print(f"error: {problem}", file=sys.stderr)
            problems += planned
    if problems:
        print(f"{ns.file}: {len(problems)} problem(s) in {checked} path(s) checked", file=sys.stderr)
        return 1
    print(f"{ns.file}: OK (valid; {checked} path(s) checked for role {ns.role})")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``init`` and ``check`` subcommands."""
    parser.description = (
        "A session config is one TOML file for every process of a live session: subject, session and task; "
        "ZeroMQ addresses and keys; the bridge's export folder; the engine's ROI mask, reference, GLM and "
        "z-scoring; the decoder's checkpoint, gallery and unCLIP weights; the stimulus program's trial lists, "
        "trigger, timings and feedback. Every key is optional."
    )
    sub = parser.add_subparsers(title="subcommands", metavar="{init,check}")
    init = sub.add_parser(
        "init",
        help="write a commented template with every key at its default",
        description="Write a session config template: every key with its default and a one-line comment "
        "(keys that are unset by default are commented out with a typical value).",
    )
    init.add_argument("file", nargs="?", type=Path, default=Path("session.toml"),
                      help="where to write it (default: session.toml; '-' prints it)")
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    init.set_defaults(func=_init)
    check = sub.add_parser(
        "check",
        help="validate a config and every path it names, before the scan",
        description="Validate FILE (types, ranges, unknown keys) and check every path it names: NIfTI masks "
        "and references load and are 3-D, z-score statistics match the mask, the checkpoint, gallery and "
        "unCLIP folder are readable, trial lists parse and their images exist. Prints each problem as "
        "'KEY: PATH: REASON' and exits 1 if there is any.",
    )
    check.add_argument("file", type=Path, help="the session config (TOML)")
    check.add_argument("--role", choices=ROLES, default="all",
                       help="check only the paths this machine needs (default: all)")
    check.set_defaults(func=_check)
