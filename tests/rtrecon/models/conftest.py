"""Fixtures for the MindEye2 model tests: the official reference data, loaded once per session."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from rtrecon.models import MindEye2, load_official

NAMES = ("tiny_fixture", "tiny_fixture_rot", "tiny_fixture_blurry")


@dataclass
class OfficialFixture:
    name: str
    meta: dict
    state_dict: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    intermediates: dict[str, torch.Tensor]
    model: MindEye2


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "mindeye2_reference"


@pytest.fixture(scope="session")
def official(reference_dir: Path):
    """``official(name)`` -> :class:`OfficialFixture` (the model loaded from its state dict)."""
    cache: dict[str, OfficialFixture] = {}

    def get(name: str) -> OfficialFixture:
        if name not in cache:
            arrays = np.load(reference_dir / f"{name}.npz")
            part = lambda prefix: {  # noqa: E731
                k[len(prefix) :]: torch.from_numpy(arrays[k]) for k in arrays.files if k.startswith(prefix)
            }
            sd = {k: v.float() for k, v in part("state_dict/").items()}
            cache[name] = OfficialFixture(
                name, json.loads((reference_dir / f"{name}.json").read_text()), sd,
                part("inputs/"), part("outputs/"), part("intermediates/"), load_official(sd),
            )
        return cache[name]

    return get


@pytest.fixture(scope="session")
def manifest(reference_dir: Path):
    """``manifest(name)`` -> the official state-dict manifest as a list of (key, shape)."""

    def get(name: str) -> tuple[dict, list[tuple[str, tuple[int, ...]]]]:
        data = json.loads((reference_dir / f"state_dict_manifest_{name}.json").read_text())
        return data["config"], [(e["key"], tuple(e["shape"])) for e in data["entries"]]

    return get



@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny models: one torch thread (tests/conftest.py says why)."""
