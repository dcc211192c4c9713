"""Trial lists: one tab-separated file per run, loaded and checked before the run starts.

A trial list is a TSV with a header row. Columns (any order; unknown columns are errors, so a
misspelt column is never silently ignored):

==================  ===========  ==========================================================
column              tasks        meaning
==================  ===========  ==========================================================
``stim_file``       perception   the image shown (required for perception); for imagery, the
                    imagery      image the participant is asked to imagine (shown beside the
                                 reconstruction in feedback)
``stim_id``         both         the stimulus id (e.g. NSD's 73k id), sent to the engine
``cue``             imagery      the word cue
``cue_file``        imagery      an image cue (a thumbnail), or a sound cue (a file with a
                                 suffix of :data:`~stimulus.soundfiles.SOUND_SUFFIXES`: wav, flac,
                                 ogg, mp3...), played from the cue's first frame
``trial_type``      both         the BIDS trial_type (default: ``image`` or ``imagery``)
``onset``           both         planned onset in seconds since the first trigger (all rows
                                 or none; without it trials follow each other)
``block``           both         block label, for feedback after each block
``feedback``        both         1/0, true/false, yes/no: show the result after this trial
``pairmate``        both         the stim_id of the trial's pairmate (a similar image): the
                                 result's pairmate distinctiveness is scored against it
                                 (``[stimulus.feedback] embeddings``)
``response``        both         the answer from the design (``new``/``old`` for perception,
                                 a vividness key for imagery), used by the virtual participant
==================  ===========  ==========================================================

Paths are relative to the folder of the trial list. :func:`load_trials` checks every row
(columns, numbers, that every image opens, every sound decodes and every file exists) and
raises one :class:`TrialListError` listing each problem with the file and line, so a bad list
is reported before the first trigger, never mid-run.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from .soundfiles import SOUND_SUFFIXES, check_sound_file

__all__ = ["Task", "Trial", "TrialListError", "load_trials"]

Task = Literal["perception", "imagery"]

_COLUMNS = frozenset(
    {"stim_file", "stim_id", "cue", "cue_file", "trial_type", "onset", "block", "feedback", "response", "pairmate"}
)
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"", "0", "false", "no", "n", "n/a"}
_DEFAULT_TYPE = {"perception": "image", "imagery": "imagery"}


class TrialListError(ValueError):
    """A trial list is malformed or refers to files that are missing or unreadable.

    ``problems`` holds one ``(line, reason)`` per problem (line 0: the file as a whole).
    """

    def __init__(self, path: Path, problems: Sequence[tuple[int, str]]):
        self.path = path
        self.problems = list(problems)
        lines = [f"{path}: {reason}" if line == 0 else f"{path}, line {line}: {reason}" for line, reason in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Trial:
    """One row of a trial list. ``line`` is its line number in the file (the header is line 1)."""

    index: int
    line: int
    trial_type: str
    stim_file: Path | None = None
    stim_id: str = ""
    cue: str = ""
    cue_file: Path | None = None
    onset: float | None = None
    block: str = ""
    feedback: bool = False
    response: str = ""
    pairmate: str = ""

    @property
    def cue_kind(self) -> Literal["word", "image", "sound"]:
        """How the imagery cue is given: a sound or an image file, else the word."""
        if self.cue_file is None:
            return "word"
        return "sound" if self.cue_file.suffix.lower() in SOUND_SUFFIXES else "image"

    @property
    def stimulus(self) -> str:
        """What the engine is told was shown: the stimulus id, else the image file name, else the cue."""
        if self.stim_id:
            return self.stim_id
        if self.stim_file is not None:
            return self.stim_file.name
        return self.cue or (self.cue_file.name if self.cue_file is not None else "")


def _check_image(path: Path) -> str | None:
    if not path.is_file():
        return f"image file {path} does not exist"
    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError) as exc:
        return f"image file {path} cannot be read: {exc}"
    return None


def _row_trial(task: Task, index: int, line: int, row: dict[str, str], base: Path) -> tuple[Trial | None, list[str]]:
    problems: list[str] = []

    def file_column(name: str) -> Path | None:
        value = row.get(name, "").strip()
        if not value or value == "n/a":
            return None
        return (base / value).resolve()

    stim_file = file_column("stim_file")
    cue_file = file_column("cue_file")
    cue = row.get("cue", "").strip()
    if task == "perception" and stim_file is None:
        problems.append("stim_file is empty (perception trials need an image)")
    if task == "imagery" and not cue and cue_file is None:
        problems.append("no cue: give a cue word or a cue_file")
    if stim_file is not None and (err := _check_image(stim_file)):
        problems.append(f"stim_file: {err}")
    if cue_file is not None:
        if cue_file.suffix.lower() in SOUND_SUFFIXES:
            if err := check_sound_file(cue_file):
                problems.append(f"cue_file: {err}")
        elif err := _check_image(cue_file):
            problems.append(f"cue_file: {err}")

    onset: float | None = None
    raw_onset = row.get("onset", "").strip()
    if "onset" in row:
        try:
            onset = float(raw_onset)
            if not onset >= 0:
                raise ValueError
        except ValueError:
            problems.append(f"onset {raw_onset!r} is not a non-negative number of seconds")

    raw_feedback = row.get("feedback", "").strip().lower()
    if raw_feedback not in _TRUE | _FALSE:
        problems.append(f"feedback {row.get('feedback')!r} is not one of 1/0, true/false, yes/no")

    if problems:
        return None, problems
    trial = Trial(
        index=index,
        line=line,
        trial_type=row.get("trial_type", "").strip() or _DEFAULT_TYPE[task],
        stim_file=stim_file,
        stim_id=row.get("stim_id", "").strip(),
        cue=cue,
        cue_file=cue_file,
        onset=onset,
        block=row.get("block", "").strip(),
        feedback=raw_feedback in _TRUE,
        response=row.get("response", "").strip(),
        pairmate=row.get("pairmate", "").strip(),
    )
    return trial, []


def load_trials(path: str | Path, task: Task) -> list[Trial]:
    """The trials of the TSV at ``path`` for ``task``; :class:`TrialListError` lists every problem."""
    path = Path(path)
    if task not in _DEFAULT_TYPE:
        raise ValueError(f"unknown task {task!r} (choose from {', '.join(_DEFAULT_TYPE)})")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TrialListError(path, [(0, "no such trial list")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrialListError(path, [(0, f"cannot be read: {exc}")]) from None
    reader = csv.reader(text.splitlines(), delimiter="\t")
    rows = list(reader)
    if not rows or not any(cell.strip() for cell in rows[0]):
        raise TrialListError(path, [(0, "empty: a header row and at least one trial are needed")])
    header = [cell.strip() for cell in rows[0]]
    problems: list[tuple[int, str]] = []
    unknown = [name for name in header if name not in _COLUMNS]
    if unknown:
        problems.append((1, f"unknown column(s) {', '.join(map(repr, unknown))} (known: {', '.join(sorted(_COLUMNS))})"))
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        problems.append((1, f"duplicated column(s) {', '.join(duplicated)}"))
    if task == "perception" and "stim_file" not in header:
        problems.append((1, "perception trial lists need a stim_file column"))
    if task == "imagery" and "cue" not in header and "cue_file" not in header:
        problems.append((1, "imagery trial lists need a cue or cue_file column"))
    if problems:
        raise TrialListError(path, problems)

    trials: list[Trial] = []
    base = path.resolve().parent
    for line, cells in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            problems.append((line, f"{len(cells)} fields but the header has {len(header)} (tabs, not spaces?)"))
            continue
        trial, row_problems = _row_trial(task, len(trials), line, dict(zip(header, cells)), base)
        problems.extend((line, reason) for reason in row_problems)
        if trial is not None:
            trials.append(trial)
    if not trials and not problems:
        problems.append((0, "no trials: a header row and at least one trial are needed"))
    for before, after in zip(trials, trials[1:]):
        if after.onset is not None and before.onset is not None and after.onset < before.onset:
            problems.append((after.line, f"onset {after.onset} is before the previous trial's ({before.onset})"))
    if problems:
        raise TrialListError(path, problems)
    return trials
