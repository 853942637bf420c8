"""`[server] hosts` and `srv_domain`: a real ClientApp tries its servers in order and moves to the next
one when the tunnel is lost. Real TunnelServers on loopback, no Asterisk."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace

import pytest

from stc_client.app import ClientApp
from stc_client.config import server_address
from test_client_supervision import GreetingServer, config, wait_until
from tests.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def dead_port() -> int:
    """A loopback port nothing listens on (a server that is down)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(("entry", "address"), [("stc2.example.org:5443", ("stc2.example.org", 5443)),
                                                ("127.0.0.1:6000", ("127.0.0.1", 6000)),
                                                ("[::1]:5443", ("::1", 5443))])
def test_a_hosts_entry_is_host_and_port(entry: str, address: tuple[str, int]) -> None:
    assert server_address(entry) == address


@pytest.mark.parametrize("entry", ["stc2.example.org", "host:0", "host:99999", "::1:5443", ":5443", "host:port"])
def test_a_bad_hosts_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="hosts"):
        server_address(entry)


async def test_the_servers_are_tried_in_order_and_a_lost_one_moves_the_client_to_the_next(pki: TestPki) -> None:
    first, second = GreetingServer(pki), GreetingServer(pki)
    await first.server.start()
    await second.server.start()
    down = dead_port()
    base = config(pki, down)  # host:port is down; then the two servers, in this order
    client = ClientApp(replace(base, server=replace(base.server, hosts=(f"127.0.0.1:{first.server.port}",
                                                                        f"127.0.0.1:{second.server.port}"))))
    try:
        assert await client._servers() == [("127.0.0.1", down), ("127.0.0.1", first.server.port),
                                           ("127.0.0.1", second.server.port)]
        await client.start()
        await wait_until(lambda: len(first.connected) == 1 and client.tunnel_up.is_set(), "the first server taken")
        assert not second.connected
        await first.server.close()  # that server goes away: the client moves on to the next one
        await wait_until(lambda: len(second.connected) == 1 and client.tunnel_up.is_set(), "moved to the second")
    finally:
        await client.close()
        await second.server.close()
        await asyncio.sleep(0)


async def test_a_server_whose_tunnel_was_just_lost_is_tried_last(pki: TestPki) -> None:
    """A killed server's address may take connect_timeout to fail: after a lost tunnel the client
    goes to the deployment's next server first, even though the lost one comes first in its list."""
    first, second = GreetingServer(pki), GreetingServer(pki)
    await first.server.start()
    await second.server.start()
    base = config(pki, first.server.port)
    client = ClientApp(replace(base, server=replace(base.server, hosts=(f"127.0.0.1:{second.server.port}",))))
    try:
        await client.start()
        await wait_until(lambda: len(first.connected) == 1 and client.tunnel_up.is_set(), "the first server taken")
        assert client.tunnel is not None
        client.tunnel.stream.drop()  # the path to the first server dies (the server itself still listens)
        await wait_until(lambda: len(second.connected) == 1 and client.tunnel_up.is_set(), "moved to the second")
        assert len(first.connected) == 1
        assert client.tunnel is not None
        client.tunnel.stream.drop()  # and back: the second is now the one just lost
        await wait_until(lambda: len(first.connected) == 2 and client.tunnel_up.is_set(), "back to the first")
        assert len(second.connected) == 1
    finally:
        await client.close()
        await first.server.close()
        await second.server.close()
        await asyncio.sleep(0)
