"""The operator's HTTP endpoints of stc-server: /metrics, /healthz, /readyz.

/healthz answers while the process and its event loop run. /readyz answers 200
only while the server can do its job: the tunnel port listening, ARI and AMI
connected (when it follows conferences), and the CRL current (not failed
closed); otherwise 503, with one line per check so an operator sees which.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .config import AdminSettings

if TYPE_CHECKING:
    from .app import ServerApp

log = logging.getLogger(__name__)


def readiness(app: "ServerApp") -> dict[str, bool]:
    """Each readiness check by name: True when it passes."""
    tunnels = app.tunnels
    checks = {"tunnel listening": tunnels is not None and tunnels.listening}
    if app.config.asterisk.watch_conferences:
        # With several Asterisk nodes, one that is up is enough: the rooms of the others move to it.
        nodes = list(app.nodes.values())
        checks["ARI connected"] = any(service.ari.connected for service in nodes)
        checks["AMI connected"] = any(service.ami.up for service in nodes)
    checks["CRL current"] = tunnels is not None and tunnels.trust_status().crl_current(time.time())
    return checks


class AdminServer:
    def __init__(self, app: "ServerApp", settings: AdminSettings) -> None:
        self._app = app
        self._settings = settings
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        assert self._runner is not None
        return int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        return f"http://{self._settings.host}:{self.port}"

    async def start(self) -> None:
        web_app = web.Application()
        web_app.router.add_get("/metrics", self._metrics)
        web_app.router.add_get("/healthz", self._healthz)
        web_app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self._settings.host, self._settings.port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            raise OSError(exc.errno, f"admin endpoints on {self._settings.host}:{self._settings.port}: {exc.strerror} "
                                     f"(change [admin] port, or enabled = false)") from None
        log.info("admin endpoints on %s (/metrics, /healthz, /readyz)", self.url)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._app.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        checks = readiness(self._app)
        ready = all(checks.values())
        text = "".join(f"{'ok  ' if passed else 'FAIL'} {name}\n" for name, passed in checks.items())
        return web.Response(status=200 if ready else 503, text=("ready\n" if ready else "not ready\n") + text)
