"""Synthetic imagery in the NSD-Imagery protocol, decoded by a head trained on perception only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from rtrecon.data.imagery import (CUE_S, TRIAL_ROWS, ImageryModel, imagery_retrieval, read_imagery, session_betas, simulate,
                                  write_live_session)
from rtrecon.data.nsd import NSDDataset
from rtrecon.data.synthetic import load_truth
from rtrecon.models.linear_head import LinearHead


@pytest.fixture(scope="module")
def imagery(synthetic_root: Path):
    return simulate(synthetic_root, 1, seed=0)


def test_the_protocol_is_nsd_imagerys(imagery, synthetic_root: Path, tmp_path: Path):
    trials = imagery.trials
    assert len(trials) == 6 * 48 and imagery.betas.shape == (288, load_truth(synthetic_root, 1)["true_responses"].shape[1])
    for _, run in trials.groupby("run"):  # 6 targets x 8 repeats of one set, one letter cue each
        assert len(run) == 48 and run["target_set"].nunique() == 1
        assert sorted(run["image_id"].value_counts()) == [8] * 6
        assert run.groupby("image_id")["cue"].nunique().eq(1).all() and run["cue"].nunique() == 6
    assert trials.groupby("target_set")["run"].nunique().to_dict() == {"conceptual": 2, "naturalistic": 2, "simple": 2}
    assert set(trials["vividness"]) == {1, 2, 3, 4}
    shared = set(NSDDataset(synthetic_root).shared_ids.tolist())
    assert set(trials["image_id"]) <= shared and trials["image_id"].nunique() == 18
    imagery.write(tmp_path, 1)
    back = read_imagery(tmp_path, 1)
    np.testing.assert_array_equal(back.betas, imagery.betas)
    assert back.trials.equals(imagery.trials) and back.info["model"]["gain"] == ImageryModel().gain


def test_imagery_shares_the_seen_pattern_at_lower_gain_coarser_precision_and_more_noise(imagery, synthetic_root: Path):
    truth = load_truth(synthetic_root, 1)
    noiseless = simulate(synthetic_root, 1, seed=0, model=ImageryModel(noise_ratio=0.0, vividness_gain=(1.0, 1.0)))
    trials = noiseless.trials
    ids = np.array(sorted(trials["image_id"].unique()))
    pattern = np.stack([noiseless.betas[(trials["image_id"] == i).to_numpy()][0] for i in ids])
    vision = truth["true_responses"][ids - 1]
    dm, dv = pattern - pattern.mean(0), vision - vision.mean(0)  # each target's deviation from the mean image
    # the same pattern (each target's imagery correlates best with its own seen response) ...
    r = np.corrcoef(dm, dv)[: len(ids), len(ids):]
    assert (np.argmax(r, axis=1) == np.arange(len(ids))).all() and np.diag(r).min() > 0.5
    # ... weaker (the gain, a little less where smoothing averages opposite neighbours) ...
    slope = (dm * dv).sum() / (dv * dv).sum()
    assert 0.3 < slope <= ImageryModel().gain
    # ... and spatially smoother: neighbouring ROI voxels agree more than in the seen response
    index = truth["voxels"]["roi_index"]
    pairs = np.flatnonzero(np.diff(index) == 1)  # neighbours along the grid's last axis, both in the ROI
    neighbour_r = lambda p: np.mean([np.corrcoef(p[:, i], p[:, i + 1])[0, 1] for i in pairs])  # noqa: E731
    assert neighbour_r(dm) > neighbour_r(dv) + 0.1
    # the default model's trials scatter around that pattern more than the perception betas do around theirs
    scatter = np.median([imagery.betas[(imagery.trials["image_id"] == i).to_numpy()].std(0) for i in ids])
    assert scatter > imagery.info["perception_noise_median"]


def test_a_linear_head_trained_on_perception_decodes_imagery_above_chance(imagery, synthetic_root: Path):
    nsd = NSDDataset(synthetic_root)
    embeddings = load_truth(synthetic_root)["embeddings"]
    betas, ids = zip(*(session_betas(nsd, 1, s) for s in nsd.sessions(1)))
    betas, ids = np.concatenate(betas), np.concatenate(ids)
    train = ~np.isin(ids, imagery.trials["image_id"].unique())  # the targets were never seen in training
    head = LinearHead().fit(betas[train], embeddings[ids[train] - 1])
    result = imagery_retrieval(head.predict(imagery.betas), imagery.trials, embeddings)
    assert result["chance"] == pytest.approx(1 / 6) and result["n"] == 288
    k = int(result["correct"].sum())
    assert binomtest(k, result["n"], 1 / 6, alternative="greater").pvalue < 1e-3
    assert set(result["per_set"]) == {"simple", "naturalistic", "conceptual"} and set(result["per_vividness"]) == {1, 2, 3, 4}
    # the control: the same head trained on shuffled image-embedding pairs is at chance
    shuffled = LinearHead().fit(betas[train], embeddings[ids[train] - 1][np.random.default_rng(1).permutation(int(train.sum()))])
    control = imagery_retrieval(shuffled.predict(imagery.betas), imagery.trials, embeddings)
    assert binomtest(int(control["correct"].sum()), control["n"], 1 / 6).pvalue > 0.01
    assert control["accuracy"] < result["accuracy"]


def test_a_live_imagery_session_is_an_nsd_layout_session_whose_betas_carry_the_imagined_pattern(synthetic_root: Path, tmp_path: Path):
    from rtrecon.data.synthetic import _glm_betas

    root, session, runs = write_live_session(synthetic_root, 1, tmp_path / "imagery", seed=3)
    nsd = NSDDataset(root)
    assert session == max(NSDDataset(synthetic_root).sessions(1)) + 1 and nsd.sessions(1) == [session]
    assert nsd.runs(1, session) == [1, 2, 3]  # one run per target set
    assert read_imagery(root, 1).trials.equals(runs.trials) and set(runs.trials["vividness"]) <= {1, 2, 3, 4}
    np.testing.assert_array_equal(nsd.roi_mask(1), NSDDataset(synthetic_root).roi_mask(1))  # the subject's own brain
    run = nsd.load_run(1, session, 2)
    events = nsd.events(1, session, 2)
    table = runs.trials[runs.trials["run"] == 2]
    assert run.n_volumes == len(run.design) + 1 and len(events) == 48
    np.testing.assert_allclose(np.diff(events["onset"]), TRIAL_ROWS * nsd.tr)  # a trial every 8 s
    assert (events["image_id"].to_numpy() == table["image_id"].to_numpy()).all()
    # an NSD-style GLM on the run, its events at the imagery periods, recovers each trial's imagery beta
    mask = nsd.roi_mask(1)
    series = np.asarray(run.image.dataobj, np.float32)[mask].T
    estimated = _glm_betas(series, events["onset"].to_numpy() + CUE_S)
    centred = lambda b: (b - b.mean(0)).ravel()  # noqa: E731 -- each trial's own part, not the pattern all share
    r = np.corrcoef(centred(estimated), centred(runs.betas[table.index.to_numpy()]))[0, 1]
    # ... and the control: the betas of another run's trials do not match
    other = np.corrcoef(centred(estimated), centred(runs.betas[runs.trials.index[runs.trials["run"] == 3].to_numpy()]))[0, 1]
    assert r > 0.2 and abs(other) < 0.05, (r, other)
