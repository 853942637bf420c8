"""stc-client as one object: keeps the tunnel up, serves the softphone, says how it is doing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from stc_wire.identity import PeerIdentity
from stc_wire.messages import Message
from stc_wire.srtp import SrtpProfile

from .config import ClientConfig
from .media import ClientMedia
from .softphone import SoftphoneProxy
from .tunnel_client import ClientTunnel, TunnelRefused, open_tunnel

log = logging.getLogger(__name__)
CAPABILITIES = ("sip", "srtp")


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
        self.media = ClientMedia(config.server.host)
        self.softphone = SoftphoneProxy(
            config.sip.listen_host, config.sip.listen_port, self.media,
            tuple(SrtpProfile.parse(p) for p in config.media.srtp_profiles), on_change=self._refresh_light)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.softphone.start()
        self._task = asyncio.create_task(self._keep_tunnel())

    async def close(self) -> None:
        await self.softphone.close()
        if self.tunnel is not None:
            await self.tunnel.close("client shutting down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.media.close()

    def _set_status(self, light: str, reason: str, server: PeerIdentity | None = None) -> None:
        if (light, reason) != (self.status.light, self.status.reason):
            log.info("status %s: %s", light.upper(), reason)
        self.status = TunnelStatus(light, reason, server)

    def _refresh_light(self) -> None:
        if self.tunnel is None:
            return
        call = self.softphone.active_call
        if call is not None and call.profile is not None:
            self._set_status("green", f"in a secure call: room {call.room}, {call.profile.value}", self.tunnel.server_identity)
        else:
            self._set_status("yellow", "tunnel up, no call", self.tunnel.server_identity)

    async def on_message(self, message: Message) -> None:
        await self.softphone.on_server_message(message)

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
                self.softphone.tunnel_up(self.tunnel.send)
                self._refresh_light()
                self.tunnel_up.set()
                info = await self.tunnel.run(self.on_message)
                self.tunnel_up.clear()
                self.tunnel = None
                await self.softphone.tunnel_lost(f"tunnel closed: {info.reason}")
                log.warning("tunnel closed: %s", info.reason)
                self._set_status("red", f"tunnel closed: {info.reason}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.server.reconnect_max_delay)
