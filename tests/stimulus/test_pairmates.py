"""Pairmate distinctiveness scored on the stimulus PC, against the engine's own formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.config import SessionConfig, SessionSection, StimulusSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.feedback import FeedbackPanel, ReceivedResult
from stimulus.pairmates import PairmateScorer, distinctiveness
from stimulus.trials import Trial, TrialListError


def test_distinctiveness_is_the_engines_formula():
    from rtrecon.runtime.retrieval import pairmate_distinctiveness

    rng = np.random.default_rng(0)
    pred, correct, foil = (rng.standard_normal((3, 4, 5)).astype(np.float32) for _ in range(3))
    ours = distinctiveness(pred, correct, foil)
    reference = float(pairmate_distinctiveness(pred[None], correct[None], foil[None])[0])
    assert ours == pytest.approx(reference, abs=1e-5)
    assert distinctiveness(correct, correct, foil) == pytest.approx(1.0)
    assert distinctiveness(foil, correct, foil) == pytest.approx(-1.0)
    assert distinctiveness(pred, foil, correct) == pytest.approx(-ours)  # swapping the pair flips the sign
    with pytest.raises(ValueError, match="identical"):
        distinctiveness(pred, correct, correct)


def _gallery(tmp_path: Path) -> tuple[Path, np.ndarray]:
    embeddings = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    path = tmp_path / "gallery.npz"
    np.savez(path, embeddings=embeddings, ids=np.array(["a", "b", "c", "d"]))
    return path, embeddings


def test_the_scorer_keeps_the_runs_pairs_and_names_the_line_of_a_missing_one(tmp_path: Path):
    path, embeddings = _gallery(tmp_path)
    trials = [Trial(index=0, line=2, trial_type="image", stim_id="a", pairmate="b"),
              Trial(index=1, line=3, trial_type="image", stim_id="c")]
    scorer = PairmateScorer(path, trials, tmp_path / "run.tsv")
    assert 0 in scorer and 1 not in scorer
    assert scorer.score(0, embeddings[0]) == pytest.approx(1.0) and scorer.score(0, embeddings[1]) == pytest.approx(-1.0)
    assert scorer.score(1, embeddings[2]) is None and scorer.score(0, None) is None
    bad = trials + [Trial(index=2, line=4, trial_type="image", stim_id="c", pairmate="zz")]
    with pytest.raises(TrialListError, match=r"run.tsv, line 4: 'zz' not among the ids of"):
        PairmateScorer(path, bad, tmp_path / "run.tsv")


def test_each_result_carries_its_cpd_and_the_bar_shows_it(win, grab, make_image, tmp_path: Path):
    from stimulus.app import prepare_run

    path, embeddings = _gallery(tmp_path)
    make_image(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "run.tsv").write_text("stim_file\tstim_id\tpairmate\tfeedback\nred.png\ta\tb\t1\n")
    feedback = {"bar_value": "cpd", "score_range": [-1.0, 1.0], "embeddings": path, "top_k": 0, "show_image": False, "show_target": False}
    config = SessionConfig(session=SessionSection(output_dir=tmp_path / "out"),
                           stimulus=StimulusSection.model_validate({"trial_lists": [tmp_path / "run.tsv"], "feedback": feedback}))
    setup = prepare_run(config, 1)
    # between the image and its pairmate, nearer the image
    a, b = (e.ravel() / np.linalg.norm(e) for e in embeddings[:2])
    pred = 0.75 * a + 0.25 * b
    cpd = setup.pairmates.score(0, pred)
    assert cpd == pytest.approx(distinctiveness(pred, embeddings[0], embeddings[1])) and 0.3 < cpd < 0.9
    result = ReceivedResult(TrialResultMessage(session="s", run=1, trial=0, embedding=pred, scores=[0.1]), 0.0, cpd=cpd)
    panel = FeedbackPanel(win, setup.settings.feedback, setup.trials)
    panel.add(0, result)
    assert panel.draw((0,), {0: result}) == [0]
    frame = grab(win)
    win.flip()
    w, h = win.size
    bar = frame[int(round(h / 2 + 0.42 * h))]
    filled = np.flatnonzero((bar[:, 1] > 200) & (bar[:, 0] < 150))
    assert abs((filled.max() - filled.min() + 1) - (cpd + 1) / 2 * 0.6 * w) <= 3  # the CPD's share of [-1, 1], not the score
    (tmp_path / "run.tsv").write_text("stim_file\tstim_id\tfeedback\nred.png\ta\t1\n")
    with pytest.raises(ValueError, match="needs a pairmate column"):
        prepare_run(config, 1)
    # the engine scores the CPD itself (TrialResultMessage.cpd): the bar needs no gallery on this PC
    (tmp_path / "run.tsv").write_text("stim_file\tstim_id\tpairmate\tfeedback\nred.png\ta\tb\t1\n")
    engine_only = config.model_copy(update={"stimulus": config.stimulus.model_copy(
        update={"feedback": config.stimulus.feedback.model_copy(update={"embeddings": None})})})
    assert prepare_run(engine_only, 1, overwrite=True).pairmates is None
