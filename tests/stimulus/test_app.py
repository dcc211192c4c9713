"""Whole runs in a real PsychoPy window under Xvfb, with a real ZeroMQ engine standing in."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtrecon.contract import children
from rtrecon.contract.config import NetworkSection, SessionConfig, SessionSection, StimulusSection
from rtrecon.contract.transport import ReliableReceiver, ReliableSender, result_key, trial_key
from rtrecon.contract.wire import EventMessage, TrialResultMessage
from rtrecon.testing import scaled
from stimulus.app import Frame, StimulusProgram, prepare_run
from stimulus.participant import VirtualParticipant
from stimulus.trials import TrialListError

SESSION = "sub-01_ses-01"
FRAME = 1 / 60
GREY = (128, 128, 128)
RECON = (0, 0, 200)


class Engine(threading.Thread):
    """The engine's two links: takes events, sends each listed trial's result ``delays[trial]`` s later."""

    def __init__(self, config: SessionConfig, spool: Path, delays: dict[int, float]):
        super().__init__(daemon=True)
        self.config, self.spool, self.delays = config, spool, delays
        self.events: list[EventMessage] = []
        self.shown: list = []  # the stimulus program's ShownMessages
        self.stop = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        net = self.config.network
        with ReliableReceiver(net.events, SESSION, key=trial_key, heartbeat_s=scaled(0.2)) as rx, ReliableSender(net.results, SESSION, self.spool, key=result_key, heartbeat_s=scaled(0.2), name="engine") as tx:
            self.ready.set()
            due: list[tuple[float, int]] = []
            while not self.stop.is_set():
                msg = rx.recv(0.002)
                if isinstance(msg, EventMessage):
                    self.events.append(msg)
                    rx.ack(msg)
                    if msg.trial in self.delays:
                        due.append((time.monotonic() + self.delays[msg.trial], msg.trial))
                for item in [d for d in due if d[0] <= time.monotonic()]:
                    due.remove(item)
                    image = np.zeros((8, 8, 3), np.uint8) + np.array(RECON, np.uint8)
                    tx.send(TrialResultMessage(session=SESSION, run=1, trial=item[1], image=image, retrieved=["decoded"], scores=[0.5],
                                               sequence=tx.spooled.get(1, -1) + 1))
                tx.poll(0.0)
                self.shown += tx.notices()
            tx.wait_acked(scaled(1.0))


def session(tmp_path: Path, task: str, stimulus: dict[str, Any] | None = None) -> SessionConfig:
    """A session whose run 1 is ``tmp_path/run.tsv``, with the given ``[stimulus]`` settings."""
    return SessionConfig(
        session=SessionSection(task=task, output_dir=tmp_path / "out"),
        network=NetworkSection(events=f"ipc://{tmp_path}/ev", results=f"ipc://{tmp_path}/res", heartbeat_s=scaled(0.2)),
        stimulus=StimulusSection.model_validate({**(stimulus or {}), "trial_lists": [tmp_path / "run.tsv"]}),
    )


class Recorder:
    """on_frame hook: a few pixels of each frame (back buffer, before its flip)."""

    def __init__(self, points: dict[str, tuple[int, int]]):
        self.points = points
        self.frames: dict[int, dict[str, Any]] = {}

    def __call__(self, frame: Frame) -> None:
        frame.win.getMovieFrame(buffer="back")
        pixels = np.asarray(frame.win.movieFrames.pop())
        sample = {name: tuple(int(v) for v in pixels[r, c]) for name, (r, c) in self.points.items()}
        sample["ink"] = int((np.abs(pixels.astype(int) - GREY).sum(axis=2) > 60).sum())
        self.frames[frame.index] = sample

    def first(self, flips: list[float], name: str, colour: tuple[int, int, int], after: float = -1.0) -> float:
        return next(flips[i] for i in sorted(self.frames) if flips[i] > after and self.frames[i][name] == colour)


def link_for(config: SessionConfig, setup):
    from stimulus.link import EngineLink
    from stimulus.trigger import psychopy_time

    folder = setup.paths.link_dir
    return EngineLink(config.network.events, config.network.results, SESSION, folder / "spool", folder / "results.json", clock=psychopy_time, heartbeat_s=scaled(0.2))


def test_perception_run(win, make_image, tmp_path: Path):
    from stimulus.trigger import PsychopyKeys

    colours = [(255, 0, 0), (0, 255, 0), (255, 0, 0), (255, 255, 0)]
    names = ["red", "green", "red", "yellow"]
    ids = ["100", "101", "100", "103"]  # trial 2 repeats trial 0's image
    for name, colour in zip(names, colours):
        make_image(tmp_path / f"{name}.png", colour)
    (tmp_path / "run.tsv").write_text(
        "stim_file\tstim_id\tfeedback\n" + "".join(f"{n}.png\t{ids[i]}\t{int(i in (1, 3))}\n" for i, n in enumerate(names))
    )
    config = session(
        tmp_path, "perception",
        {"window": {"size": list(win.size)}, "perception": {"image_s": 0.3, "gap_s": 0.1}, "feedback": {"window_s": 0.6, "top_k": 0, "show_target": False, "score_bar": False}, "lead_in_s": 0.1},
    )
    setup = prepare_run(config, 1)
    # trial 1's result comes 0.75 s after its event (0.35 s into its feedback period); trial 3's never does
    engine = Engine(config, tmp_path / "engine_spool", {1: 0.75})
    engine.start()
    assert engine.ready.wait(scaled(10))
    w, h = win.size
    # without the target beside it, the reconstruction is centred, 0.14 h above the middle
    recorder = Recorder({"image": (h // 2 - 20, w // 2 + 20), "recon": (int(h / 2 - 0.14 * h), w // 2 + 10)})
    link = link_for(config, setup)

    stop = threading.Event()

    def scanner() -> None:  # the trigger as a key press into the window, every 0.5 s
        while not stop.wait(0.5):
            children.run(["xdotool", "key", "--window", str(win.winHandle._window), "5"], check=False, timeout=scaled(10))

    pulses = threading.Thread(target=scanner, daemon=True)
    pulses.start()
    try:
        participant = VirtualParticipant(tr=1e6, n_volumes=0, response_time_s=0.05)
        program = StimulusProgram(setup, link=link, keys=PsychopyKeys(), participant=participant, win=win, on_frame=recorder)
        record = program.run()
    finally:
        stop.set()
        link.close()
        engine.stop.set()
        engine.join(scaled(10))
        pulses.join(scaled(10))
    flips = record.flips

    # the right image at the right time: every frame well inside a planned segment shows its image
    plan = setup.timeline
    checked = 0
    for i, sample in recorder.frames.items():
        t = flips[i]
        # a frame's content is chosen one frame ahead: skip frames that came late (the machine
        # stalled the process), whose content was chosen for an earlier time
        if t >= plan.end - 0.1 or i == 0 or t - flips[i - 1] > 0.05:
            continue
        seg = plan.segments[plan.index_at(t)]
        if min(abs(t - seg.start), abs(t - seg.stop)) < 0.1 or seg.phase == "feedback":
            continue
        expected = colours[seg.trial.index] if seg.phase == "image" else GREY
        assert sample["image"] == expected, f"frame at {t:.3f} s ({seg.phase})"
        checked += 1
    assert checked >= 10

    # the engine got one event per trial, each stamped within a frame of the flip that first showed it
    assert [(m.trial, m.trial_type, m.stimulus, m.feedback) for m in engine.events] == [
        (i, "image", ids[i], i in (1, 3)) for i in range(4)
    ]
    for msg in engine.events:
        first_shown = recorder.first(flips, "image", colours[msg.trial], after=plan.segments[plan.index_at(msg.onset)].start - 0.2)
        assert abs(msg.onset - first_shown) <= FRAME
        assert msg.session == SESSION and msg.run == 1

    # trial 1's reconstruction is shown on the first frame after it arrived, and not before
    result = record.results[1]
    received, shown = record.run_time(result.received), record.run_time(result.shown)
    fb = [s for s in plan.segments if s.phase == "feedback"]
    assert fb[0].start < received < shown < fb[0].stop
    assert recorder.first(flips, "recon", RECON) == pytest.approx(shown, abs=1e-3)
    # and the engine heard when (a ShownMessage back on the results link)
    assert [(m.trial, m.release, m.sequence) for m in engine.shown] == [(1, 0, 0)]
    assert engine.shown[0].shown == pytest.approx(shown, abs=1e-6)
    assert engine.shown[0].received_to_shown_s == pytest.approx(shown - received, abs=1e-6)
    # at most the frame under way when it arrived, and one more while the link thread hands it over
    assert sum(received < t < shown for t in flips) <= 2
    # waiting for it and never getting trial 3's did not hold up frames: the loop kept flipping
    # (a blocking wait would leave one frame on screen for the whole wait)
    assert 3 not in record.results
    for start, stop_t in ((fb[0].start, shown), (fb[1].start, fb[1].stop)):
        during = [t for t in flips if start <= t <= stop_t]
        assert len(during) >= 10 and during[0] - start < 0.1 and stop_t - during[-1] < 0.1
    assert all(s["recon"] != RECON for i, s in recorder.frames.items() if flips[i] > fb[1].start - 0.05)
    assert flips[-1] > plan.end - 0.1

    # records: BIDS events with responses from the virtual participant, triggers, frame timing
    with setup.paths.events.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["trial_type"], r["trial"]) for r in rows] == [("image", "0"), ("image", "1"), ("feedback", "1"), ("image", "2"), ("image", "3"), ("feedback", "3")]
    assert participant.answers == {0: "new", 1: "new", 2: "old", 3: "new"}  # trial 2 repeats trial 0's image
    for row in rows[:2] + rows[3:5]:
        onset = float(row["onset"])
        window = [t for t in flips if onset <= t <= onset + 0.3]
        # a press belongs to what was on screen when it was made: only a stall of the whole
        # process (a loaded machine) longer than the image could move it to the next trial
        if np.diff(window).max(initial=0) < 0.2:
            assert row["response"] == participant.answers[int(row["trial"])]
            assert float(row["response_time"]) == pytest.approx(0.05, abs=0.01)
    assert float(rows[1]["result_shown"]) == pytest.approx(shown, abs=1e-6)
    assert [float(r["onset"]) for r in rows if r["trial_type"] == "image"] == pytest.approx([m.onset for m in engine.events], abs=1e-6)
    assert len(program.trigger.times) >= 2 and setup.paths.source("frames.json").is_file()


def test_imagery_run(win, make_image, tmp_path: Path):
    make_image(tmp_path / "yellow.png", (255, 255, 0))
    make_image(tmp_path / "magenta.png", (255, 0, 255))
    (tmp_path / "run.tsv").write_text("cue\tcue_file\tstim_file\tfeedback\napple\t\tyellow.png\t1\n\tmagenta.png\t\t0\n")
    config = session(
        tmp_path, "imagery",
        {
            "window": {"size": list(win.size)},
            "imagery": {"cue_s": 0.2, "imagery_s": 0.3, "rest_s": 0.1, "vividness": True, "vividness_s": 0.2},
            "feedback": {"window_s": 0.5, "top_k": 0, "score_bar": False},
        },
    )
    setup = prepare_run(config, 1)
    engine = Engine(config, tmp_path / "engine_spool", {0: 0.0})  # a fast engine: the result is there before feedback
    engine.start()
    assert engine.ready.wait(scaled(10))
    w, h = win.size
    half = (0.38 * h + 0.03 * h) / 2
    y = int(h / 2 - 0.14 * h)
    recorder = Recorder({"target": (y, int(w / 2 - half)), "recon": (y, int(w / 2 + half)), "thumb": (h // 2 - 10, w // 2 + 10)})
    link = link_for(config, setup)
    try:
        record = StimulusProgram(setup, link=link, participant=VirtualParticipant(tr=0.4, response_time_s=0.05), win=win, on_frame=recorder).run()
    finally:
        link.close()
        engine.stop.set()
        engine.join(scaled(10))
    flips, plan = record.flips, setup.timeline

    assert [(m.trial, m.trial_type) for m in engine.events] == [(0, "imagery"), (1, "imagery")]
    cue0 = [i for i in sorted(recorder.frames) if flips[i] < engine.events[0].onset - 0.05]
    assert any(recorder.frames[i]["ink"] > 20 for i in cue0)  # the word cue was drawn
    last_magenta = max(i for i, s in recorder.frames.items() if s["thumb"] == (255, 0, 255))
    assert flips[last_magenta + 1] == pytest.approx(engine.events[1].onset, abs=FRAME)  # imagery begins as the cue goes
    assert recorder.frames[last_magenta + 1]["ink"] < 150  # the fixation dot alone (~70 px; the cue had ~1300)

    feedback = next(s for s in plan.segments if s.phase == "feedback")
    result = record.results[0]
    assert record.run_time(result.received) < feedback.start
    shown = record.run_time(result.shown)
    assert shown == pytest.approx(recorder.first(flips, "recon", RECON), abs=1e-3)
    in_feedback = [s for i, s in recorder.frames.items() if feedback.start + 0.1 < flips[i] < feedback.stop - 0.1]
    assert in_feedback and all(s["recon"] == RECON and s["target"] == (255, 255, 0) for s in in_feedback)

    with setup.paths.events.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert [(r["trial_type"], r["trial"]) for r in rows] == [
        ("cue", "0"), ("imagery", "0"), ("vividness", "0"), ("feedback", "0"), ("cue", "1"), ("imagery", "1"), ("vividness", "1")
    ]
    assert [r["response"] for r in rows if r["trial_type"] == "vividness"] == ["3", "3"]
    # the result was already there, so it is on the feedback period's first frame
    assert float(next(r["onset"] for r in rows if r["trial_type"] == "feedback")) == pytest.approx(shown, abs=1e-3)


class ScriptedLink:
    """A link whose engine has trial 0's result ready at the first poll (where only the display matters)."""

    def __init__(self) -> None:
        self.polls = 0
        self.sent: list[EventMessage] = []
        self.shown: list = []

    def send_event(self, message: EventMessage) -> None:
        self.sent.append(message)

    def send_shown(self, message) -> None:
        self.shown.append(message)

    def poll_results(self):
        self.polls += 1
        if self.polls != 1:
            return []
        image = np.zeros((8, 8, 3), np.uint8) + np.array(RECON, np.uint8)
        return [(TrialResultMessage(session=SESSION, run=1, trial=0, image=image, scores=[0.9]), 0.0)]

    def close(self) -> None:
        return None


def test_feedback_on_the_operators_demand_and_the_quit_key(win, make_image, tmp_path: Path):
    from stimulus.trigger import KeyPress, ScheduledKeys, psychopy_time

    make_image(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "run.tsv").write_text("stim_file\nred.png\nred.png\nred.png\n")
    feedback = {"when": "demand", "screen": "operator", "operator_size": [160, 120]}
    config = session(tmp_path, "perception", {"window": {"size": list(win.size)}, "perception": {"image_s": 0.4, "gap_s": 0.0}, "feedback": feedback})
    setup = prepare_run(config, 1)
    assert [s.phase for s in setup.timeline.segments] == ["image"] * 3  # nothing scheduled: feedback only on demand
    w, h = win.size
    recorder = Recorder({"recon": (int(h / 2 - 0.14 * h), int(w / 2 + (0.38 * h + 0.03 * h) / 2))})

    class Keys:
        """After the waiting screen appears (its first poll): the trigger, 'f' 0.3 s and escape 0.9 s later."""

        def __init__(self) -> None:
            self.scheduled: ScheduledKeys | None = None

        def poll(self) -> list[KeyPress]:
            if self.scheduled is None:
                t = psychopy_time() + 0.1
                self.scheduled = ScheduledKeys([KeyPress("5", t), KeyPress("f", t + 0.3), KeyPress("escape", t + 0.9)])
            return self.scheduled.poll()

    link = ScriptedLink()
    record = StimulusProgram(setup, link=link, keys=Keys(), win=win, on_frame=recorder).run()

    assert record.aborted and record.flips[-1] < setup.timeline.end
    assert [m.trial for m in link.sent][:2] == [0, 1]
    shown = record.run_time(record.results[0].shown)  # drawn on the operator's window when asked for ...
    assert 0.3 <= shown < 0.9
    assert all(s["recon"] != RECON for s in recorder.frames.values())  # ... never on the participant's
    assert setup.paths.events.is_file() and '"aborted": true' in setup.paths.source("frames.json").read_text()


def test_bad_input_is_reported_before_the_run(make_image, tmp_path: Path):
    make_image(tmp_path / "red.png", (255, 0, 0))
    config = session(tmp_path, "perception")
    (tmp_path / "run.tsv").write_text("stim_file\tresponse\nred.png\tnew\nblue.png\tnew\nred.png\tmaybe\n")
    with pytest.raises(TrialListError) as info:
        prepare_run(config, 1)
    assert f"{tmp_path / 'run.tsv'}, line 3: stim_file: image file" in str(info.value)
    (tmp_path / "run.tsv").write_text("stim_file\tresponse\nred.png\tnew\nred.png\tmaybe\n")
    with pytest.raises(TrialListError, match=r"line 3: response 'maybe' is not one of \['new', 'old'\]"):
        prepare_run(config, 1)
    assert not (tmp_path / "out").exists()
    (tmp_path / "run.tsv").write_text("stim_file\nred.png\n")
    with pytest.raises(ValueError, match="no trial list for run 2: stimulus.trial_lists has 1"):
        prepare_run(config, 2)
    setup = prepare_run(config, 2, trials_file=tmp_path / "run.tsv")
    setup.paths.events.parent.mkdir(parents=True)
    setup.paths.events.write_text("onset\n")
    with pytest.raises(FileExistsError, match="run 2 is already recorded"):
        prepare_run(config, 2, trials_file=tmp_path / "run.tsv")
    demand = session(tmp_path, "perception", {"feedback": {"when": "demand"}})
    with pytest.raises(ValueError, match='when = "demand" needs screen = "operator"'):
        prepare_run(demand, 1)


class EchoLink(ScriptedLink):
    """An engine stand-in: each trial's result ``delay_s`` scanner seconds after its event was sent
    (so results land during later stimuli and cues), then release 1 of trial 0 ``refine_s`` later."""

    def __init__(self, speed: float, delay_s: dict[int, float], refine_s: float | None = None) -> None:
        super().__init__()
        self.speed, self.delay_s, self.refine_s = speed, delay_s, refine_s
        self.due: list[tuple[float, int, int]] = []

    def send_event(self, message: EventMessage) -> None:
        from stimulus.trigger import psychopy_time

        super().send_event(message)
        if message.trial in self.delay_s:
            due = psychopy_time() + self.delay_s[message.trial] / self.speed
            self.due.append((due, message.trial, 0))
            if message.trial == 0 and self.refine_s is not None:
                self.due.append((due + self.refine_s / self.speed, 0, 1))

    def poll_results(self):
        from stimulus.trigger import psychopy_time

        now = psychopy_time()
        ready = [d for d in self.due if d[0] <= now]
        self.due = [d for d in self.due if d[0] > now]
        image = np.zeros((8, 8, 3), np.uint8) + np.array(RECON, np.uint8)
        return [(TrialResultMessage(session=SESSION, run=1, trial=t, image=image, scores=[0.5], release=r), now) for _, t, r in ready]


class PixelWatch:
    """on_frame hook: counts the reconstruction's pixels in each frame's back buffer, by the segment it shows."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, str, int, tuple[int, ...]]] = []  # (index, phase, recon pixels, results drawn)

    def __call__(self, frame: Frame) -> None:
        frame.win.getMovieFrame(buffer="back")
        pixels = np.asarray(frame.win.movieFrames.pop())
        recon = int((pixels == np.array(RECON)).all(axis=2).sum())
        self.frames.append((frame.index, frame.segment.phase, recon, frame.results_drawn))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _no_feedback_over_the_task(watch: PixelWatch, flips: list[float], timeline, speed: float) -> int:
    """No frame of a stimulus, cue or response period draws a result; returns the frames of feedback that did."""
    task = ("image", "gap", "cue", "imagery", "vividness", "rest")
    for index, phase, recon, drawn in watch.frames:
        if phase in task:
            assert recon == 0 and drawn == (), f"frame {index} ({phase} at {flips[index]:.3f} s) drew a result"
        # and the frame the program chose is the planned one, away from the boundaries (+- a frame)
        t, margin = flips[index], 1.5 * speed / 60
        seg = timeline.segments[timeline.index_at(t)] if t < timeline.end else None
        if seg is not None and seg.phase in task and seg.start + margin < t < seg.stop - margin and index > 0 \
                and flips[index] - flips[index - 1] < 3 * speed / 60:
            assert phase == seg.phase, f"frame {index} at {t:.3f} s showed {phase}, the plan {seg.phase}"
    return sum(1 for _, phase, recon, drawn in watch.frames if phase in ("feedback", "end") and recon > 0 and drawn)


@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_perception_slot_feedback_never_covers_the_task(win, make_image, tmp_path: Path, speed: float):
    """Live feedback on the participant's screen: results wait for the design's free stretches."""
    make_image(tmp_path / "red.png", (255, 0, 0))
    onsets = [0.5, 1.7, 4.5, 5.7]  # a trial every 1.2 s, and a blank stretch 2.9 - 4.5 s
    (tmp_path / "run.tsv").write_text("stim_file\tonset\tfeedback\n" + "".join(f"red.png\t{o}\t1\n" for o in onsets))
    config = session(tmp_path, "perception", {
        "window": {"size": list(win.size)}, "perception": {"image_s": 1.0, "gap_s": 0.2}, "lead_out_s": 1.5,
        "feedback": {"window_s": 1.5, "slot_min_s": 1.0, "top_k": 0, "show_target": False, "score_bar": False,
                     "end_screen_s": 0.5}, "trigger": {"tr": 1.0},
    })
    setup = prepare_run(config, 1, live_feedback=True)
    slots = [(s.start, s.stop) for s in setup.timeline.segments if s.phase == "feedback"]
    assert [t for slot in slots for t in slot] == pytest.approx([2.9, 4.4, 6.9, 8.4])
    link = EchoLink(speed, {0: 0.3, 1: 0.3, 2: 0.3, 3: 0.3}, refine_s=0.5)  # each arrives during its own image
    watch = PixelWatch()
    participant = VirtualParticipant(tr=1.0, response_time_s=0.3, speed=speed)
    program = StimulusProgram(setup, link=link, participant=participant, win=win, on_frame=watch, speed=speed,
                              live_feedback=True, results_timeout_s=0.5)
    record = program.run()
    flips = record.flips
    # the replay keeps the scanner's time: triggers every TR / speed of the clock, responses in scanner seconds
    assert np.allclose(np.diff(program.trigger.times), 1.0 / speed, atol=1e-9)

    shown_frames = _no_feedback_over_the_task(watch, flips, setup.timeline, speed)
    assert shown_frames >= 3  # the control: results were drawn, in the slots
    rows = _rows(setup.paths.events)
    feedback = [(r["trial"], r["release"], r["feedback_status"]) for r in rows if r["trial_type"] == "feedback"]
    # slot 1 shows trials 0 (its newest release) and 1, which came during the images; slot 2 trials 2 and 3
    assert feedback == [("0", "1", "shown"), ("1", "0", "shown"), ("2", "0", "shown"), ("3", "0", "shown")]
    for row in rows:
        if row["trial_type"] == "feedback":
            start, stop = slots[0] if int(row["trial"]) < 2 else slots[1]
            assert start - 0.05 * speed <= float(row["onset"]) and float(row["onset"]) + float(row["duration"]) <= stop + 0.05 * speed
            assert float(row["planned_onset"]) == pytest.approx(start)
        else:
            assert float(row["planned_duration"]) == pytest.approx(1.0)
    # every image row: planned and measured onset and duration; the sidecar says how many slipped
    images = [r for r in rows if r["trial_type"] == "image"]
    assert [float(r["response_time"]) for r in images] == pytest.approx([0.3] * 4, abs=0.05 * speed)
    assert [float(r["planned_onset"]) for r in images] == pytest.approx(onsets)
    sidecar = json.loads(setup.paths.events.with_suffix(".json").read_text())["StimulusTiming"]
    assert sidecar["stimuli"] == 4 and sidecar["speed"] == speed
    late = [r for r in images if abs(float(r["onset"]) - float(r["planned_onset"])) / speed > sidecar["frame_s"]
            or abs(float(r["duration"]) - float(r["planned_duration"])) / speed > sidecar["frame_s"]]
    assert sidecar["slipped"] == len(late)
    # the end screen came after the last trial, and the results got their CPD-free records
    assert [m.trial for m in link.sent] == [0, 1, 2, 3]
    assert flips[-1] >= setup.timeline.end
    assert 0 in record.results and record.results[0].message.release == 1


@pytest.mark.parametrize("speed", [1.0, 10.0])
def test_imagery_feedback_after_each_trial_and_a_late_result(win, tmp_path: Path, speed: float):
    """A result that misses its trial's period is not drawn over the next cue: it waits (late = "next")."""
    (tmp_path / "run.tsv").write_text("cue\tfeedback\napple\t1\nhouse\t1\nhorse\t0\n")
    config = session(tmp_path, "imagery", {
        "window": {"size": list(win.size)}, "imagery": {"cue_s": 0.5, "imagery_s": 1.0, "rest_s": 0.2},
        "feedback": {"window_s": 1.0, "top_k": 0, "score_bar": False, "late": "next", "end_screen_s": 1.0},
        "trigger": {"tr": 1.0},
    })
    setup = prepare_run(config, 1)
    # trial 0's result comes during its imagery; trial 1's 2.5 s after its imagery began: during trial 2's cue
    link = EchoLink(speed, {0: 0.2, 1: 2.5})
    watch = PixelWatch()
    record = StimulusProgram(setup, link=link, participant=VirtualParticipant(tr=1.0, speed=speed), win=win,
                             on_frame=watch, speed=speed, results_timeout_s=1.0).run()
    flips = record.flips

    assert _no_feedback_over_the_task(watch, flips, setup.timeline, speed) >= 2
    assert any(phase == "end" and recon > 0 for _, phase, recon, _ in watch.frames)  # trial 1's, on the end screen
    rows = _rows(setup.paths.events)
    assert [(r["trial_type"], r["trial"], r["feedback_status"]) for r in rows] == [
        ("cue", "0", "n/a"), ("imagery", "0", "n/a"), ("feedback", "0", "shown"),
        ("cue", "1", "n/a"), ("imagery", "1", "n/a"), ("feedback", "1", "missing"),
        ("cue", "2", "n/a"), ("imagery", "2", "n/a"), ("feedback", "1", "late"),
    ]
    late = rows[-1]
    assert float(late["onset"]) >= setup.timeline.end - 0.05 * speed  # after the last trial: on the end screen
    assert float(late["result_received"]) > float(rows[5]["onset"]) + float(rows[5]["duration"]) - 0.05 * speed


class ReleasesLink(ScriptedLink):
    """Trial 0 released three times: release 0 during its image, then during its feedback period the
    final release 2 and, just after it, the older release 1 (``at``: the feedback period's middle, in
    seconds after the trial's event was sent)."""

    COLOURS = {0: RECON, 1: (200, 0, 200), 2: (0, 200, 0)}

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at
        self.due: list[tuple[float, int]] = []

    def send_event(self, message: EventMessage) -> None:
        from stimulus.trigger import psychopy_time

        super().send_event(message)
        if message.trial == 0:
            now = psychopy_time()
            self.due = [(now + 0.05, 0), (now + self.at, 2), (now + self.at + 0.02, 1)]

    def poll_results(self):
        from stimulus.trigger import psychopy_time

        now = psychopy_time()
        ready = [r for t, r in self.due if t <= now]
        self.due = [(t, r) for t, r in self.due if t > now]
        return [(TrialResultMessage(session=SESSION, run=1, trial=0, release=r, final=r == 2, sequence=[0, 2, 1][r],
                                    image=np.zeros((8, 8, 3), np.uint8) + np.array(self.COLOURS[r], np.uint8), scores=[0.5]),
                 now) for r in ready]


def test_a_newer_release_of_a_trial_replaces_the_older_on_screen(win, make_image, tmp_path: Path):
    make_image(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "run.tsv").write_text("stim_file\tfeedback\nred.png\t1\n")
    config = session(tmp_path, "perception", {
        "window": {"size": list(win.size)}, "perception": {"image_s": 0.3, "gap_s": 0.1}, "lead_in_s": 0.1,
        "feedback": {"window_s": 1.2, "top_k": 0, "show_target": False, "score_bar": False}, "trigger": {"tr": 1.0},
    })
    setup = prepare_run(config, 1)
    (image,) = [s for s in setup.timeline.segments if s.phase == "image"]
    (period,) = [s for s in setup.timeline.segments if s.phase == "feedback"]
    w, h = win.size
    recorder = Recorder({"recon": (int(h / 2 - 0.14 * h), w // 2 + 10)})
    link = ReleasesLink(at=(period.start + period.stop) / 2 - image.start)
    record = StimulusProgram(setup, link=link, participant=VirtualParticipant(tr=1.0), win=win, on_frame=recorder).run()
    in_period = [recorder.frames[i]["recon"] for i in sorted(recorder.frames)
                 if period.start + 0.05 < record.flips[i] < period.stop - 0.05]
    first, final, late = (ReleasesLink.COLOURS[r] for r in (0, 2, 1))
    # release 0 is drawn first, then the final release in its place; release 1, older, came too late to show
    assert in_period[0] == first and in_period[-1] == final and late not in in_period
    assert first not in in_period[in_period.index(final):]
    assert link.due == [] and record.results[0].message.release == 2 and record.results[0].shown is not None
    # each release's first flip goes back to the engine, with the run time the journal has
    assert [(m.trial, m.release, m.sequence) for m in link.shown] == [(0, 0, 0), (0, 2, 1)]
    # each is the first flip that drew that release (a period's first flip may come half a frame
    # early; the flip's time and the shown stamp are read a fraction of a millisecond apart)
    assert [m.shown for m in link.shown] == pytest.approx(
        [recorder.first(record.flips, "recon", ReleasesLink.COLOURS[m.release]) for m in link.shown], abs=2e-3)
    assert link.shown[-1].shown == pytest.approx(record.run_time(record.results[0].shown))
    assert link.shown[-1].received_to_shown_s == pytest.approx(record.results[0].shown - record.results[0].received)


def test_speed_needs_a_virtual_participant(make_image, tmp_path: Path):
    make_image(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "run.tsv").write_text("stim_file\nred.png\n")
    setup = prepare_run(session(tmp_path, "perception"), 1)
    with pytest.raises(ValueError, match="needs a virtual participant at the same speed"):
        StimulusProgram(setup, link=ScriptedLink(), keys=ScriptedLink(), speed=2.0)


class Console:
    """on_frame hook standing in for ``rtrecon console``: publishes the operator's controls each frame
    (its heartbeat), ``plan(t)`` giving them at run time ``t``; and the reconstruction's pixels of each
    frame, with whether the program's feedback was paused when it drew it."""

    def __init__(self, endpoint: str, plan) -> None:
        from rtrecon.contract.transport import StatusPublisher

        self.publisher = StatusPublisher(endpoint, name="console")
        self.plan = plan
        self.program: StimulusProgram | None = None
        self.frames: list[tuple[int, str, int | None, int, bool]] = []  # (index, phase, trial, recon pixels, paused)

    def __call__(self, frame: Frame) -> None:
        record = self.program.record
        t = record.flips[-1] if record.flips else 0.0
        self.publisher.publish(self.plan(t))
        frame.win.getMovieFrame(buffer="back")
        pixels = np.asarray(frame.win.movieFrames.pop())
        recon = int((pixels == np.array(RECON)).all(axis=2).sum())
        trial = frame.segment.trial.index if frame.segment.trial is not None else None
        self.frames.append((frame.index, frame.segment.phase, trial, recon, self.program.results.paused))

    def close(self) -> None:
        self.publisher.close()


def _feedback_run(win, make_image, tmp_path: Path):
    """Three perception trials, each with a 1.2 s feedback period; every result comes 0.1 s after its image."""
    make_image(tmp_path / "red.png", (255, 0, 0))
    (tmp_path / "run.tsv").write_text("stim_file\tfeedback\n" + "red.png\t1\n" * 3)
    config = session(tmp_path, "perception", {
        "window": {"size": list(win.size)}, "perception": {"image_s": 0.4, "gap_s": 0.1}, "lead_in_s": 0.2,
        "feedback": {"window_s": 1.2, "top_k": 0, "show_target": False, "score_bar": False, "end_screen_s": 0.2},
    })
    setup = prepare_run(config, 1)
    periods = {s.trial.index: (s.start, s.stop) for s in setup.timeline.segments if s.phase == "feedback"}
    return setup, periods, EchoLink(1.0, {0: 0.1, 1: 0.1, 2: 0.1})


@pytest.mark.parametrize("with_controls", [True, False])
def test_the_operator_pauses_and_resumes_feedback(win, make_image, tmp_path: Path, with_controls: bool):
    from rtrecon.contract.wire import OperatorMessage
    from stimulus.operator import OperatorControls

    setup, periods, link = _feedback_run(win, make_image, tmp_path)
    start, stop = periods[1]
    resume_at = (start + stop) / 2

    def plan(t: float) -> OperatorMessage:
        # paused from trial 1's image to the middle of its feedback period; trial 0 marked bad meanwhile
        paused = periods[0][1] <= t < resume_at
        return OperatorMessage(session=SESSION, feedback_paused=paused, bad_trials={1: [0]} if t >= start else {})

    endpoint = f"ipc://{tmp_path}/operator"
    console = Console(endpoint, plan)
    controls = OperatorControls(endpoint, SESSION) if with_controls else None
    try:
        program = StimulusProgram(setup, link=link, participant=VirtualParticipant(tr=1.0), win=win, on_frame=console,
                                  controls=controls)
        console.program = program
        record = program.run()
    finally:
        console.close()
        if controls is not None:
            controls.close()

    flips = record.flips
    def period(trial: int) -> list[tuple[float, int, bool]]:  # (flip, recon pixels, paused) of each frame of its period
        return [(flips[i], recon, paused) for i, phase, t, recon, paused in console.frames if phase == "feedback" and t == trial]

    in_period = period(1)
    assert all(recon > 0 for _, recon, _ in period(0)[3:])  # trial 0's result, drawn before the pause
    rows = _rows(setup.paths.events)
    feedback = [(r["trial"], r["feedback_status"]) for r in rows if r["trial_type"] == "feedback"]
    sidecar = json.loads(setup.paths.events.with_suffix(".json").read_text())
    assert sorted(record.results) == [0, 1, 2]  # every result received and recorded, paused or not
    if not with_controls:  # the control: without the console's controls nothing changes
        assert all(recon > 0 for _, recon, _ in in_period[3:]) and not any(paused for *_, paused in console.frames)
        assert feedback == [("0", "shown"), ("1", "shown"), ("2", "shown")]
        assert "OperatorActions" not in sidecar
        return
    paused_frames = [(t, recon) for t, recon, paused in in_period if paused]
    after = [(t, recon) for t, recon, paused in in_period if not paused]
    assert len(paused_frames) >= 10 and all(recon == 0 for _, recon in paused_frames)  # no feedback pixel while paused
    assert all(recon > 0 for _, recon in after[3:]) and len(after) >= 10  # drawn again after resume
    assert all(recon == 0 for *_, recon, paused in console.frames if paused)
    assert feedback == [("0", "shown"), ("1", "paused"), ("1", "shown"), ("2", "shown")]
    paused_row, shown_row = [r for r in rows if r["trial_type"] == "feedback" and r["trial"] == "1"]
    assert float(paused_row["onset"]) == pytest.approx(start, abs=0.05)
    assert float(paused_row["onset"]) + float(paused_row["duration"]) == pytest.approx(float(shown_row["onset"]), abs=0.05)
    assert float(shown_row["onset"]) == pytest.approx(resume_at, abs=0.1)
    actions = sidecar["OperatorActions"]
    assert [(a["action"], a.get("trial")) for a in actions["actions"]] == [
        ("feedback_paused", None), ("trial_marked_bad", 0), ("feedback_resumed", None)]
    times = [a["time"] for a in actions["actions"]]
    assert times == pytest.approx([periods[0][1], start, resume_at], abs=0.1)
    assert actions["bad_trials"] == [0]
    journal = [json.loads(line) for line in setup.paths.journal.read_text().splitlines()]
    assert [e["action"] for e in journal if e["t"] == "operator"] == ["feedback_paused", "trial_marked_bad", "feedback_resumed"]


def test_the_operator_ends_the_run(win, make_image, tmp_path: Path):
    from rtrecon.contract.wire import OperatorMessage
    from stimulus.operator import OperatorControls

    setup, periods, link = _feedback_run(win, make_image, tmp_path)
    end_at = periods[1][0]

    def plan(t: float) -> OperatorMessage:
        # the control: another run's end (run 2, from the start) does not end this one
        return OperatorMessage(session=SESSION, ended_runs=[1, 2] if t >= end_at else [2])

    endpoint = f"ipc://{tmp_path}/operator"
    console = Console(endpoint, plan)
    try:
        with OperatorControls(endpoint, SESSION) as controls:
            program = StimulusProgram(setup, link=link, participant=VirtualParticipant(tr=1.0), win=win, on_frame=console,
                                      controls=controls)
            console.program = program
            record = program.run()
    finally:
        console.close()

    assert record.aborted and record.ended_by == "operator"
    assert end_at <= record.flips[-1] < end_at + 0.2 < setup.timeline.end
    rows = _rows(setup.paths.events)
    assert [(r["trial_type"], r["trial"]) for r in rows] == [("image", "0"), ("feedback", "0"), ("image", "1"), ("feedback", "1")]
    frames = json.loads(setup.paths.source("frames.json").read_text())
    assert frames["aborted"] and frames["ended_by"] == "operator"
    actions = json.loads(setup.paths.events.with_suffix(".json").read_text())["OperatorActions"]["actions"]
    assert [a["action"] for a in actions] == ["run_ended"] and actions[0]["time"] == pytest.approx(end_at, abs=0.1)
    assert _rows(setup.paths.source("results.tsv"))[0]["trial"] == "0"
    assert setup.paths.source("triggers.tsv").is_file() and (setup.paths.source("psychopy.csv")).is_file()
    journal = [json.loads(line) for line in setup.paths.journal.read_text().splitlines()]
    assert journal[-1] == {"t": "end", "aborted": True}
