"""A CRL fetched from its distribution point (HTTP or HTTPS) into the local CRL file.

The fetched CRL must parse and be signed by a CA of the bundle before it replaces
the file (written atomically, as PEM): a broken or forged answer leaves the last
good CRL in place. The file is what the tunnel server loads, so a restart while
the distribution point is down still has the last CRL.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from stc_wire.identity import CertificateRejected, verify_crl

log = logging.getLogger(__name__)
MAX_CRL_BYTES = 16 * 1024 * 1024


class CrlFetchError(Exception):
    """The distribution point did not give a usable CRL (the message says why)."""


def parse_crl(data: bytes, cas: tuple[x509.Certificate, ...], now: datetime) -> x509.CertificateRevocationList:
    """A CRL (PEM or DER) signed by one of `cas`; CrlFetchError otherwise. An expired one is accepted
    here (the tunnel server decides what an old CRL means) but one without a trusted signature is not."""
    try:
        crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
    except ValueError:
        raise CrlFetchError("the answer is not a CRL (PEM or DER)") from None
    next_update = crl.next_update_utc
    try:
        verify_crl(crl, cas, min(now, next_update) if next_update else now)
    except CertificateRejected as exc:
        raise CrlFetchError(str(exc)) from None
    return crl


def store_crl(crl: x509.CertificateRevocationList, dest: Path) -> None:
    """Replace `dest` atomically (a reader sees the old file or the new one, never half)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(crl.public_bytes(Encoding.PEM))
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cas(ca_bundle: Path) -> tuple[x509.Certificate, ...]:
    return tuple(x509.load_pem_x509_certificates(ca_bundle.read_bytes()))


class CrlFetcher:
    def __init__(self, url: str, ca_bundle: Path, dest: Path, *, timeout: float = 10.0) -> None:
        self.url = url
        self._ca_bundle = ca_bundle
        self._dest = dest
        self._timeout = timeout

    async def fetch(self) -> x509.CertificateRevocationList:
        """GET the CRL, check it, store it; CrlFetchError with the reason otherwise."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout)) as http:
                async with http.get(self.url) as response:
                    if response.status != 200:
                        raise CrlFetchError(f"{self.url} answered HTTP {response.status}")
                    data = await response.content.read(MAX_CRL_BYTES + 1)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise CrlFetchError(f"cannot fetch the CRL from {self.url}: {type(exc).__name__}: {exc}") from None
        if len(data) > MAX_CRL_BYTES:
            raise CrlFetchError(f"the CRL at {self.url} is larger than {MAX_CRL_BYTES} bytes")
        crl = parse_crl(data, load_cas(self._ca_bundle), datetime.now(timezone.utc))
        current = self._current_number()
        number = _crl_number(crl)
        if current is not None and number is not None and number < current:
            raise CrlFetchError(f"{self.url} served CRL number {number}, older than the {current} in use")
        store_crl(crl, self._dest)
        return crl

    def _current_number(self) -> int | None:
        try:
            data = self._dest.read_bytes()
            return _crl_number(x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
        except (OSError, ValueError):
            return None


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None
