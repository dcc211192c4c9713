"""Fixtures shared by the whole suite.

Test timing: every wall-clock timeout, wait deadline and link heartbeat in the suite is written
for an ordinary machine and passed through :func:`rtrecon.testing.scaled`, which multiplies it by
``$RTRECON_TEST_TIME_SCALE`` (default 1.0). On a loaded machine run e.g.
``RTRECON_TEST_TIME_SCALE=3 python -m pytest``: pytest-timeout's per-test limits (``timeout`` in
pyproject.toml and ``@pytest.mark.timeout``) are scaled by the same factor below.

Every test must also leave no thread of its own running (:func:`no_leaked_threads`), and every
child process a test starts goes through :mod:`rtrecon.contract.children` (its own process group,
killed with the test; a parent-death guard).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from rtrecon.contract import children
from rtrecon.testing import TIME_SCALE_ENV, scaled, time_scale

# An accidental model-hub download must fail at once instead of hanging on the closed network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    try:
        time_scale()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    return f"{TIME_SCALE_ENV}: {time_scale():g} (wall-clock timeouts and heartbeats scaled by it)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scale each test's pytest-timeout limit (its marker's, else the configured one) by the time scale."""
    if time_scale() == 1.0:
        return
    configured = config.getoption("timeout", None) or os.environ.get("PYTEST_TIMEOUT") or config.getini("timeout")
    for item in items:
        marker = item.get_closest_marker("timeout")
        limit = (marker.args[0] if marker.args else marker.kwargs.get("timeout")) if marker else configured
        if limit and float(limit) > 0:
            item.add_marker(pytest.mark.timeout(scaled(float(limit))), append=False)


@pytest.fixture(autouse=True)
def no_leaked_threads(request: pytest.FixtureRequest):
    """Fail a test that leaves a non-daemon thread of its own running (after a short grace to end).

    Autouse and function-scoped, this fixture is set up after the session- and module-scoped
    fixtures (whose threads live on legitimately) and before the test's other fixtures, so it sees
    the threads the test and its own fixtures started, after those fixtures were torn down.
    """
    # Playwright's session-wide event loop (the chromium fixture) grows its default executor
    # (threads asyncio_N) lazily, during whichever test first needs a worker: they are the
    # session's, and end with it.
    session_owned = ("asyncio_",) if "chromium" in request.fixturenames else ()
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + scaled(2.0)
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
                  and not t.name.startswith(session_owned)]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if leaked:
        pytest.fail(f"the test left {len(leaked)} thread(s) running: {', '.join(repr(t) for t in leaked)} "
                    "(join them when the test or its fixture ends)", pytrace=False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared data folder beside the checkout (never write there)."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def dicom_dir(shared_dir: Path) -> Path:
    """The 13 real scanner-written DICOM series (see its README for the traps in each)."""
    return shared_dir / "data" / "dicom"


@pytest.fixture
def torch_one_thread():
    """Run a test on one torch intra-op thread, restoring the setting after.

    Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the threads
    mostly wait on each other (measured 20x slower). Folders of tiny-model tests request it with
    an autouse fixture of their own.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_leaked_children():
    """Stop, and fail, a test that leaves a child process of its own running (with its process group).

    Scoped as :func:`no_leaked_threads`: the children of session- and module-scoped fixtures (a
    display, the demo) are started before it looks.
    """
    before = set(children.running())
    yield
    deadline = time.monotonic() + scaled(2.0)
    while (left := [p for p in children.running() if p not in before]) and time.monotonic() < deadline:
        time.sleep(0.01)
    for popen in left:
        children.stop(popen, grace_s=scaled(1.0))
    if left:
        pytest.fail(f"the test left {len(left)} child process(es) running, now stopped: "
                    f"{'; '.join(' '.join(map(str, p.args))[:200] for p in left)} (stop them when the test ends)",
                    pytrace=False)
