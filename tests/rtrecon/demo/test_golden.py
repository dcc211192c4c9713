"""The golden replay (:mod:`rtrecon.demo.golden`): the closed loop's regression and crash test.

The expected values are ``tests/rtrecon/demo/golden/demo_session.json``. When a change to the
engine, the bridge, the decoder or the synthetic world is *meant* to change the results, regenerate
them explicitly (never from a test) and commit the new file with the change::

    python -m rtrecon.demo.golden --regenerate tests/rtrecon/demo/golden/demo_session.json

(``--cache DIR`` reuses a cache holding the shortened demo's dataset and decoder; otherwise they are
made in a temporary folder, about a minute here.)

The session under test is the golden one with every process SIGKILLed once on the way (bridge at
1/4 of the volumes, the stimulus program at 1/2, engine at 3/4) and restarted: it must still decode
every trial once, store every volume once, show every result on the participant's window, and give
every trial's expected beta and decoded result. Both checks share one live session to stay within
the test budget; the golden values themselves come from an uninterrupted session (the regenerating
command). The onsets come from real flips, so sessions differ within the jitter of a frame: what
is compared, and why, is in :mod:`rtrecon.demo.golden`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from rtrecon.data.nsd import NSDDataset
from rtrecon.demo.golden import (GOLDEN, ROLES, TOLERANCE, compare_records, golden_spec, load_golden, prepare,
                                 run_ordered_session, session_record)
from rtrecon.demo.live import LiveSpec
from rtrecon.demo.stimulus_pc import read_results

GOLDEN_FILE = Path(__file__).parent / "golden" / "demo_session.json"


def test_golden_session_with_every_process_killed_once(demo_run, tmp_path):
    try:
        golden = load_golden(GOLDEN_FILE)
    except (FileNotFoundError, ValueError) as exc:
        pytest.fail(str(exc))
    dataset, checkpoint, cached = prepare(GOLDEN, demo_run.cache)
    assert cached, "the golden settings no longer match the shortened demo's (conftest.DEMO_ARGS): align them"
    spec = golden_spec(GOLDEN, dataset, checkpoint, tmp_path / "session")
    layout = run_ordered_session(spec, kills=ROLES)

    logs = {p.name for p in (spec.out / "logs").iterdir()} - {"xvfb.log"}
    assert logs == {f"{r}.log" for r in ROLES} | {f"{r}-2.log" for r in ROLES}
    nsd = NSDDataset(dataset)
    design_trials = set(range(len(nsd.events(spec.subject, spec.session, 1))))  # the trial list's rows
    n_volumes = nsd.read_design(spec.subject, spec.session, 1).size

    # Every release decoded once: each trial's first release once at the stimulus program
    # (session_record refuses a second copy), one row per release at the engine; every first
    # result shown on screen, those of both lives of the program in its one journal.
    record = session_record(layout)
    results = read_results(layout.journal(1))
    assert len(results) == len(design_trials) and all("shown" in r["stamps"] for r in results)
    assert "resumed at" in (spec.out / "logs" / "stimulus-2.log").read_text()
    assert {t["trial"] for t in record["trials"]} == design_trials
    # each trial released at its delay (then at run end, as the engine stops), each release once
    released = layout.table(1, "trials")
    assert not released[["trial", "release"]].duplicated().any() and set(released["trial"]) == design_trials
    assert set(released[released.release == 0].trial) == design_trials
    assert len(list(layout.derivatives.glob("*_desc-trial*release0decoded.npz"))) == len(design_trials)

    # Every volume stored once, in order, and equal to the replayed time series.
    stored = nib.load(spec.out / "sub-01" / "ses-02" / "func" / f"{layout.prefix(1)}_bold.nii.gz")
    source = nib.load(nsd.timeseries_path(spec.subject, spec.session, 1))
    assert stored.shape[-1] == n_volumes
    np.testing.assert_array_equal(np.asanyarray(stored.dataobj), np.asanyarray(source.dataobj)[..., :n_volumes])
    timings = layout.table(1, "volumetimings")
    assert timings["volume"].tolist() == list(range(n_volumes))

    assert compare_records(golden, record) == []


def test_compare_records_names_every_difference():
    golden = load_golden(GOLDEN_FILE)
    trials = golden["trials"]
    # the trial that loses its expected top-1 must have led clearly (a near tie may drop out: below)
    gone, inside = (2, 1) if trials[2]["scores"][0] - trials[2]["scores"][-1] > TOLERANCE["top1_margin"] else (1, 2)
    assert trials[gone]["scores"][0] - trials[gone]["scores"][-1] > TOLERANCE["top1_margin"]
    changed = copy.deepcopy(golden)
    moved = changed["trials"]
    moved[0]["beta"][2] += 2 * TOLERANCE["beta_rel"] * moved[0]["beta"][1]  # beyond one trial's tolerance
    moved[inside]["scores"][0] += TOLERANCE["score"] / 10  # inside it: not reported
    moved[gone]["retrieved"] = ["nsd:0"] * len(moved[gone]["retrieved"])  # the expected top-1 is gone
    moved[3]["released_at_volume"] += 1
    del moved[4]
    problems = compare_records(golden, changed)
    assert problems == [
        f"trial {trials[4]['trial']}: expected, not in the session",
        f"trial {trials[0]['trial']}: beta fingerprint {moved[0]['beta']}, expected {trials[0]['beta']}",
        f"trial {trials[gone]['trial']}: retrieved {moved[gone]['retrieved']!r} lacks the expected top-1 "
        f"{trials[gone]['retrieved'][0]!r}",
        f"trial {trials[3]['trial']}: released_at_volume {moved[3]['released_at_volume']}, expected {trials[3]['released_at_volume']}",
    ]
    assert not any(p.startswith(f"trial {trials[inside]['trial']}:") for p in problems)

    # a change to every trial that each stays inside its own tolerance is still a change of the session
    drift = copy.deepcopy(golden)
    for t in drift["trials"]:
        t["beta"] = [v + 0.5 * TOLERANCE["beta_rel"] * abs(t["beta"][1]) for v in t["beta"]]
        t["scores"] = [v + TOLERANCE["score"] / 2 for v in t["scores"]]
        t["retrieved"] = t["retrieved"][1:] + t["retrieved"][:1]
    assert [p.split(":")[0] for p in compare_records(golden, drift)] == ["session"] * 3
    z_drift = copy.deepcopy(golden)
    for t in z_drift["trials"]:
        t["z"] = [v + 2 * TOLERANCE["z_rel_median"] * abs(t["z"][1]) for v in t["z"]]
    assert [p.split(" difference")[0] for p in compare_records(golden, z_drift)] == ["session: median z"]
    assert compare_records(golden, golden) == []

    # near ties swapping places in every trial are the flips' jitter, not a change
    ties = copy.deepcopy(golden)
    for t in ties["trials"]:
        t["retrieved"][:2] = t["retrieved"][1::-1]
        t["scores"][1] = t["scores"][0] - TOLERANCE["top1_margin"] / 2
    assert compare_records(golden, ties) == []

    # an expected top-1 in a near tie with the fifth may drop out of the list; one that led clearly may not
    spread = [t["scores"][0] - t["scores"][-1] for t in golden["trials"]]
    tied, clear = int(np.argmin(spread)), int(np.argmax(spread))
    assert spread[tied] <= TOLERANCE["top1_margin"] < spread[clear]
    dropped = copy.deepcopy(golden)
    for i in (tied, clear):
        dropped["trials"][i]["retrieved"] = dropped["trials"][i]["retrieved"][1:] + ["nsd:0"]
    assert [p.split(":")[0] for p in compare_records(golden, dropped)] == [f"trial {golden['trials'][clear]['trial']}"]

    # a trial whose onset moved (a stalled flip) is compared by identity only; all of them moving is a change
    late = copy.deepcopy(golden)
    late["trials"][5]["onset"] += 2 * TOLERANCE["onset_s"]
    late["trials"][5]["beta"][2] += 10 * abs(late["trials"][5]["beta"][1])
    assert compare_records(golden, late) == []
    shifted = copy.deepcopy(golden)
    for t in shifted["trials"]:
        t["onset"] += 2 * TOLERANCE["onset_s"]
    assert [p.split(":")[0] for p in compare_records(golden, shifted)] == ["session"]


def test_a_missing_or_stale_golden_file_names_the_command(tmp_path):
    missing = tmp_path / "golden.json"
    with pytest.raises(FileNotFoundError, match=r"python -m rtrecon\.demo\.golden --regenerate .*golden\.json"):
        load_golden(missing)
    stale = json.loads(GOLDEN_FILE.read_text())
    stale["settings"]["hidden_dim"] = 128
    missing.write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="--regenerate"):
        load_golden(missing)
    with pytest.raises(ValueError, match="cannot kill participant"):
        spec = LiveSpec(root=tmp_path, subject=1, session=2, runs=(1,), checkpoint=tmp_path, targets=np.zeros((1, 1, 1)),
                        out=tmp_path)
        run_ordered_session(spec, kills=["participant"])
