"""Reader for the Natural Scenes Dataset (NSD) in its own on-disk layout.

Facts and sources: ``shared/reference/nsd_layout.md``. The same reader serves real NSD and the
synthetic subjects of ``rtrecon.data.synthetic`` (written in the same layout). Paths, relative to
the NSD root (AA subject, BB session, CC run, all 2-digit, 1-based)::

    nsddata_timeseries/ppdata/subjAA/<space>/timeseries/timeseries_sessionBB_runCC.nii.gz
    nsddata_timeseries/ppdata/subjAA/<space>/design/design_sessionBB_runCC.tsv
    nsddata_timeseries/ppdata/subjAA/<space>/motion/motion_sessionBB_runCC.tsv
    nsddata/experiments/nsd/nsd_expdesign.mat
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5                 (imgBrick, N×H×W×3 uint8)
    nsddata/ppdata/subjAA/<space>/roi/<name>.nii.gz              (nsdgeneral: >0 inside)
    nsddata/ppdata/subjAA/<space>/brainmask.nii.gz
    nsddata_betas/ppdata/subjAA/<space>/<version>/betas_sessionBB.hdf5   (int16 = beta × 300)

Conventions: 73k image ids are **1-based** as in the design and ``.mat`` files
(``imgBrick[id - 1]``); subjects, sessions and runs are 1-based integers; volume ``i`` of a run
starts at ``i × TR``; the design has one row fewer than the time series (the last volume has no
design row). Every missing or malformed file raises ``NSDLayoutError`` naming the path and what
was expected.

Main entry points::

    nsd = NSDDataset(root)                      # space="func1pt8mm" (TR 1.333171 s) or "func1mm"
    nsd.subjects(); nsd.sessions(1); nsd.runs(1, 1)
    run = nsd.load_run(1, 1, 1)                 # NSDRun: image (4-D NIfTI), design, motion, events
    for i, vol in enumerate(run.iter_volumes()): ...   # (X, Y, Z) arrays, at i × run.tr
    nsd.trials(1)                               # [Trial(image_id, onset, session, run, trial, repeat, shared)]
    nsd.images([46003, 61883])                  # uint8 (2, H, W, 3)
    nsd.shared_ids                              # 1-based 73k ids of the shared (test) images
    nsd.roi_mask(1)                             # bool (X, Y, Z) nsdgeneral > 0
    nsd.betas(1, 1, mask=nsd.roi_mask(1))       # float32 (n_trials, n_voxels), % signal change
    nsd.check(1)                                # raises NSDLayoutError listing every problem
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

__all__ = [
    "BETA_SCALE",
    "BETA_VERSIONS",
    "SPACES",
    "TRIALS_PER_RUN",
    "ExpDesign",
    "NSDDataset",
    "NSDLayoutError",
    "NSDRun",
    "Trial",
    "read_betas",
]

#: TR (s) and volumes per NSD run of each space; a 4-s trial spans 3 (func1pt8mm) or 4 rows.
SPACES: dict[str, dict[str, float]] = {
    "func1pt8mm": {"tr": 1.333171, "volumes": 226, "rows_per_trial": 3},
    "func1mm": {"tr": 0.999878, "volumes": 301, "rows_per_trial": 4},
}
TRIALS_PER_RUN = 75
STIM_S = 3.0  # image on-screen time of a 4-s trial
BETA_SCALE = 300.0
#: Beta versions in order of preference (b3, b2, b1).
BETA_VERSIONS = ("betas_fithrf_GLMdenoise_RR", "betas_fithrf", "betas_assumehrf")


class NSDLayoutError(ValueError):
    """A file of the NSD layout is missing or not what NSD puts there."""


@dataclass(frozen=True)
class Trial:
    """One stimulus trial. ``image_id`` is the 1-based 73k id; ``onset`` in s from the run start;
    ``run`` is the expdesign's run (1-12; the file run is one more in sessions with resting state,
    see ``NSDDataset.experiment_run``); ``trial`` is the 0-based slot in the run (0-74);
    ``repeat`` is the 0-based count of this subject's earlier presentations of the image."""

    image_id: int
    onset: float
    session: int
    run: int
    trial: int
    repeat: int
    shared: bool


@dataclass(frozen=True)
class ExpDesign:
    """``nsd_expdesign.mat`` with its 1-based indices kept as stored."""

    masterordering: np.ndarray  # (n_trials,) 1-based subject image slots
    subjectim: np.ndarray  # (n_subjects, n_slots) 1-based 73k ids
    sharedix: np.ndarray  # (n_shared,) 1-based 73k ids, sorted
    stimpattern: np.ndarray  # (n_sessions, n_runs, 75) 0/1
    basiccnt: np.ndarray | None  # (3, n_sessions)

    def trial_offset(self, session: int, run: int) -> int:
        """Index into ``masterordering`` of the first stimulus trial of (session, run)."""
        return int(self.stimpattern[: session - 1].sum() + self.stimpattern[session - 1, : run - 1].sum())

    def image_ids(self, subject: int, session: int, run: int) -> np.ndarray:
        """1-based 73k ids of the run's stimulus trials, in order."""
        start = self.trial_offset(session, run)
        n = int(self.stimpattern[session - 1, run - 1].sum())
        return self.subjectim[subject - 1, self.masterordering[start : start + n] - 1]


@dataclass
class NSDRun:
    """One run: the 4-D time series, its design column, motion and events."""

    subject: int
    session: int
    run: int
    tr: float
    image: nib.Nifti1Image  # (X, Y, Z, T); data read lazily
    design: np.ndarray  # (T - 1,) int: 1-based 73k id at onset rows, 0 elsewhere
    motion: np.ndarray | None  # (T, 6) or None when the file is absent
    events: pd.DataFrame  # onset, duration, trial_type, image_id, trial, repeat, shared

    @property
    def n_volumes(self) -> int:
        return int(self.image.shape[3])

    def volumes(self) -> np.ndarray:
        """All volumes as float32 (X, Y, Z, T)."""
        return np.asarray(self.image.dataobj, dtype=np.float32)

    def iter_volumes(self) -> Iterator[np.ndarray]:
        """Volumes one at a time (float32 (X, Y, Z)), in acquisition order."""
        for i in range(self.n_volumes):
            yield np.asarray(self.image.dataobj[..., i], dtype=np.float32)


def _fail(path: Path, expected: str) -> NSDLayoutError:
    return NSDLayoutError(f"{path}: {expected}")


def _load_nifti(path: Path, ndim: int) -> nib.Nifti1Image:
    if not path.is_file():
        raise _fail(path, f"missing (expected a {ndim}-D NIfTI image)")
    try:
        img = nib.load(path)
    except Exception as err:  # nibabel raises several types for corrupt files
        raise _fail(path, f"not a readable NIfTI image ({err})") from err
    if len(img.shape) != ndim:
        raise _fail(path, f"expected a {ndim}-D image, got shape {img.shape}")
    return img


class NSDDataset:
    """An NSD root folder (real or synthetic). ``space``: ``func1pt8mm`` or ``func1mm``."""

    def __init__(self, root: str | Path, space: str = "func1pt8mm") -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise _fail(self.root, "not a directory (expected an NSD root with nsddata/, nsddata_timeseries/, ...)")
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r} (choose from {', '.join(SPACES)})")
        self.space = space

    # ---- paths -------------------------------------------------------------------------
    @property
    def tr(self) -> float:
        return SPACES[self.space]["tr"]

    def _ts_dir(self, subject: int) -> Path:
        return self.root / "nsddata_timeseries" / "ppdata" / f"subj{subject:02d}" / self.space

    def timeseries_path(self, subject: int, session: int, run: int) -> Path:
        return self._ts_dir(subject) / "timeseries" / f"timeseries_session{session:02d}_run{run:02d}.nii.gz"

    def design_path(self, subject: int, session: int, run: int) -> Path:
        return self._ts_dir(subject) / "design" / f"design_session{session:02d}_run{run:02d}.tsv"

    def motion_path(self, subject: int, session: int, run: int) -> Path:
        return self._ts_dir(subject) / "motion" / f"motion_session{session:02d}_run{run:02d}.tsv"

    @property
    def expdesign_path(self) -> Path:
        return self.root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"

    @property
    def stimuli_path(self) -> Path:
        return self.root / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"

    def roi_path(self, subject: int, name: str = "nsdgeneral") -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{subject:02d}" / self.space / "roi" / f"{name}.nii.gz"

    def brainmask_path(self, subject: int) -> Path:
        return self.root / "nsddata" / "ppdata" / f"subj{subject:02d}" / self.space / "brainmask.nii.gz"

    def betas_path(self, subject: int, session: int, version: str | None = None) -> Path:
        """The session's beta file; ``version=None`` picks the best one present (b3, b2, b1)."""
        base = self.root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / self.space
        versions = BETA_VERSIONS if version is None else (version,)
        for v in versions:
            for suffix in (".hdf5", ".nii.gz"):
                path = base / v / f"betas_session{session:02d}{suffix}"
                if path.is_file():
                    return path
        return base / versions[0] / f"betas_session{session:02d}.hdf5"

    # ---- inventory ---------------------------------------------------------------------
    def subjects(self) -> list[int]:
        base = self.root / "nsddata_timeseries" / "ppdata"
        return sorted(int(p.name[4:]) for p in base.glob("subj[0-9][0-9]") if (p / self.space).is_dir())

    def _session_runs(self, subject: int) -> dict[int, list[int]]:
        found: dict[int, list[int]] = {}
        for p in (self._ts_dir(subject) / "timeseries").glob("timeseries_session[0-9][0-9]_run[0-9][0-9].nii.gz"):
            session, run = int(p.name[18:20]), int(p.name[24:26])
            found.setdefault(session, []).append(run)
        return {s: sorted(r) for s, r in sorted(found.items())}

    def experiment_run(self, subject: int, session: int, run: int) -> int | None:
        """The expdesign's run (1-12) of file run ``run``; None for a resting-state run.

        Sessions with resting state have 14 runs: run01 and run14 are rest, run02-13 are NSD
        runs 1-12 (reference §3-4).
        """
        if len(self.runs(subject, session)) == 14:
            return None if run in (1, 14) else run - 1
        return run

    def sessions(self, subject: int) -> list[int]:
        return list(self._session_runs(subject))

    def runs(self, subject: int, session: int) -> list[int]:
        return self._session_runs(subject).get(session, [])

    # ---- experiment design -------------------------------------------------------------
    @cached_property
    def expdesign(self) -> ExpDesign:
        path = self.expdesign_path
        if not path.is_file():
            raise _fail(path, "missing (expected nsd_expdesign.mat with masterordering, subjectim, sharedix, stimpattern)")
        try:
            mat = scipy.io.loadmat(path)
        except Exception as err:
            raise _fail(path, f"not a readable MATLAB file ({err})") from err
        missing = [k for k in ("masterordering", "subjectim", "sharedix", "stimpattern") if k not in mat]
        if missing:
            raise _fail(path, f"missing keys {missing} (expected masterordering, subjectim, sharedix, stimpattern)")
        design = ExpDesign(
            masterordering=np.asarray(mat["masterordering"]).ravel().astype(np.int64),
            subjectim=np.atleast_2d(np.asarray(mat["subjectim"])).astype(np.int64),
            sharedix=np.asarray(mat["sharedix"]).ravel().astype(np.int64),
            stimpattern=np.asarray(mat["stimpattern"]).astype(np.uint8),
            basiccnt=np.asarray(mat["basiccnt"]) if "basiccnt" in mat else None,
        )
        if design.stimpattern.ndim != 3 or design.stimpattern.shape[2] != TRIALS_PER_RUN:
            raise _fail(path, f"stimpattern must be sessions × runs × {TRIALS_PER_RUN}, got {design.stimpattern.shape}")
        if design.masterordering.size != int(design.stimpattern.sum()):
            raise _fail(
                path,
                f"masterordering has {design.masterordering.size} trials but stimpattern marks {int(design.stimpattern.sum())}",
            )
        if design.masterordering.min() < 1 or design.masterordering.max() > design.subjectim.shape[1]:
            raise _fail(path, f"masterordering values must be 1-based slots 1..{design.subjectim.shape[1]}")
        if design.subjectim.min() < 1:
            raise _fail(path, "subjectim must hold 1-based 73k ids (found values < 1)")
        return design

    @property
    def shared_ids(self) -> np.ndarray:
        """1-based 73k ids of the images every subject saw (NSD's shared 1000), sorted."""
        return np.sort(self.expdesign.sharedix)

    def trials(self, subject: int) -> list[Trial]:
        """Every stimulus trial of ``subject`` from the expdesign, chronological."""
        design = self.expdesign
        if not 1 <= subject <= design.subjectim.shape[0]:
            raise _fail(self.expdesign_path, f"no subject {subject} in subjectim ({design.subjectim.shape[0]} subjects)")
        shared = set(design.sharedix.tolist())
        rows_trial = SPACES[self.space]["rows_per_trial"]
        seen: dict[int, int] = {}
        out = []
        n_sessions, n_runs, _ = design.stimpattern.shape
        for s in range(1, n_sessions + 1):
            for r in range(1, n_runs + 1):
                ids = design.image_ids(subject, s, r)
                slots = np.flatnonzero(design.stimpattern[s - 1, r - 1])
                for image_id, k in zip(ids.tolist(), slots.tolist()):
                    onset = round(k * rows_trial) * self.tr
                    out.append(Trial(image_id, onset, s, r, k, seen.get(image_id, 0), image_id in shared))
                    seen[image_id] = seen.get(image_id, 0) + 1
        return out

    # ---- runs --------------------------------------------------------------------------
    def read_design(self, subject: int, session: int, run: int) -> np.ndarray:
        path = self.design_path(subject, session, run)
        if not path.is_file():
            raise _fail(path, "missing (expected one integer per time point: 1-based 73k id at onsets, 0 elsewhere)")
        try:
            values = np.loadtxt(path, ndmin=1)
        except ValueError as err:
            raise _fail(path, f"expected one integer column ({err})") from err
        if values.ndim != 1 or not np.all(values == np.round(values)) or values.min(initial=0) < 0:
            raise _fail(path, "expected one column of non-negative integers")
        return values.astype(np.int64)

    def read_motion(self, subject: int, session: int, run: int) -> np.ndarray | None:
        path = self.motion_path(subject, session, run)
        if not path.is_file():
            return None
        try:
            values = np.loadtxt(path, ndmin=2)
        except ValueError as err:
            raise _fail(path, f"expected 6 numeric columns ({err})") from err
        if values.shape[1] != 6:
            raise _fail(path, f"expected 6 columns (3 translations mm, 3 rotations rad), got {values.shape[1]}")
        return values

    def events(self, subject: int, session: int, run: int, design: np.ndarray | None = None) -> pd.DataFrame:
        """The run's stimulus events (nilearn-style): onset, duration, trial_type, image_id, ..."""
        if design is None:
            design = self.read_design(subject, session, run)
        rows = np.flatnonzero(design)
        rows_trial = SPACES[self.space]["rows_per_trial"]
        repeats = {}
        exp_run = self.experiment_run(subject, session, run)
        for t in self.trials(subject) if rows.size else []:
            if (t.session, t.run) == (session, exp_run):
                repeats[t.trial] = (t.repeat, t.shared)
        records = []
        for row in rows.tolist():
            k = int(round(row / rows_trial))
            repeat, shared = repeats.get(k, (0, False))
            records.append(
                {
                    "onset": row * self.tr,
                    "duration": STIM_S,
                    "trial_type": "image",
                    "image_id": int(design[row]),
                    "trial": k,
                    "repeat": repeat,
                    "shared": shared,
                }
            )
        columns = ["onset", "duration", "trial_type", "image_id", "trial", "repeat", "shared"]
        return pd.DataFrame.from_records(records, columns=columns)

    def load_run(self, subject: int, session: int, run: int) -> NSDRun:
        image = _load_nifti(self.timeseries_path(subject, session, run), 4)
        design = self.read_design(subject, session, run)
        if design.size != image.shape[3] - 1:
            raise _fail(
                self.design_path(subject, session, run),
                f"has {design.size} rows; expected one fewer than the {image.shape[3]} volumes of the time series",
            )
        return NSDRun(
            subject=subject,
            session=session,
            run=run,
            tr=self.tr,
            image=image,
            design=design,
            motion=self.read_motion(subject, session, run),
            events=self.events(subject, session, run, design),
        )

    def iter_runs(self, subject: int) -> Iterator[NSDRun]:
        for session in self.sessions(subject):
            for run in self.runs(subject, session):
                yield self.load_run(subject, session, run)

    # ---- images, ROIs, betas -----------------------------------------------------------
    def _brick(self, f: h5py.File) -> h5py.Dataset:
        if "imgBrick" not in f:
            raise _fail(self.stimuli_path, "no 'imgBrick' dataset (expected N × H × W × 3 uint8)")
        brick = f["imgBrick"]
        if brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            raise _fail(self.stimuli_path, f"imgBrick must be N × H × W × 3 uint8, got {brick.shape} {brick.dtype}")
        return brick

    @property
    def n_images(self) -> int:
        with self._open_stimuli() as f:
            return int(self._brick(f).shape[0])

    def _open_stimuli(self) -> h5py.File:
        if not self.stimuli_path.is_file():
            raise _fail(self.stimuli_path, "missing (expected an HDF5 file with dataset imgBrick)")
        return h5py.File(self.stimuli_path, "r")

    def images(self, image_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 (len(ids), H, W, 3) images for 1-based 73k ids, in the order given."""
        ids = np.asarray(image_ids, np.int64).ravel()
        with self._open_stimuli() as f:
            brick = self._brick(f)
            if ids.size and (ids.min() < 1 or ids.max() > brick.shape[0]):
                raise ValueError(f"image ids must be 1-based in 1..{brick.shape[0]}, got {ids.min()}..{ids.max()}")
            # h5py fancy indexing needs increasing unique indices.
            unique, inverse = np.unique(ids - 1, return_inverse=True)
            return brick[unique.tolist()][inverse] if ids.size else np.empty((0, *brick.shape[1:]), np.uint8)

    def roi(self, subject: int, name: str = "nsdgeneral") -> np.ndarray:
        """ROI labels as int (X, Y, Z): -1 outside, 0 not in the ROI, > 0 inside."""
        path = self.roi_path(subject, name)
        data = np.asarray(_load_nifti(path, 3).dataobj)
        if not np.all(data == np.round(data)):
            raise _fail(path, "expected integer labels (-1 outside, 0 not in ROI, >0 in ROI)")
        return data.astype(np.int16)

    def roi_mask(self, subject: int, name: str = "nsdgeneral") -> np.ndarray:
        return self.roi(subject, name) > 0

    def brainmask(self, subject: int) -> np.ndarray:
        return np.asarray(_load_nifti(self.brainmask_path(subject), 3).dataobj) > 0

    def betas(
        self, subject: int, session: int, mask: np.ndarray | None = None, version: str | None = None
    ) -> np.ndarray:
        """Single-trial betas in % signal change (int16 / 300), chronological trial order.

        Returns (n_trials, X, Y, Z) float32, or (n_trials, n_voxels) for a boolean ``mask`` of
        shape (X, Y, Z) (voxels in C order of the (X, Y, Z) grid, as ``np.flatnonzero``).
        """
        path = self.betas_path(subject, session, version)
        if not path.is_file():
            raise _fail(path, f"missing (expected betas of session {session} as .hdf5 or .nii.gz)")
        return read_betas(path, mask)

    # ---- checks ------------------------------------------------------------------------
    def check(self, subject: int | None = None, read_volumes: bool = False) -> list[str]:
        """Verify the layout; raise ``NSDLayoutError`` listing every problem, else return notes.

        Checks the expdesign, the stimulus brick, and for each subject (or the one given): the ROI
        and brain mask grids, and per run the time series (4-D, numeric dtype, header TR, volume
        count), the design (rows = volumes - 1, onsets on trial rows, ids = expdesign's) and the
        motion file (one row per volume), all from headers and small files. ``read_volumes=True``
        also decompresses every run to check that its last volume is finite and not empty (slow on
        real NSD: ~300 MB a run).
        """
        problems: list[str] = []
        notes: list[str] = []

        def guard(fn):
            try:
                return fn()
            except NSDLayoutError as err:
                problems.append(str(err))
                return None

        design = guard(lambda: self.expdesign)
        n_images = guard(lambda: self.n_images)
        if design is not None and n_images is not None and design.subjectim.max() > n_images:
            problems.append(f"{self.expdesign_path}: subjectim refers to image {design.subjectim.max()} but imgBrick has {n_images}")
        subjects = [subject] if subject is not None else self.subjects()
        if not subjects:
            problems.append(f"{self.root / 'nsddata_timeseries' / 'ppdata'}: no subjAA/{self.space} folders")
        space = SPACES[self.space]
        for subj in subjects:
            roi = guard(lambda: self.roi(subj))
            grid = None if roi is None else roi.shape
            if roi is not None:
                notes.append(f"subj{subj:02d}: grid {grid}, {int((roi > 0).sum())} nsdgeneral voxels")
            for session, runs in self._session_runs(subj).items():
                for run in runs:
                    self._check_run(subj, session, run, design, grid, space, read_volumes, problems)
        if problems:
            raise NSDLayoutError(f"{len(problems)} problem(s) in {self.root}:\n  " + "\n  ".join(problems))
        return notes

    def _check_run(self, subject, session, run, design, grid, space, read_volumes, problems) -> None:
        ts_path = self.timeseries_path(subject, session, run)
        try:
            img = _load_nifti(ts_path, 4)
        except NSDLayoutError as err:
            problems.append(str(err))
            return
        if grid is not None and img.shape[:3] != grid:
            problems.append(f"{ts_path}: grid {img.shape[:3]} differs from the ROI grid {grid}")
        if img.shape[3] != space["volumes"]:
            problems.append(f"{ts_path}: {img.shape[3]} volumes, expected {space['volumes']} for an NSD run in {self.space}")
        dtype = img.get_data_dtype()
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            problems.append(f"{ts_path}: data type {dtype} is not numeric")
        header_tr = float(img.header.get_zooms()[3])
        if header_tr > 0 and abs(header_tr - space["tr"]) > 1e-3:
            problems.append(f"{ts_path}: header TR {header_tr} s, expected {space['tr']} s for {self.space}")
        if read_volumes:
            last = np.asarray(img.dataobj[..., -1])
            if not np.isfinite(last).all() or not last.any():
                problems.append(f"{ts_path}: last volume is empty or not finite")
        try:
            rows = self.read_design(subject, session, run)
        except NSDLayoutError as err:
            problems.append(str(err))
            return
        d_path = self.design_path(subject, session, run)
        if rows.size != img.shape[3] - 1:
            problems.append(f"{d_path}: {rows.size} rows, expected {img.shape[3] - 1} (one fewer than the volumes)")
        onsets = np.flatnonzero(rows)
        off_grid = onsets[onsets % space["rows_per_trial"] != 0]
        if off_grid.size:
            problems.append(f"{d_path}: onsets at rows {off_grid[:5].tolist()} are not on the {space['rows_per_trial']}-row trial grid")
        exp_run = self.experiment_run(subject, session, run)
        if exp_run is None:
            if rows.any():
                problems.append(f"{d_path}: a resting-state run (first or last of 14) must have an all-zero design")
        elif design is not None and session <= design.stimpattern.shape[0] and exp_run <= design.stimpattern.shape[1]:
            expected = design.image_ids(subject, session, exp_run)
            slots = np.flatnonzero(design.stimpattern[session - 1, exp_run - 1]) * space["rows_per_trial"]
            want = np.zeros_like(rows)
            ok_slots = slots[slots < rows.size]
            want[ok_slots] = expected[: ok_slots.size]
            if not np.array_equal(rows, want):
                bad = np.flatnonzero(rows != want)[:5].tolist()
                problems.append(f"{d_path}: differs from nsd_expdesign.mat at rows {bad}")
        elif design is not None:
            problems.append(f"{d_path}: session {session} run {run} is outside the expdesign stimpattern {design.stimpattern.shape[:2]}")
        m_path = self.motion_path(subject, session, run)
        try:
            motion = self.read_motion(subject, session, run)
        except NSDLayoutError as err:
            problems.append(str(err))
            return
        if motion is not None and motion.shape[0] != img.shape[3]:
            problems.append(f"{m_path}: {motion.shape[0]} rows, expected one per volume ({img.shape[3]})")


def read_betas(path: Path, mask: np.ndarray | None = None) -> np.ndarray:
    """An NSD beta file (``.hdf5`` or ``.nii.gz``, int16 = beta × 300) in % signal change: (n, X, Y, Z)
    float32, or (n, n_voxels) for a boolean ``mask`` of shape (X, Y, Z) (C order, as ``np.flatnonzero``)."""
    if path.suffix == ".hdf5":
        with h5py.File(path, "r") as f:
            if "betas" not in f:
                raise _fail(path, "no 'betas' dataset (expected n_trials × Z × Y × X int16)")
            raw = f["betas"][()]
        if raw.ndim != 4:
            raise _fail(path, f"expected n_trials × Z × Y × X, got shape {raw.shape}")
        data = raw.transpose(0, 3, 2, 1)  # MATLAB order on disk: h5py reads (n, Z, Y, X)
    else:
        data = np.moveaxis(np.asarray(_load_nifti(path, 4).dataobj), 3, 0)
    if data.dtype != np.int16:
        raise _fail(path, f"expected int16 (beta × 300), got {data.dtype}")
    if mask is not None:
        if mask.shape != data.shape[1:]:
            raise ValueError(f"mask shape {mask.shape} does not match the betas grid {data.shape[1:]} of {path}")
        return data[:, mask].astype(np.float32) / BETA_SCALE
    return data.astype(np.float32) / BETA_SCALE
