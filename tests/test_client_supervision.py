"""The client's tunnel loop is supervised: an unexpected exception while serving the tunnel is logged
with its traceback, the tunnel is dropped (calls hung up, light red with the reason) and the client
reconnects. A real ClientApp against a real TunnelServer on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelPeer, TunnelServer
from stc_client.app import ClientApp
from stc_client.config import ClientConfig, IdentitySettings, ServerSettings, SipSettings
from stc_wire.messages import Message, SipMessage
from stc_wire.stream import CloseInfo
from tests.certs import TestPki, make_test_pki

OPTIONS = (b"OPTIONS sip:alice@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2;branch=z9hG4bKx\r\n"
           b"Call-ID: fault-1\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:server@stc.test>;tag=1\r\nTo: <sip:alice@stc.test>\r\n"
           b"Content-Length: 0\r\n\r\n")


class Session:
    def __init__(self, peer: TunnelPeer, closed: list[CloseInfo]) -> None:
        self.peer = peer
        self.closed = closed

    async def on_message(self, message: Message) -> None:
        pass

    async def on_close(self, info: CloseInfo) -> None:
        self.closed.append(info)


class GreetingServer:
    """Sends a SIP request down every tunnel as soon as it is up, and counts tunnels."""

    def __init__(self, pki: TestPki) -> None:
        self.connected: list[TunnelPeer] = []
        self.closed: list[CloseInfo] = []
        self.server = TunnelServer(
            TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                           ca_bundle=pki.ca, crl=pki.crl, keepalive_interval=1.0, keepalive_timeout=5.0),
            self._session,
        )

    async def _session(self, peer: TunnelPeer) -> Session:
        self.connected.append(peer)
        await peer.send(SipMessage(OPTIONS))
        return Session(peer, self.closed)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[GreetingServer]:
    srv = GreetingServer(pki)
    await srv.server.start()
    try:
        yield srv
    finally:
        await srv.server.close()


def config(pki: TestPki, port: int) -> ClientConfig:
    return ClientConfig(
        server=ServerSettings(host="127.0.0.1", port=port, name="localhost", keepalive_interval=1.0,
                              keepalive_timeout=5.0, reconnect_max_delay=2.0),
        identity=IdentitySettings(cert=pki.users["alice"].cert, key=pki.users["alice"].key, ca_bundle=pki.ca),
        sip=SipSettings(listen_host="127.0.0.1", listen_port=0),
    )


async def wait_until(predicate: object, what: str, timeout: float = 10.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_a_fault_in_a_handler_is_logged_and_the_client_reconnects(
        pki: TestPki, server: GreetingServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="stc_client")
    client = ClientApp(config(pki, server.server.port))
    real_handler = client.softphone.on_server_message
    faults = 0

    async def first_message_breaks(message: Message) -> None:
        nonlocal faults
        if faults == 0:
            faults += 1
            raise RuntimeError("forced fault in the client's SIP handler")
        await real_handler(message)

    monkeypatch.setattr(client.softphone, "on_server_message", first_message_breaks)
    await client.start()
    try:
        await wait_until(lambda: len(server.connected) >= 2 and client.tunnel_up.is_set(), "a second tunnel")
        assert client._task is not None and not client._task.done()  # the loop lives on
        assert client.faults == 1 and faults == 1
        assert client.state.snapshot()["light"] == "yellow"
        # The first tunnel was dropped by the client itself, not left half-served.
        await wait_until(lambda: len(server.closed) >= 1, "the first tunnel closed")
        assert server.closed[0].by_peer is True

        faults_logged = [r for r in caplog.records if "fault while serving the tunnel" in r.getMessage()]
        assert len(faults_logged) == 1 and faults_logged[0].levelno == logging.ERROR
        assert faults_logged[0].exc_info is not None
        traceback = logging.Formatter().formatException(faults_logged[0].exc_info)
        assert "Traceback (most recent call last)" in traceback
        assert "first_message_breaks" in traceback and "RuntimeError: forced fault in the client's SIP handler" in traceback
    finally:
        await client.close()


async def test_the_light_says_why_while_the_client_reconnects(
        pki: TestPki, server: GreetingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    client = ClientApp(config(pki, server.server.port))
    reached = asyncio.Event()

    async def always_breaks(message: Message) -> None:
        reached.set()
        raise ValueError("every message breaks this client")

    monkeypatch.setattr(client.softphone, "on_server_message", always_breaks)
    await client.start()
    try:
        await wait_until(lambda: client.faults >= 1 and client.state.snapshot()["light"] == "red", "the red light")
        snapshot = client.state.snapshot()
        assert snapshot["reason_code"] == "client-fault" and snapshot["reason_label"] == "client error"
        assert "internal error" in snapshot["reason"]
        await wait_until(lambda: client.faults >= 2, "a second attempt")  # it keeps trying
        assert client._task is not None and not client._task.done()
    finally:
        await client.close()
