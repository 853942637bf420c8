"""TLS 1.3 contexts for the tunnel, both sides mutually authenticated.

OpenSSL verifies during the handshake (chain, validity, the EKU purpose, and
the CRL when one is configured); stc_wire.identity then re-checks the same things in
pure code after the handshake and turns the certificate into an identity.
"""

from __future__ import annotations

import os
import secrets
import ssl
import sys
import tempfile
from pathlib import Path

if sys.platform == "win32":
    _O_BINARY = os.O_BINARY  # no newline translation
else:
    _O_BINARY = 0


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


def client_context(cert: Path, key: Path, ca_bundle: Path, *, pkcs12: Path | None = None,
                   pkcs12_passphrase: str = "", crl: Path | None = None) -> ssl.SSLContext:
    """With `crl`, OpenSSL refuses a revoked server certificate during the handshake, before this
    client has shown its own certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED are on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if pkcs12 is not None:
        _load("PKCS#12 identity", pkcs12, lambda: _load_pkcs12(ctx, pkcs12, pkcs12_passphrase))
    else:
        _load("client certificate/key", cert, lambda: ctx.load_cert_chain(cert, key))
    _load("CA bundle", ca_bundle, lambda: ctx.load_verify_locations(cafile=str(ca_bundle)))
    if crl is not None:
        _load("CRL", crl, lambda: ctx.load_verify_locations(cafile=str(crl)))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def describe_ssl_error(exc: BaseException) -> str:
    """A short human reason for a failed handshake, from OpenSSL's own words."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return str(exc) or type(exc).__name__


def _load_pkcs12(ctx: ssl.SSLContext, path: Path, passphrase: str) -> None:
    """ssl only loads PEM files: hand it the bundle's certificate and key through a file that no
    one else can read and that is gone when this returns: an anonymous memfd on Linux, else a
    private temporary file holding the key encrypted (_load_pem_from_private_file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    key, cert, extra = pkcs12.load_key_and_certificates(path.read_bytes(), passphrase.encode() if passphrase else None)
    if key is None or cert is None:
        raise ValueError("the PKCS#12 bundle must hold a certificate and its private key")
    pem = cert.public_bytes(serialization.Encoding.PEM) + b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in extra or ())
    if _memfd_usable():
        pem += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        _load_pem_from_memfd(ctx, pem)
    else:
        # The key is written encrypted under a one-time password that only this process holds, so
        # even a copy of the file taken before it is deleted (a backup, a crash) does not give it away.
        password = secrets.token_bytes(32)
        pem += key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(password))
        _load_pem_from_private_file(ctx, pem, password)


def _memfd_usable() -> bool:
    """Linux: an anonymous in-memory file, reached through /proc; the key never touches a disk."""
    return sys.platform == "linux" and hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _load_pem_from_memfd(ctx: ssl.SSLContext, pem: bytes) -> None:
    if sys.platform == "linux":  # for mypy: memfd_create exists only there
        fd = os.memfd_create("stc-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)


def _load_pem_from_private_file(ctx: ssl.SSLContext, pem: bytes, password: bytes) -> None:
    """Windows, macOS (and a Linux without memfd): a 0600 file made with O_EXCL in a fresh 0700
    folder of the user's temporary directory, deleted as soon as ssl has read it. On Windows the
    mode bits mean little: the user's temporary directory (in their profile) is private by its ACL,
    and Python 3.12.4 and later give a mkdtemp folder an owner-only ACL too (CVE-2024-4030)."""
    with tempfile.TemporaryDirectory(prefix="stc-identity-") as folder:  # mkdtemp: 0700
        path = os.path.join(folder, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path, password=password)
