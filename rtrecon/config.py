"""The session config: one TOML file that describes a live session, validated with pydantic.

Example::

    [session]
    subject = "01"
    session = "01"
    task = "perception"

    [network]
    volumes = "tcp://127.0.0.1:5555"

    [bridge]
    watch_dir = "/mnt/scanner/export"
    watch_mode = "auto"          # "inotify", "poll" or "auto" (poll on network shares)

    [security]
    keys_dir = "keys"            # made by `rtrecon keys init keys`; omit for no encryption

Relative paths are resolved against the folder of the config file. Unknown keys are errors
(a misspelt key must not be silently ignored at the scanner). :func:`load_config` raises
:class:`ConfigError` naming the file, the key and the reason.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ConfigError",
    "SessionSection",
    "NetworkSection",
    "BridgeSection",
    "SecuritySection",
    "SessionConfig",
    "load_config",
]


class ConfigError(ValueError):
    """A session config file cannot be read or is invalid."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionSection(_Section):
    """Who and what is scanned: names follow BIDS (``sub-<subject>/ses-<session>``)."""

    subject: str = Field("01", pattern=r"^[A-Za-z0-9]+$")
    session: str = Field("01", pattern=r"^[A-Za-z0-9]+$")
    task: str = Field("perception", pattern=r"^[A-Za-z0-9]+$")
    output_dir: Path = Path("rtrecon_out")


class NetworkSection(_Section):
    """ZeroMQ endpoints. The receiving side binds, the sending side connects."""

    volumes: str = "tcp://127.0.0.1:5555"
    events: str = "tcp://127.0.0.1:5556"
    results: str = "tcp://127.0.0.1:5557"
    status: str = "tcp://127.0.0.1:5558"
    heartbeat_s: float = Field(1.0, gt=0)

    @field_validator("volumes", "events", "results", "status")
    @classmethod
    def _zmq_endpoint(cls, value: str) -> str:
        if not value.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint (tcp://HOST:PORT or ipc://PATH)")
        return value


class BridgeSection(_Section):
    """How the scanner bridge follows the scanner's export folder."""

    watch_dir: Path | None = None
    watch_mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval_s: float = Field(0.05, gt=0)
    missing_timeout_s: float = Field(10.0, gt=0)
    skip_existing: bool = False
    spool_dir: Path = Path("rtrecon_out/bridge_spool")


class SecuritySection(_Section):
    """ZeroMQ CURVE keys; without ``keys_dir`` the links are unencrypted."""

    keys_dir: Path | None = None


class SessionConfig(_Section):
    """A whole session config file."""

    session: SessionSection = SessionSection()
    network: NetworkSection = NetworkSection()
    bridge: BridgeSection = BridgeSection()
    security: SecuritySection = SecuritySection()


def _resolve_paths(model: BaseModel, base: Path) -> BaseModel:
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            updates[name] = _resolve_paths(value, base)
        elif isinstance(value, Path) and not value.is_absolute():
            updates[name] = base / value
    return model.model_copy(update=updates)


def load_config(path: str | Path) -> SessionConfig:
    """Read and validate the session config at ``path``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = SessionConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    return _resolve_paths(config, path.resolve().parent)  # type: ignore[return-value]
