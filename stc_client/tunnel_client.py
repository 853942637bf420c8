"""The client end of the tunnel: connect, authenticate both ways, HELLO.

Every way a tunnel can fail to come up is turned into a TunnelRefused with a
short reason code and a sentence a user can act on; the status light shows it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509

from stc_wire.identity import CertificateRejected, PeerIdentity, TrustAnchors, check_server_certificate
from stc_wire.messages import CloseCode, Hello, Message
from stc_wire.stream import CloseInfo, TunnelStream
from stc_wire.tls import client_context, describe_ssl_error
from stc_wire.tunnel import Role, TunnelConnection, TunnelError

from .config import ClientConfig

log = logging.getLogger(__name__)
AGENT = "stc-client/0.1"
X509_V_ERR_CERT_REVOKED = 23  # OpenSSL's verify code for a certificate on the CRL


class TunnelRefused(Exception):
    """The tunnel could not be opened. `reason`: server-unreachable, server-certificate-rejected,
    server-certificate-revoked, refused-by-server, protocol-error, tls-failed, bad-local-settings."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class ClientTunnel:
    server_identity: PeerIdentity
    # How the server saw us (from its HELLO): our own certificate identity.
    own_identity: dict[str, Any] | None
    server_hello: Hello
    stream: TunnelStream
    server_certificate: x509.Certificate

    async def send(self, message: Message) -> None:
        await self.stream.send(message)

    async def run(self, on_message: Callable[[Message], Awaitable[None]]) -> CloseInfo:
        return await self.stream.run(on_message)

    async def close(self, reason: str = "client closing") -> None:
        await self.stream.close(CloseCode.NORMAL, reason)


async def open_tunnel(config: ClientConfig, *, capabilities: tuple[str, ...] = (),
                      address: tuple[str, int] | None = None) -> ClientTunnel:
    """A tunnel to `address` (default: server.host and server.port); the certificate must name server.name."""
    server = config.server
    host, port = address or (server.host, server.port)
    ident = config.identity
    try:
        ctx = client_context(ident.cert, ident.key, ident.ca_bundle, pkcs12=ident.pkcs12,
                             pkcs12_passphrase=ident.pkcs12_passphrase, crl=ident.crl)
        trust = TrustAnchors.load(ident.ca_bundle, ident.crl)
    except Exception as exc:  # TlsSetupError, TrustAnchorsError: files that cannot be used
        raise TunnelRefused("bad-local-settings", str(exc)) from None
    try:
        async with asyncio.timeout(server.connect_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=server.expected_name,
                ssl_handshake_timeout=server.connect_timeout,
            )
    except TimeoutError:
        raise TunnelRefused("server-unreachable", f"no answer from {host}:{port} within {server.connect_timeout:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code == X509_V_ERR_CERT_REVOKED:
            raise TunnelRefused("server-certificate-revoked",
                                f"the server at {host}:{port} shows a certificate its CA has revoked "
                                f"(it is on the CRL {ident.crl}): not connecting") from None
        raise TunnelRefused("server-certificate-rejected",
                            f"the server at {host}:{port} is not trusted as {server.expected_name!r}: {describe_ssl_error(exc)}") from None
    except ssl.SSLError as exc:
        raise TunnelRefused("tls-failed", f"TLS with {host}:{port} failed: {describe_ssl_error(exc)}") from None
    except OSError as exc:
        raise TunnelRefused("server-unreachable", f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None

    ssl_object = writer.get_extra_info("ssl_object")
    server_der = ssl_object.getpeercert(binary_form=True)
    try:
        server_identity = check_server_certificate(server_der, trust, server.expected_name, datetime.now(timezone.utc))
    except CertificateRejected as exc:
        writer.close()
        reason = "server-certificate-revoked" if exc.reason == "revoked" else "server-certificate-rejected"
        raise TunnelRefused(reason, f"server certificate refused: {exc}") from None

    stream = TunnelStream(
        reader, writer, TunnelConnection(Role.CLIENT, capabilities=capabilities, agent=AGENT),
        keepalive_interval=server.keepalive_interval, keepalive_timeout=server.keepalive_timeout, log=log,
    )
    try:
        hello = await stream.handshake(server.connect_timeout)
    except TunnelError as exc:
        # Under TLS 1.3 our handshake completes before the server has checked
        # our certificate; its verdict arrives as an alert or a bare EOF here.
        if exc.reason in ("tls-alert", "eof", "connection-lost"):
            raise TunnelRefused("refused-by-server",
                                f"the server refused this client's certificate ({exc}); the server's log says why") from None
        raise TunnelRefused("protocol-error", f"tunnel set-up failed: {exc.reason}: {exc}") from None
    log.info("tunnel up to %s:%d: server %s, SHA-256 %s, protocol v%s", host, port,
             server_identity.subject, server_identity.fingerprint_sha256, stream.connection.version)
    return ClientTunnel(server_identity, hello.peer, hello, stream, x509.load_der_x509_certificate(server_der))
