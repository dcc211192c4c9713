"""Report records: accuracy and latency figures from known ranks and timings; confounds files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtrecon.report.records import (
    MotionTrace,
    SessionReportData,
    TrialRecord,
    load_confounds,
    stage_durations,
    summarise,
)


def _data(ranks: list[int | None], gallery_size: int | None = 50, **kwargs) -> SessionReportData:
    trials = [
        TrialRecord(run=1, trial=i + 1, stimulus_id=str(i), correct_rank=rank)
        for i, rank in enumerate(ranks)
    ]
    return SessionReportData("01", "01", "perception", "tiny decoder", trials, gallery_size, **kwargs)


def test_accuracy_from_known_ranks_and_chance() -> None:
    summary = summarise(_data([1, 1, 2, 5, 6, 40, None, 1]), "r.html")
    # 7 ranked trials: 3 at rank 1, 5 within the top 5
    assert summary.trials == 8 and summary.retrieval_trials == 7 and summary.decoded == 7
    assert summary.top1 == pytest.approx(3 / 7) and summary.top5 == pytest.approx(5 / 7)
    assert summary.chance_top1 == pytest.approx(1 / 50) and summary.chance_top5 == pytest.approx(5 / 50)
    small = summarise(_data([1, 3], gallery_size=3), "r.html")
    assert small.chance_top5 == 1.0 and small.top5 == 1.0 and small.top1 == 0.5


def test_nothing_to_measure_gives_none() -> None:
    summary = summarise(_data([None, None], gallery_size=None), "r.html")
    assert summary.decoded == 0 and summary.top1 is None and summary.chance_top1 is None
    assert summary.median_latency_s is None and summary.mean_fd_mm is None
    json.dumps(summary.as_dict())  # JSON-ready even when empty


def test_latency_per_stage_and_total() -> None:
    order = ["written", "read", "decoded", "shown"]
    trials = []
    for i in range(20):
        stamps = {"written": 100.0 + i, "read": 100.1 + i, "decoded": 100.3 + i + 0.01 * i, "shown": 100.5 + i + 0.01 * i}
        trials.append(TrialRecord(1, i + 1, str(i), latencies=stage_durations(stamps, order), correct_rank=1))
    data = SessionReportData("01", "01", "perception", "d", trials, 10, latency_stages=order[1:])
    summary = summarise(data, "r.html")
    totals = 0.5 + 0.01 * np.arange(20)
    assert summary.median_latency_s == pytest.approx(np.median(totals))
    assert summary.p95_latency_s == pytest.approx(np.percentile(totals, 95))
    assert list(summary.stage_median_s) == ["read", "decoded", "shown"]
    assert summary.stage_median_s["read"] == pytest.approx(0.1)
    assert summary.stage_median_s["shown"] == pytest.approx(0.2)
    assert summary.stage_p95_s["decoded"] == pytest.approx(np.percentile(0.2 + 0.01 * np.arange(20), 95))
    assert summary.headline() == {
        "report": "r.html", "trials": 20, "decoded": 20, "top1": 1.0, "top5": 1.0,
        "chance_top1": 0.1, "median_latency_s": summary.median_latency_s,
        "two_way_clip": None, "pixcorr": None, "top1_by_release": {"0": 1.0},
    }


def test_releases_headline_is_the_first_release_and_each_release_has_its_figures() -> None:
    rng = np.random.default_rng(0)
    seen = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    trials = []
    for i in range(4):
        # release 0 ranks the true image 3rd and retrieves image "h" first; release 1 gets it right
        trials.append(TrialRecord(1, i, str(i), seen_image=seen[i], reconstruction=seen[(i + 1) % 4], correct_rank=3,
                                  retrieved_ids=("h", "x", str(i)), release=0, release_s=8.0,
                                  feedback_delay_s=9.0 + i if i < 3 else None))
        # trial 3's slot came after its release 1: that is the feedback it showed
        trials.append(TrialRecord(1, i, str(i), seen_image=seen[i], reconstruction=seen[i], correct_rank=1,
                                  retrieved_ids=(str(i),), release=1, release_s=16.0 + i, final=True,
                                  feedback_delay_s=40.0 if i == 3 else None))
    data = SessionReportData("01", "01", "perception", "d", trials, 10,
                             release_metrics={0: {"two_way_clip": 0.6, "beta_r_end": 0.5}, 1: {"two_way_clip": 0.9}})
    summary = summarise(data, "r.html")
    assert summary.trials == 4 and summary.top1 == 0.0 and summary.top5 == 1.0
    assert summary.top1_by_release == {"0": 0.0, "1": 1.0}
    assert summary.hub_id == "h" and summary.hub_share == 1.0
    assert summary.by_release[1]["hub_share"] == 0.25 and summary.by_release[1]["median_release_s"] == 17.5
    assert summary.by_release[1]["pixcorr"] == pytest.approx(1.0) and summary.by_release[1]["ssim"] == pytest.approx(1.0)
    assert summary.pixcorr < 0.5 and summary.two_way_clip == 0.6 and summary.by_release[0]["beta_r_end"] == 0.5
    assert summary.median_feedback_delay_s == 10.5
    assert summary.p95_feedback_delay_s == pytest.approx(np.percentile([9.0, 10.0, 11.0, 40.0], 95))
    headline = summary.headline()
    assert headline["top1_by_release"] == {"0": 0.0, "1": 1.0} and headline["two_way_clip"] == 0.6
    json.dumps(summary.as_dict())


def test_stage_durations_skip_missing_stages() -> None:
    stamps = {"written": 1.0, "sent": 1.25, "shown": 2.0}
    assert stage_durations(stamps, ["written", "read", "sent", "decoded", "shown"]) == {"sent": 0.25, "shown": 0.75}
    assert stage_durations({}, ["written", "shown"]) == {}


def test_stages_follow_the_given_order_then_first_appearance() -> None:
    trials = [TrialRecord(1, 1, "a", latencies={"z": 1.0, "b": 2.0}), TrialRecord(1, 2, "b", latencies={"c": 1.0})]
    data = SessionReportData("01", "01", "t", "d", trials, latency_stages=["b"])
    assert data.stages() == ["b", "z", "c"]


def test_bad_records_are_refused() -> None:
    with pytest.raises(ValueError, match="1-based"):
        TrialRecord(1, 1, "a", correct_rank=0)
    with pytest.raises(ValueError, match="2 retrieved images for 1 retrieved ids"):
        TrialRecord(1, 1, "a", retrieved_ids=["a"], retrieved_images=[np.zeros((4, 4)), np.zeros((4, 4))])
    with pytest.raises(ValueError, match="exceeds the gallery size 10"):
        _data([11], gallery_size=10)
    with pytest.raises(ValueError, match=r"must be \(n, 6\)"):
        MotionTrace(np.zeros((5, 3)), np.zeros(5))
    with pytest.raises(ValueError, match="fd has shape"):
        MotionTrace(np.zeros((5, 6)), np.zeros(4))


def _confounds(path: Path, params: np.ndarray, fd: bool = True) -> Path:
    header = ["global_signal", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    if fd:
        header.append("framewise_displacement")
    lines = ["\t".join(header)]
    fdv = np.r_[np.nan, np.abs(np.diff(params, axis=0))[:, :3].sum(1) + 50 * np.abs(np.diff(params, axis=0))[:, 3:].sum(1)]
    for i, row in enumerate(params):
        cells = ["812.5", *(f"{v:.8f}" for v in row)]
        if fd:
            cells.append("n/a" if i == 0 else f"{fdv[i]:.8f}")
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_confounds_reads_fmriprep_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    params = np.cumsum(rng.normal(0, [0.05, 0.05, 0.05, 0.001, 0.001, 0.001], (30, 6)), axis=0)
    expected_fd = np.abs(np.diff(params, axis=0))[:, :3].sum(1) + 50 * np.abs(np.diff(params, axis=0))[:, 3:].sum(1)
    for with_fd in (True, False):
        path = _confounds(tmp_path / f"sub-01_desc-confounds_timeseries_{with_fd}.tsv", params, fd=with_fd)
        trace = load_confounds(path, tr=1.6, run=3)
        assert trace.run == 3 and trace.tr == 1.6
        np.testing.assert_allclose(trace.params, params, atol=1e-8)
        assert np.isnan(trace.fd[0])
        np.testing.assert_allclose(trace.fd[1:], expected_fd, atol=5e-6)  # 8-decimal file


def test_load_confounds_names_file_and_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tsv"
    bad.write_text("trans_x\ttrans_y\n0\t0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.tsv: missing motion column\(s\) trans_z, rot_x, rot_y, rot_z"):
        load_confounds(bad)
    holes = _confounds(tmp_path / "holes.tsv", np.zeros((4, 6)))
    holes.write_text(holes.read_text().replace("0.00000000\t", "n/a\t", 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"holes\.tsv, line 2: a motion parameter is missing"):
        load_confounds(holes)
    with pytest.raises(ValueError, match="no such confounds file"):
        load_confounds(tmp_path / "absent.tsv")


def test_imagery_figures_agree_with_nsd_imagery_scoring_of_the_same_trials(tmp_path) -> None:
    import pandas as pd

    from rtrecon.data.imagery import imagery_retrieval
    from rtrecon.report.metrics import rank_among
    from rtrecon.report.writer import write_report

    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((30, 4, 8))  # the world's images, 1-based id = row + 1
    sets = {"simple": [3, 7, 9, 12, 15, 20], "naturalistic": [1, 2, 4, 5, 6, 8], "conceptual": [10, 11, 13, 14, 16, 17]}
    rows = [{"target_set": name, "image_id": int(i), "vividness": int(rng.integers(1, 5))}
            for name, ids in sets.items() for i in rng.choice(ids, 40)]
    trials = pd.DataFrame(rows)
    decoded = embeddings[trials["image_id"] - 1] + 3.0 * rng.standard_normal((len(trials), 4, 8))
    records = []
    for k, (row, e) in enumerate(zip(trials.itertuples(), decoded)):
        targets = sets[row.target_set]
        records.append(TrialRecord(run=1, trial=k, stimulus_id=f"nsd:{row.image_id}", response=str(row.vividness),
                                   target_set=row.target_set, set_size=6,
                                   set_rank=rank_among(e, embeddings[np.array(targets) - 1], targets.index(row.image_id))))
    data = SessionReportData("01", "01", "imagery", "linear head", records, 18)
    summary = write_report(data, tmp_path)
    reference = imagery_retrieval(decoded, trials, embeddings)  # argmax among sorted set ids: an independent path
    assert summary.imagery["trials"] == 120 and summary.imagery["chance"] == pytest.approx(1 / 6)
    assert summary.imagery["top1"] == pytest.approx(reference["accuracy"]) and 0.3 < reference["accuracy"] < 0.95
    assert summary.imagery["per_set"] == pytest.approx(reference["per_set"])
    assert summary.imagery["per_vividness"] == pytest.approx({str(k): v for k, v in reference["per_vividness"].items()})
    # the headline keeps the perception keys, its retrieval scored among each trial's target set
    headline = summary.headline()
    assert set(headline) == set(summarise(_data([1, 2]), "r.html").headline())
    assert headline["top1"] == summary.imagery["top1"] and headline["chance_top1"] == pytest.approx(1 / 6)
    assert headline["top5"] == pytest.approx(np.mean([r.set_rank <= 5 for r in records]))
    assert headline["top1_by_release"] == {"0": summary.imagery["top1"]}
    assert 'id="imagery"' in (tmp_path / "report.html").read_text()
    # perception trials (no target set) give no imagery figures and the perception headline is unchanged
    perception = summarise(_data([1, 2]), "r.html")
    assert perception.imagery == {} and not any(k.startswith("imagery") for k in perception.headline())
    with pytest.raises(ValueError, match="set_rank 7 is not a rank among 6 targets"):
        TrialRecord(run=1, trial=0, stimulus_id="x", target_set="simple", set_rank=7, set_size=6)


def test_pairmate_figures_per_run_agree_with_direct_two_way_and_a_shuffled_control_is_at_chance(tmp_path) -> None:
    from scipy.stats import binomtest

    from rtrecon.runtime.retrieval import pairmate_distinctiveness
    from rtrecon.report.writer import write_report

    rng = np.random.default_rng(2)
    images = rng.standard_normal((200, 4, 8))  # image 2k's pairmate is 2k+1 and back
    seen = rng.integers(0, 200, 300)
    foil = seen ^ 1
    decoded = images[seen] + 2.5 * rng.standard_normal((300, 4, 8))
    shuffled = rng.permutation(300)

    def cpd(rows: np.ndarray) -> np.ndarray:
        return pairmate_distinctiveness(decoded, images[seen[rows]], images[foil[rows]]).numpy()

    def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

    figures = {}
    for name, rows in (("true", np.arange(300)), ("shuffled", shuffled)):
        scores = cpd(rows)
        records = [TrialRecord(run=1 + k // 150, trial=k, stimulus_id=f"nsd:{seen[r]}", pairmate=f"nsd:{foil[r]}",
                               cpd=float(scores[k])) for k, r in enumerate(rows)]
        records.append(TrialRecord(run=1, trial=999, stimulus_id="nsd:0"))  # no pairmate: left out
        summary = write_report(SessionReportData("01", "01", "perception", "d", records, 200), tmp_path / name)
        figures[name] = summary.pairmates
        # two-way computed directly: the decoded embedding nearer the seen image than its pairmate
        direct = cosine(decoded, images[seen[rows]]) > cosine(decoded, images[foil[rows]])
        assert summary.pairmates["two_way"] == pytest.approx(direct.mean())
        assert summary.pairmates["per_run"][2]["two_way"] == pytest.approx(direct[150:].mean())
        assert summary.pairmates["per_run"][1]["mean_cpd"] == pytest.approx(scores[:150].mean())
        assert summary.pairmates["trials"] == 300 and summary.headline()["pairmate_two_way"] == summary.pairmates["two_way"]
        page = (tmp_path / name / "report.html").read_text()
        assert 'id="pairmates"' in page and f"CPD {scores[0]:+.2f} vs pairmate nsd:{foil[rows[0]]}" in page
    true, control = figures["true"], figures["shuffled"]
    assert binomtest(round(true["two_way"] * 300), 300, 0.5, alternative="greater").pvalue < 1e-3 and true["mean_cpd"] > 0.1
    assert binomtest(round(control["two_way"] * 300), 300, 0.5).pvalue > 0.01 and abs(control["mean_cpd"]) < 0.1
    print(f"pairmates: CPD {true['mean_cpd']:.3f}, two-way {true['two_way']:.3f}; shuffled CPD {control['mean_cpd']:.3f}, "
          f"two-way {control['two_way']:.3f}")
    # no pairmates: no figures, and the headline is unchanged
    plain = summarise(_data([1, 2]), "r.html")
    assert plain.pairmates == {} and not any(k.startswith("pairmate") for k in plain.headline())
