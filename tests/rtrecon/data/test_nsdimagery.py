"""The NSD-Imagery reader on a tiny fake release tree (the layout its module docstring cites)."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from rtrecon.data.nsd import NSDLayoutError
from rtrecon.data.nsdimagery import RUNS, NSDImageryDataset


def _tree(root: Path, n_trials: int = 4) -> Path:
    grid = (3, 4, 5)
    roi = -np.ones(grid, np.int16)
    roi[1, 2, 3] = roi[2, 0, 1] = 1
    (root / "nsddata/ppdata/subj01/func1pt8mm/roi").mkdir(parents=True)
    nib.save(nib.Nifti1Image(roi, np.eye(4)), root / "nsddata/ppdata/subj01/func1pt8mm/roi/nsdgeneral.nii.gz")
    n_betas = sum(2 * n_trials if r.startswith("att") else n_trials for r in RUNS)
    betas = np.zeros((n_betas, *grid), np.int16)
    betas[:, 1, 2, 3] = np.arange(n_betas) * 3  # each beta carries its own row: 0.01 * row in % signal change
    folder = root / "nsddata_betas/ppdata/subj01/func1pt8mm/nsdimagerybetas_fithrf_GLMdenoise_RR"
    folder.mkdir(parents=True)
    with h5py.File(folder / "betas_nsdimagery.hdf5", "w") as f:
        f.create_dataset("betas", data=betas.transpose(0, 3, 2, 1))  # MATLAB order, as NSD's
    (root / "nsddata/bdata/nsdimagery").mkdir(parents=True)
    for run in RUNS:
        rows = ["CONDITION\tRUN"] + [f"cond{k % 2}\t{run}" for k in range(n_trials)]
        (root / f"nsddata/bdata/nsdimagery/nsdimagery_subj01_{run}.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_betas_and_trial_tables_line_up_run_by_run(tmp_path):
    nsd = NSDImageryDataset(_tree(tmp_path))
    betas = nsd.imagery_betas(1, mask=nsd.roi_mask(1))
    assert betas.shape == (9 * 4 + 3 * 8, 2)  # 4 trials a run, attention's trials two betas each
    trials = nsd.imagery_trials(1)
    assert list(trials["run"].unique()) == [r for r in RUNS if not r.startswith("att")] and len(trials) == 9 * 4
    first = trials.groupby("run")["beta"].min().to_dict()
    # visA 0, attA 4-11, imgA_1 12, visB 16, attB 20-27, imgB_1 28, visC 32, attC 36-43, imgC_1 44, then the second imagery runs
    assert first == {"visA": 0, "imgA_1": 12, "visB": 16, "imgB_1": 28, "visC": 32, "imgC_1": 44, "imgA_2": 48,
                     "imgB_2": 52, "imgC_2": 56}
    np.testing.assert_allclose(betas[trials["beta"], 0], trials["beta"] * 0.01, atol=1e-6)  # C order: (1, 2, 3) first
    assert set(trials["task"]) == {"vision", "imagery"} and set(trials["target_set"]) == {"A", "B", "C"}
    assert (trials["CONDITION"].iloc[:2] == ["cond0", "cond1"]).all()


def test_a_missing_file_is_named(tmp_path):
    root = _tree(tmp_path)
    (root / "nsddata/bdata/nsdimagery/nsdimagery_subj01_imgB_2.tsv").unlink()
    with pytest.raises(NSDLayoutError, match="nsdimagery_subj01_imgB_2.tsv"):
        NSDImageryDataset(root).imagery_trials(1)
    with pytest.raises(NSDLayoutError, match="betas_nsdimagery"):
        NSDImageryDataset(root).imagery_betas(2)
