"""ZeroMQ CURVE keys: encrypted links that only rtrecon's own processes can join.

``rtrecon keys init DIR`` makes one CURVE key pair per role (``bridge``, ``engine``,
``stimulus``, ``console`` unless ``--roles`` says otherwise) with :func:`zmq.auth.create_certificates`::

    DIR/public/<role>.key           every role's public key (copy this folder to every machine)
    DIR/private/<role>.key_secret   the role's secret key, mode 0600 in a 0700 folder
                                    (copy each only to the machine that plays the role)

:func:`load_curve` reads the secret key of one role and the public keys of all roles into a
:class:`CurveKeys`, which :mod:`rtrecon.contract.transport` takes as ``curve=``. The socket that binds is
the CURVE server and admits only clients whose public key is in ``DIR/public`` *and* whose role
may use that link (``client_roles``: the volume link admits the bridge, the event link the
stimulus program, the result link the engine; checked by a
:class:`zmq.auth.thread.ThreadAuthenticator`; a refused key is logged as a warning); the socket
that connects is the CURVE client and must name the role of the server it connects to, whose
public key it pins. Usage::

    from rtrecon.contract.keys import load_curve
    curve = load_curve("keys", "bridge")
    sender = ReliableSender("tcp://engine:5555", "sub-01_ses-01", spool, curve=curve, server_role="engine")
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
import tempfile
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from rtrecon.contract.layout import atomic_write

__all__ = ["DEFAULT_ROLES", "CurveKeys", "KeysError", "init_keys", "load_curve", "configure"]

DEFAULT_ROLES: tuple[str, ...] = ("bridge", "engine", "stimulus", "console")

log = logging.getLogger(__name__)


class KeysError(ValueError):
    """A keys folder is missing, incomplete or has unsafe permissions."""


@dataclass(frozen=True)
class CurveKeys:
    """One role's CURVE key pair and the public keys of every role it may talk to.

    Keys are Z85-encoded bytes, as ZeroMQ takes them.
    """

    role: str
    public: bytes
    secret: bytes
    known: Mapping[str, bytes]

    def server_key(self, server_role: str) -> bytes:
        """The public key of ``server_role``, which a client pins when it connects."""
        try:
            return self.known[server_role]
        except KeyError:
            raise KeysError(
                f"no public key for role {server_role!r} (known: {', '.join(sorted(self.known))})"
            ) from None

    def apply_client(self, socket: zmq.Socket, server_role: str) -> None:
        """Make ``socket`` (before it connects) a CURVE client of ``server_role``."""
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_serverkey = self.server_key(server_role)

    def apply_server(
        self, socket: zmq.Socket, context: zmq.Context, name: str, client_roles: Collection[str] | None = None
    ) -> ThreadAuthenticator:
        """Make ``socket`` (before it binds) a CURVE server admitting only the known public keys of
        ``client_roles`` (None: of every role).

        Starts and returns the authenticator of ``context`` (one per context: ZeroMQ routes every
        handshake of the context to it); stop it before terminating the context.
        """
        if client_roles is not None:
            unknown = sorted(set(client_roles) - set(self.known))
            if unknown:
                raise KeysError(f"{name}: no public key for role(s) {', '.join(unknown)} (known: {', '.join(sorted(self.known))})")
        auth = ThreadAuthenticator(context, log=logging.getLogger(f"{__name__}.zap"))
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_KnownKeys(self.known, name, client_roles))
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True
        return auth


class _KnownKeys:
    """ZAP credentials provider: admits the known public keys of the allowed roles, logs every refusal."""

    def __init__(self, known: Mapping[str, bytes], name: str, roles: Collection[str] | None = None) -> None:
        self._roles = {key: role for role, key in known.items()}
        self._allowed = frozenset(key for role, key in known.items() if roles is None or role in roles)
        self._admits = "every role" if roles is None else ", ".join(sorted(roles))
        self._name = name
        self._refused: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._allowed:
            return True
        # A refused client re-dials every 100 ms: warn once per key, not at every attempt.
        if key not in self._refused:
            self._refused.add(key)
            role = self._roles.get(key)
            if role is None:
                log.warning("%s: refused a peer with an unknown CURVE public key %s", self._name, key.decode("ascii"))
            else:
                log.warning("%s: refused a peer with the CURVE key of role %r: this link admits %s",
                            self._name, role, self._admits)
        return False


def init_keys(keys_dir: str | Path, roles: Sequence[str] = DEFAULT_ROLES, *, force: bool = False) -> Path:
    """Make a CURVE key pair per role under ``keys_dir`` (layout in the module docstring).

    Refuses to overwrite existing keys unless ``force``: replacing a key pair silently would
    lock out every machine that holds the old public key.
    """
    keys_dir = Path(keys_dir)
    if not roles or len(set(roles)) != len(roles):
        raise KeysError(f"roles must be distinct and not empty (got {list(roles)})")
    for role in roles:
        if not role.isidentifier():
            raise KeysError(f"role {role!r} is not a plain name")
    public, private = keys_dir / "public", keys_dir / "private"
    if not force:
        existing = [p for role in roles for p in (public / f"{role}.key", private / f"{role}.key_secret") if p.exists()]
        if existing:
            raise KeysError(f"{existing[0]}: keys already exist (use --force to replace them)")
    public.mkdir(parents=True, exist_ok=True)
    private.mkdir(parents=True, exist_ok=True)
    private.chmod(0o700)
    # Create in a private scratch folder so a secret key is never readable by others, even briefly.
    with tempfile.TemporaryDirectory(dir=private) as scratch:
        os.chmod(scratch, 0o700)
        for role in roles:
            public_file, secret_file = zmq.auth.create_certificates(scratch, role)
            atomic_write(private / f"{role}.key_secret", Path(secret_file).read_bytes(), mode=0o600)
            atomic_write(public / f"{role}.key", Path(public_file).read_bytes())
    return keys_dir


def load_curve(keys_dir: str | Path, role: str) -> CurveKeys:
    """The key pair of ``role`` and every role's public key, from a folder made by :func:`init_keys`."""
    keys_dir = Path(keys_dir)
    secret_file = keys_dir / "private" / f"{role}.key_secret"
    if not secret_file.is_file():
        raise KeysError(f"{secret_file}: no secret key for role {role!r} (run `rtrecon keys init {keys_dir}`)")
    mode = stat.S_IMODE(secret_file.stat().st_mode)
    if mode & 0o077:
        raise KeysError(f"{secret_file}: secret key is readable by others (mode {mode:o}); chmod 600 it")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise KeysError(f"{secret_file}: not a CURVE secret key file: {exc}") from exc
    if secret is None:
        raise KeysError(f"{secret_file}: holds no secret key")
    known: dict[str, bytes] = {}
    for public_file in sorted((keys_dir / "public").glob("*.key")):
        try:
            known[public_file.stem] = zmq.auth.load_certificate(public_file)[0]
        except (OSError, ValueError) as exc:
            raise KeysError(f"{public_file}: not a CURVE public key file: {exc}") from exc
    if known.get(role) != public:
        raise KeysError(f"{keys_dir / 'public' / (role + '.key')}: missing or does not match {secret_file}")
    return CurveKeys(role=role, public=public, secret=secret, known=MappingProxyType(known))


def _init_command(ns: argparse.Namespace) -> int:
    try:
        keys_dir = init_keys(ns.dir, ns.roles, force=ns.force)
    except KeysError as exc:
        print(f"rtrecon keys init: {exc}", file=sys.stderr)
        return 1
    print(f"CURVE keys for {', '.join(ns.roles)} in {keys_dir}:")
    print(f"  {keys_dir / 'public'}   copy to every machine")
    for role in ns.roles:
        print(f"  {keys_dir / 'private' / (role + '.key_secret')}   only on the {role} machine")
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rtrecon keys``."""
    sub = parser.add_subparsers(title="subcommands", metavar="SUBCOMMAND")
    init = sub.add_parser(
        "init",
        help="make one CURVE key pair per role",
        description="Make one CURVE key pair per role: DIR/public/<role>.key (copy to every machine) and "
        "DIR/private/<role>.key_secret (mode 0600; copy only to the machine that plays the role).",
    )
    init.add_argument("dir", type=Path, help="folder for the keys (public/ and private/ are made inside)")
    init.add_argument("--roles", nargs="+", default=list(DEFAULT_ROLES), help="roles (default: %(default)s)")
    init.add_argument("--force", action="store_true", help="replace existing keys")
    init.set_defaults(func=_init_command)
