"""stc-server as one object: everything it runs, started and stopped together."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from stc_wire.srtp import SrtpProfile

from .config import ServerConfig
from .media import MediaRelay
from .sip_relay import TunnelCalls
from .tunnel_server import TunnelPeer, TunnelServer

if TYPE_CHECKING:
    from .rooms import RoomService

log = logging.getLogger(__name__)
CAPABILITIES = ("sip", "srtp", "roster")


class Admissions(Protocol):
    """Per-call tokens that let the FastAGI service bind an Asterisk channel to a tunnel's identity."""

    def issue(self, peer: TunnelPeer, call_id: str, room: str) -> str: ...

    def release(self, token: str) -> None: ...


class ServerApp:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.srtp_profiles: tuple[SrtpProfile, ...] = tuple(SrtpProfile.parse(p) for p in config.media.srtp_profiles)
        self.media = MediaRelay(wan_host=config.media.wan_host, pbx_host=config.media.pbx_host,
                                wan_ports=config.media.wan_port_range(), pbx_ports=config.media.pbx_port_range(),
                                single_port=config.media.single_port or None)
        self.admissions: Admissions | None = None
        self.tunnels: TunnelServer | None = None
        self.rooms: "RoomService | None" = None
        self.sessions: dict[str, TunnelCalls] = {}

    async def _new_session(self, peer: TunnelPeer) -> TunnelCalls:
        calls = TunnelCalls(self, peer)
        await calls.open()
        self.sessions[peer.id] = calls
        return calls

    async def start(self) -> None:
        if self.config.asterisk.watch_conferences:
            from .rooms import RoomService

            self.rooms = RoomService(self)
            self.admissions = self.rooms
            await self.rooms.start()
        self.tunnels = TunnelServer(self.config.tunnel, self._new_session, capabilities=CAPABILITIES)
        await self.tunnels.start()

    async def close(self) -> None:
        if self.tunnels is not None:
            await self.tunnels.close()
        if self.rooms is not None:
            await self.rooms.close()
        self.media.close()
