from __future__ import annotations

from pathlib import Path

import pytest

from stimulus.trials import TrialListError, load_trials


def write(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(row) + "\n" for row in rows))
    return path


@pytest.fixture
def images(tmp_path: Path, make_image):
    (tmp_path / "img").mkdir()
    return [make_image(tmp_path / "img" / f"{name}.png", rgb) for name, rgb in (("a", (255, 0, 0)), ("b", (0, 255, 0)))]


def test_perception_list(tmp_path: Path, images):
    path = write(
        tmp_path / "run.tsv",
        [["stim_file", "stim_id", "feedback", "block"], ["img/a.png", "101", "1", "A"], ["img/b.png", "", "no", "A"], ["img/a.png", "101", "", "B"]],
    )
    trials = load_trials(path, "perception")
    assert [t.index for t in trials] == [0, 1, 2]
    assert [t.line for t in trials] == [2, 3, 4]
    assert trials[0].stim_file == images[0].resolve() and trials[0].trial_type == "image"
    assert [t.feedback for t in trials] == [True, False, False]
    assert [t.stimulus for t in trials] == ["101", "b.png", "101"]
    assert [t.block for t in trials] == ["A", "A", "B"]


def test_imagery_list_with_word_and_image_cues(tmp_path: Path, images):
    path = write(tmp_path / "run.tsv", [["cue", "cue_file", "stim_file", "onset"], ["apple", "", "img/a.png", "2"], ["", "img/b.png", "", "10.5"]])
    trials = load_trials(path, "imagery")
    assert [t.cue_kind for t in trials] == ["word", "image"]
    assert [t.onset for t in trials] == [2.0, 10.5]
    assert trials[0].trial_type == "imagery" and trials[0].stimulus == "a.png"


def test_sound_cues_are_decoded_before_the_run(tmp_path: Path, images):
    import numpy as np
    import soundfile

    soundfile.write(str(tmp_path / "bell.ogg"), np.zeros((2205, 1), np.float32) + 0.1, 22050)
    (tmp_path / "hum.wav").write_bytes(b"RIFF....WAVEfmt but cut short")
    path = write(
        tmp_path / "run.tsv",
        [["cue", "cue_file", "stim_file"], ["", "bell.ogg", "img/a.png"], ["bell", "bell.ogg", ""], ["", "hum.wav", ""], ["", "gone.flac", ""]],
    )
    with pytest.raises(TrialListError) as info:
        load_trials(path, "imagery")
    assert [line for line, _ in info.value.problems] == [4, 5]
    text = str(info.value)
    assert f"{path}, line 4: cue_file: sound file {tmp_path / 'hum.wav'} cannot be decoded" in text
    assert f"{path}, line 5: cue_file: sound file {tmp_path / 'gone.flac'} does not exist" in text

    (tmp_path / "Bell.OGG").write_bytes((tmp_path / "bell.ogg").read_bytes())
    trials = load_trials(write(tmp_path / "ok.tsv", [["cue", "cue_file", "stim_file"], ["", "bell.ogg", "img/a.png"], ["bell", "Bell.OGG", ""]]), "imagery")
    assert [t.cue_kind for t in trials] == ["sound", "sound"]
    assert [t.stimulus for t in trials] == ["a.png", "bell"]


def test_every_problem_is_reported_with_its_line(tmp_path: Path, images):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = write(
        tmp_path / "run.tsv",
        [
            ["stim_file", "onset", "feedback"],
            ["img/a.png", "0", "1"],
            ["img/missing.png", "4", "0"],
            ["broken.png", "8", "0"],
            ["img/b.png", "soon", "maybe"],
            ["img/b.png", "3"],
            ["img/a.png", "2", "0"],
        ],
    )
    with pytest.raises(TrialListError) as info:
        load_trials(path, "perception")
    lines = {line for line, _ in info.value.problems}
    assert lines == {3, 4, 5, 6}
    text = str(info.value)
    assert f"{path}, line 3: stim_file: image file" in text and "missing.png does not exist" in text
    assert f"{path}, line 4: stim_file" in text and "cannot be read" in text
    assert "line 5: onset 'soon'" in text and "line 5: feedback 'maybe'" in text
    assert "line 6: 2 fields but the header has 3" in text


def test_onsets_must_not_go_back(tmp_path: Path, images):
    path = write(tmp_path / "run.tsv", [["stim_file", "onset"], ["img/a.png", "5"], ["img/b.png", "4"]])
    with pytest.raises(TrialListError, match=r"line 3: onset 4.0 is before the previous trial's"):
        load_trials(path, "perception")


@pytest.mark.parametrize(
    ("rows", "task", "expected"),
    [
        ([["stim_file", "colour"], ["img/a.png", "red"]], "perception", "line 1: unknown column(s) 'colour'"),
        ([["stim_id"], ["101"]], "perception", "need a stim_file column"),
        ([["stim_file"], ["img/a.png"]], "imagery", "need a cue or cue_file column"),
        ([["stim_file", "stim_file"], ["img/a.png", "img/a.png"]], "perception", "duplicated column(s) stim_file"),
        ([["cue", "stim_file"], ["", "img/a.png"]], "imagery", "line 2: no cue"),
        ([["cue_file"], ["bell.wav"]], "imagery", "line 2: cue_file: sound file"),
        ([["stim_file"]], "perception", "no trials"),
        ([], "perception", "empty"),
    ],
)
def test_malformed_lists(tmp_path: Path, images, rows, task, expected):
    path = write(tmp_path / "run.tsv", rows)
    with pytest.raises(TrialListError) as info:
        load_trials(path, task)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_missing_list(tmp_path: Path):
    with pytest.raises(TrialListError, match="no such trial list"):
        load_trials(tmp_path / "nope.tsv", "perception")
