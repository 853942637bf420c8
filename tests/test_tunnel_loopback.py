"""The real tunnel on loopback: TLS 1.3, mutual certificates, refusals and bad input."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from collections.abc import AsyncIterator

import pytest

from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelPeer, TunnelServer
from stc_client.config import ClientConfig, IdentitySettings, ServerSettings
from stc_client.tunnel_client import ClientTunnel, TunnelRefused, open_tunnel
from stc_wire.framing import HEADER, FrameType, encode_frame
from stc_wire.messages import Hello, Message, Pong, SipMessage, encode_message
from stc_wire.stream import CloseInfo
from tests.certs import CertFiles, TestPki, make_test_pki

SERVER_LOG = "stc_asterisk.tunnel_server"


class EchoSession:
    """Sends every SIP frame back: lets a test prove a tunnel still works."""

    def __init__(self, peer: TunnelPeer) -> None:
        self.peer = peer

    async def on_message(self, message: Message) -> None:
        if isinstance(message, SipMessage):
            await self.peer.send(SipMessage(b"echo:" + message.data))

    async def on_close(self, info: CloseInfo) -> None:
        pass


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[TunnelServer]:
    settings = TunnelSettings(
        listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
        ca_bundle=pki.ca, crl=pki.crl, handshake_timeout=1.0, hello_timeout=1.0,
        keepalive_interval=0.5, keepalive_timeout=2.0,
    )
    srv = TunnelServer(settings, EchoSession)
    await srv.start()
    yield srv
    await srv.close()


def client_config(pki: TestPki, user: CertFiles, port: int, host: str = "127.0.0.1", name: str = "localhost") -> ClientConfig:
    return ClientConfig(
        server=ServerSettings(host=host, port=port, name=name, connect_timeout=3.0, keepalive_interval=0.5, keepalive_timeout=2.0),
        identity=IdentitySettings(cert=user.cert, key=user.key, ca_bundle=pki.ca),
    )


async def echo_round_trip(tunnel: ClientTunnel, payload: bytes) -> bytes:
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_message(message: Message) -> None:
        if isinstance(message, SipMessage) and not got.done():
            got.set_result(message.data)

    runner = asyncio.create_task(tunnel.run(on_message))
    await tunnel.send(SipMessage(payload))
    try:
        async with asyncio.timeout(3):
            return await got
    finally:
        runner.cancel()


async def test_good_client_connects_and_sees_server_identity(pki: TestPki, server: TunnelServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    tunnel = await open_tunnel(client_config(pki, pki.users["alice"], server.port))
    assert "localhost" in tunnel.server_identity.subject or tunnel.server_identity.display_name
    assert tunnel.own_identity is not None and tunnel.own_identity["display_name"] == "Alice"
    assert await echo_round_trip(tunnel, b"OPTIONS") == b"echo:OPTIONS"
    [peer] = server.peers.values()
    assert peer.identity.display_name == "Alice"
    connected = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG and "client connected" in r.getMessage()]
    assert connected and peer.identity.fingerprint_sha256 in connected[0] and peer.identity.subject in connected[0]
    await tunnel.close()


async def test_unicode_name_survives_the_tunnel(pki: TestPki, server: TunnelServer) -> None:
    tunnel = await open_tunnel(client_config(pki, pki.users["zoe"], server.port))
    assert tunnel.own_identity is not None and tunnel.own_identity["display_name"] == "Zoë Ålice-Øster"
    await tunnel.close()


@pytest.mark.parametrize(
    ("user", "server_reason"),
    [
        ("other_ca", "unable to get local issuer certificate"),
        ("expired", "certificate has expired"),
        ("not_yet_valid", "certificate is not yet valid"),
        ("revoked", "certificate revoked"),
        ("no_client_auth", "unsuitable certificate purpose"),
    ],
)
async def test_bad_client_certificates_are_refused(pki: TestPki, server: TunnelServer, caplog: pytest.LogCaptureFixture,
                                                   user: str, server_reason: str) -> None:
    with pytest.raises(TunnelRefused) as err:
        await open_tunnel(client_config(pki, pki.users[user], server.port))
    assert err.value.reason == "refused-by-server"
    assert "refused this client's certificate" in str(err.value)
    await wait_for_log(caplog, server_reason)
    assert not server.peers


async def test_client_without_certificate_is_refused(pki: TestPki, server: TunnelServer, caplog: pytest.LogCaptureFixture) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx, server_hostname="localhost")
    writer.write(encode_message(Hello((1,))))
    with pytest.raises((ssl.SSLError, ConnectionError)) as err:
        async with asyncio.timeout(3):
            data = await reader.read(100)
            assert data == b""  # EOF is the other acceptable refusal
            raise ConnectionError("closed")
    writer.close()
    await wait_for_log(caplog, "peer did not return a certificate")
    assert err.value is not None


async def test_client_refuses_server_naming_another_host(pki: TestPki, caplog: pytest.LogCaptureFixture) -> None:
    settings = TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.wrong_host_server.cert,
                              key=pki.wrong_host_server.key, ca_bundle=pki.ca, crl=pki.crl, handshake_timeout=1.0)
    srv = TunnelServer(settings)
    await srv.start()
    try:
        with pytest.raises(TunnelRefused) as err:
            await open_tunnel(client_config(pki, pki.users["alice"], srv.port, name="localhost"))
        assert err.value.reason == "server-certificate-rejected"
        assert "localhost" in str(err.value)
    finally:
        await srv.close()


async def test_unreachable_server_is_a_clear_refusal(pki: TestPki) -> None:
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(TunnelRefused) as err:
        await open_tunnel(client_config(pki, pki.users["alice"], port))
    assert err.value.reason == "server-unreachable"


async def wait_for_log(caplog: pytest.LogCaptureFixture, needle: str, timeout: float = 3.0) -> str:
    async with asyncio.timeout(timeout):
        while True:
            for record in caplog.records:
                if needle in record.getMessage():
                    return record.getMessage()
            await asyncio.sleep(0.02)


async def raw_tls(pki: TestPki, port: int, user: str = "bob") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki.ca))
    ctx.load_cert_chain(pki.users[user].cert, pki.users[user].key)
    return await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")


async def read_until_eof(reader: asyncio.StreamReader, timeout: float) -> bytes:
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(4096):
            data += chunk
    return data


BAD_INPUTS = {
    "garbage-instead-of-tls": "tls-handshake-failed",
    "silent-client": "handshake-timeout",
    "oversized-frame": "oversized-frame",
    "unknown-frame": "unknown-frame",
    "truncated-frame": "truncated-frame",
    "no-hello": "hello-timeout",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_closes_that_connection_only(pki: TestPki, server: TunnelServer, caplog: pytest.LogCaptureFixture, case: str) -> None:
    caplog.set_level(logging.DEBUG)
    good = await open_tunnel(client_config(pki, pki.users["alice"], server.port))
    pongs: list[Message] = []

    async def on_message(message: Message) -> None:
        pongs.append(message)

    good_runner = asyncio.create_task(good.run(on_message))
    loop = asyncio.get_running_loop()
    started = loop.time()
    if case in ("garbage-instead-of-tls", "silent-client"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        if case == "garbage-instead-of-tls":
            writer.write(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
    else:
        reader, writer = await raw_tls(pki, server.port)
        hello = encode_message(Hello((1,)))
        if case == "oversized-frame":
            writer.write(hello + HEADER.pack(FrameType.SIP, 10 * 1024 * 1024))
        elif case == "unknown-frame":
            writer.write(hello + b"\x99\x00\x00\x00\x01x")
        elif case == "truncated-frame":
            writer.write(hello + encode_frame(FrameType.SIP, b"INVITE sip:x SIP/2.0\r\n")[:12])
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write_eof() if writer.can_write_eof() else writer.close()
    await writer.drain()
    # Meanwhile the good client keeps working.
    for i in range(3):
        await good.send(SipMessage(f"ping {i}".encode()))
    try:
        await read_until_eof(reader, 5.0)
    except (ssl.SSLError, ConnectionError):
        pass
    elapsed = loop.time() - started
    assert elapsed < 3.0, f"connection not closed in bounded time ({elapsed:.1f} s)"
    await wait_for_log(caplog, BAD_INPUTS[case])
    writer.close()
    async with asyncio.timeout(3):
        while len([m for m in pongs if isinstance(m, SipMessage)]) < 3:
            await asyncio.sleep(0.02)
    assert [m.data for m in pongs if isinstance(m, SipMessage)] == [b"echo:ping 0", b"echo:ping 1", b"echo:ping 2"]
    assert good.stream.closed is None
    assert len(server.peers) == 1
    good_runner.cancel()
    await good.close()


async def test_keepalive_keeps_an_idle_tunnel_and_drops_a_dead_one(pki: TestPki, server: TunnelServer, caplog: pytest.LogCaptureFixture) -> None:
    good = await open_tunnel(client_config(pki, pki.users["alice"], server.port))
    seen: list[Message] = []

    async def on_message(message: Message) -> None:
        seen.append(message)

    runner = asyncio.create_task(good.run(on_message))
    await asyncio.sleep(2.5)  # longer than keepalive_timeout: pings keep it alive
    assert any(isinstance(m, Pong) for m in seen)
    assert len(server.peers) == 1 and good.stream.closed is None
    runner.cancel()
    # A peer that HELLOs and then says nothing at all (no PING either) is dropped.
    reader, writer = await raw_tls(pki, server.port, "carol")
    writer.write(encode_message(Hello((1,))))
    await writer.drain()
    await wait_for_log(caplog, "keepalive-timeout", timeout=5.0)
    writer.close()
    await good.close()


async def test_revocation_closes_a_tunnel_that_is_already_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from stc_pki.pki import CertificateAuthority, crl_pem

    own = make_test_pki(tmp_path / "pki")  # this test rewrites the CRL: a PKI of its own
    settings = TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=own.server.cert, key=own.server.key,
                              ca_bundle=own.ca, crl=own.crl, keepalive_interval=0.5, keepalive_timeout=2.0,
                              trust_recheck_interval=0.2)
    srv = TunnelServer(settings, EchoSession)
    await srv.start()
    try:
        alice = await open_tunnel(client_config(own, own.users["alice"], srv.port))
        bob = await open_tunnel(client_config(own, own.users["bob"], srv.port))
        runners = [asyncio.create_task(t.run(lambda m: asyncio.sleep(0))) for t in (alice, bob)]
        alice_cert = x509.load_pem_x509_certificate(own.users["alice"].cert.read_bytes())
        ca = CertificateAuthority.from_existing(x509.load_pem_x509_certificate(own.ca.read_bytes()),
                                                load_pem_private_key(own.ca_key.read_bytes(), None))  # type: ignore[arg-type]
        now = datetime.now(timezone.utc)
        crl = ca.issue_crl([(alice_cert.serial_number, now - timedelta(seconds=1))], now=now - timedelta(seconds=1), crl_number=2)
        own.crl.write_bytes(crl_pem(crl))
        async with asyncio.timeout(5):
            info = await runners[0]
        assert "revoked" in info.reason and info.by_peer
        await wait_for_log(caplog, "closing the tunnel of")
        async with asyncio.timeout(3):
            while len(srv.peers) != 1:
                await asyncio.sleep(0.02)
        assert bob.stream.closed is None and [p.identity.display_name for p in srv.peers.values()] == ["Bob"]
        with pytest.raises(TunnelRefused) as err:  # and alice cannot come back
            await open_tunnel(client_config(own, own.users["alice"], srv.port))
        assert err.value.reason == "refused-by-server"
        runners[1].cancel()
        await bob.close()
    finally:
        await srv.close()
