"""The client checks the server's certificate against a CRL when one is configured ([identity] crl):
a revoked server is refused before the client shows its own certificate, and the window's red
light says why. A real TunnelServer and ClientApp on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelPeer, TunnelServer
from stc_client import tunnel_client
from stc_client.app import ClientApp
from stc_client.config import ClientConfig, IdentitySettings, ServerSettings, SipSettings
from stc_client.tunnel_client import TunnelRefused, open_tunnel
from stc_pki.pki import CertificateAuthority, crl_pem
from stc_wire.messages import Message
from stc_wire.stream import CloseInfo
from tests.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def write_crl(pki: TestPki, path: Path, *, revoke_server: bool, age: timedelta = timedelta(minutes=1),
              lifetime: timedelta = timedelta(days=7)) -> Path:
    ca = CertificateAuthority.from_existing(x509.load_pem_x509_certificate(pki.ca.read_bytes()),
                                            load_pem_private_key(pki.ca_key.read_bytes(), None))  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    server = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    revoked = [(server.serial_number, now - age)] if revoke_server else []
    path.write_bytes(crl_pem(ca.issue_crl(revoked, now=now - age, lifetime=lifetime, crl_number=7)))
    return path


class Silent:
    async def on_message(self, message: Message) -> None:
        pass

    async def on_close(self, info: CloseInfo) -> None:
        pass


class CountingServer:
    def __init__(self, pki: TestPki) -> None:
        self.sessions: list[TunnelPeer] = []
        self.server = TunnelServer(
            TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                           ca_bundle=pki.ca, crl=pki.crl, keepalive_interval=1.0, keepalive_timeout=5.0),
            self._session,
        )

    def _session(self, peer: TunnelPeer) -> Silent:
        self.sessions.append(peer)
        return Silent()


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[CountingServer]:
    srv = CountingServer(pki)
    await srv.server.start()
    try:
        yield srv
    finally:
        await srv.server.close()


def config(pki: TestPki, port: int, crl: Path | None) -> ClientConfig:
    return ClientConfig(
        server=ServerSettings(host="127.0.0.1", port=port, name="localhost", connect_timeout=3.0,
                              keepalive_interval=1.0, keepalive_timeout=5.0, reconnect_max_delay=2.0),
        identity=IdentitySettings(cert=pki.users["alice"].cert, key=pki.users["alice"].key, ca_bundle=pki.ca, crl=crl),
        sip=SipSettings(listen_host="127.0.0.1", listen_port=0),
    )


async def test_a_current_crl_without_the_server_lets_the_tunnel_up(pki: TestPki, server: CountingServer) -> None:
    tunnel = await open_tunnel(config(pki, server.server.port, pki.crl))  # the test PKI's CRL lists a user only
    try:
        assert tunnel.server_identity.subject == x509.load_pem_x509_certificate(pki.server.cert.read_bytes()).subject.rfc4514_string()
    finally:
        await tunnel.close()


async def test_a_revoked_server_is_refused_before_the_client_shows_itself(
        pki: TestPki, server: CountingServer, tmp_path: Path) -> None:
    crl = write_crl(pki, tmp_path / "server-revoked.pem", revoke_server=True)
    with pytest.raises(TunnelRefused) as err:
        await open_tunnel(config(pki, server.server.port, crl))
    assert err.value.reason == "server-certificate-revoked"
    assert "revoked" in str(err.value) and str(crl) in str(err.value)
    assert server.sessions == [] and server.server.peers == {}
    # Without the CRL the same server is accepted: the refusal is the CRL's doing.
    tunnel = await open_tunnel(config(pki, server.server.port, None))
    await tunnel.close()


async def test_the_check_after_the_handshake_refuses_a_revoked_server_too(
        pki: TestPki, server: CountingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second layer (stc_wire.identity) on its own: a TLS context that does not look at the CRL."""
    real = tunnel_client.client_context

    def without_crl(*args: object, **kwargs: object) -> object:
        kwargs["crl"] = None
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tunnel_client, "client_context", without_crl)
    crl = write_crl(pki, tmp_path / "server-revoked.pem", revoke_server=True)
    with pytest.raises(TunnelRefused) as err:
        await open_tunnel(config(pki, server.server.port, crl))
    assert err.value.reason == "server-certificate-revoked"
    assert "server certificate refused: certificate of" in str(err.value) and "was revoked on" in str(err.value)


async def test_a_stale_or_broken_crl_refuses_every_server(pki: TestPki, server: CountingServer, tmp_path: Path) -> None:
    stale = write_crl(pki, tmp_path / "stale.pem", revoke_server=False, age=timedelta(days=2), lifetime=timedelta(days=1))
    with pytest.raises(TunnelRefused) as err:
        await open_tunnel(config(pki, server.server.port, stale))
    assert err.value.reason == "server-certificate-rejected" and "CRL has expired" in str(err.value)
    broken = tmp_path / "broken.pem"
    broken.write_text("not a CRL\n")
    with pytest.raises(TunnelRefused) as err:
        await open_tunnel(config(pki, server.server.port, broken))
    assert err.value.reason == "bad-local-settings" and str(broken) in str(err.value)
    assert server.sessions == []


async def test_the_window_shows_why_the_revoked_server_is_refused(
        pki: TestPki, server: CountingServer, tmp_path: Path) -> None:
    crl = write_crl(pki, tmp_path / "server-revoked.pem", revoke_server=True)
    client = ClientApp(config(pki, server.server.port, crl))
    await client.start()
    try:
        async with asyncio.timeout(10):
            while client.state.snapshot()["reason_code"] != "server-certificate-revoked":
                await asyncio.sleep(0.02)
        snapshot = client.state.snapshot()
        assert snapshot["light"] == "red" and snapshot["reason_label"] == "server certificate REVOKED"
        assert "revoked" in snapshot["reason"] and not client.tunnel_up.is_set()
        assert server.sessions == []
    finally:
        await client.close()
