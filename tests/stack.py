"""A real stc-server and real stc-clients in the test's event loop, against the lab's Asterisk.

The server faces its clients on 127.0.0.2 (tunnel and SRTP), so that hop can be
captured on its own (`host 127.0.0.2`); Asterisk, the server's Asterisk side and
the softphones stay on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from asterisk_lab import SIP_HOST, SIP_PORT
from stc_asterisk.app import ServerApp
from stc_asterisk.config import AsteriskSettings, MediaSettings, ServerConfig, TunnelSettings
from stc_client.app import ClientApp
from stc_client.config import ClientConfig, IdentitySettings, MediaSettings as ClientMediaSettings, ServerSettings, SipSettings
from tests.certs import TestPki

WAN_HOST = "127.0.0.2"


def server_config(pki: TestPki, **media: object) -> ServerConfig:
    return ServerConfig(
        tunnel=TunnelSettings(listen_host=WAN_HOST, listen_port=0, cert=pki.server.cert, key=pki.server.key,
                              ca_bundle=pki.ca, crl=pki.crl, keepalive_interval=2, keepalive_timeout=6),
        asterisk=AsteriskSettings(sip_host=SIP_HOST, sip_port=SIP_PORT),
        media=replace(MediaSettings(wan_host=WAN_HOST, pbx_host="127.0.0.1"), **media),  # type: ignore[arg-type]
    )


def client_config(pki: TestPki, user: str, server_port: int, profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)) -> ClientConfig:
    return ClientConfig(
        server=ServerSettings(host=WAN_HOST, port=server_port, name="localhost", keepalive_interval=2,
                              keepalive_timeout=6, reconnect_max_delay=2),
        identity=IdentitySettings(cert=pki.users[user].cert, key=pki.users[user].key, ca_bundle=pki.ca),
        sip=SipSettings(listen_host="127.0.0.1", listen_port=0),
        media=ClientMediaSettings(srtp_profiles=profiles),
    )


@dataclass
class Stack:
    pki: TestPki
    server: ServerApp
    clients: dict[str, ClientApp] = field(default_factory=dict)

    @property
    def server_port(self) -> int:
        assert self.server.tunnels is not None
        return self.server.tunnels.port

    async def add_client(self, user: str, profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)) -> ClientApp:
        client = ClientApp(client_config(self.pki, user, self.server_port, profiles))
        await client.start()
        async with asyncio.timeout(10):
            await client.tunnel_up.wait()
        self.clients[user] = client
        return client

    def sip_port(self, user: str) -> int:
        return self.clients[user].softphone.port


@asynccontextmanager
async def stc_stack(pki: TestPki, users: tuple[str, ...] = (), **media: object) -> AsyncIterator[Stack]:
    server = ServerApp(server_config(pki, **media))
    await server.start()
    stack = Stack(pki, server)
    try:
        for user in users:
            await stack.add_client(user)
        yield stack
    finally:
        for client in stack.clients.values():
            await client.close()
        await server.close()


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)
