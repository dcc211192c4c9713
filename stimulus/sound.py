"""Sound cues: decoded before the run, started through PsychoPy's sound API at the cue's first flip.

An imagery trial's ``cue_file`` may be a sound (:data:`~stimulus.soundfiles.SOUND_SUFFIXES`: WAV,
FLAC, Ogg/Opus, MP3, AIFF); :mod:`stimulus.soundfiles` decodes and checks such files (its
functions are also importable from here).

:class:`SoundCues` serves one run. Before the first trigger it opens the output that the session
config's ``[stimulus.sound]`` names (:class:`~rtrecon.contract.config.SoundSection`), raising
:class:`SoundError` when there is none (a run with sound cues never goes on silently), and turns
every cue into a PsychoPy ``Sound`` already converted to the output's rate and to stereo, so
that starting one costs nothing. :meth:`SoundCues.schedule` asks the window to start a cue's
sound right after the flip that first shows the cue segment (``win.callOnFlip``, like the
event sent to the engine); ``play`` only marks the sound as playing and PortAudio's callback
thread mixes it in, so no frame ever waits on audio. :attr:`SoundCues.played` records each start
(trial, file, PsychoPy clock time), and each is logged (``stimulus.sound`` logger, INFO, the
:class:`PlayedSound` as the record's ``sound`` attribute).

Backend: PsychoPy's ``sounddevice`` backend (PortAudio: ALSA, PulseAudio/PipeWire or JACK on
Linux, WASAPI on Windows, CoreAudio on macOS; Debian's ``libportaudio2``). ``device`` is an
output as PortAudio lists it (``python -m sounddevice``), by name or number; empty for the
system's default output. PsychoPy's ``ptb`` backend is not offered: ``psychtoolbox`` pins an
older numpy than rtrecon's. A machine without a sound card (CI) can give ALSA a virtual output,
e.g. an ``asound.conf`` (``ALSA_CONFIG_PATH``) whose ``pcm.!default`` is ``type file`` over
``null``: what is played is then written to that file, which is how the tests listen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from rtrecon.contract.config import SoundSection

from .soundfiles import SOUND_SUFFIXES, check_sound_file, decode_sound
from .timeline import Segment
from .trials import Trial
from .trigger import psychopy_time

__all__ = ["SOUND_SUFFIXES", "SoundError", "PlayedSound", "SoundCues", "decode_sound", "check_sound_file", "output_device"]

log = logging.getLogger(__name__)


class SoundError(OSError):
    """The sound output cannot be used: no such device, no device at all, or no audio library."""


@dataclass(frozen=True)
class PlayedSound:
    """A sound cue started: its trial, its file, and the PsychoPy clock time right after ``play``."""

    trial: int
    file: Path
    time: float


def _output_samples(samples: np.ndarray, rate: int, out_rate: int) -> np.ndarray:
    """``samples`` at ``out_rate`` and in stereo (mono is sent to both sides), C-contiguous float32."""
    if rate != out_rate:
        from scipy.signal import resample_poly

        g = gcd(rate, out_rate)
        samples = resample_poly(samples, out_rate // g, rate // g, axis=0).astype(np.float32)
    if samples.shape[1] == 1:
        samples = np.repeat(samples, 2, axis=1)
    return np.ascontiguousarray(samples, dtype=np.float32)


def output_device(settings: SoundSection) -> dict[str, Any]:
    """PortAudio's description of the output ``settings.device`` names (the default when empty).

    Raises :class:`SoundError` naming the device asked for and listing the outputs there are.
    """
    try:
        import sounddevice
    except ImportError as exc:
        raise SoundError(f"stimulus.sound: the sounddevice package is not installed ({exc}): pip install sounddevice") from exc
    except OSError as exc:  # sounddevice raises OSError when the PortAudio library is missing
        raise SoundError(f"stimulus.sound: PortAudio cannot be loaded ({exc}); install it (Debian: libportaudio2)") from exc
    wanted: int | str | None = settings.device or None
    if settings.device.isdigit():
        wanted = int(settings.device)
    try:
        return dict(sounddevice.query_devices(wanted, kind="output"))
    except (sounddevice.PortAudioError, ValueError) as exc:
        outputs = [str(d["name"]) for d in sounddevice.query_devices() if d["max_output_channels"] > 0]
        asked = f"device {settings.device!r}" if settings.device else "default output"
        there = ", ".join(map(repr, outputs)) if outputs else "none"
        raise SoundError(
            f"stimulus.sound: no audio output: PortAudio has no {asked} ({exc}); outputs found: {there}. "
            "Sound cues need a loudspeaker: connect one, or name one in [stimulus.sound] device"
        ) from exc


def _backend(name: str, device: dict[str, Any]) -> Any:
    """PsychoPy's sound backend module ``name``, made PsychoPy's choice for audio on ``device``.

    PsychoPy keeps its audio library and device in its preferences, read when a ``Sound`` is
    made (its speaker lookup fails outright when the first preferred library is missing), and
    its sounddevice backend opens its mixing stream on the module's ``defaultOutput``; both are
    set here, before the first ``Sound``.
    """
    from psychopy import prefs
    from psychopy.sound import Sound

    try:
        module = Sound.getBackends()[name].load()
    except Exception as exc:  # PsychoPy turns a missing library into its own DependencyError
        raise SoundError(f"stimulus.sound: PsychoPy's {name!r} sound backend cannot be loaded: {exc}") from exc
    prefs.hardware["audioLib"] = [name]
    prefs.hardware["audioDevice"] = [str(device["name"])]
    module.defaultOutput = int(device["index"])
    return module


class SoundCues:
    """The sound cues of one run, ready to start at their cue's first flip (see the module docstring).

    ``trials`` may include trials without a sound cue; only those with one are loaded. Opening
    the output and decoding happen here, before the first trigger; :class:`SoundError` when the
    output is missing, ValueError naming the file when a cue no longer decodes.
    """

    def __init__(self, settings: SoundSection, trials: Sequence[Trial], *, clock: Callable[[], float] | None = None):
        self._clock = clock or psychopy_time
        self.played: list[PlayedSound] = []
        files = {t.index: t.cue_file for t in trials if t.cue_kind == "sound"}
        device = output_device(settings)
        self.device_name = str(device["name"])
        self.rate = int(device["default_samplerate"])
        backend = _backend(settings.backend, device)
        decoded: dict[Path, np.ndarray] = {}
        for path in files.values():
            if path not in decoded:
                decoded[path] = _output_samples(*decode_sound(path), self.rate)
        self._files: dict[int, Path] = dict(files)
        self._sounds: dict[int, Any] = {}
        try:
            for index, path in files.items():
                # One Sound per trial: a sound still playing when its file is cued again would
                # otherwise be skipped (PsychoPy ignores ``play`` on a playing sound).
                self._sounds[index] = backend.Sound(
                    decoded[path], sampleRate=self.rate, stereo=True, volume=settings.volume,
                    hamming=False, speaker=self.device_name, name=path.name, autoLog=False,
                )
        except Exception as exc:  # PortAudio's and PsychoPy's errors for a device that will not open
            raise SoundError(f"stimulus.sound: cannot open the audio output {self.device_name!r}: {exc}") from exc
        log.info("sound cues: %d on %r at %d Hz (PsychoPy %s backend)", len(self._sounds), self.device_name, self.rate, settings.backend)

    def __len__(self) -> int:
        return len(self._sounds)

    def sound(self, trial: int) -> Any:
        """The PsychoPy ``Sound`` of ``trial``'s cue."""
        return self._sounds[trial]

    def schedule(self, win: Any, segment: Segment) -> bool:
        """If ``segment`` is a cue with a sound, start it right after ``win``'s next flip; True then.

        Call it when ``segment`` is about to be shown for the first time, before its flip.
        """
        trial = segment.trial
        if segment.phase != "cue" or trial is None or trial.index not in self._sounds:
            return False
        win.callOnFlip(self.play, trial.index)
        return True

    def play(self, trial: int) -> PlayedSound:
        """Start ``trial``'s cue now (never blocks: PortAudio's thread plays it) and record when."""
        self._sounds[trial].play()
        played = PlayedSound(trial, self._files[trial], self._clock())
        self.played.append(played)
        log.info("sound cue %s (trial %d) started at %.4f", played.file.name, trial, played.time, extra={"sound": played})
        return played
