"""Who is on the other end of a tunnel: certificate checks after the TLS handshake.

OpenSSL has already verified the chain during the handshake; this is the
second, tested layer and the source of the identity shown in rosters. It is
pure: DER bytes and the time in, a `PeerIdentity` out or `CertificateRejected`.

Order of checks, so that the reason given is the precise one:
    no-certificate / malformed -> not-yet-valid / expired -> EKU (no-client-auth /
    no-server-auth) -> no-san (client) or wrong-host (server) -> chain to a trust
    anchor (untrusted-issuer) -> revocation (crl-invalid / crl-expired / revoked).

Decisions:
- A user certificate must carry a subjectAltName (a `sip:` URI or an e-mail):
  one without is refused as 'no-san'. The web-PKI verifier requires it anyway,
  and a roster entry should name an address, not only a free-text CN.
- The EKU must be present and list clientAuth (serverAuth for servers);
  anyExtendedKeyUsage is not accepted.
- With a CRL configured, revocation is fail-closed: the CRL must be signed by
  the leaf's issuing CA (checked against that CA's key, and that CA must be
  allowed cRLSign), and `now` must be before its nextUpdate. A leaf issued by a
  CA the CRL does not cover is refused ('crl-invalid'). Only the leaf is
  looked up in the CRL (stc's CA has pathlen 0: there are no intermediates).
- Without a CRL (`TrustAnchors.crl is None`) there is no revocation check.
- The chain check is cryptography's web-PKI verifier: a CA needs a critical
  basicConstraints CA:true and a keyUsage with keyCertSign, a leaf needs an
  authorityKeyIdentifier. stc_pki makes (and, when adopting a CA, checks) exactly that.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Union

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

RejectReason = Literal[
    "no-certificate",
    "malformed",
    "expired",
    "not-yet-valid",
    "no-client-auth",
    "no-server-auth",
    "no-san",
    "wrong-host",
    "untrusted-issuer",
    "revoked",
    "crl-invalid",
    "crl-expired",
]


class CertificateRejected(Exception):
    """The peer's certificate is not accepted. `reason` is a short code; str() is for people."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
        self.message = message


class TrustAnchorsError(Exception):
    """The CA bundle or CRL file cannot be used (a configuration problem, not a peer's)."""


@dataclass(frozen=True)
class PeerIdentity:
    """The authenticated identity read from a peer's certificate."""

    display_name: str  # subject CN (falls back to the first SIP URI, e-mail or subject)
    subject: str  # RFC 4514
    organization: str | None
    org_unit: str | None
    sip_uris: tuple[str, ...]
    emails: tuple[str, ...]
    issuer: str  # RFC 4514
    serial: int
    fingerprint_sha256: str  # lowercase hex of SHA-256(DER), no colons
    not_before: datetime  # UTC, aware
    not_after: datetime  # UTC, aware

    def short_fingerprint(self) -> str:
        """First 16 hex digits in groups of four, for people to compare: '3f2a 9c01 77be 0d4e'."""
        head = self.fingerprint_sha256[:16]
        return " ".join(head[i : i + 4] for i in range(0, 16, 4))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; serial as lowercase hex (big integers do not survive every JSON reader)."""
        return {
            "display_name": self.display_name,
            "subject": self.subject,
            "organization": self.organization,
            "org_unit": self.org_unit,
            "sip_uris": list(self.sip_uris),
            "emails": list(self.emails),
            "issuer": self.issuer,
            "serial": f"{self.serial:x}",
            "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PeerIdentity:
        """Inverse of to_json; raises ValueError naming the bad field."""
        if not isinstance(d, dict):
            raise ValueError("identity must be a JSON object")

        def text(key: str, optional: bool = False) -> Any:
            value = d.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str):
                raise ValueError(f"identity field {key!r} must be a string")
            return value

        def texts(key: str) -> tuple[str, ...]:
            value = d.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"identity field {key!r} must be a list of strings")
            return tuple(value)

        def when(key: str) -> datetime:
            try:
                t = datetime.fromisoformat(text(key))
            except ValueError:
                raise ValueError(f"identity field {key!r} is not an ISO 8601 time") from None
            if t.tzinfo is None:
                raise ValueError(f"identity field {key!r} has no time zone")
            return t

        fingerprint = text("fingerprint_sha256")
        if len(fingerprint) != 64 or any(c not in "0123456789abcdef" for c in fingerprint):
            raise ValueError("identity field 'fingerprint_sha256' must be 64 lowercase hex digits")
        try:
            serial = int(text("serial"), 16)
        except ValueError:
            raise ValueError("identity field 'serial' must be hexadecimal") from None
        return cls(
            display_name=text("display_name"),
            subject=text("subject"),
            organization=text("organization", optional=True),
            org_unit=text("org_unit", optional=True),
            sip_uris=texts("sip_uris"),
            emails=texts("emails"),
            issuer=text("issuer"),
            serial=serial,
            fingerprint_sha256=fingerprint,
            not_before=when("not_before"),
            not_after=when("not_after"),
        )


@dataclass(frozen=True)
class TrustAnchors:
    """The CAs a peer must chain to, and the CRL (None: no revocation check)."""

    cas: tuple[x509.Certificate, ...]
    crl: x509.CertificateRevocationList | None = None

    @classmethod
    def load(cls, ca_bundle: Path, crl: Path | None = None) -> TrustAnchors:
        """Read a PEM bundle of CA certificates and, optionally, a PEM or DER CRL."""
        try:
            cas = tuple(x509.load_pem_x509_certificates(ca_bundle.read_bytes()))
        except OSError as exc:
            raise TrustAnchorsError(f"cannot read CA bundle {ca_bundle}: {exc.strerror}") from None
        except ValueError:
            raise TrustAnchorsError(f"{ca_bundle} holds no PEM certificate") from None
        loaded_crl = None
        if crl is not None:
            try:
                data = crl.read_bytes()
            except OSError as exc:
                raise TrustAnchorsError(f"cannot read CRL {crl}: {exc.strerror}") from None
            try:
                if b"-----BEGIN" in data:
                    loaded_crl = x509.load_pem_x509_crl(data)
                else:
                    loaded_crl = x509.load_der_x509_crl(data)
            except ValueError:
                raise TrustAnchorsError(f"{crl} is not a CRL (PEM or DER)") from None
        return cls(cas, loaded_crl)


# -- identity ----------------------------------------------------------------


def _first_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def identity_of(cert: x509.Certificate) -> PeerIdentity:
    """Read the identity fields of a certificate (no checks: see check_*_certificate)."""
    san = _san(cert)
    uris = san.get_values_for_type(x509.UniformResourceIdentifier) if san else []
    sip_uris = tuple(u for u in uris if u.lower().startswith(("sip:", "sips:")))
    emails = tuple(san.get_values_for_type(x509.RFC822Name)) if san else ()
    subject = cert.subject.rfc4514_string()
    cn = _first_attr(cert.subject, NameOID.COMMON_NAME)
    display_name = cn or (sip_uris[0] if sip_uris else emails[0] if emails else subject)
    return PeerIdentity(
        display_name=display_name,
        subject=subject,
        organization=_first_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        org_unit=_first_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        sip_uris=sip_uris,
        emails=emails,
        issuer=cert.issuer.rfc4514_string(),
        serial=cert.serial_number,
        fingerprint_sha256=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


# -- checks --------------------------------------------------------------------


def check_client_certificate(
    leaf_der: bytes | None,
    trust: TrustAnchors,
    now: datetime,
    intermediates: Sequence[bytes] = (),
) -> PeerIdentity:
    """Accept a client (a person) or raise CertificateRejected."""
    now = _utc(now)
    leaf = _parse_leaf(leaf_der)
    chain_extra = _parse_intermediates(intermediates)
    _check_validity(leaf, now)
    _check_eku(leaf, ExtendedKeyUsageOID.CLIENT_AUTH, "no-client-auth", "client authentication (clientAuth)")
    if _san(leaf) is None:
        raise CertificateRejected(
            "no-san", f"certificate of {_who(leaf)} has no subjectAltName (a sip: URI or e-mail address)"
        )
    verifier = PolicyBuilder().store(_store(trust)).time(now).build_client_verifier()
    try:
        chain = verifier.verify(leaf, chain_extra).chain
    except VerificationError as exc:
        raise _untrusted(leaf, trust, chain_extra, exc) from None
    _check_revocation(leaf, _issuer_in(chain), trust, now)
    return identity_of(leaf)


def check_server_certificate(
    leaf_der: bytes | None,
    trust: TrustAnchors,
    hostname: str,
    now: datetime,
    intermediates: Sequence[bytes] = (),
) -> PeerIdentity:
    """Accept the stc-server reached as `hostname` (DNS name or IP address) or raise CertificateRejected."""
    now = _utc(now)
    leaf = _parse_leaf(leaf_der)
    chain_extra = _parse_intermediates(intermediates)
    _check_validity(leaf, now)
    _check_eku(leaf, ExtendedKeyUsageOID.SERVER_AUTH, "no-server-auth", "server authentication (serverAuth)")
    subject = _check_host(leaf, hostname)
    verifier = PolicyBuilder().store(_store(trust)).time(now).build_server_verifier(subject)
    try:
        chain = verifier.verify(leaf, chain_extra)
    except VerificationError as exc:
        raise _untrusted(leaf, trust, chain_extra, exc) from None
    _check_revocation(leaf, _issuer_in(chain), trust, now)
    return identity_of(leaf)


def verify_crl(
    crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate], now: datetime
) -> x509.Certificate:
    """The CA among `cas` that signed `crl`, if the CRL is current; else CertificateRejected.

    Also useful at start-up and on reload, to warn before a stale CRL locks everyone out.
    """
    now = _utc(now)
    issuer = next((ca for ca in cas if ca.subject == crl.issuer and _signed_crl(ca, crl)), None)
    if issuer is None:
        raise CertificateRejected(
            "crl-invalid", f"the CRL of {crl.issuer.rfc4514_string()} is not signed by any trusted CA"
        )
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None and not ku.crl_sign:
        raise CertificateRejected("crl-invalid", f"CA {issuer.subject.rfc4514_string()} may not sign CRLs")
    next_update = crl.next_update_utc
    if next_update is None:
        raise CertificateRejected("crl-invalid", "the CRL has no nextUpdate: cannot tell whether it is current")
    if now > next_update:
        raise CertificateRejected(
            "crl-expired", f"the CRL expired at {next_update:%Y-%m-%d %H:%M}Z; re-issue it (`stc-pki crl`)"
        )
    return issuer


def _check_revocation(leaf: x509.Certificate, issuer: x509.Certificate, trust: TrustAnchors, now: datetime) -> None:
    if trust.crl is None:
        return
    crl_issuer = verify_crl(trust.crl, (*trust.cas, issuer), now)
    if crl_issuer.subject != issuer.subject or crl_issuer.public_key() != issuer.public_key():
        raise CertificateRejected(
            "crl-invalid",
            f"the CRL is from {crl_issuer.subject.rfc4514_string()}, not from the issuer of {_who(leaf)} "
            f"({issuer.subject.rfc4514_string()}): its revocation status is unknown",
        )
    entry = trust.crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if entry is not None:
        raise CertificateRejected(
            "revoked", f"certificate of {_who(leaf)} was revoked on {entry.revocation_date_utc:%Y-%m-%d %H:%M}Z"
        )


# -- helpers -----------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(timezone.utc)


def _who(cert: x509.Certificate) -> str:
    cn = _first_attr(cert.subject, NameOID.COMMON_NAME)
    return repr(cn) if cn else cert.subject.rfc4514_string() or f"serial {cert.serial_number:x}"


def _parse_leaf(leaf_der: bytes | None) -> x509.Certificate:
    if not leaf_der:
        raise CertificateRejected("no-certificate", "the peer presented no certificate")
    try:
        return x509.load_der_x509_certificate(leaf_der)
    except ValueError as exc:
        raise CertificateRejected("malformed", f"the peer's certificate cannot be parsed: {exc}") from None


def _parse_intermediates(ders: Sequence[bytes]) -> list[x509.Certificate]:
    try:
        return [x509.load_der_x509_certificate(d) for d in ders]
    except ValueError as exc:
        raise CertificateRejected("malformed", f"an intermediate certificate cannot be parsed: {exc}") from None


def _check_validity(leaf: x509.Certificate, now: datetime) -> None:
    if now < leaf.not_valid_before_utc:
        raise CertificateRejected(
            "not-yet-valid",
            f"certificate of {_who(leaf)} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M}Z "
            "(or this machine's clock is behind)",
        )
    if now > leaf.not_valid_after_utc:
        raise CertificateRejected(
            "expired", f"certificate of {_who(leaf)} expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z"
        )


def _check_eku(
    leaf: x509.Certificate, wanted: x509.ObjectIdentifier, reason: RejectReason, purpose: str
) -> None:
    try:
        ekus = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateRejected(reason, f"certificate of {_who(leaf)} has no extendedKeyUsage; {purpose} is required") from None
    if wanted not in ekus:
        raise CertificateRejected(reason, f"certificate of {_who(leaf)} is not for {purpose}")


HostSubject = Union[x509.DNSName, x509.IPAddress]


def _check_host(leaf: x509.Certificate, hostname: str) -> HostSubject:
    """The verifier's subject for `hostname`, after checking the SAN names it (for a precise reason)."""
    san = _san(leaf)
    host = hostname.strip().rstrip(".")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        listed = san.get_values_for_type(x509.IPAddress) if san else []
        if ip not in listed:
            raise CertificateRejected(
                "wrong-host", f"server certificate {_who(leaf)} is not for IP address {ip} (it lists {_names(san)})"
            )
        return x509.IPAddress(ip)
    host = host.lower()
    dns_names = [n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)] if san else []
    if not any(_dns_matches(pattern, host) for pattern in dns_names):
        raise CertificateRejected(
            "wrong-host", f"server certificate {_who(leaf)} is not for {host!r} (it lists {_names(san)})"
        )
    try:
        return x509.DNSName(host)
    except ValueError:
        raise CertificateRejected("wrong-host", f"{hostname!r} is not a usable host name") from None


def _dns_matches(pattern: str, host: str) -> bool:
    if pattern == host:
        return True
    # A wildcard stands for exactly one whole left-most label (RFC 6125 6.4.3).
    if pattern.startswith("*.") and "." in host:
        return host.split(".", 1)[1] == pattern[2:]
    return False


def _names(san: x509.SubjectAlternativeName | None) -> str:
    if san is None:
        return "no names"
    names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return ", ".join(names) or "no host names"


def _untrusted(
    leaf: x509.Certificate, trust: TrustAnchors, intermediates: list[x509.Certificate], exc: VerificationError
) -> CertificateRejected:
    known = {ca.subject for ca in (*trust.cas, *intermediates)}
    if leaf.issuer not in known:
        return CertificateRejected(
            "untrusted-issuer",
            f"certificate of {_who(leaf)} is issued by {leaf.issuer.rfc4514_string()!r}, which is not a trusted CA",
        )
    return CertificateRejected("untrusted-issuer", f"certificate of {_who(leaf)} does not chain to a trusted CA: {exc}")


def _issuer_in(chain: list[x509.Certificate]) -> x509.Certificate:
    # chain = [leaf, ..., anchor]; a bundle that lists the leaf itself gives [leaf].
    return chain[1] if len(chain) > 1 else chain[0]


def _store(trust: TrustAnchors) -> Store:
    if not trust.cas:
        raise CertificateRejected("untrusted-issuer", "no trusted CA is configured")
    return Store(list(trust.cas))


def _signed_crl(ca: x509.Certificate, crl: x509.CertificateRevocationList) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except TypeError:  # a CA key type that cannot sign (X25519/X448): not this CRL's signer
        return False
