"""The suite's one timing setting, ``RTRECON_TEST_TIME_SCALE``, and its use by pytest-timeout."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from rtrecon import testing
from rtrecon.testing import TIME_SCALE_ENV, scaled, time_scale


@pytest.fixture
def scale(monkeypatch: pytest.MonkeyPatch):
    """set(value): the environment's time scale for this test (the cached reading is reset around it)."""
    def set_scale(value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(TIME_SCALE_ENV, raising=False)
        else:
            monkeypatch.setenv(TIME_SCALE_ENV, value)
        testing.time_scale.cache_clear()

    yield set_scale
    monkeypatch.undo()
    testing.time_scale.cache_clear()


def test_unset_means_one_and_a_factor_multiplies_every_wait(scale) -> None:
    scale(None)
    assert time_scale() == 1.0 and scaled(0.2) == 0.2
    scale("2.5")
    assert time_scale() == 2.5 and scaled(0.2) == pytest.approx(0.5) and scaled(600) == 1500


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "inf", "nan"])
def test_a_bad_scale_is_refused_naming_the_variable(scale, bad: str) -> None:
    scale(bad)
    with pytest.raises(ValueError, match=f"{TIME_SCALE_ENV}='{bad}': must be a positive number"):
        time_scale()


def _suite_conftest(config: pytest.Config):
    top = Path(__file__).resolve().parents[1] / "conftest.py"
    (module,) = [p for p in config.pluginmanager.get_plugins() if getattr(p, "__file__", None) == str(top)]
    return module


def test_pytest_timeout_limits_are_scaled(scale, request: pytest.FixtureRequest) -> None:
    conftest = _suite_conftest(request.config)
    marked = pytest.Function.from_parent(request.node.parent, name=request.node.name)
    marked.add_marker(pytest.mark.timeout(240))
    plain = pytest.Function.from_parent(request.node.parent, name=request.node.name)
    config = SimpleNamespace(getoption=lambda name, default=None: None, getini=lambda name: "300")

    scale("3")
    conftest.pytest_collection_modifyitems(config, [marked, plain])
    assert marked.get_closest_marker("timeout").args == (720.0,)  # a test's own limit
    assert plain.get_closest_marker("timeout").args == (900.0,)  # pyproject's
