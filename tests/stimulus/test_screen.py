from __future__ import annotations

from pathlib import Path

import numpy as np

from rtrecon.contract.config import StimulusSection
from stimulus.timeline import Segment
from stimulus.trials import Trial

GREY = (128, 128, 128)


def test_each_phase_draws_what_it_should(win, grab, make_image, tmp_path: Path):
    from stimulus.screen import TaskScreen

    red = make_image(tmp_path / "red.png", (255, 0, 0))
    blue = make_image(tmp_path / "blue.png", (0, 0, 255), size=(32, 16))
    trials = [
        Trial(index=0, line=2, trial_type="image", stim_file=red),
        Trial(index=1, line=3, trial_type="imagery", cue="apple"),
        Trial(index=2, line=4, trial_type="imagery", cue_file=blue),
    ]
    settings = StimulusSection.model_validate({"window": {"size": list(win.size), "image_size": 0.5, "fixation_size": 6}})
    screen = TaskScreen(win, settings, trials)

    def shot(phase: str, trial: Trial | None) -> np.ndarray:
        screen.draw(Segment(0, 1, phase, trial))
        frame = grab(win)
        win.flip()
        return frame

    h, w = win.size[1], win.size[0]
    cy, cx = h // 2, w // 2
    image = shot("image", trials[0])  # 60 px high, centred, under the fixation dot
    assert tuple(image[cy - 20, cx + 20]) == (255, 0, 0)
    assert tuple(image[cy, cx]) == (255, 255, 255)
    assert tuple(image[cy - 35, cx]) == GREY and tuple(image[cy, cx + 35]) == GREY

    fixation = shot("gap", trials[0])
    assert tuple(fixation[cy, cx]) == (255, 255, 255) and tuple(fixation[cy - 20, cx + 20]) == GREY

    word = shot("cue", trials[1])
    assert (np.abs(word.astype(int) - GREY).sum(axis=2) > 100).sum() > 20  # the word's strokes

    thumb = shot("cue", trials[2])  # half height (30 px), aspect 2:1 kept: 60 px wide
    assert tuple(thumb[cy, cx]) == (0, 0, 255) and tuple(thumb[cy, cx + 25]) == (0, 0, 255)
    assert tuple(thumb[cy - 20, cx]) == GREY and tuple(thumb[cy, cx + 35]) == GREY

    rating = shot("vividness", trials[1])
    assert (np.abs(rating.astype(int) - GREY).sum(axis=2) > 100).sum() > 20
