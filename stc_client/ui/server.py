"""The stc-client window: a small aiohttp app on loopback serving the page and its API.

Routes:
    GET  /                 the page (static/index.html)
    GET  /static/...       its CSS and JS (shipped in the package; no CDN)
    GET  /api/status       ClientState.snapshot() as JSON
    GET  /api/ws           websocket: one snapshot (JSON text) now and on every change
    GET  /api/settings     the settings form's current values (never the passphrase)
    POST /api/settings     validate, save atomically, then apply_settings(new config)
    POST /api/first-start  no settings file yet: import a PKCS#12 file and the server's address
                           (stc_client/first_start.py), then apply_settings(new config)

Only loopback is served, and only to its user: every request must carry the
per-install secret (stc_client/window_secret.py), which other local users
cannot read. The address the client prints carries it as `?token=`; the page
then holds it in an HttpOnly, SameSite=Strict cookie (named after the port,
since cookies are not kept apart by port) and takes it out of the address bar.
`stc-client status` and health checks send `Authorization: token SECRET`.
Without it: 403. Because any web page the user opens could still talk to
127.0.0.1, the Host header must name this server (against DNS rebinding), and
a browser's Origin, when sent, must be this page's own (websocket and settings
changes); settings are only taken as application/json, which a foreign page
cannot send without a CORS preflight that this server never grants.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, web

from stc_wire.config import ConfigError

from ..config import ClientConfig
from ..first_start import first_start_settings
from ..settings import SettingsRejected, load_current, save_settings, settings_form, validate_settings
from ..state import ClientState, StateSubscription

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY = 256 * 1024  # the first-start page uploads a PKCS#12 file and a CA certificate
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class UiServer:
    """Serves the window for `state`; settings are saved to `config_path`, then `apply_settings` runs."""

    def __init__(
        self,
        state: ClientState,
        config_path: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 8765,
        apply_settings: Callable[[ClientConfig], Awaitable[None]],
        secret: str,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"the stc-client window is served on loopback only, not on {host!r}")
        self.state = state
        self.config_path = config_path
        self.host = host
        self.port = port
        self._apply = apply_settings
        if len(secret) < 32:
            raise ValueError("the window secret is too short")
        self._secret = secret.encode()
        self.refused_without_secret = 0
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
        self._settings_lock = asyncio.Lock()
        self._allowed_hosts: frozenset[str] = frozenset()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def url(self) -> str:
        """The address to open: it carries the secret, so it is shown to the user only."""
        return f"{self.base_url}?token={self._secret.decode()}"

    @property
    def cookie_name(self) -> str:
        return f"stc-window-{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/", self._page)
        app.router.add_static("/static", STATIC_DIR)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/ws", self._ws)
        app.router.add_get("/api/settings", self._get_settings)
        app.router.add_post("/api/settings", self._post_settings)
        app.router.add_post("/api/first-start", self._post_first_start)
        app.on_response_prepare.append(self._headers)
        app.on_shutdown.append(self._close_sockets)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        names = {self.host, "localhost", "127.0.0.1", "[::1]"} | ({f"[{self.host}]"} if ":" in self.host else set())
        self._allowed_hosts = frozenset(f"{n}:{self.port}" for n in names)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- guards ---------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.host not in self._allowed_hosts:
            log.warning("refused a request for host %r (not this window)", request.host)
            raise web.HTTPMisdirectedRequest(text="this is the stc-client window; use its loopback address")
        from_query = self._holds_secret(request.query.get("token"))
        if not (from_query or self._holds_secret(request.cookies.get(self.cookie_name))
                or self._holds_secret(_authorization_token(request))):
            self.refused_without_secret += 1
            if self.refused_without_secret in (1, 10, 100) or self.refused_without_secret % 1000 == 0:
                log.warning("refused %s %s without the window's secret (%d so far)", request.method, request.path,
                            self.refused_without_secret)
            raise web.HTTPForbidden(text="this stc-client window belongs to the user who started it: open the "
                                         "address stc-client printed when it started (it carries the window's key)")
        origin = request.headers.get("Origin")
        guarded = request.method != "GET" or request.path == "/api/ws"
        if guarded and origin is not None and origin not in {f"http://{h}" for h in self._allowed_hosts}:
            log.warning("refused %s %s from origin %r", request.method, request.path, origin)
            raise web.HTTPForbidden(text="cross-origin requests are not allowed")
        response = await handler(request)
        if from_query and not response.prepared:
            # The page keeps the secret from here on, out of reach of its scripts and other sites.
            response.set_cookie(self.cookie_name, self._secret.decode(), path="/", httponly=True, samesite="Strict")
        return response

    def _holds_secret(self, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode(), self._secret)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)

    # -- handlers -------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        sub = self.state.subscribe()
        pusher = asyncio.create_task(self._push(ws, sub))
        try:
            async for _message in ws:  # the page sends nothing; this ends when it goes
                pass
        finally:
            sub.close()
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
            self._sockets.discard(ws)
        return ws

    async def _push(self, ws: web.WebSocketResponse, sub: StateSubscription) -> None:
        try:
            async for snapshot in sub:
                await ws.send_json(snapshot)
        except ConnectionError as exc:
            log.debug("window websocket gone: %s", exc)
        except Exception:  # a page that hears nothing would show stale state: close it, the page reconnects
            log.exception("pushing the state to the window failed; closing its websocket")
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"stc-client error")

    async def _close_sockets(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"stc-client stopping")

    async def _get_settings(self, request: web.Request) -> web.Response:
        try:
            config = load_current(self.config_path)
        except ConfigError as exc:
            return web.json_response({"ok": False, "errors": [{"field": "file", "message": str(exc)}]}, status=500)
        return web.json_response({"ok": True, "settings": settings_form(config), "config_path": str(self.config_path),
                                  "first_start": not self.config_path.exists()})

    async def _post_settings(self, request: web.Request) -> web.Response:
        form = await _json_form(request)
        if isinstance(form, web.Response):
            return form
        async with self._settings_lock:
            try:
                current = load_current(self.config_path)
            except ConfigError as exc:
                return _refused(500, "file", str(exc))
            try:
                change = validate_settings(
                    form, config_dir=self.config_path.resolve().parent, current=current,
                    now=self._clock() if self._clock else None,
                )
                config = save_settings(self.config_path, change)
            except SettingsRejected as exc:
                return _rejected(exc)
            return await self._saved(config)

    async def _post_first_start(self, request: web.Request) -> web.Response:
        form = await _json_form(request)
        if isinstance(form, web.Response):
            return form
        async with self._settings_lock:
            try:
                config = first_start_settings(form, config_path=self.config_path,
                                              now=self._clock() if self._clock else None)
            except SettingsRejected as exc:
                return _rejected(exc)
            return await self._saved(config)

    async def _saved(self, config: ClientConfig) -> web.Response:
        log.info("settings saved to %s; applying", self.config_path)
        try:
            await self._apply(config)
        except Exception as exc:  # the file is saved; say that applying it failed
            log.exception("applying the new settings failed")
            return web.json_response(
                {"ok": False, "saved": True, "errors": [{"field": "apply", "message": f"saved, but applying failed: {exc}"}],
                 "settings": settings_form(config)},
                status=500,
            )
        return web.json_response({"ok": True, "saved": True, "settings": settings_form(config)})


def _rejected(exc: SettingsRejected) -> web.Response:
    log.info("settings refused: %s", exc)
    return web.json_response(
        {"ok": False, "saved": False, "errors": [{"field": e.field, "message": e.message} for e in exc.errors]},
        status=400,
    )



def _authorization_token(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "token" else None


async def _json_form(request: web.Request) -> Any | web.Response:
    """The request's JSON body, or the refusal to answer with (415 not JSON, 400 not parseable)."""
    if request.content_type != "application/json":
        return _refused(415, "form", "settings are sent as application/json")
    try:
        return await request.json()
    except ValueError:
        return _refused(400, "form", "the request is not valid JSON")


def _refused(status: int, field: str, message: str) -> web.Response:
    return web.json_response({"ok": False, "saved": False, "errors": [{"field": field, "message": message}]}, status=status)


__all__ = ["STATIC_DIR", "UiServer", "is_loopback"]
