from __future__ import annotations

from pathlib import Path

import numpy as np

from rtrecon.contract.config import FeedbackSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.feedback import FeedbackPanel, ReceivedResult
from stimulus.trials import Trial

GREY = (128, 128, 128)


def result(trial: int, colour: tuple[int, int, int], score: float, retrieved: list[str]) -> ReceivedResult:
    image = np.zeros((8, 8, 3), np.uint8) + np.array(colour, np.uint8)
    msg = TrialResultMessage(session="s", run=1, trial=trial, image=image, retrieved=retrieved, scores=[score])
    return ReceivedResult(msg, received=1.0)


def test_single_trial_feedback(win, grab, make_image, tmp_path: Path):
    (tmp_path / "gallery").mkdir()
    green = make_image(tmp_path / "green.png", (0, 255, 0))
    make_image(tmp_path / "gallery" / "17.png", (255, 255, 0))
    make_image(tmp_path / "gallery" / "nsd_17.png", (255, 255, 0))  # "nsd:17" cannot name a file on NTFS
    trials = [Trial(index=0, line=2, trial_type="image", stim_file=green, stim_id="5")]
    settings = FeedbackSection(top_k=3, gallery_dir=tmp_path / "gallery", score_range=(0.0, 1.0))
    panel = FeedbackPanel(win, settings, trials)
    assert panel.gallery_file("17") == tmp_path / "gallery" / "17.png"
    assert panel.gallery_file("5") == green and panel.gallery_file("404") is None
    assert panel.gallery_file("nsd:17") == tmp_path / "gallery" / "nsd_17.png" and panel.gallery_file("..") is None

    results: dict[int, ReceivedResult] = {}
    assert panel.draw((0,), results) == []  # nothing before the result: never the target alone
    empty = grab(win)
    win.flip()
    assert (empty == GREY).all()

    results[0] = result(0, (0, 0, 255), 0.75, ["17", "5", "404"])
    panel.add(0, results[0])
    assert panel.draw((0,), results) == [0]
    frame = grab(win)
    win.flip()
    w, h = win.size
    row = lambda y: int(round(h / 2 - y))  # noqa: E731
    col = lambda x: int(round(w / 2 + x))  # noqa: E731
    # target (seen image) left of the reconstruction, both 0.38 h at 0.14 h above the centre
    half = (0.38 * h + 0.03 * h) / 2
    assert tuple(frame[row(0.14 * h), col(-half)]) == (0, 255, 0)
    assert tuple(frame[row(0.14 * h), col(half)]) == (0, 0, 255)
    # retrieved: gallery image, trial-list image, and an id without an image (drawn as text)
    step = 0.18 * h
    assert tuple(frame[row(-0.2 * h), col(-step)]) == (255, 255, 0)
    assert tuple(frame[row(-0.2 * h), col(0)]) == (0, 255, 0)
    assert tuple(frame[row(-0.2 * h), col(step) + 8]) == GREY
    # score bar: 75 % of 0.6 w filled
    bar = frame[row(-0.42 * h)]
    filled = np.flatnonzero((bar[:, 1] > 200) & (bar[:, 0] < 150))
    assert abs((filled.max() - filled.min() + 1) - 0.75 * 0.6 * w) <= 3


def test_block_feedback_has_one_column_per_trial(win, grab, make_image, tmp_path: Path):
    red = make_image(tmp_path / "red.png", (255, 0, 0))
    trials = [Trial(index=i, line=i + 2, trial_type="image", stim_file=red) for i in range(2)]
    panel = FeedbackPanel(win, FeedbackSection(top_k=0, score_bar=False), trials)
    results = {1: result(1, (0, 0, 255), 0.5, [])}
    panel.add(1, results[1])
    assert panel.draw((0, 1), results) == [1]
    frame = grab(win)
    win.flip()
    w, h = win.size
    left, right = int(w / 4), int(3 * w / 4)
    recon_row, target_row = int(h / 2 + 0.14 * h), int(h / 2 - 0.2 * h)
    assert tuple(frame[recon_row, right]) == (0, 0, 255) and tuple(frame[target_row, right]) == (255, 0, 0)
    assert tuple(frame[recon_row, left]) == GREY and tuple(frame[target_row, left]) == GREY
