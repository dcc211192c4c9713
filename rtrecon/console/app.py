"""The console's ASGI app (Starlette): the page, its WebSocket push, the controls, the access check.

Routes::

    GET  /                 the page (static/index.html), which opens the WebSocket
    GET  /static/...       its script and style sheet
    WS   /ws               a snapshot of the session on connecting, then one update per change
    POST /api/control      {"action": ..., "run": ..., "trial": ...}: recorded, then pushed
    GET  /api/state        the snapshot as JSON (scripts, checks)
    GET  /gallery/{id}     a stimulus or retrieved image from ``[stimulus.feedback] gallery_dir``

:class:`ConsoleService` owns the :class:`~rtrecon.console.state.SessionState`, the engine feed
(:class:`~rtrecon.console.feeds.EngineFeed`), the store reader and the control records. Messages
from the feed's thread are moved onto the event loop (``call_soon_threadsafe``), applied, and
every open page gets the changes. Each control is recorded, then published to the stimulus
program (:func:`~rtrecon.console.feeds.open_operator_feed`: the whole state, again every
heartbeat). A task on the loop reads the store once a heartbeat (runs that
have ended, a new run's TR, the trials' onsets: the engine does not publish events) and refreshes
the summary, so a dead engine shows on the page within seconds without the page polling anything.
The state is backfilled from the store at start, when the feed skips a volume, and when the
engine comes back after falling silent (a restart): every release in the run's trials table that
the state lacks, with that release's decoding (a release is shown once, however often it is
republished or read back).

Access (:class:`TokenGate`). Bound to localhost the console admits local clients only (Host
header checked, against DNS rebinding). Bound to any other address it needs ``token``: every
HTTP request and WebSocket must carry it (``Authorization: Bearer``, the ``rtrecon_console``
cookie, or ``?token=`` once, which sets the cookie); others get 401, or a refused handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketClose, WebSocketDisconnect

from rtrecon.contract.config import SessionConfig
from rtrecon.console.feeds import EngineFeed, console_curve, open_operator_feed
from rtrecon.console.folder import SessionFolder
from rtrecon.console.records import ControlError, ControlRecords
from rtrecon.console.state import SessionState
from rtrecon.contract.layout import safe_filename
from rtrecon.contract.transport import StatusPublisher
from rtrecon.contract.wire import ShownMessage, StatusMessage, TrialResultMessage

__all__ = ["LOCAL_HOSTS", "COOKIE", "ConsoleService", "TokenGate", "create_app"]

log = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "rtrecon_console"
STATIC = Path(__file__).parent / "static"
_IMAGE_ID = re.compile(r"^[A-Za-z0-9:._-]{1,200}$")


class ConsoleService:
    """The console of the session ``config`` describes (see the module docstring)."""

    def __init__(self, config: SessionConfig) -> None:
        s = config.session
        self.config = config
        self.folder = SessionFolder(s.output_dir, s.subject, s.session, s.task)
        self.records = ControlRecords(self.folder.layout)
        self.state = SessionState(
            self.folder.layout.session_id, task=s.task, expected_volumes=config.engine.planned_volumes,
            fd_threshold_mm=config.console.fd_threshold_mm, heartbeat_s=config.network.heartbeat_s,
            decoder_backlog=config.console.decoder_backlog, expected_tr=config.stimulus.trigger.tr,
        )
        for record in self.records.read():
            self.state.apply_control(record)
        self.pages: set[WebSocket] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._feed: EngineFeed | None = None
        self._operator: StatusPublisher | None = None
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.backfill()
        curve = console_curve(self.config.security.keys_dir)
        self._feed = EngineFeed(self.config.network.status, self._from_feed, curve=curve)
        self._feed.start()
        self._operator = open_operator_feed(self.config.network.operator, curve)
        self._tasks.append(asyncio.create_task(self._watch()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._feed is not None:
            await asyncio.to_thread(self._feed.stop)
        if self._operator is not None:
            self._operator.close()

    # -- input -----------------------------------------------------------------------------------
    def _from_feed(self, message: StatusMessage | TrialResultMessage | ShownMessage) -> None:
        """Called on the feed's thread: hand the message to the event loop."""
        assert self._loop is not None
        received = time.monotonic()
        self._loop.call_soon_threadsafe(self._apply, message, received)

    def _apply(self, message: StatusMessage | TrialResultMessage | ShownMessage, received: float) -> None:
        if isinstance(message, TrialResultMessage):
            self.state.on_result(message)
        elif isinstance(message, ShownMessage):
            self.state.on_shown(message)
        else:
            was_alive = self.state.engine_heard is None or self.state.engine_alive(received)
            gap = self.state.on_status(message, received)
            if gap or not was_alive:
                self.backfill()
            elif "volume" in message.metrics and "run" in message.metrics:
                # the stages of the volume just published, from the timings row written before it
                run, index = int(message.metrics["run"]), int(message.metrics["volume"])
                self.state.add_stages(run, self.folder.stages(run, start=index))
        self._push()

    def backfill(self) -> None:
        """Read what the store holds into the state (what the feed gave stays as it came)."""
        for run in self.folder.runs():
            self.state.add_volume_rows(self.folder.volumes(run))
            self.state.add_stages(run, self.folder.stages(run))
            self.state.add_events(run, self.folder.events(run))
            for trial, releases in self.folder.released(run).items():
                for stored in releases:
                    if not self.state.knows_release(run, trial, stored.release):
                        self.state.add_stored_release(stored, self.folder.decoded(run, trial, stored.release))
            self.state.set_run_info(run, tr=self.folder.tr(run), ended=self.folder.ended(run))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.network.heartbeat_s)
            self._send_controls()
            for run in self.folder.runs()[-2:]:
                # trial onsets come only from the store: the engine does not publish events
                self.state.add_events(run, self.folder.events(run))
                self.state.set_run_info(run, tr=self.folder.tr(run), ended=self.folder.ended(run))
            self._push()

    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Record an operator's control and apply it (:class:`ControlError` if it is malformed)."""
        record = self.records.record(request)
        self.state.apply_control(record)
        log.info("console: operator control %s", record)
        self._send_controls()
        self._push()
        return record

    def _send_controls(self) -> None:
        """The controls' whole state to the stimulus program (again each heartbeat, for a late subscriber)."""
        if self._operator is not None:
            self._operator.publish(self.state.operator_message(time.time()))

    # -- output ----------------------------------------------------------------------------------
    def _push(self) -> None:
        if not self.pages:
            self.state.changes(time.monotonic())  # nobody to tell: forget what changed
            return
        text = json.dumps(self.state.changes(time.monotonic()), allow_nan=False)
        for page in list(self.pages):
            asyncio.ensure_future(self._send(page, text))

    async def _send(self, page: WebSocket, text: str) -> None:
        try:
            await page.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.pages.discard(page)

    async def page_socket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps(self.state.snapshot(time.monotonic()), allow_nan=False))
        self.pages.add(websocket)
        try:
            while True:  # the page sends nothing; this notices it closing
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            self.pages.discard(websocket)


def _supplied_token(scope: Scope) -> tuple[str | None, bool]:
    """(the token a request carries, whether it came in the query string)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip(), False
    cookie = SimpleCookie()
    with contextlib.suppress(Exception):
        cookie.load(headers.get("cookie", ""))
    if COOKIE in cookie:
        return cookie[COOKIE].value, False
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0], True
    return None, False


class TokenGate:
    """ASGI middleware: with a ``token``, refuse every HTTP request and WebSocket that lacks it."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        supplied, from_query = _supplied_token(scope)
        if supplied is None or not hmac.compare_digest(supplied.encode(), self.token.encode()):
            log.warning("console: refused a %s request for %s from %s without the token",
                        scope["type"], scope.get("path"), (scope.get("client") or ("?",))[0])
            if scope["type"] == "websocket":
                await WebSocketClose(code=1008)(scope, receive, send)
            else:
                await PlainTextResponse("401: this console needs its token (see `rtrecon console --help`)",
                                        status_code=401)(scope, receive, send)
            return
        if not from_query or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                value = f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", value.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def create_app(service: ConsoleService, *, token: str | None = None, local_only: bool = True) -> Starlette:
    """The console's ASGI app around ``service``; ``token`` guards a non-local bind."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        return JSONResponse(service.state.snapshot(time.monotonic()))

    async def control(request: Request) -> Response:
        # JSON only: a cross-site form post cannot send it without the browser asking first.
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send the control as application/json"}, status_code=415)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ControlError("the control must be a JSON object")
            record = service.control(body)
        except (ControlError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(record)

    async def gallery(request: Request) -> Response:
        folder = service.config.stimulus.feedback.gallery_dir
        image_id = request.path_params["image_id"]
        if folder is not None and _IMAGE_ID.match(image_id) and ".." not in image_id:
            for ext in (".png", ".jpg", ".jpeg"):
                path = Path(folder) / f"{safe_filename(image_id)}{ext}"  # as the stimulus PC names it
                if path.is_file():
                    return FileResponse(path)
        return PlainTextResponse("no such image", status_code=404)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    middleware = [Middleware(TokenGate, token=token)]
    if local_only:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost", "[::1]", "::1"]))
    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/control", control, methods=["POST"]),
        Route("/gallery/{image_id}", gallery),
        WebSocketRoute("/ws", service.page_socket),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
