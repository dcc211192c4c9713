"""The README's main command, as written there, runs a shortened demo: the demo fixture's own (conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_the_readme_main_command_runs_a_shortened_demo(demo_run, readme_main_commands, in_project_venv):
    assert len(readme_main_commands) == 1, "README.md: expected one line marked '# the main job'"
    (command,) = readme_main_commands
    assert command[:2] == ["bash", ".ci/bootstrap"] and "demo" in command
    if not in_project_venv:
        pytest.skip("the README's commands run in the project's .venv; these tests run in another environment")
    # In the .venv the folder's one demo is the README's line itself, shortened by the fixture's arguments.
    assert list(demo_run.command) == [*command, "--out", str(demo_run.out), "--cache", str(demo_run.cache), *demo_run.args]
    headline = demo_run.headline
    assert set(headline) == demo_run.HEADLINE_KEYS and headline["trials"] == headline["decoded"] == 63
    assert Path(headline["report"]).is_file() and str(demo_run.out) in headline["report"]
