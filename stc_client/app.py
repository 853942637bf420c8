"""stc-client as one object: keeps the tunnel up and says how it is doing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from stc_wire.identity import PeerIdentity
from stc_wire.messages import Message

from .config import ClientConfig
from .tunnel_client import ClientTunnel, TunnelRefused, open_tunnel

log = logging.getLogger(__name__)
CAPABILITIES = ("sip",)


@dataclass
class TunnelStatus:
    """What the status light shows: red (down, with why), yellow (tunnel up), green (in a secure call)."""

    light: str = "red"
    reason: str = "not connected yet"
    server: PeerIdentity | None = None
    since: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


class ClientApp:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.status = TunnelStatus()
        self.tunnel: ClientTunnel | None = None
        self.tunnel_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._keep_tunnel())

    async def close(self) -> None:
        if self.tunnel is not None:
            await self.tunnel.close("client shutting down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _set_status(self, light: str, reason: str, server: PeerIdentity | None = None) -> None:
        self.status = TunnelStatus(light, reason, server)

    async def on_message(self, message: Message) -> None:
        log.debug("unhandled %s from server", type(message).__name__)

    async def _keep_tunnel(self) -> None:
        delay = 1.0
        while True:
            try:
                self.tunnel = await open_tunnel(self.config, capabilities=CAPABILITIES)
            except TunnelRefused as exc:
                log.error("tunnel refused (%s): %s", exc.reason, exc)
                self._set_status("red", f"{exc.reason}: {exc}")
            else:
                delay = 1.0
                self._set_status("yellow", "tunnel up, no call", self.tunnel.server_identity)
                self.tunnel_up.set()
                info = await self.tunnel.run(self.on_message)
                self.tunnel_up.clear()
                self.tunnel = None
                log.warning("tunnel closed: %s", info.reason)
                self._set_status("red", f"tunnel closed: {info.reason}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.server.reconnect_max_delay)
