"""Session config: a valid file loads with paths resolved; a bad one names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtrecon.config import ConfigError, SessionConfig, load_config

VALID = """
[session]
subject = "07"
session = "02"
task = "imagery"
output_dir = "out"

[network]
volumes = "tcp://10.0.0.2:6000"
status = "ipc:///tmp/rtrecon-status"
heartbeat_s = 0.5

[bridge]
watch_dir = "/mnt/scanner/export"
watch_mode = "poll"
missing_timeout_s = 4.0
skip_existing = true
spool_dir = "spool/bridge"

[security]
keys_dir = "keys"
"""


def _write(tmp_path: Path, text: str, name: str = "session.toml") -> Path:
    path = tmp_path / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_a_valid_file_and_resolves_relative_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID)
    config = load_config(path)
    base = path.parent.resolve()
    assert config.session.subject == "07" and config.session.task == "imagery"
    assert config.network.volumes == "tcp://10.0.0.2:6000"
    assert config.network.events == "tcp://127.0.0.1:5556"  # default kept
    assert config.network.heartbeat_s == 0.5
    assert config.bridge.watch_mode == "poll" and config.bridge.skip_existing is True
    assert config.session.output_dir == base / "out"
    assert config.bridge.spool_dir == base / "spool" / "bridge"
    assert config.security.keys_dir == base / "keys"
    assert config.bridge.watch_dir == Path("/mnt/scanner/export")  # absolute: left alone


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, ""))
    assert config.security.keys_dir is None
    assert config.network == SessionConfig().network
    assert config.bridge.spool_dir == tmp_path.resolve() / "configs" / "rtrecon_out" / "bridge_spool"


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID.replace("watch_mode", "watch_mod"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "bridge.watch_mod" in message


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, VALID + "\n[scanner]\nvendor = 'siemens'\n")
    with pytest.raises(ConfigError, match=r"scanner: Extra inputs are not permitted"):
        load_config(path)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('watch_mode = "poll"', 'watch_mode = "smb"', "bridge.watch_mode"),
        ("heartbeat_s = 0.5", "heartbeat_s = -1", "network.heartbeat_s"),
        ('volumes = "tcp://10.0.0.2:6000"', 'volumes = "10.0.0.2:6000"', "network.volumes"),
        ('subject = "07"', 'subject = "sub-07"', "session.subject"),
        ("skip_existing = true", 'skip_existing = "sometimes"', "bridge.skip_existing"),
    ],
)
def test_bad_value_names_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_unreadable_files_give_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")
    bad = _write(tmp_path, "[session\nsubject = 1", "broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_config(bad)
