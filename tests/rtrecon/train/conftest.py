"""Small random-but-learnable training data for the training tests."""

from __future__ import annotations

import numpy as np
import pytest

from rtrecon.train.data import SubjectData, TrainingData


def make_data(voxels=(50, 40), n_images=60, n_trials=96, seed=0, names=None) -> TrainingData:
    """Betas are a noisy linear image of the CLIP tokens, so retrieval can be learned."""
    rng = np.random.default_rng(seed)
    targets = rng.standard_normal((n_images, 4, 16)).astype(np.float32)
    subjects = []
    for i, nv in enumerate(voxels):
        w = rng.standard_normal((64, nv)).astype(np.float32) / 8
        ids = rng.integers(0, n_images, n_trials)
        betas = targets[ids].reshape(n_trials, -1) @ w + 0.3 * rng.standard_normal((n_trials, nv)).astype(np.float32)
        subjects.append(SubjectData(betas, ids, (names or [f"sub-{j:02d}" for j in range(len(voxels))])[i]))
    return TrainingData(subjects, targets)


@pytest.fixture
def small_data() -> TrainingData:
    return make_data()


@pytest.fixture
def make_training_data():
    """The factory behind ``small_data``, for tests that need other subjects."""
    return make_data


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny models: one torch thread (tests/conftest.py says why)."""
