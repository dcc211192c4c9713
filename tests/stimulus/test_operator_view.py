"""stimulus.operator_view: the operator's window redraws on change only, shows demanded and live results."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rtrecon.contract.config import FeedbackSection
from rtrecon.contract.wire import TrialResultMessage
from stimulus.feedback import FeedbackPanel, ReceivedResult
from stimulus.operator_view import OperatorView
from stimulus.trials import Trial

BLUE, GREEN = (0, 0, 255), (0, 255, 0)


def result(trial: int, colour: tuple[int, int, int], received: float, release: int = 0) -> ReceivedResult:
    image = np.zeros((8, 8, 3), np.uint8) + np.array(colour, np.uint8)
    return ReceivedResult(TrialResultMessage(session="s", run=1, trial=trial, release=release, image=image), received)


@pytest.fixture
def view(win, make_image, tmp_path: Path):
    trials = [Trial(index=i, line=i + 2, trial_type="image", stim_file=make_image(tmp_path / f"{i}.png", (255, 0, 0)))
              for i in range(2)]
    panel = FeedbackPanel(win, FeedbackSection(top_k=0, show_target=False, score_bar=False), trials)
    return OperatorView(win, panel, window_s=2.0)


class Shown(list):
    """The trials ``on_shown`` was called with (right after the operator window's flip)."""

    def __call__(self, trial: int) -> None:
        self.append(trial)


def test_a_period_is_drawn_once_and_again_only_when_it_changes(view: OperatorView):
    results = {0: result(0, BLUE, 1.0)}
    shown = Shown()
    assert view.update(3, (0,), 5.0, results, shown) == []  # the control: no texture yet, nothing drawn
    view.panel.add(0, results[0])
    assert view.update(3, (0,), 5.0, results, shown) == [0] and shown == [0]
    results[0].shown = 5.0
    assert view.update(3, (0,), 5.1, results, shown) == []  # same content: no redraw, no flip
    results[0] = result(0, GREEN, 2.0, release=1)  # a newer release redraws
    view.panel.add(0, results[0])
    assert view.update(3, (0,), 5.2, results, shown) == [0] and shown == [0, 0]


def test_demand_shows_the_latest_result_for_window_s(view: OperatorView, caplog):
    results: dict[int, ReceivedResult] = {}
    view.press_demand()
    with caplog.at_level("INFO", logger="stimulus.operator_view"):
        assert view.frame(0, (), 1.0, results, Shown()) == []
    assert "no result has arrived yet" in caplog.text
    results.update({0: result(0, BLUE, 2.0), 1: result(1, GREEN, 3.0)})
    for i, r in results.items():
        view.panel.add(i, r)
    assert view.frame(1, (), 4.0, results, Shown()) == []  # not asked for: nothing
    view.press_demand()
    assert view.frame(2, (), 4.0, results, Shown()) == [1]  # the most recent
    assert view.frame(2, (), 5.9, results, Shown()) == []  # still shown, not redrawn
    assert view.frame(2, (0,), 5.9, results, Shown()) == [0]  # a feedback period comes first
    assert view.frame(3, (), 6.0, results, Shown()) == []  # window_s is over


def test_live_results_are_drawn_in_arrival_order_each_until_shown(view: OperatorView):
    results = {0: result(0, BLUE, 1.0), 1: result(1, GREEN, 1.1)}
    for i, r in results.items():
        view.panel.add(i, r)
    view.arrived(0)
    view.arrived(1)
    shown = Shown()
    segment = 7  # frames of one segment: redrawn only when what is shown changes
    assert view.frame(segment, (), 1.0, results, shown) == [0] and shown == [0]
    # 1 waits while 0 has not been shown (its flip's callback may not have run yet)
    assert view.frame(segment, (), 1.0, results, shown) == []
    results[0].shown = 1.0
    assert view.frame(segment, (), 1.1, results, shown) == [1] and shown == [0, 1]
    results[1].shown = 1.1
    assert view.frame(segment, (), 3.0, results, shown) == []  # still on, not redrawn
    assert view.frame(segment, (), 3.2, results, shown) == []  # window_s after it was drawn: off
    results[0] = result(0, GREEN, 3.3, release=1)
    view.panel.add(0, results[0])
    view.arrived(0)  # a newer release: drawn at once
    assert view.frame(segment, (), 3.4, results, shown) == [0] and shown == [0, 1, 0]


def test_a_result_shown_before_a_resume_is_not_drawn_live_again(view: OperatorView):
    results = {0: result(0, BLUE, 1.0)}
    view.panel.add(0, results[0])
    view.arrived(0)
    view.shown(0)
    assert view.frame(0, (), 1.0, results, Shown()) == []
