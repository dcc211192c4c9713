"""What the engine checks before it accepts data: every path, key and model its config names.

A missing ROI mask used to be found at the first volume (then one traceback per volume, while
the bridge reported everything acknowledged), and a missing keys folder gave a traceback. The
engine's command calls :func:`startup_problems` before :func:`engine.server.serve` and exits
non-zero with one line per problem.
"""

from __future__ import annotations

from pathlib import Path

from rtrecon.contract.config import ConfigError, load_config
from rtrecon.session import startup_problems as _session_problems

__all__ = ["startup_problems"]


def startup_problems(config_path: str | Path) -> list[str]:
    """One line per reason the engine of the config at ``config_path`` cannot start (empty: it can)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return [str(exc)]
    return [f"{config_path}: {problem}" for problem in _session_problems(config, "engine")]
