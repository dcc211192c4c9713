"""The README's main command, as written there, runs a shortened demo."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from rtrecon.contract import children
from rtrecon.testing import scaled

REPO = Path(__file__).resolve().parents[3]


def _main_command() -> list[str]:
    lines = [line for line in (REPO / "README.md").read_text().splitlines() if "# the main job" in line]
    assert len(lines) == 1, "README.md: expected one line marked '# the main job'"
    return shlex.split(lines[0].split("#", 1)[0])


def test_the_readme_main_command_runs_a_shortened_demo(demo_run, tmp_path):
    command = _main_command()
    assert command[:2] == ["bash", ".ci/bootstrap"] and "demo" in command
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("the README's commands run in the project's .venv; these tests run in another environment")
    # The demo fixture's cache: the dataset and the decoder are found there, the live part runs.
    extra = ["--out", str(tmp_path / "out"), "--cache", str(demo_run.cache), *demo_run.args]
    done = children.run([*command, *extra], cwd=REPO, capture_output=True, text=True, timeout=scaled(280))
    assert done.returncode == 0, done.stderr[-3000:]
    headline = json.loads(done.stdout.strip().splitlines()[-1])
    assert headline["trials"] == headline["decoded"] == 63
    assert Path(headline["report"]).is_file() and str(tmp_path / "out") in headline["report"]
    assert "cached" in done.stderr  # the same dataset and decoder, not trained again
