"""``rtrecon console``: the operator's live view of a session, as a web page.

::

    rtrecon console --config session.toml [--host 127.0.0.1] [--port 8765]

Serves the page with uvicorn and prints its address (``console up: http://HOST:PORT/``). See
:mod:`rtrecon.console` for what it shows. Bound to localhost (the default), only this machine can
open it. Any other address needs the session's ``[security] keys_dir``: the console reads its
access token from ``KEYS/console.token`` (made, readable by its owner only, the first time) and
prints the address with ``?token=...`` for the operator's browser; requests without it are refused.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

from rtrecon.contract.logs import configure_logging

__all__ = ["configure", "run_console", "console_token"]

log = logging.getLogger(__name__)

_EPILOG = """\
The page updates as each volume arrives (WebSocket push): run state, volumes received / expected /
missing, link health (bridge, engine, stimulus PC), motion and framewise displacement with the FD
alarm ([console] fd_threshold_mm), per-stage latency, the trial timeline (stimulus, each release as
it arrives, the newest one's reconstruction, top-5 and rank of the true image), the decoder's queue,
running accuracy (each trial scored once, on its first release), and a banner
when something is wrong. Controls (pause/resume feedback, mark a trial bad, end the run) are recorded
in OUT/sourcedata/console/ and published to the stimulus program ([network] operator). It reads the engine's status feed ([network] status) and the session
folder ([session] output_dir), so it may start or restart at any time during the session.

Access: --host other than 127.0.0.1/localhost/::1 needs [security] keys_dir; the token is KEYS/console.token."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--config", type=Path, required=True, help="the session config (session.toml)")
    parser.add_argument("--host", help="address to serve on (default: [console] host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default: [console] port, 8765; 0: any free port)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log level (default %(default)s)")
    parser.set_defaults(func=run_console)


def console_token(keys_dir: Path) -> str:
    """The console's access token in ``keys_dir/console.token``, made (mode 0600) if absent."""
    path = Path(keys_dir) / "console.token"
    if not path.is_file():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    token = path.read_text().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the console token is shorter than 16 characters")
    return token


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def run_console(ns: argparse.Namespace) -> int:
    import uvicorn

    from rtrecon.contract.config import ConfigError, load_config
    from rtrecon.console.app import LOCAL_HOSTS, ConsoleService, create_app

    configure_logging("console", ns.log_level)
    try:
        config = load_config(ns.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    host = ns.host or config.console.host
    port = config.console.port if ns.port is None else ns.port
    local = host in LOCAL_HOSTS
    token = None
    if not local:
        if config.security.keys_dir is None:
            print(f"error: {ns.config}: [security] keys_dir is needed to serve the console on {host} "
                  "(its token guards the page); or serve it on 127.0.0.1", file=sys.stderr)
            return 2
        try:
            token = console_token(config.security.keys_dir)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        sock = _bind(host, port)
    except OSError as exc:
        print(f"error: cannot serve the console on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    print(f"console up: {address}", flush=True)
    app = create_app(ConsoleService(config), token=token, local_only=local)
    server = uvicorn.Server(uvicorn.Config(app, log_level=ns.log_level.lower(), lifespan="on", ws="websockets-sansio"))
    server.run(sockets=[sock])
    return 0
