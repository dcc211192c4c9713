"""A tiny synthetic NSD-layout dataset, generated once for the data tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from rtrecon.data.synthetic import PRESETS, generate

#: Small enough for seconds, big enough for a GLM and a decoder to have something to find.
TINY = replace(PRESETS["small"], name="tiny", grid=(16, 19, 16), voxel_mm=6.75, roi_voxels=300, image_size=48)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("nsd") / "root", n_subjects=2, n_sessions=2, n_runs=2, size=TINY,
                    seed=7, progress=False)
