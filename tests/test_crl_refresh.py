"""A CRL from its distribution point: fetched over HTTP from a local test server, refreshed, and a
revocation published there closes that user's tunnel; an unreachable URL is a warning and a metric."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from prometheus_client.parser import text_string_to_metric_families

from stack import WAN_HOST, Stack, client_config, free_tcp_port, server_config, wait_until
from stc_asterisk.app import ServerApp
from stc_asterisk.trust import in_grace
from stc_client.app import ClientApp
from stc_pki.pki import CertificateAuthority, crl_pem
from stc_wire.tls import client_context
from tests.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class DistributionPoint:
    """A CRL served at `url`; `body` is what the next GET returns, `hits` how many GETs came."""

    url: str
    body: bytes
    runner: web.AppRunner
    hits: int = 0


def issue_crl(pki: TestPki, revoked_users: tuple[str, ...], *, age: timedelta = timedelta(seconds=1),
              lifetime: timedelta = timedelta(days=7)) -> bytes:
    """A CRL from the test CA, issued `age` ago, valid for `lifetime` from then."""
    ca = CertificateAuthority(x509.load_pem_x509_certificate(pki.ca.read_bytes()),
                              load_pem_private_key(pki.ca_key.read_bytes(), None))  # type: ignore[arg-type]
    now = datetime.now(timezone.utc)
    serials = [(x509.load_pem_x509_certificate(pki.users[u].cert.read_bytes()).serial_number, now - age)
               for u in revoked_users]
    return crl_pem(ca.issue_crl(serials, now=now - age, lifetime=lifetime))


@pytest.fixture
async def distribution_point(pki: TestPki) -> AsyncIterator[DistributionPoint]:
    point = DistributionPoint("", issue_crl(pki, ("revoked",)), web.AppRunner(web.Application()))

    async def serve(request: web.Request) -> web.Response:
        point.hits += 1
        return web.Response(body=point.body, content_type="application/pkix-crl")

    point.runner.app.router.add_get("/ca.crl", serve)
    await point.runner.setup()
    site = web.TCPSite(point.runner, "127.0.0.1", 0)
    await site.start()
    point.url = f"http://127.0.0.1:{point.runner.addresses[0][1]}/ca.crl"
    yield point
    await point.runner.cleanup()


async def metric(app: ServerApp, name: str) -> float:
    assert app.admin is not None
    async with aiohttp.ClientSession() as http, http.get(app.admin.url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no {name} in /metrics")


async def test_a_revocation_published_at_the_url_closes_that_tunnel(pki: TestPki, tmp_path: Path,
                                                                  distribution_point: DistributionPoint,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    config = server_config(pki)
    config.asterisk.watch_conferences = False
    config.tunnel.crl = tmp_path / "cache" / "crl.pem"  # nothing there yet: fetched at start
    config.tunnel.crl_url = distribution_point.url
    config.tunnel.crl_refresh_interval = 0.5
    config.audit.path = tmp_path / "audit.jsonl"
    app = ServerApp(config)
    await app.start()
    stack = Stack(pki, app)
    try:
        assert config.tunnel.crl.exists() and distribution_point.hits >= 1
        alice = await stack.add_client("alice")
        await stack.add_client("bob")
        assert len(app.tunnels.peers) == 2  # type: ignore[union-attr]
        assert await metric(app, "stc_crl_refresh_failing") == 0

        distribution_point.body = issue_crl(pki, ("revoked", "alice"))
        await wait_until(lambda: alice.tunnel is None or len(app.tunnels.peers) == 1, 5,  # type: ignore[union-attr]
                         "alice's tunnel closed within the refresh interval")
        await wait_until(lambda: len(app.tunnels.peers) == 1, 5, "one tunnel left")  # type: ignore[union-attr]
        [left] = app.tunnels.peers.values()  # type: ignore[union-attr]
        assert left.identity.display_name == "Bob"
        assert '"reason":"revoked"' in config.audit.path.read_text() and "tunnel-ended" in config.audit.path.read_text()

        # The distribution point goes away: a warning and a metric, long before failing closed.
        caplog.set_level(logging.WARNING)
        await distribution_point.runner.cleanup()
        await wait_until(lambda: app.tunnels.crl_refresh_error is not None, 5, "the failed refresh noticed")  # type: ignore[union-attr]
        assert await metric(app, "stc_crl_refresh_failing") == 1
        assert await metric(app, "stc_crl_refresh_failures_total") >= 1
        assert await metric(app, "stc_crl_failed_closed") == 0
        assert any("CRL refresh failed" in r.getMessage() for r in caplog.records)
        assert len(app.tunnels.peers) == 1  # type: ignore[union-attr]  # bob is not punished for it
    finally:
        for client in stack.clients.values():
            await client.close()
        await app.close()


def test_the_grace_after_next_update_is_the_configured_time() -> None:
    next_update = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)
    assert not in_grace(next_update, next_update - timedelta(seconds=1), 3600)  # still current
    assert in_grace(next_update, next_update + timedelta(seconds=10), 3600)
    assert not in_grace(next_update, next_update + timedelta(seconds=3601), 3600)  # failed closed
    assert not in_grace(next_update, next_update + timedelta(seconds=1), 0)  # default: at nextUpdate


async def tls_attempt(pki: TestPki, port: int, user: str) -> None:
    context = client_context(pki.users[user].cert, pki.users[user].key, pki.ca)
    try:
        reader, writer = await asyncio.open_connection(WAN_HOST, port, ssl=context, server_hostname="localhost")
        async with asyncio.timeout(10):
            await reader.read()
        writer.close()
    except (ssl.SSLError, ConnectionError):
        pass


@pytest.mark.parametrize("grace", [0.0, 7200.0])
async def test_past_next_update_the_configured_grace_decides(pki: TestPki, tmp_path: Path, grace: float) -> None:
    """A CRL whose nextUpdate passed an hour ago: with two hours of grace it still applies (revoked
    refused, others admitted); without, the server has failed closed and says so."""
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(pki, ("revoked",), age=timedelta(hours=2), lifetime=timedelta(hours=1)))
    config = server_config(pki)
    config.asterisk.watch_conferences = False
    config.tunnel.crl = crl
    config.tunnel.crl_fail_closed_after = grace
    app = ServerApp(config)
    await app.start()
    stack = Stack(pki, app)
    tunnels = app.tunnels
    assert tunnels is not None
    try:
        await tls_attempt(pki, stack.server_port, "revoked")
        await wait_until(lambda: sum(tunnels.refused.values()) == 1, 5, "the revoked user refused")
        if grace:
            await stack.add_client("alice")
            assert "revoked" in tunnels.refused
            assert await metric(app, "stc_crl_failed_closed") == 0
        else:
            await tls_attempt(pki, stack.server_port, "alice")
            await wait_until(lambda: sum(tunnels.refused.values()) == 2, 5, "alice refused too")
            assert not tunnels.peers
            assert await metric(app, "stc_crl_failed_closed") == 1
            assert app.admin is not None
            async with aiohttp.ClientSession() as http, http.get(app.admin.url + "/readyz") as response:
                assert response.status == 503 and "FAIL CRL current" in await response.text()
    finally:
        for client in stack.clients.values():
            await client.close()
        await app.close()


async def test_sighup_reloads_the_crl_and_ends_a_revoked_tunnel(pki: TestPki, tmp_path: Path) -> None:
    """The real program: `stc-server --config`, a CRL file changed, SIGHUP (no periodic recheck would
    see it within the test), and the revoked user's tunnel is closed while the other stays."""
    crl = tmp_path / "crl.pem"
    crl.write_bytes(issue_crl(pki, ("revoked",)))
    port = free_tcp_port()
    config = tmp_path / "server.toml"
    config.write_text(f"""[tunnel]
listen_host = "{WAN_HOST}"
listen_port = {port}
cert = "{pki.server.cert}"
key = "{pki.server.key}"
ca_bundle = "{pki.ca}"
crl = "{crl}"
trust_recheck_interval = 3600

[asterisk]
watch_conferences = false

[admin]
port = 0
""")
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "stc_asterisk.cli", "--config", str(config),
                                                  stderr=asyncio.subprocess.PIPE)
    clients = []
    drain: asyncio.Future[bytes] | None = None
    try:
        assert server.stderr is not None
        async with asyncio.timeout(20):
            while b"tunnel listening" not in await server.stderr.readline():
                pass
        drain = asyncio.ensure_future(server.stderr.read())  # a full pipe must not block the server
        for user in ("alice", "bob"):
            client = ClientApp(client_config(pki, user, port))
            clients.append(client)
            await client.start()
            async with asyncio.timeout(10):
                await client.tunnel_up.wait()
        alice, bob = clients
        crl.write_bytes(issue_crl(pki, ("revoked", "alice")))
        server.send_signal(signal.SIGHUP)
        await wait_until(lambda: not alice.tunnel_up.is_set(), 10, "alice's tunnel closed after SIGHUP")
        assert bob.tunnel_up.is_set()
    finally:
        for client in clients:
            await client.close()
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                await server.wait()
        if drain is not None:
            await drain
