"""The engine's state checkpoint: saved and loaded exactly; one it cannot use is named and ignored."""

from __future__ import annotations

import logging

import numpy as np

from engine.checkpoint import EngineCheckpoint, RunCheckpoint, settings_fingerprint
from engine.trials import TrialNormaliser
from rtrecon.contract.config import EngineSection


def _normaliser(seed: int = 0) -> TrialNormaliser:
    rng = np.random.default_rng(seed)
    normaliser = TrialNormaliser(50, average_repeats=True)
    for trial in range(7):
        for release in (0, 1):
            normaliser.release(1, trial, f"img{trial % 3}", rng.normal(size=50), release=release)
    return normaliser


def test_round_trip_continues_bit_for_bit(tmp_path):
    live = _normaliser()
    meta, arrays = live.state()
    run = RunCheckpoint(40, False, {0: 1, 3: 0}, 9, {8: {"trial": 3, "release": 0, "release_s": 8.7, "final": False,
                                                        "stimulus": "img0", "volumes": 40, "method": "lss", "repeats": 2}},
                        [[3, 38, 0.0, 0.0725, 140, 181]])
    fingerprint = settings_fingerprint(EngineSection())
    EngineCheckpoint(fingerprint, {1: run}, meta, {**arrays, "run1_columns0": np.arange(38.0)[:, None]}).save(tmp_path / "s.npz")
    loaded = EngineCheckpoint.load(tmp_path / "s.npz", fingerprint)
    assert loaded is not None and loaded.runs == {1: run}
    np.testing.assert_array_equal(loaded.arrays["run1_columns0"], np.arange(38.0)[:, None])
    restored = TrialNormaliser(50, average_repeats=True)
    restored.restore(loaded.normaliser, loaded.arrays)
    # The next release z-scores and averages exactly as the normaliser that was saved.
    beta = np.random.default_rng(9).normal(size=50)
    a, b = live.release(1, 7, "img1", beta, release=1), restored.release(1, 7, "img1", beta, release=1)
    np.testing.assert_array_equal(a.z, b.z)
    assert a.repeats == b.repeats == 3


def test_a_checkpoint_it_cannot_use_is_named_and_ignored(tmp_path, caplog):
    fingerprint = settings_fingerprint(EngineSection())
    meta, arrays = _normaliser().state()
    EngineCheckpoint(fingerprint, {1: RunCheckpoint(20, True)}, meta, arrays).save(tmp_path / "s.npz")
    assert EngineCheckpoint.load(tmp_path / "missing.npz", fingerprint) is None  # none yet: nothing said
    assert not caplog.records
    # The settings shape the state: other releases, another checkpoint. Its interval alone does not.
    assert settings_fingerprint(EngineSection(checkpoint_volumes=5)) == fingerprint
    other = settings_fingerprint(EngineSection(releases_s=[6.0]))
    with caplog.at_level(logging.WARNING):
        assert EngineCheckpoint.load(tmp_path / "s.npz", other) is None
    assert "written with other [engine] settings" in caplog.text
    raw = bytearray((tmp_path / "s.npz").read_bytes())
    (tmp_path / "s.npz").write_bytes(bytes(raw[: len(raw) // 2]))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert EngineCheckpoint.load(tmp_path / "s.npz", fingerprint) is None
    assert "unreadable checkpoint" in caplog.text and "replayed in full" in caplog.text
