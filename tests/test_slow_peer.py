"""Pushing to many tunnels never waits on one: a peer that stops reading is closed as too slow (loopback, no Asterisk)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator

import pytest

from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelPeer, TunnelServer
from stc_client.tunnel_client import open_tunnel
from stc_wire.messages import Hello, Message, SipMessage, encode_message
from stc_wire.stream import CloseInfo
from stc_wire.tunnel import TunnelError
from test_tunnel_loopback import client_config
from tests.certs import TestPki, make_test_pki


class Recorder:
    def __init__(self, peer: TunnelPeer, closed: dict[str, CloseInfo]) -> None:
        self.peer = peer
        self._closed = closed

    async def on_message(self, message: Message) -> None:
        pass

    async def on_close(self, info: CloseInfo) -> None:
        self._closed[self.peer.identity.display_name] = info


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def closed() -> dict[str, CloseInfo]:
    return {}


@pytest.fixture
async def server(pki: TestPki, closed: dict[str, CloseInfo]) -> AsyncIterator[TunnelServer]:
    settings = TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                              ca_bundle=pki.ca, crl=pki.crl, keepalive_interval=1, keepalive_timeout=30)
    srv = TunnelServer(settings, lambda peer: Recorder(peer, closed))
    await srv.start()
    yield srv
    await srv.close()


async def stalled_client(pki: TestPki, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Bob's tunnel, HELLO sent, then never read again (with a small receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca))
    ctx.load_cert_chain(pki.users["bob"].cert, pki.users["bob"].key)
    reader, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="localhost")
    writer.write(encode_message(Hello((1,), (), "stalled")))
    await writer.drain()
    return reader, writer


async def test_a_peer_that_stops_reading_is_closed_and_the_others_get_everything(
        pki: TestPki, server: TunnelServer, closed: dict[str, CloseInfo]) -> None:
    good = await open_tunnel(client_config(pki, pki.users["alice"], server.port))
    received: list[bytes] = []

    async def on_message(message: Message) -> None:
        if isinstance(message, SipMessage):
            received.append(message.data)

    runner = asyncio.create_task(good.run(on_message))
    _, stalled_writer = await stalled_client(pki, server.port)
    async with asyncio.timeout(5):
        while len(server.peers) < 2:
            await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunk = b"x" * 32768
    sent = 0
    while loop.time() - started < 8 and "Bob" not in closed:
        for peer in list(server.peers.values()):
            try:
                peer.push(SipMessage(chunk))  # never waits, whoever the peer
            except TunnelError:
                pass
        sent += 1
        await asyncio.sleep(0.01)  # 3 MiB/s to each
    took = loop.time() - started
    assert "Bob" in closed and closed["Bob"].reason.startswith("too-slow"), closed
    assert took < 6.0
    async with asyncio.timeout(5):
        while len(received) < sent:
            await asyncio.sleep(0.01)
    assert "Alice" not in closed and len(received) == sent
    stalled_writer.transport.abort()
    await good.close()
    await runner
