"""`[server] srv_domain` end to end: a real ClientApp asks a tiny DNS responder (on a free loopback
port, named by `srv_resolver`) for `_stc._tcp.<domain>` and opens its tunnel to the real stc-server
the best SRV record names, while the configured host:port is down. No Asterisk: the tunnel coming up
is what is asserted."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from stack import WAN_HOST, client_config, free_tcp_port, server_config, wait_until
from stc_asterisk.app import ServerApp
from stc_client.app import ClientApp
from stc_client.config import ServerSettings
from stc_client.srv import build_query
from tests.certs import TestPki, make_test_pki
from test_srv import answer_for

DOMAIN = "stc.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[ServerApp]:
    config = server_config(pki)
    config.asterisk.watch_conferences = False
    app = ServerApp(config)
    await app.start()
    yield app
    await app.close()


class DnsResponder(asyncio.DatagramProtocol):
    """Answers `_stc._tcp.stc.test` IN SRV with `records`, anything else with NXDOMAIN; keeps the names asked."""

    def __init__(self, records: list[tuple[int, int, int, str]]) -> None:
        self.records = records
        self.asked: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query_id = struct.unpack(">H", data[:2])[0]
        self.asked.append(data[12:])
        name = f"_stc._tcp.{DOMAIN}"
        known = data[12:] == build_query(name, query_id)[12:]
        reply = answer_for(name, query_id, self.records if known else [], rcode=0 if known else 3)
        self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


async def test_the_client_opens_its_tunnel_to_the_server_its_srv_records_name(pki: TestPki, server: ServerApp) -> None:
    assert server.tunnels is not None
    down = free_tcp_port()
    # Listed out of order on purpose: priority 10 (the live server) must be tried before priority 20 (down).
    responder = DnsResponder([(20, 100, down, WAN_HOST), (10, 0, server.tunnels.port, WAN_HOST)])
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: responder, local_addr=("127.0.0.1", 0))
    resolver_port = transport.get_extra_info("sockname")[1]
    base = client_config(pki, "alice", free_tcp_port())  # host:port itself is down: only SRV leads to the server
    settings: ServerSettings = replace(base.server, srv_domain=DOMAIN, srv_resolver=f"127.0.0.1:{resolver_port}")
    client = ClientApp(replace(base, server=settings))
    try:
        assert await client._servers() == [(WAN_HOST, server.tunnels.port), (WAN_HOST, down),
                                           (WAN_HOST, base.server.port)]
        await client.start()
        async with asyncio.timeout(10):
            await client.tunnel_up.wait()
        await wait_until(lambda: len(server.tunnels.peers) == 1, what="the server sees the tunnel")  # type: ignore[union-attr]
        peer = next(iter(server.tunnels.peers.values()))
        assert peer.identity.display_name == "Alice"
        assert responder.asked and all(q == build_query(f"_stc._tcp.{DOMAIN}", 0)[12:] for q in responder.asked)
    finally:
        await client.close()
        transport.close()
