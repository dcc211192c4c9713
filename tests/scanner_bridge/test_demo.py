"""`rtrecon bridge demo`: the shared mosaic series through simulator → bridge process → listener process."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.cli import main
from scanner_bridge.commands.demo import default_series


def test_demo_delivers_the_series_and_reports_latencies(tmp_path: Path, dicom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert default_series() == dicom_dir / "siemens_mosaic_ep2d_vd13"
    assert main(["bridge", "demo", "--out", str(tmp_path), "--speed", "16"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])  # the last line is the JSON summary
    assert summary["demo"] == "bridge" and summary["series"] == "siemens_mosaic_ep2d_vd13"
    assert summary["volumes"] == summary["received"] == 6
    assert summary["matches_reference"] is True
    assert summary["exit_codes"] == {"bridge": 0, "listener": 0}
    assert 0 < summary["median_latency_ms"] <= summary["max_latency_ms"]
    nifti = Path(summary["nifti"])
    assert nifti.parent.parent == tmp_path  # a fresh dated folder under --out
    ref = nib.load(dicom_dir / "siemens_mosaic_ep2d_vd13" / "ref" / "2_ep2d_Asc.nii")
    np.testing.assert_array_equal(np.asanyarray(nib.load(nifti).dataobj), np.asanyarray(ref.dataobj))
    assert sorted(p.name for p in nifti.parent.glob("run-01/vol-*.nii")) == [f"vol-{i:05d}.nii" for i in range(6)]


def test_demo_names_a_missing_series(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bridge", "demo", "--series", str(tmp_path / "nothing"), "--out", str(tmp_path)]) == 2
    assert "nothing: no such DICOM series folder" in capsys.readouterr().err
