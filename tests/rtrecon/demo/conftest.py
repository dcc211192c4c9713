"""One shortened demo, run once for the whole folder: its session is what the module tests read.

In the project's ``.venv`` (the README's test command, what CI runs) the demo is started by the
README's main command line itself (``bash .ci/bootstrap rtrecon demo``, test_readme.py checks it
did); in another environment by ``python -m rtrecon.cli demo``: one demo either way, never two.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tomllib
from dataclasses import dataclass
from typing import ClassVar
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from rtrecon.contract import children
from rtrecon.testing import scaled

REPO = Path(__file__).resolve().parents[3]

#: The shortened demo: 2 subjects × 2 sessions × 1 run, a few epochs, the replay at 80× the TR pace, in the
#: typical world (the golden session's, whose cache it shares; test_decoding.py measures the decoder in the
#: demo's default high-SNR world against its noise ceiling).
DEMO_ARGS = ["--subjects", "2", "--sessions", "2", "--runs", "1", "--speed", "80", "--epochs", "1", "1", "--hidden-dim", "64",
             "--world", "typical"]


@pytest.fixture(scope="session")
def readme_main_commands() -> list[list[str]]:
    """The README's command lines marked ``# the main job`` (one is expected), split as a shell would."""
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if "# the main job" in line]
    return [shlex.split(line.split("#", 1)[0]) for line in lines]


@pytest.fixture(scope="session")
def in_project_venv() -> bool:
    """Whether the tests run in the project's ``.venv``, where the README's commands run."""
    return Path(sys.prefix).resolve() == (REPO / ".venv").resolve()


@dataclass(frozen=True)
class DemoRun:
    #: the keys of the demo's last line, which ``replay nsd`` and the imagery demo print too
    HEADLINE_KEYS: ClassVar[frozenset[str]] = frozenset({
        "report", "trials", "decoded", "top1", "top5", "chance_top1", "median_latency_s", "two_way_clip", "pixcorr",
        "top1_by_release"})

    returncode: int
    stdout: str
    stderr: str
    cache: Path
    out: Path
    display: str
    #: the demo's arguments besides --out and --cache
    args: tuple[str, ...]
    #: the whole command line that ran it
    command: tuple[str, ...]

    @property
    def headline(self) -> dict:
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def session_dir(self) -> Path:
        (folder,) = [p for p in self.out.iterdir() if p.is_dir()]
        return folder

    @property
    def dataset(self) -> Path:
        (folder,) = [p for p in (self.cache / "synthetic").iterdir() if p.is_dir() and p.suffix != ".partial"]
        return folder

    def release_trials(self) -> dict[int, list[int]]:
        """The trials each release of the live run (run 1) must hold, from the session's own files.

        A release ``d`` s after onset (the session's ``[engine] releases_s``) exists for the trials
        whose ``onset + d`` falls within the run, whose last volume is sampled at (n - 1) TR; the
        end-of-run release (index ``len(releases_s)``) holds every trial. The onsets are the stimulus
        program's (BIDS events): at the demo's 80x pace one flip of jitter is about a volume, so the
        last trials' late releases may or may not fit in the run.
        """
        func = self.session_dir / "sub-01" / "ses-02" / "func"
        (events,) = func.glob("*_run-01_events.tsv")
        (bold,) = func.glob("*_run-01_bold.nii.gz")
        onsets = pd.read_csv(events, sep="\t").set_index("trial")["onset"]
        tr = json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text())["RepetitionTime"]
        end = (nib.load(bold).shape[3] - 1) * tr
        delays = tomllib.loads((self.session_dir / "session.toml").read_text())["engine"]["releases_s"]
        trials = sorted(int(t) for t in onsets.index)
        held = {r: [t for t in trials if onsets[t] + d <= end + 1e-6] for r, d in enumerate(delays)}
        return {**held, len(delays): trials}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory, readme_main_commands, in_project_venv) -> DemoRun:
    """``rtrecon demo`` as a user runs it (its own process; the README's command line in the project's
    ``.venv``), shortened."""
    base = tmp_path_factory.mktemp("demo")
    cache, out = base / "cache", base / "out"
    # A README without its one main line is test_readme.py's failure to report, not every demo test's.
    readme = readme_main_commands
    demo = readme[0] if in_project_venv and len(readme) == 1 else [sys.executable, "-m", "rtrecon.cli", "demo"]
    cmd = [*demo, "--out", str(out), "--cache", str(cache), *DEMO_ARGS]
    done = children.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=scaled(600))  # a guard: 2 busy cores can triple it
    run = DemoRun(done.returncode, done.stdout, done.stderr, cache, out, os.environ.get("DISPLAY", ""), tuple(DEMO_ARGS),
                  tuple(cmd))
    if done.returncode != 0:
        pytest.fail(f"the demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return run
