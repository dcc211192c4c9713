"""The session folder read back by the console: what the engine's store wrote, without the engine."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rtrecon.console.folder import MOTION_NAMES, SessionFolder


@pytest.fixture(scope="module")
def store(harness, tmp_path_factory):
    """A real engine (in this process) that took 16 volumes and 2 events, then ended the run."""
    from engine.server import Engine, EngineSettings
    from engine.store import SessionStore
    from rtrecon.wire import RunEndMessage

    root = tmp_path_factory.mktemp("store")
    store = SessionStore(root, "01", "01", "perception")
    engine = Engine(EngineSettings(planned_volumes=harness.N_VOLS, realign_samples=2000), store)
    for i in range(16):
        if i in (3, 9):
            engine.handle(harness.event(0 if i == 3 else 1))
        engine.handle(harness.volume(i))
    engine.handle(RunEndMessage(session=harness.SESSION, run=1, n_volumes=16))
    engine.join_background()
    image = np.full((32, 32, 3), 90, np.uint8)
    store.save_arrays(1, "trial0decoded", embedding=np.zeros(4, np.float32), retrieved=np.array(["nsd:100", "nsd:5"]),
                      scores=np.array([0.8, 0.3]), image=image)
    return store


def test_volumes_match_the_stored_tables(store, harness):
    folder = SessionFolder(store.root, "01", "01", "perception")
    assert folder.runs() == [1] and folder.tr(1) == harness.TR and folder.ended(1) == store.n_volumes(1) == 16
    rows = folder.volumes(1)
    confounds = pd.read_csv(store.derivative_path(1, "confounds_timeseries"), sep="\t", na_values="n/a")
    timings = pd.read_csv(store.derivative_path(1, "volumetimings"), sep="\t", na_values="n/a")
    assert [r.index for r in rows] == confounds["volume"].tolist() == list(range(16))
    np.testing.assert_allclose([r.params for r in rows], confounds[list(MOTION_NAMES)].to_numpy())
    np.testing.assert_allclose([r.fd for r in rows], confounds["framewise_displacement"].to_numpy())
    np.testing.assert_allclose([r.latency_ms for r in rows], timings["glm_updated_ms"].to_numpy())
    assert math.isnan(rows[0].fd) and rows[harness.SPIKE].fd > 2.0 and not any(r.missing for r in rows)
    assert [r.index for r in folder.volumes(1, start=10)] == list(range(10, 16))
    stages = folder.stages(1, start=4)
    assert sorted(stages) == list(range(4, 16))
    np.testing.assert_allclose([stages[i]["realign"] for i in range(4, 16)],
                               (timings["realigned_ms"] - timings["persisted_ms"])[4:], atol=1e-3)
    np.testing.assert_allclose([stages[i]["glm"] for i in range(4, 16)],
                               (timings["glm_updated_ms"] - timings["realigned_ms"])[4:], atol=1e-3)
    np.testing.assert_allclose([stages[i]["bridge"] for i in range(4, 16)],
                               1000 * (timings["received_time"] - timings["sent_time"])[4:], atol=1e-3)


def test_events_released_and_decoded_trials(store):
    folder = SessionFolder(store.root, "01", "01", "perception")
    assert folder.events(1) == {0: (2.0, "nsd:100"), 1: (8.0, "nsd:101")}
    assert folder.released(1) == [0, 1]
    decoded = folder.decoded(1, 0)
    assert decoded.retrieved == ["nsd:100", "nsd:5"] and decoded.scores == [0.8, 0.3] and decoded.image.shape == (32, 32, 3)
    assert folder.decoded(1, 1) is None  # a bare beta: nothing decoded


def test_the_folder_reads_the_stores_own_names(store):
    """The engine's store and the console spell runs through the one session layout (``run-01``)."""
    folder = SessionFolder(store.root, "01", "01", "perception")
    assert folder.prefix(1) == store.prefix(1) and folder.prefix(1).endswith("_run-01")
    assert any(store.func.glob(f"{folder.prefix(1)}_*")) and any(store.derivatives.glob(f"{folder.prefix(1)}_*"))


def test_a_torn_row_and_an_absent_session_read_as_nothing(store, tmp_path):
    folder = SessionFolder(tmp_path, "01", "01", "perception")
    assert folder.runs() == [] and folder.volumes(1) == [] and folder.tr(1) is None and folder.ended(1) is None
    path = store.derivative_path(1, "confounds_timeseries")
    torn = tmp_path / "derivatives/rtrecon/sub-01/ses-01/func" / path.name
    torn.parent.mkdir(parents=True)
    text = path.read_text()
    torn.write_text(text[: text.rfind("\n", 0, len(text) - 1) + 1] + "15\t0.1\t0.")  # the last row half written
    assert [r.index for r in folder.volumes(1)] == list(range(15))
