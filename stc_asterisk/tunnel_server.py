"""The server end of the tunnels: TLS 1.3 with a required client certificate.

Each accepted TCP connection is upgraded to TLS by hand (not by
`start_server(ssl=...)`) so that a failed handshake reaches us with its reason
and a time limit, instead of vanishing inside asyncio. A refused peer is logged
with the reason; an accepted one with its subject and fingerprint.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import itertools
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Protocol

from cryptography import x509

from stc_wire.identity import CertificateRejected, PeerIdentity, TrustAnchors, check_client_certificate, verify_crl
from stc_wire.messages import CloseCode, Hello, Message
from stc_wire.stream import CloseInfo, TunnelStream
from stc_wire.tls import describe_ssl_error, server_context
from stc_wire.tunnel import Role, TunnelConnection, TunnelError

from .audit import AuditSink, NoAudit
from .config import TunnelSettings
from .crl import CrlFetcher, CrlFetchError
from .limits import RefusalLog, SourceGate
from .supervise import supervise
from .trust import TrustStatus, in_grace

log = logging.getLogger(__name__)
AGENT = "stc-server/0.1"


class ClientSession(Protocol):
    """What the application does with one authenticated tunnel."""

    async def on_message(self, message: Message) -> None: ...

    async def on_close(self, info: CloseInfo) -> None: ...


@dataclass
class TunnelPeer:
    id: str
    address: tuple[str, int]
    identity: PeerIdentity
    stream: TunnelStream
    certificate_der: bytes = b""
    connected_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    async def send(self, message: Message) -> None:
        self.stream.send_nowait(message)

    def push(self, message: Message) -> None:
        """Queue `message` without waiting on the peer (TunnelError if its tunnel is closed)."""
        self.stream.send_nowait(message)


class _NullSession:
    async def on_message(self, message: Message) -> None:
        log.debug("no handler for %s", type(message).__name__)

    async def on_close(self, info: CloseInfo) -> None:
        pass


class _TrustCache:
    """The SSL context and trust anchors, reloaded when the CA bundle or CRL changes (a revocation takes effect for the next connection)."""

    def __init__(self, settings: TunnelSettings) -> None:
        self._settings = settings
        self._stamp: tuple[float, float] | None = None
        self.context: ssl.SSLContext
        self.context_without_crl: ssl.SSLContext  # past nextUpdate, in the grace crl_fail_closed_after gives
        self.trust: TrustAnchors
        self.loaded_at = 0.0
        self.certificate_not_after: datetime
        self.reload_if_changed()

    def in_grace(self, now: datetime) -> bool:
        crl = self.trust.crl
        return crl is not None and in_grace(crl.next_update_utc, now, self._settings.crl_fail_closed_after)

    def check(self, der: bytes | None, now: datetime) -> PeerIdentity:
        """check_client_certificate, except in the grace past the CRL's nextUpdate: then the CRL
        (still signed by a trusted CA) is applied as it was at its nextUpdate."""
        crl = self.trust.crl
        if crl is None or crl.next_update_utc is None or not self.in_grace(now):
            return check_client_certificate(der, self.trust, now)
        identity = check_client_certificate(der, TrustAnchors(self.trust.cas, None), now)
        verify_crl(crl, self.trust.cas, crl.next_update_utc - timedelta(microseconds=1))
        entry = crl.get_revoked_certificate_by_serial_number(identity.serial)
        if entry is not None:
            raise CertificateRejected("revoked", f"certificate of {identity.display_name!r} was revoked "
                                                 f"on {entry.revocation_date_utc:%Y-%m-%d %H:%M}Z")
        return identity

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """True if the CA bundle or CRL changed on disk (or `force`: the certificate too) and was loaded again."""
        s = self._settings
        stamp = (s.ca_bundle.stat().st_mtime_ns, s.crl.stat().st_mtime_ns)
        if stamp == self._stamp and not force:
            return False
        self.context = server_context(s.cert, s.key, s.ca_bundle, s.crl)
        self.context_without_crl = server_context(s.cert, s.key, s.ca_bundle, None)
        self.certificate_not_after = x509.load_pem_x509_certificate(s.cert.read_bytes()).not_valid_after_utc
        self.trust = TrustAnchors.load(s.ca_bundle, s.crl)
        self._stamp = stamp
        self.loaded_at = time.time()
        log.info("trust anchors loaded: CA bundle %s, CRL %s", s.ca_bundle, s.crl)
        return True


def _certificate_fields(der: bytes | None) -> dict[str, str]:
    """Subject and fingerprint of a refused client's certificate, when it sent one that parses."""
    if not der:
        return {}
    fields = {"fingerprint": hashlib.sha256(der).hexdigest()}
    try:
        fields["subject"] = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        pass
    return fields


class TunnelServer:
    def __init__(
        self,
        settings: TunnelSettings,
        session_factory: Callable[[TunnelPeer], ClientSession | Awaitable[ClientSession]] | None = None,
        *,
        capabilities: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.peers: dict[str, TunnelPeer] = {}
        self.refused: Counter[str] = Counter()
        self.accepted = 0
        self.audit: AuditSink = NoAudit()
        self._session_factory = session_factory or (lambda peer: _NullSession())
        self._capabilities = capabilities
        self._trust = _TrustCache(settings)  # fails at start on a bad file, not at the first client
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._recheck: asyncio.Task[None] | None = None
        self._handshakes = SourceGate(settings.pending_handshakes, settings.pending_handshakes_per_source)
        self._refusals = RefusalLog(log)
        self._fetcher = CrlFetcher(settings.crl_url, settings.ca_bundle, settings.crl) if settings.crl_url else None
        self._crl_task: asyncio.Task[None] | None = None
        self._refresh_now = asyncio.Event()
        self.crl_refresh_error: str | None = None
        self.crl_refresh_failures = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def trust_status(self) -> TrustStatus:
        crl = self._trust.trust.crl
        return TrustStatus(self._trust.certificate_not_after, crl.next_update_utc if crl else None,
                           crl.last_update_utc if crl else None, self._trust.loaded_at, self.crl_refresh_error,
                           self.crl_refresh_failures, self.settings.crl_fail_closed_after)

    async def reload(self) -> None:
        """SIGHUP: fetch the CRL now (from its URL), load certificate, key, CA bundle and CRL again, and
        check every connected client against them. Tunnels still acceptable stay up, calls and all."""
        if self._fetcher is not None:
            await self._refresh_crl_once()
        try:
            self._trust.reload_if_changed(force=True)
        except Exception as exc:
            log.error("reload: cannot load the certificate, CA bundle or CRL (keeping the last good ones): %s", exc)
            return
        log.info("reload: certificate, CA bundle and CRL loaded again")
        await self.recheck_peers()

    async def _refresh_crl_once(self) -> float:
        """Fetch the CRL; the delay until the next refresh."""
        assert self._fetcher is not None
        interval = self.settings.crl_refresh_interval
        try:
            crl = await self._fetcher.fetch()
        except CrlFetchError as exc:
            self.crl_refresh_failures += 1
            self.crl_refresh_error = str(exc)
            closes = self.trust_status().fail_closed_at()
            until = f"{datetime.fromtimestamp(closes, timezone.utc):%Y-%m-%d %H:%M:%S}Z" if closes else "never"
            log.warning("CRL refresh failed: %s; the CRL in use is still applied until %s, new clients are "
                        "refused from then (fail closed)", exc, until)
            return min(interval, 30.0)
        if self.crl_refresh_error is not None:
            log.info("CRL refreshed from %s again", self._fetcher.url)
        self.crl_refresh_error = None
        next_update = crl.next_update_utc
        if next_update is not None:
            left = (next_update - datetime.now(timezone.utc)).total_seconds() - self.settings.crl_refresh_margin
            interval = min(interval, max(1.0, left))
        return interval

    async def _refresh_crl(self) -> None:
        while True:
            delay = await self._refresh_crl_once()
            try:
                if self._trust.reload_if_changed():
                    await self.recheck_peers()
            except Exception as exc:
                log.error("cannot load the refreshed CRL: %s", exc)
            self._refresh_now.clear()
            try:
                await asyncio.wait_for(self._refresh_now.wait(), delay)
            except TimeoutError:
                pass

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.settings.listen_host, self.settings.listen_port,
                                                  reuse_port=self.settings.reuse_port or None)
        self._recheck = asyncio.create_task(supervise("the tunnels' certificate recheck", self._recheck_connected, log))
        if self._fetcher is not None:
            self._crl_task = asyncio.create_task(supervise("the CRL refresh", self._refresh_crl, log))
        log.info("tunnel listening on %s:%d (TLS 1.3, client certificate required)", self.settings.listen_host, self.port)

    async def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        if self._crl_task is not None:
            self._crl_task.cancel()
        if self._server is not None:
            self._server.close()
        # At once: a peer that does not take its CLOSE holds up only itself (2 s at most).
        await asyncio.gather(*(peer.stream.close(CloseCode.SERVER_SHUTDOWN, "server shutting down")
                               for peer in list(self.peers.values())))
        if self._tasks:  # let sessions hang up their calls before anything is cancelled
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn_id = f"t{next(self._ids)}"
        address = writer.get_extra_info("peername")[:2]
        clog = logging.LoggerAdapter(log, {"conn": conn_id})
        try:
            await self._serve(conn_id, address, reader, writer, clog)
        except asyncio.CancelledError:
            # Server shutdown. Ending normally keeps 3.11's stream callback from logging
            # the cancellation as an error.
            pass
        except Exception:  # one tunnel's bug must not take the server down
            clog.exception("[%s] tunnel from %s:%d failed", conn_id, *address)
        finally:
            self._tasks.discard(task)
            if not writer.is_closing():
                writer.close()

    async def _recheck_connected(self) -> None:
        """A tunnel lives only while its certificate would still be accepted: when the CRL or CA
        bundle changes, and as certificates expire, every connected client is checked again."""
        while True:
            await asyncio.sleep(self.settings.trust_recheck_interval)
            try:
                self._trust.reload_if_changed()
            except Exception as exc:  # a broken file on disk: keep the last good trust, say so
                log.error("cannot reload the CA bundle or CRL: %s", exc)
                continue
            await self.recheck_peers()

    async def recheck_peers(self) -> int:
        """Close every tunnel whose certificate is no longer acceptable; returns how many."""
        now = datetime.now(timezone.utc)
        closed = 0
        for peer in list(self.peers.values()):
            try:
                self._trust.check(peer.certificate_der, now)
            except CertificateRejected as exc:
                closed += 1
                log.warning("[%s] closing the tunnel of %s: %s (%s)", peer.id, peer.identity.subject, exc.reason, exc)
                self.audit.record("tunnel-ended", conn=peer.id, subject=peer.identity.subject,
                                  fingerprint=peer.identity.fingerprint_sha256, reason=exc.reason)
                await peer.stream.close(CloseCode.POLICY, f"certificate no longer accepted: {exc.reason}")
        return closed

    def _refuse(self, conn_id: str, address: tuple[str, int], reason: str, detail: str, der: bytes | None = None) -> None:
        self.refused[reason] += 1
        logged = self._refusals.refuse(reason, "[%s] refused %s:%d: %s (%s)", conn_id, address[0], address[1], reason, detail)
        # A refusal with a certificate is always on the audit trail; one without (a flood of bare TCP or
        # failed handshakes) as often as the log line, so nobody can fill the disk for free.
        if der or logged:
            self.audit.record("tunnel-refused", conn=conn_id, address=address[0], reason=reason, detail=detail[:300],
                              **_certificate_fields(der))

    async def _serve(self, conn_id: str, address: tuple[str, int], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, clog: logging.LoggerAdapter[logging.Logger]) -> None:
        if len(self.peers) + self._handshakes.total >= self.settings.max_clients:
            self._refuse(conn_id, address, "server-full", f"{self.settings.max_clients} clients connected or connecting")
            writer.transport.abort()
            return
        busy = self._handshakes.enter(address[0])
        if busy is not None:
            self._refuse(conn_id, address, "too-many-handshakes", busy)
            writer.transport.abort()
            return
        try:
            opened = await self._open(conn_id, address, writer, reader, clog)
        finally:
            self._handshakes.leave(address[0])
        if opened is not None:
            await self._run(conn_id, address, *opened)

    async def _open(self, conn_id: str, address: tuple[str, int], writer: asyncio.StreamWriter,
                    reader: asyncio.StreamReader, clog: logging.LoggerAdapter[logging.Logger]
                    ) -> tuple[PeerIdentity, TunnelStream, bytes, Hello] | None:
        """TLS and HELLO, within their deadlines: the authenticated stream, or None (refused, logged)."""
        if self.settings.socket_send_buffer:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.socket_send_buffer)
        try:
            self._trust.reload_if_changed()
        except Exception as exc:  # a broken CRL on disk: fail closed, keep serving others
            self._refuse(conn_id, address, "trust-unavailable", str(exc))
            return None
        try:
            async with asyncio.timeout(self.settings.handshake_timeout):
                now = datetime.now(timezone.utc)
                await writer.start_tls(self._trust.context_without_crl if self._trust.in_grace(now) else self._trust.context)
        except TimeoutError:
            self._refuse(conn_id, address, "handshake-timeout", f"no TLS handshake within {self.settings.handshake_timeout:g} s")
            return None
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            self._refuse(conn_id, address, "tls-handshake-failed", describe_ssl_error(exc))
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        try:
            identity = self._trust.check(der, datetime.now(timezone.utc))
        except CertificateRejected as exc:
            self._refuse(conn_id, address, exc.reason, str(exc), der)
            return None
        stream = TunnelStream(
            reader, writer,
            TunnelConnection(Role.SERVER, capabilities=self._capabilities, agent=AGENT, peer_info=identity.to_json()),
            keepalive_interval=self.settings.keepalive_interval,
            keepalive_timeout=self.settings.keepalive_timeout,
            log=clog,
            send_queue_bytes=self.settings.send_queue_bytes,
            write_timeout=self.settings.write_timeout,
        )
        try:
            hello = await stream.handshake(self.settings.hello_timeout)
        except TunnelError as exc:
            self._refuse(conn_id, address, exc.reason, f"{identity.subject}: {exc}", der)
            return None
        return identity, stream, der or b"", hello

    async def _run(self, conn_id: str, address: tuple[str, int], identity: PeerIdentity, stream: TunnelStream,
                   der: bytes, hello: Hello) -> None:
        peer = TunnelPeer(conn_id, address, identity, stream, der)
        self.accepted += 1
        self.audit.record("tunnel-accepted", conn=conn_id, address=address[0], subject=identity.subject,
                          fingerprint=identity.fingerprint_sha256)
        log.info("[%s] client connected from %s:%d: %s, SHA-256 %s, agent %r, protocol v%s",
                 conn_id, address[0], address[1], identity.subject, identity.fingerprint_sha256,
                 hello.agent, stream.connection.version)
        made = self._session_factory(peer)
        session = await made if inspect.isawaitable(made) else made
        self.peers[conn_id] = peer
        info = CloseInfo(CloseCode.INTERNAL_ERROR, "tunnel task ended", False)
        try:
            info = await stream.run(session.on_message)
        finally:
            self.peers.pop(conn_id, None)
            log.info("[%s] client %s disconnected: %s", conn_id, identity.display_name, info.reason)
            await session.on_close(info)
