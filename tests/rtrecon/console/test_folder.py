"""The session folder read back by the console: what the engine's store wrote, without the engine."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rtrecon.console.folder import MOTION_NAMES, SessionFolder, StoredRelease


@pytest.fixture(scope="module")
def store(harness, tmp_path_factory):
    """A real engine (in this process) that took 16 volumes and 2 events, then ended the run (the
    default releases: trial 0 at 8 s, then both at run end), with two releases of trial 0 decoded."""
    from engine.server import Engine, EngineSettings
    from engine.store import SessionStore
    from rtrecon.contract.wire import RunEndMessage

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
    store.save_arrays(1, "trial0release0decoded", embedding=np.zeros(4, np.float32),
                      retrieved=np.array(["nsd:5", "nsd:100"]), scores=np.array([0.6, 0.5]))
    store.save_arrays(1, "trial0release2decoded", embedding=np.zeros(4, np.float32),
                      retrieved=np.array(["nsd:100", "nsd:5"]), scores=np.array([0.8, 0.3]), image=image)
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
    # trial 0 (onset 2 s) released after volume 10 (8 s) and at run end (volume 15: 13 s);
    # trial 1 (onset 8 s) was not due by 16 s when the run ended: only its final release (7 s)
    released = folder.released(1)
    assert released == {
        0: [StoredRelease(1, 0, 0, 8.0, False, "nsd:100"), StoredRelease(1, 0, 2, 13.0, True, "nsd:100")],
        1: [StoredRelease(1, 1, 2, 7.0, True, "nsd:101")],
    }
    table = pd.read_csv(store.derivative_path(1, "trials"), sep="\t", na_values="n/a")  # the reference
    assert [(r.trial, r.release, r.release_s, bool(r.final), r.stimulus) for r in table.itertuples()] == [
        (s.trial, s.release, s.release_s, s.final, s.stimulus) for rs in released.values() for s in rs]
    newest = folder.decoded(1, 0)  # the newest release decoded
    assert newest.release == 2 and newest.retrieved == ["nsd:100", "nsd:5"] and newest.scores == [0.8, 0.3]
    assert newest.image.shape == (32, 32, 3)
    first = folder.decoded(1, 0, release=0)
    assert (first.release, first.retrieved, first.scores, first.image) == (0, ["nsd:5", "nsd:100"], [0.6, 0.5], None)
    assert folder.decoded(1, 0, release=1) is None  # never released
    assert folder.decoded(1, 1) is None and folder.decoded(1, 1, release=2) is None  # a bare beta: nothing decoded


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
