"""The console's aggregation of the engine's feed, the store's rows and the operator's controls."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from rtrecon.console.folder import MOTION_NAMES, DecodedTrial, StoredRelease, VolumeRow
from rtrecon.console.state import SessionState, thumbnail
from rtrecon.contract.wire import StatusMessage, TrialResultMessage

SESSION = "sub-01_ses-01"


def _volume(index: int, fd: float, run: int = 1, trans_x: float = 0.0) -> StatusMessage:
    metrics = {"run": float(run), "volume": float(index), "framewise_displacement": fd, "latency_ms": 12.0,
               "iterations": 3.0, "trials_decoding": 0.0, **{name: 0.0 for name in MOTION_NAMES}, "trans_x": trans_x}
    return StatusMessage(process="engine", state="running", message=f"run {run} volume {index}", metrics=metrics)


def _links(bridge: bool = True, events: bool = True, decoding: int = 0) -> StatusMessage:
    return StatusMessage(process="engine", state="links", metrics={
        "bridge_alive": float(bridge), "stimulus_events_alive": float(events), "stimulus_results_alive": 1.0,
        "results_pending": 0.0, "trials_decoding": float(decoding)})


def _result(trial: int, stimulus: str, retrieved: list[str], release: int = 0, final: bool = False,
            image: np.ndarray | None = None) -> TrialResultMessage:
    return TrialResultMessage(session=SESSION, run=1, trial=trial, stimulus=stimulus, retrieved=retrieved,
                              scores=[1.0 - 0.1 * k for k in range(len(retrieved))], image=image, decoder="mindeye2",
                              release=release, release_s=8.0 * (release + 1), final=final,
                              latencies={"decode_s": 0.02}, stamps={"trial_ready": 1.0, "sent": 1.5})


@pytest.fixture
def state() -> SessionState:
    return SessionState(SESSION, expected_volumes=40, fd_threshold_mm=0.5, heartbeat_s=0.5, decoder_backlog=3,
                        expected_tr=1.5)


def _levels(state: SessionState, now: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for banner in state.banners(now):
        out.setdefault(banner["level"], []).append(banner["text"])
    return out


def test_volumes_counts_and_gaps(state):
    assert state.on_status(_volume(0, math.nan), now=0.0) is False
    assert state.on_status(_volume(1, 0.1), now=0.1) is False
    assert state.on_status(_volume(3, 0.1), now=0.2) is True  # volume 2 never came on the feed: read the store
    missing = StatusMessage(process="engine", state="warning", message="run 1 volume 4 missing: never came")
    state.on_status(missing, now=0.3)
    summary = state.summary(now=0.3)
    assert (summary["received"], summary["missing"], summary["expected"]) == (3, 1, 40)
    assert "1 missing volume(s) (last: 4: never came)" in " ".join(_levels(state, 0.3)["warning"])
    # The store's rows fill the gap; the feed's own rows stay as they came.
    state.add_volume_rows([VolumeRow(1, 2, (0.0,) * 6, 0.2, 9.0, False), VolumeRow(1, 3, (9.0,) * 6, 9.0, 9.0, False)])
    volumes = {v["index"]: v for v in state.snapshot(now=0.4)["volumes"]}
    assert sorted(volumes) == [0, 1, 2, 3, 4]
    assert volumes[2]["fd"] == 0.2 and volumes[3]["fd"] == 0.1
    assert volumes[0]["fd"] is None and volumes[4]["missing"] and volumes[4]["reason"] == "never came"
    # stage timings for volumes known (the first ones kept), none invented for volumes not seen
    state.changes(now=0.4)
    state.add_stages(1, {1: {"realign": 5.0, "glm": 1.0}, 9: {"realign": 3.0}})
    state.add_stages(1, {1: {"realign": 7.0}})
    assert [(v["index"], v["stages"]) for v in state.changes(now=0.5)["volumes"]] == [(1, {"realign": 5.0, "glm": 1.0})]


def test_fd_alarm_crosses_the_threshold(state):
    for i, fd in enumerate([math.nan, 0.1, 0.49, 0.2]):
        state.on_status(_volume(i, fd), now=i)
    assert state.fd_alarm() is None  # the control: 0.49 mm stays under 0.5 mm
    assert "alarm" not in _levels(state, 3.0)
    state.on_status(_volume(4, 2.3, trans_x=2.0), now=4.0)
    state.on_status(_volume(5, 0.1), now=4.5)
    alarm = state.fd_alarm()
    assert (alarm["index"], alarm["fd"], alarm["count"]) == (4, 2.3, 1)
    (text,) = _levels(state, 4.5)["alarm"]
    assert "FD 2.30 mm at volume 4" in text and "threshold 0.5 mm" in text
    update = state.changes(now=4.5)
    assert update["summary"]["alarm"]["index"] == 4 and update["volumes"][-1]["index"] == 5


def test_releases_rank_thumbnail_and_accuracy(state):
    pixels = np.zeros((256, 192, 3), np.uint8)
    pixels[..., 0] = 200
    state.on_result(_result(0, "nsd:7", ["nsd:3", "nsd:7", "nsd:1"]))
    state.on_result(_result(0, "nsd:7", ["nsd:7", "nsd:3"], release=1, final=True, image=pixels))
    state.on_result(_result(1, "nsd:8", ["nsd:2", "nsd:3", "nsd:4", "nsd:5", "nsd:6", "nsd:8"]))
    state.on_result(_result(2, "nsd:9", ["nsd:9"]))
    state.on_result(TrialResultMessage(session="sub-02_ses-01", run=1, trial=5))  # another session's: ignored
    trials = {t["trial"]: t for t in state.snapshot(now=0.0)["trials"]}
    assert sorted(trials) == [0, 1, 2]
    first, refined = trials[0]["releases"]
    assert (first["release"], first["rank"], first["final"]) == (0, 2, False)
    assert (refined["release"], refined["rank"], refined["final"], refined["release_s"]) == (1, 1, True, 16.0)
    # ranked among all the engine retrieved (its top_k), shown as a top-5
    assert trials[1]["releases"][0]["rank"] == 6 and len(trials[1]["releases"][0]["retrieved"]) == 5
    state.on_result(_result(3, "nsd:10", ["nsd:2"]))
    assert state.runs[1].trials[3].latest().rank is None  # not among those retrieved: unknown
    state.apply_control({"time": 0.0, "action": "mark_bad", "run": 1, "trial": 3})
    picture = Image.open(io.BytesIO(base64.b64decode(refined["thumbnail"].split(",", 1)[1])))
    assert picture.size == (96, 128) and picture.getpixel((10, 10))[:3] == (200, 0, 0)
    # each trial scored once, on its first release: top-1 only trial 2 (trial 0's r0 has it second,
    # its refinement first: scoring the latest would give 2/3); top-5: trial 1's true image is sixth
    accuracy = state.accuracy()
    assert (accuracy["trials"], accuracy["top1"], accuracy["top5"]) == (3, pytest.approx(1 / 3), pytest.approx(2 / 3))
    state.apply_control({"time": 0.0, "action": "mark_bad", "run": 1, "trial": 2})
    accuracy = state.accuracy()
    assert (accuracy["trials"], accuracy["top1"], accuracy["top5"]) == (2, 0.0, 0.5)
    # what changed (a snapshot for a new page leaves it to push to the others), each trial once
    assert [t["trial"] for t in state.changes(now=0.0)["trials"]] == [0, 1, 2, 3]
    assert state.changes(now=0.0)["trials"] == []
    # a restarted engine republishes what it had sent: the same (run, trial, release) is not taken again
    state.on_result(_result(0, "nsd:7", ["nsd:1"], release=1, final=True))
    assert state.changes(now=0.0)["trials"] == []
    assert [r["rank"] for r in state.snapshot(now=0.0)["trials"][0]["releases"]] == [2, 1]


def test_thumbnail_refuses_what_is_not_an_image():
    assert thumbnail(None) is None
    assert thumbnail(np.zeros((4, 4), np.float32)) is None
    assert thumbnail(np.zeros((8, 8, 3), np.uint8)).startswith("data:image/png;base64,")


def test_links_engine_silence_and_restart(state):
    state.on_status(_volume(0, math.nan), now=0.0)
    state.on_status(_links(bridge=True, events=True), now=0.5)
    assert "error" not in _levels(state, 1.0)
    state.on_status(_links(bridge=False, events=True), now=1.0)
    assert _levels(state, 1.2)["error"] == ["link bridge → engine is dead"]
    # Silent for more than liveness × heartbeat (1.5 s): the engine link is dead.
    errors = _levels(state, 3.0)["error"]
    assert len(errors) == 1 and errors[0].startswith("engine silent for 2 s")
    assert state.summary(now=3.0)["links"]["engine"] is False and state.run_state(3.0) == "run 1: engine silent"
    state.on_status(_links(), now=10.0)
    assert state.engine_restarts == 1 and "error" not in _levels(state, 10.0)
    # A dead bridge after the run has ended is no alarm.
    state.set_run_info(1, ended=1)
    state.on_status(_links(bridge=False), now=10.5)
    assert "error" not in _levels(state, 10.5) and state.run_state(10.5) == "run 1 ended (1 volumes)"
    # nor an engine stopped after it (the end of a session): said, not as an error
    assert _levels(state, 20.0) == {"info": ["engine silent for 10 s, after run 1 ended"]}


def test_decoder_backlog_bad_tr_and_feedback_pause(state):
    state.on_status(_volume(0, math.nan), now=0.0)
    state.on_status(_links(decoding=2), now=0.1)
    assert "warning" not in _levels(state, 0.1) and state.summary(0.1)["decoder"]["ready"]
    assert state.summary(0.1)["decoder"]["gpu_memory_mb"] is None
    state.on_status(_links(decoding=3), now=0.2)
    assert _levels(state, 0.2)["warning"] == ["decoder falling behind: 3 trials waiting"]
    state.set_run_info(1, tr=1.5)
    assert "error" not in _levels(state, 0.2)
    state.set_run_info(1, tr=2.0)
    assert _levels(state, 0.2)["error"] == ["bad TR: run 1 has TR 2 s, the session's is 1.5 s"]
    gpu = _links()
    state.on_status(StatusMessage(process="engine", state="links", metrics={**gpu.metrics, "gpu_memory_mb": 5120.0}), now=0.2)
    assert state.summary(0.2)["decoder"]["gpu_memory_mb"] == 5120.0
    # The bridge's lead over the engine, from the links status: shown, and a warning once at its bound.
    assert state.summary(0.2)["bridge_lead"] is None
    state.on_status(StatusMessage(process="engine", state="links", metrics={
        **gpu.metrics, "bridge_lead": 2.0, "bridge_lead_bound": 8.0}), now=0.2)
    assert state.summary(0.2)["bridge_lead"] == {"lead": 2, "bound": 8} and "warning" not in _levels(state, 0.2)
    state.on_status(StatusMessage(process="engine", state="links", metrics={
        **gpu.metrics, "bridge_lead": 8.0, "bridge_lead_bound": 8.0}), now=0.2)
    assert _levels(state, 0.2)["warning"] == ["engine behind the scanner: the bridge is 8 volume(s) ahead, its bound "
                                              "(max_lead 8); the rest wait in its spool"]
    state.on_status(_links(), now=0.2)  # a bridge that says nothing (gone, or an older one): not shown
    assert state.summary(0.2)["bridge_lead"] is None
    state.apply_control({"time": 0.0, "action": "pause_feedback"})
    assert _levels(state, 0.2)["info"] == ["feedback paused by the operator"]
    state.apply_control({"time": 1.0, "action": "resume_feedback"})
    assert "info" not in _levels(state, 0.2)


def test_backfill_of_events_and_decoded_releases(state):
    state.add_events(1, {0: (2.0, "nsd:7"), 1: (8.0, "nsd:8")})
    state.add_stored_release(StoredRelease(1, 0, 0, 8.0, False, "nsd:7"), DecodedTrial(1, 0, 0, ["nsd:1", "nsd:7"], [0.9, 0.2], None))
    state.add_stored_release(StoredRelease(1, 0, 2, 13.0, True, "nsd:7"), DecodedTrial(1, 0, 2, ["nsd:7", "nsd:1"], [0.9, 0.2], None))
    state.on_result(_result(1, "nsd:8", ["nsd:8"]))
    # the feed's result stays; the store's next release of the trial is added beside it
    state.add_stored_release(StoredRelease(1, 1, 0, 8.0, False, "nsd:8"), DecodedTrial(1, 1, 0, ["nsd:1"], [0.5], None))
    state.add_stored_release(StoredRelease(1, 1, 1, 16.0, False, "nsd:8"), DecodedTrial(1, 1, 1, ["nsd:2", "nsd:8"], [0.5, 0.4], None))
    # sent as a bare beta while the console heard nothing, with no release time recorded
    state.add_stored_release(StoredRelease(1, 2, 2, math.nan, True, "nsd:9"), None)
    trials = {t["trial"]: t for t in state.snapshot(now=0.0)["trials"]}
    assert trials[0]["onset"] == 2.0
    assert [(r["release"], r["release_s"], r["final"], r["rank"], r["decoder"]) for r in trials[0]["releases"]] == [
        (0, 8.0, False, 2, "from the store"), (2, 13.0, True, 1, "from the store")]
    assert [(r["release"], r["retrieved"], r["decoder"]) for r in trials[1]["releases"]] == [
        (0, ["nsd:8"], "mindeye2"), (1, ["nsd:2", "nsd:8"], "from the store")]
    assert trials[2]["stimulus"] == "nsd:9"
    assert [(r["decoder"], r["retrieved"], r["rank"]) for r in trials[2]["releases"]] == [("from the store", [], None)]
    # what the page parses is strict JSON: no NaN
    assert trials[2]["releases"][0]["release_s"] is None
    # read back again (a second backfill): nothing changes; the feed's copy of a stored release replaces it
    state.changes(now=0.0)
    state.add_stored_release(StoredRelease(1, 0, 0, 8.0, False, "nsd:7"), DecodedTrial(1, 0, 0, ["nsd:5"], [0.1], None))
    assert state.changes(now=0.0)["trials"] == []
    state.on_result(_result(0, "nsd:7", ["nsd:1", "nsd:7"]))
    assert state.snapshot(now=0.0)["trials"][0]["releases"][0]["decoder"] == "mindeye2"
    assert state.accuracy()["trials"] == 2 and state.accuracy()["top5"] == 1.0
    state.on_result(dataclasses.replace(_result(2, "nsd:9", []), latencies={"decode_s": math.nan}, stamps={"sent": math.inf}))
    json.dumps(state.snapshot(now=0.0), allow_nan=False)


def test_cpd_per_trial_its_mean_and_two_way_and_the_shown_stage(state):
    from rtrecon.contract.wire import ShownMessage

    def shown(trial: int, release: int = 0, session: str = SESSION) -> ShownMessage:
        return ShownMessage(session=session, run=1, trial=trial, release=release, sequence=trial, shown=10.0 + trial,
                            shown_wall=2.0, received_to_shown_s=0.02)

    state.on_shown(shown(1))  # it may come before the result's own copy (two paths through the engine)
    for trial, cpd in enumerate((0.5, -0.25, 0.75)):
        state.on_result(dataclasses.replace(_result(trial, f"nsd:{trial}", [f"nsd:{trial}"]), pairmate="nsd:9", cpd=cpd))
    state.on_result(_result(3, "nsd:3", ["nsd:3"]))  # no pairmate: no CPD, left out of its figures
    state.on_result(dataclasses.replace(_result(0, "nsd:0", ["nsd:0"], release=1), pairmate="nsd:9", cpd=-0.9))
    state.on_shown(shown(0))
    state.on_shown(shown(2, session="sub-02_ses-01"))  # another session's: ignored
    trials = {t["trial"]: t for t in state.snapshot(now=0.0)["trials"]}
    assert [r["cpd"] for r in trials[0]["releases"]] == [0.5, -0.9] and trials[3]["releases"][0]["cpd"] is None
    assert trials[1]["releases"][0]["shown"] == {"run_s": 11.0, "wall": 2.0, "received_to_shown_s": 0.02}
    assert trials[0]["releases"][0]["shown"]["run_s"] == 10.0 and trials[0]["releases"][1]["shown"] is None
    assert trials[2]["releases"][0]["shown"] is None
    figures = state.accuracy()  # first releases: 0.5, -0.25, 0.75
    assert figures["cpd_trials"] == 3 and figures["cpd_mean"] == pytest.approx(1 / 3)
    assert figures["pairmate_two_way"] == pytest.approx(2 / 3)
    json.dumps(state.snapshot(now=0.0), allow_nan=False)
    # from the store: the trials table's pairmate and CPD
    state.add_stored_release(StoredRelease(1, 5, 0, 8.0, False, "nsd:5", "nsd:6", 0.3), None)
    assert {t["trial"]: t for t in state.snapshot(now=0.0)["trials"]}[5]["releases"][0]["cpd"] == 0.3
