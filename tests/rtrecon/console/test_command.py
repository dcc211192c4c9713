"""``rtrecon console``: its help, its refusal of a bad bind, and the token a non-local bind needs."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from rtrecon.contract import children
from rtrecon.contract.keys import init_keys
from rtrecon.testing import scaled


def _cli(*args: str) -> subprocess.CompletedProcess:
    return children.run([sys.executable, "-m", "rtrecon.cli", *args], capture_output=True, text=True, timeout=scaled(60))


def test_help_explains_the_page_and_its_access():
    done = _cli("console", "--help")
    assert done.returncode == 0
    for words in ("--config", "--host", "WebSocket", "fd_threshold_mm", "console.token", "pause/resume feedback"):
        assert words in done.stdout
    assert "console" in _cli("--help").stdout


def test_a_non_local_bind_without_keys_is_refused_at_start(tmp_path, harness):
    config = harness.write_config(tmp_path)
    done = _cli("console", "--config", str(config), "--host", "0.0.0.0", "--port", "0")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "session.toml" in line and "[security] keys_dir" in line


def test_a_non_local_bind_refuses_requests_without_the_token(tmp_path, harness, chromium):
    from playwright.sync_api import expect

    keys = init_keys(tmp_path / "keys")
    config = harness.write_config(tmp_path, f'[security]\nkeys_dir = "{keys}"\n')
    console, url = harness.start_console(config, "--host", "0.0.0.0")
    token = (keys / "console.token").read_text().strip()
    assert stat.S_IMODE((keys / "console.token").stat().st_mode) == 0o600
    assert url.endswith(f"/?token={token}")
    base = url.split("?")[0].replace("0.0.0.0", "127.0.0.1")
    ws = base.replace("http://", "ws://") + "ws"
    try:
        for path in ("", "api/state", "static/console.js"):
            assert httpx.get(base + path).status_code == 401
            assert httpx.get(base + path, headers={"Authorization": "Bearer " + token[:-1] + "x"}).status_code == 401
        control = httpx.post(base + "api/control", json={"action": "pause_feedback"})
        assert control.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            connect(ws, open_timeout=scaled(10))
        assert refused.value.response.status_code == 403
        # with the token: the state, and the WebSocket's snapshot
        state = httpx.get(base + "api/state", headers={"Authorization": f"Bearer {token}"})
        assert state.status_code == 200 and state.json()["summary"]["session"] == "sub-01_ses-01"
        with connect(ws, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=scaled(10)) as socket:
            assert json.loads(socket.recv(timeout=scaled(10)))["type"] == "snapshot"
        # in the browser: refused without the token; with it once, the cookie carries the rest
        page = chromium.new_page()
        assert page.goto(base).status == 401
        assert page.goto(base + f"?token={token}").status == 200
        expect(page.locator("#connection")).to_have_text("live", timeout=scaled(30_000))
        expect(page.locator("#session")).to_have_text("sub-01_ses-01")
        page.close()
    finally:
        err = harness.stop(console)
    assert "refused a websocket request for /ws" in err and "refused a http request for /api/control" in err
    assert not (tmp_path / "out/sourcedata/console").exists()  # the refused control was not recorded
