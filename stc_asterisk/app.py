"""stc-server as one object: everything it runs, started and stopped together."""

from __future__ import annotations

import logging

from .config import ServerConfig
from .tunnel_server import TunnelServer

log = logging.getLogger(__name__)
CAPABILITIES = ("sip",)


class ServerApp:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tunnels: TunnelServer | None = None

    async def start(self) -> None:
        self.tunnels = TunnelServer(self.config.tunnel, capabilities=CAPABILITIES)
        await self.tunnels.start()

    async def close(self) -> None:
        if self.tunnels is not None:
            await self.tunnels.close()
