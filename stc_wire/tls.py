"""TLS 1.3 contexts for the tunnel, both sides mutually authenticated.

OpenSSL verifies during the handshake (chain, validity, the EKU purpose, the
CRL on the server side); stc_wire.identity then re-checks the same things in
pure code after the handshake and turns the certificate into an identity.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TlsSetupError(Exception):
    """A certificate, key, CA bundle or CRL file that cannot be loaded."""


def _load(what: str, path: Path, action) -> None:  # type: ignore[no-untyped-def]
    try:
        action()
    except FileNotFoundError:
        raise TlsSetupError(f"{what} not found: {path}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TlsSetupError(f"cannot load {what} {path}: {exc}") from None


def server_context(cert: Path, key: Path, ca_bundle: Path, crl: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load("server certificate/key", cert, lambda: ctx.load_cert_chain(cert, key))
    _load("CA bundle", ca_bundle, lambda: ctx.load_verify_locations(cafile=str(ca_bundle)))
    if crl is not None:
        _load("CRL", crl, lambda: ctx.load_verify_locations(cafile=str(crl)))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(cert: Path, key: Path, ca_bundle: Path, key_password: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _load("client certificate/key", cert, lambda: ctx.load_cert_chain(cert, key, password=key_password))
    _load("CA bundle", ca_bundle, lambda: ctx.load_verify_locations(cafile=str(ca_bundle)))
    return ctx


def describe_ssl_error(exc: BaseException) -> str:
    """A short human reason for a failed handshake, from OpenSSL's own words."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__
