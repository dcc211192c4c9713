"""Reader for NSD-Imagery (Kneeland et al. 2025) in the NSD release's layout, beside :mod:`rtrecon.data.nsd`.

:class:`NSDImageryDataset` is an :class:`~rtrecon.data.nsd.NSDDataset` (same root, ROIs, brain
mask and stimuli) that also reads the NSD-Imagery session's single-trial betas and trial tables.
Layout (relative to the NSD root; AA the 2-digit subject), as public code reading the release shows::

    nsddata_betas/ppdata/subjAA/func1pt8mm/<version>/betas_nsdimagery.hdf5 (or .nii.gz)
        <version>: nsdimagerybetas_fithrf_GLMdenoise_RR, nsdimagerybetas_fithrf
    nsddata/bdata/nsdimagery/nsdimagery_subjAA_<run>.tsv    one row per trial, with a CONDITION column
    nsddata/experiments/nsdimagery/<run>_dm.mat              the runs' design matrices (not read here)

The 12 runs, in the order of the session and of the betas: visA attA imgA_1 visB attB imgB_1 visC
attC imgC_1 imgA_2 imgB_2 imgC_2 (vision, attention, imagery × target sets A, B, C; the imagery runs
twice). Vision and imagery runs give one beta per trial (48); attention runs two (cue and detection
epochs, 96): 720 betas in all.

Sources (public; reference only): cvnlab/nsddatapaper ``main/glm_nsdimagery2.m`` (the official
GLMsingle fit: 12 runs, 3-s events for vision, imagery and attention, attention with two adjacent
3-s events a trial) and the NSD preprocessing script's list of
``nsddata/experiments/nsdimagery/<run>_dm.mat`` in run order; Ashsr/NaselarisLab
``NSD_Imagery_Access/NSDI_Access.py`` (``betas_nsdimagery`` under ``nsdimagerybetas_fithrf``, an
HDF5 ``betas`` dataset or NIfTI); the NSD-Imagery benchmark's preprocessing code (the 720 betas of
``betas_nsdimagery.nii.gz``, X × Y × Z × 720, masked by nsdgeneral); an NSD-Imagery dataset loader
(``nsdimagery_subjAA_<run>.tsv`` in ``nsddata/bdata/nsdimagery``, its ``CONDITION`` column, 48 or
2 × 48 betas per run); mynanshan/NHprojectNSDimagery's download guide (the
``fithrf_GLMdenoise_RR`` version, 720 betas, attention's two betas a trial). None of them states
the betas' data type or scale (third-party code reads the HDF5 as int16 / 300, NSD's convention):
this reader takes NSD's convention (int16 = beta × 300, :func:`rtrecon.data.nsd.read_betas`) and
refuses any other type with an error naming the file. Which of an attention trial's two betas is
the cue's is not stated, so :meth:`NSDImageryDataset.imagery_trials` lists vision and imagery
trials only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rtrecon.data.nsd import NSDDataset, _fail, read_betas

__all__ = ["RUNS", "IMAGERY_BETA_VERSIONS", "NSDImageryDataset", "betas_per_trial"]

RUNS = ("visA", "attA", "imgA_1", "visB", "attB", "imgB_1", "visC", "attC", "imgC_1", "imgA_2", "imgB_2", "imgC_2")
#: Beta versions in order of preference.
IMAGERY_BETA_VERSIONS = ("nsdimagerybetas_fithrf_GLMdenoise_RR", "nsdimagerybetas_fithrf")
TASKS = {"vis": "vision", "att": "attention", "img": "imagery"}


def betas_per_trial(run: str) -> int:
    """Betas a trial of ``run`` has: 2 in attention runs (cue and detection epochs), else 1."""
    return 2 if run.startswith("att") else 1


class NSDImageryDataset(NSDDataset):
    """An NSD root holding NSD-Imagery (see the module docstring)."""

    def imagery_betas_path(self, subject: int, version: str | None = None) -> Path:
        base = self.root / "nsddata_betas" / "ppdata" / f"subj{subject:02d}" / self.space
        versions = IMAGERY_BETA_VERSIONS if version is None else (version,)
        for v in versions:
            for suffix in (".hdf5", ".nii.gz"):
                if (path := base / v / f"betas_nsdimagery{suffix}").is_file():
                    return path
        return base / versions[0] / "betas_nsdimagery.hdf5"

    def trials_path(self, subject: int, run: str) -> Path:
        return self.root / "nsddata" / "bdata" / "nsdimagery" / f"nsdimagery_subj{subject:02d}_{run}.tsv"

    def imagery_betas(self, subject: int, mask: np.ndarray | None = None, version: str | None = None) -> np.ndarray:
        """The session's 720 betas in % signal change, in the order of :data:`RUNS` (as :meth:`NSDDataset.betas`)."""
        path = self.imagery_betas_path(subject, version)
        if not path.is_file():
            raise _fail(path, "missing (expected the NSD-Imagery betas as .hdf5 or .nii.gz)")
        return read_betas(path, mask)

    def imagery_trials(self, subject: int) -> pd.DataFrame:
        """Vision and imagery trials: each run's table as released, plus ``run`` (its name), ``task``
        (vision / imagery), ``target_set`` (A, B, C), ``trial`` (0-based in the run) and ``beta``
        (the row of :meth:`imagery_betas`)."""
        tables, offset = [], 0
        for run in RUNS:
            path = self.trials_path(subject, run)
            if not path.is_file():
                raise _fail(path, "missing (expected the run's trial table, one row per trial)")
            table = pd.read_csv(path, sep="\t")
            if "CONDITION" not in table:
                raise _fail(path, "no CONDITION column")
            if run[:3] != "att":
                tables.append(table.assign(run=run, task=TASKS[run[:3]], target_set=run[3], trial=np.arange(len(table)),
                                           beta=offset + np.arange(len(table))))
            offset += betas_per_trial(run) * len(table)
        return pd.concat(tables, ignore_index=True)
