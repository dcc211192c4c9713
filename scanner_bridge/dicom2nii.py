"""Offline DICOM folder → NIfTI conversion through the live assembly path.

:func:`dicom_series_to_nifti` feeds every file under a folder (recursively, in any order)
through the same :class:`~scanner_bridge.assembly.VolumeAssembler` the live bridge uses, so
what it writes is what the engine would have received. Each run becomes one 4D NIfTI (voxels
and affine as dcm2niix writes them) with a BIDS-style JSON sidecar: RepetitionTime,
SliceTiming when the headers give it, and a few non-identifying acquisition fields (no names,
dates, times of day or places). With several runs, one file per run gets a ``_run-N`` suffix.

Files that cannot be used are logged with the reason and skipped. A volume that is missing (no
file, or a corrupt one) raises :class:`MissingVolumesError` and nothing is written: a NIfTI that
silently lacks a volume shifts every later one by a TR. With ``allow_missing`` the runs are
written with their gaps kept as gaps (an all-zero volume at each missing index, listed under
``MissingVolumes`` in the sidecar). A folder with no volume at all raises :class:`NoVolumesError`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from scanner_bridge.assembly import FileRejected, RunStarted, VolumeAssembler, VolumeMissing, VolumeReady
from scanner_bridge.dicom_file import IncompleteDicomError
from scanner_bridge.volume import AcquiredVolume

__all__ = ["NoVolumesError", "MissingVolumesError", "dicom_series_to_nifti", "nifti_paths"]

log = logging.getLogger(__name__)


class NoVolumesError(ValueError):
    """The folder holds no volume that could be assembled; the message says what was found."""


class MissingVolumesError(ValueError):
    """Volumes are missing or corrupt (and ``allow_missing`` was not given); the message lists them."""


@dataclass
class _RunOutput:
    started: RunStarted
    volumes: list[AcquiredVolume] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def dicom_series_to_nifti(dicom_dir: Path, out_path: Path, *, allow_missing: bool = False) -> list[Path]:
    """Convert every run found under ``dicom_dir``; returns the NIfTI paths written.

    ``out_path`` ends in ``.nii.gz`` or ``.nii`` (``.nii.gz`` is added otherwise); each
    NIfTI gets a ``.json`` sidecar beside it. Raises :class:`MissingVolumesError` (nothing
    written) if a volume is missing or an image file is corrupt, unless ``allow_missing``.
    """
    dicom_dir = Path(dicom_dir)
    if not dicom_dir.is_dir():
        raise NoVolumesError(f"{dicom_dir}: not a folder")
    files = sorted(p for p in dicom_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise NoVolumesError(f"{dicom_dir}: the folder holds no files")
    # Offline, nothing more will arrive: only finish() gives volumes up, never a timeout.
    assembler = VolumeAssembler(missing_timeout_s=math.inf)
    events = []
    rejected: list[FileRejected] = []
    for path in files:
        try:
            events.extend(assembler.add_file(path))
        except IncompleteDicomError as exc:
            rejected.append(FileRejected(str(path), f"incomplete: {exc.reason}"))
    events.extend(assembler.finish())
    runs: dict[int, _RunOutput] = {}
    for event in events:
        if isinstance(event, RunStarted):
            runs[event.run] = _RunOutput(event)
        elif isinstance(event, VolumeReady):
            runs[event.run].volumes.append(event.volume)
        elif isinstance(event, VolumeMissing):
            runs[event.run].missing.append(event.index)
            log.warning("run %d: volume %d missing (%s)", event.run, event.index, event.reason)
        elif isinstance(event, FileRejected):
            rejected.append(event)
    for event in rejected:
        log.warning("skipped %s: %s", event.origin, event.reason)
    complete = [run for run in runs.values() if run.volumes]
    if not complete:
        detail = f"; first: {rejected[0].origin}: {rejected[0].reason}" if rejected else ""
        raise NoVolumesError(f"{dicom_dir}: no fMRI volume could be assembled from {len(files)} files "
                             f"({len(rejected)} skipped{detail})")
    corrupt = [event for event in rejected if event.reason.startswith("incomplete")]
    gaps = [f"run {run.started.run} volume(s) {', '.join(map(str, sorted(run.missing)))}" for run in complete if run.missing]
    if (gaps or corrupt) and not allow_missing:
        parts = gaps + ([f"{len(corrupt)} corrupt image file(s), first {corrupt[0].origin}: {corrupt[0].reason}"] if corrupt else [])
        raise MissingVolumesError(f"{dicom_dir}: missing {'; '.join(parts)}; nothing written "
                                  "(--allow-missing writes what exists, gaps kept as gaps)")
    paths = nifti_paths(Path(out_path), [run.started.run for run in complete])
    for run, path in zip(complete, paths):
        _write_run(run, path)
        log.info("run %d (%s): %d volumes -> %s", run.started.run, run.started.description, len(run.volumes), path)
    return paths


def nifti_paths(out_path: Path, runs: list[int]) -> list[Path]:
    """Output names: ``out_path`` itself for one run, ``<stem>_run-N<ext>`` for several."""
    name = out_path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            stem, suffix = name[: -len(ext)], ext
            break
    else:
        stem, suffix = name, ".nii.gz"
    if len(runs) == 1:
        return [out_path.with_name(stem + suffix)]
    return [out_path.with_name(f"{stem}_run-{run}{suffix}") for run in runs]


def _write_run(run: _RunOutput, path: Path) -> None:
    volumes = run.volumes
    # Each volume at its own index: a missing one stays a gap (zeros), so later ones keep their time.
    n = max([v.index for v in volumes] + run.missing) + 1
    data = np.zeros(volumes[0].voxels.shape + (n,), dtype=volumes[0].voxels.dtype)
    for v in volumes:
        data[..., v.index] = v.voxels
    affine = volumes[0].affine
    image = nib.Nifti1Image(data, affine)
    header = image.header
    header.set_sform(affine, code=1)  # scanner-anatomical, as dcm2niix
    header.set_qform(affine, code=1)
    header.set_xyzt_units(xyz="mm", t="sec")
    header.set_dim_info(slice=2)
    zooms = header.get_zooms()
    header.set_zooms((*zooms[:3], volumes[0].tr))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)
    sidecar: dict[str, object] = {}
    sidecar.update(run.started.acquisition)
    sidecar["RepetitionTime"] = round(volumes[0].tr, 6)
    slice_times = next((v.slice_times for v in volumes if v.slice_times is not None), None)
    if slice_times is not None:
        sidecar["SliceTiming"] = list(slice_times)
    if run.missing:
        sidecar["MissingVolumes"] = sorted(run.missing)
    sidecar["ConversionSoftware"] = "rtrecon dicom2nii"
    _sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")


def _sidecar_path(nifti: Path) -> Path:
    name = nifti.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]
    return nifti.with_name(stem + ".json")
