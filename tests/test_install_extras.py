"""Each process installs alone: ``rtrecon[bridge]``, ``rtrecon[stimulus]`` and ``rtrecon[console]`` in fresh venvs.

The scanner console and the stimulus PC must not need torch, nilearn or the model stack. The
project's wheel is built once from a copy of the checkout, and each extra is installed from it
into an empty venv, the three side by side, then its commands' ``--help`` and the contract's
imports are checked there. The engine's extra is what ``.ci/bootstrap`` installs for the rest of
the suite.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rtrecon.contract import children

ROOT = Path(__file__).resolve().parents[1]

# What must import on that machine, and what must not be installed there.
CONTRACT = ["rtrecon.contract.wire", "rtrecon.contract.config", "rtrecon.contract.transport", "rtrecon.contract.keys", "rtrecon.contract.layout",
            "rtrecon.contract.children", "rtrecon.session"]
HEAVY = ["torch", "nilearn", "diffusers", "open_clip", "transformers", "onnxruntime"]

CASES = {
    "bridge": {
        "modules": CONTRACT + ["scanner_bridge.watcher", "scanner_bridge.dicom_node", "scanner_bridge.sender",
                               "scanner_bridge.replay", "scanner_bridge.dicom2nii"],
        "commands": [["bridge", "--help"], ["bridge", "watch", "--help"], ["bridge", "receive", "--help"],
                     ["bridge", "replay", "--help"], ["bridge", "listen", "--help"], ["dicom2nii", "--help"],
                     ["keys", "--help"], ["session", "--help"]],
        "extra_pip": [],
    },
    "stimulus": {
        "modules": CONTRACT + ["stimulus.link", "stimulus.records", "stimulus.trials", "stimulus.timeline"],
        "commands": [["stimulus", "--help"], ["stimulus", "check", "--help"], ["stimulus", "run", "--help"],
                     ["keys", "--help"], ["session", "--help"]],
        # As .ci/bootstrap does: PsychoPy's own dependency list pulls wxPython.
        "extra_pip": [["--no-deps", "psychopy==2026.2.5"]],
    },
    "console": {
        "modules": CONTRACT + ["rtrecon.console.app", "rtrecon.console.command", "rtrecon.console.state"],
        "commands": [["console", "--help"], ["keys", "--help"], ["session", "--help"]],
        "extra_pip": [],
    },
}


def _copy_project(dest: Path) -> Path:
    """The installable part of the checkout (a copy: pip's build must not write into the checkout)."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for package in ("rtrecon", "scanner_bridge", "engine", "stimulus"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _pip(python: Path, *args: str) -> str:
    # The suite's pip installs into the venv (--python): the venv is made without pip of its own, as
    # bootstrapping one (ensurepip) took as long as the install itself. No byte-compiling: it is most
    # of an install's time (PsychoPy's thousands of modules) and the check below imports only a few.
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                                              "--no-compile", "--disable-pip-version-check", *args))


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.Popen]]:
    """The three extras installing side by side (each in its own venv), started once for the module."""
    root = tmp_path_factory.mktemp("extras")
    # One wheel for the three (what pip builds from the project for each install anyway), from a
    # copy: pip's build must not write into the checkout.
    project = _copy_project(Path(tmp_path_factory.mktemp("project")))
    built = children.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                          "-w", str(root / "wheel"), str(project)], capture_output=True, text=True)
    assert built.returncode == 0, f"pip wheel of the project failed:\n{built.stderr[-3000:]}"
    (wheel,) = (root / "wheel").glob("rtrecon-*.whl")
    started = {}
    for extra, case in CASES.items():
        venv = root.parent / f"venv-{extra}"
        python = venv / "bin" / "python"
        steps = [f"{shlex.quote(sys.executable)} -m venv --without-pip {shlex.quote(str(venv))}",
                 _pip(python, f"{wheel}[{extra}]"), *(_pip(python, *args) for args in case["extra_pip"])]
        log = (root.parent / f"install-{extra}.log").open("w")
        started[extra] = venv, children.start(["sh", "-c", " && ".join(steps)], stdout=log, stderr=subprocess.STDOUT)
    yield started
    for _, process in started.values():
        children.kill(process)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("extra", sorted(CASES))
def test_extra_installs_and_runs_alone(installs, tmp_path: Path, extra: str) -> None:
    case = CASES[extra]
    venv, process = installs[extra]
    returncode = process.wait()
    log = venv.parent / f"install-{extra}.log"
    assert returncode == 0, f"pip install rtrecon[{extra}] failed:\n{log.read_text()[-3000:]}"
    python = str(venv / "bin" / "python")

    heavy = children.run([python, "-c", "import importlib.util, sys; "
                          f"print(','.join(m for m in {HEAVY!r} if importlib.util.find_spec(m)))"],
                         capture_output=True, text=True, check=True)
    assert heavy.stdout.strip() == "", f"rtrecon[{extra}] installed {heavy.stdout.strip()}"

    imports = "; ".join(f"import {m}" for m in case["modules"])
    done = children.run([python, "-c", imports], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    for args in case["commands"]:
        done = children.run([str(venv / "bin" / "rtrecon"), *args], capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, f"rtrecon {' '.join(args)} in rtrecon[{extra}]:\n{done.stderr[-3000:]}"
        assert "usage: rtrecon" in done.stdout


def test_the_contract_imports_neither_torch_nor_nilearn() -> None:
    code = ("import sys; " + "; ".join(f"import {m}" for m in CONTRACT) +
            f"; print(','.join(m for m in {HEAVY!r} + ['scipy', 'pandas'] if m in sys.modules))")
    done = children.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == ""
