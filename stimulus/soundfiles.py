"""Sound cue files: which files are sounds, and decoding one to its samples.

An imagery trial's ``cue_file`` is a sound when its suffix is one of :data:`SOUND_SUFFIXES`
(WAV, FLAC, Ogg/Opus, MP3, AIFF, all decoded by libsndfile through ``soundfile``).
:func:`check_sound_file` decodes one completely, so that :func:`~stimulus.trials.load_trials`
reports a missing or unreadable sound with its file and line before the run starts, as it does
for images; :class:`~stimulus.sound.SoundCues` decodes the run's cues with :func:`decode_sound`
before playing them. Kept apart from :mod:`stimulus.sound` (the audio output), so that the trial
list, which the run's plan and its sounds are built from, depends on no player.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["SOUND_SUFFIXES", "check_sound_file", "decode_sound"]

SOUND_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff"})


def decode_sound(path: str | Path) -> tuple[np.ndarray, int]:
    """The samples (frames x channels, float32 in -1..1) and sample rate of the sound file ``path``.

    Raises ValueError naming the file when it cannot be decoded, is empty or has more than two
    channels (a cue is mono or stereo).
    """
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as exc:
        raise ValueError(f"sound file {path} cannot be decoded: {exc}") from exc
    if samples.shape[0] == 0:
        raise ValueError(f"sound file {path} has no samples")
    if samples.shape[1] > 2:
        raise ValueError(f"sound file {path} has {samples.shape[1]} channels; a cue must be mono or stereo")
    return samples, int(rate)


def check_sound_file(path: Path) -> str | None:
    """None when ``path`` decodes as a sound cue, else why not."""
    if not path.is_file():
        return f"sound file {path} does not exist"
    try:
        decode_sound(path)
    except ValueError as exc:
        return str(exc)
    return None
