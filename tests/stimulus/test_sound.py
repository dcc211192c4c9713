"""Sound cues through PsychoPy's sounddevice backend, PortAudio and ALSA, into a file ALSA writes.

The machine has no sound card: the fixture gives ALSA a default output of ``type file`` over
``null``, so every sample PsychoPy's stream sends lands in a raw file (float32 stereo, as
PsychoPy opens its stream) that the tests read back.
"""

from __future__ import annotations

import bisect
import csv
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rtrecon.contract.config import SessionConfig, SessionSection, SoundSection, StimulusSection
from rtrecon.testing import scaled
from stimulus.sound import SoundError, check_sound_file, decode_sound

ALSA_CONF = "/usr/share/alsa/alsa.conf"


def tone(path: Path, freq: float, secs: float, rate: int, channels: int = 1, amplitude: float = 0.6) -> np.ndarray:
    """Write a cosine tone (never exactly zero, so its start and end show in the output); return its samples."""
    import soundfile

    t = np.arange(int(secs * rate)) / rate
    samples = np.repeat((amplitude * np.cos(2 * np.pi * freq * t)).astype(np.float32)[:, None], channels, axis=1)
    soundfile.write(str(path), samples, rate, subtype="FLOAT" if path.suffix == ".wav" else None)  # FLAC is 16-bit
    return samples


@pytest.fixture(scope="module")
def alsa_output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ALSA's default output becomes a file; yields its path (PortAudio re-scanned before and after)."""
    if not Path(ALSA_CONF).is_file():
        pytest.skip("ALSA's configuration is not installed (Debian: libasound2)")
    try:
        import sounddevice
    except OSError:
        pytest.skip("PortAudio is not installed (Debian: libportaudio2)")
    folder = tmp_path_factory.mktemp("alsa")
    raw = folder / "speaker.raw"
    conf = folder / "asound.conf"
    conf.write_text(f'<{ALSA_CONF}>\npcm.!default {{\n  type file\n  slave.pcm "null"\n  file "{raw}"\n  format "raw"\n}}\n')
    previous = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = str(conf)
    sounddevice._terminate()  # PortAudio lists devices when it starts: start it again under this config
    sounddevice._initialize()
    yield raw
    # Closing PortAudio closes PsychoPy's mixing stream, which would otherwise write silence
    # into the file for the rest of the session.
    sounddevice._terminate()
    from psychopy.hardware.speaker.speaker_sounddevice import SoundDeviceSpeakerDevice
    from psychopy.sound import backend_sounddevice

    backend_sounddevice.streams.clear()
    SoundDeviceSpeakerDevice.streams.clear()
    raw.unlink(missing_ok=True)  # ALSA's null output takes samples faster than real time: tens of MB
    if previous is None:
        os.environ.pop("ALSA_CONFIG_PATH")
    else:
        os.environ["ALSA_CONFIG_PATH"] = previous
    sounddevice._initialize()


def test_sound_files_are_decoded_or_refused_with_the_reason(tmp_path: Path):
    stereo = tone(tmp_path / "stereo.wav", 440, 0.05, 22050, channels=2)
    samples, rate = decode_sound(tmp_path / "stereo.wav")
    assert rate == 22050 and samples.shape == (1102, 2) and np.allclose(samples, stereo)
    assert check_sound_file(tmp_path / "stereo.wav") is None

    tone(tmp_path / "four.flac", 440, 0.05, 22050, channels=4)
    (tmp_path / "noise.wav").write_bytes(b"RIFF, but not a wave file")
    import soundfile

    soundfile.write(str(tmp_path / "empty.wav"), np.zeros((0, 1), np.float32), 22050)
    assert "does not exist" in check_sound_file(tmp_path / "gone.ogg")
    assert "noise.wav cannot be decoded" in check_sound_file(tmp_path / "noise.wav")
    assert "4 channels" in check_sound_file(tmp_path / "four.flac")
    assert "no samples" in check_sound_file(tmp_path / "empty.wav")


def test_a_missing_output_is_an_error_naming_it(alsa_output: Path, tmp_path: Path):
    from stimulus.sound import SoundCues
    from stimulus.trials import Trial

    tone(tmp_path / "a.wav", 440, 0.05, 44100)
    trials = [Trial(index=0, line=2, trial_type="imagery", cue_file=tmp_path / "a.wav")]
    with pytest.raises(SoundError, match=r"no audio output.*'no-such-speaker'.*outputs found: 'default'"):
        SoundCues(SoundSection(device="no-such-speaker"), trials)


def _runs(channel: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each stretch of non-zero samples, merging gaps under 64 samples."""
    nonzero = np.flatnonzero(channel != 0)
    if not nonzero.size:
        return []
    breaks = np.flatnonzero(np.diff(nonzero) > 64)
    starts = np.r_[nonzero[0], nonzero[breaks + 1]]
    stops = np.r_[nonzero[breaks], nonzero[-1]] + 1
    return list(zip(starts.tolist(), stops.tolist()))


def test_sound_cues_start_at_the_cue_flip_and_reach_the_speaker(alsa_output: Path, win, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import sounddevice

    from stimulus.app import Frame, StimulusProgram, prepare_run
    from stimulus.link import OfflineLink
    from stimulus.participant import VirtualParticipant

    out_rate = int(sounddevice.query_devices(None, kind="output")["default_samplerate"])
    bell = tone(tmp_path / "bell.wav", 440, 0.25, out_rate)  # at the output's rate: played sample for sample
    low = tone(tmp_path / "low.flac", 880, 0.2, out_rate // 2)  # half the rate: resampled on load
    (tmp_path / "run.tsv").write_text("cue\tcue_file\nbell\tbell.wav\n\tlow.flac\n")
    config = SessionConfig(
        session=SessionSection(task="imagery", output_dir=tmp_path / "out"),
        stimulus=StimulusSection.model_validate(
            {
                "trial_lists": [tmp_path / "run.tsv"],
                "window": {"size": list(win.size)},
                "imagery": {"cue_s": 0.3, "imagery_s": 0.35, "rest_s": 0.0},
                "sound": {"volume": 0.5},
                "lead_in_s": 0.1,
            }
        ),
    )
    setup = prepare_run(config, 1)
    assert [t.cue_kind for t in setup.trials] == ["sound", "sound"]
    first_frames: dict[int, int] = {}

    def on_frame(frame: Frame) -> None:
        if frame.segment.phase == "cue":
            first_frames.setdefault(frame.segment.trial.index, frame.index)

    caplog.set_level(logging.INFO, logger="stimulus.sound")
    record = StimulusProgram(setup, link=OfflineLink(), participant=VirtualParticipant(tr=0.5), win=win, on_frame=on_frame).run()
    played: list[Any] = [r.sound for r in caplog.records if hasattr(r, "sound")]

    # Each play call came right after the flip that first showed its cue, before the next flip.
    assert [(p.trial, p.file.name) for p in played] == [(0, "bell.wav"), (1, "low.flac")]
    for p in played:
        k = first_frames[p.trial]
        t = record.run_time(p.time)
        assert record.flips[k] <= t < record.flips[k + 1]
        assert bisect.bisect_right(record.flips, t) == k + 1
    with setup.paths.events.open() as f:
        cues = [float(r["onset"]) for r in csv.DictReader(f, delimiter="\t") if r["trial_type"] == "cue"]
    # each cue's logged onset is its first flip: nearer to it than to any other (a loaded machine may
    # deschedule the program between the flip's own stamp and the onset's)
    flips = np.asarray(record.flips)
    assert [int(np.argmin(np.abs(flips - onset))) for onset in cues] == [first_frames[0], first_frames[1]]

    # Wait for PortAudio's thread to have sent both, then read what the "speaker" got.
    deadline = time.monotonic() + scaled(10)
    while len(_runs(np.fromfile(alsa_output, np.float32)[0::2])) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    speaker = np.fromfile(alsa_output, np.float32).reshape(-1, 2)
    runs = _runs(speaker[:, 0])
    assert len(runs) == 2
    (a0, a1), (b0, b1) = runs
    # the first cue, mono sent to both sides at half volume, sample for sample (PsychoPy's
    # backend rounds the sound's length down, which may drop the last sample)
    assert len(bell) - 1 <= a1 - a0 <= len(bell)
    assert np.array_equal(speaker[a0:a1], np.repeat(bell[: a1 - a0] * np.float32(0.5), 2, axis=1))
    # the second, resampled to the output's rate: twice the samples, the same pitch
    assert abs((b1 - b0) - 2 * len(low)) <= 64
    spectrum = np.abs(np.fft.rfft(speaker[b0:b1, 1]))
    assert np.fft.rfftfreq(b1 - b0, 1 / out_rate)[np.argmax(spectrum)] == pytest.approx(880, abs=10)
    quarter = (b1 - b0) // 4  # away from the filter's ringing at the abrupt start and end
    assert np.max(np.abs(speaker[b0 + quarter : b1 - quarter])) == pytest.approx(0.3, abs=0.01)


def test_a_run_with_sound_cues_and_no_output_stops_before_the_trigger(alsa_output: Path, win, tmp_path: Path):
    from stimulus.app import StimulusProgram, prepare_run
    from stimulus.link import OfflineLink
    from stimulus.trigger import ScheduledKeys

    tone(tmp_path / "bell.wav", 440, 0.1, 44100)
    (tmp_path / "run.tsv").write_text("cue_file\nbell.wav\n")
    config = SessionConfig(
        session=SessionSection(task="imagery", output_dir=tmp_path / "out"),
        stimulus=StimulusSection.model_validate({"trial_lists": [tmp_path / "run.tsv"], "window": {"size": list(win.size)}, "sound": {"device": "99"}}),
    )
    setup = prepare_run(config, 1)
    keys = ScheduledKeys()
    with pytest.raises(SoundError, match="no audio output: PortAudio has no device '99'"):
        StimulusProgram(setup, link=OfflineLink(), keys=keys, win=win).run()
    assert not setup.paths.events.exists()
