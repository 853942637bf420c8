"""Certificates for stc, built in memory: a CA, server and user certificates, CRLs.

Nothing here touches the disk or the clock: the caller passes `now` and the
validity windows, and gets `cryptography` objects or encoded bytes back
(`stc_pki.files` writes them, `stc_pki.directory` keeps a PKI folder).

Profile (what `stc_wire.identity` checks on the other side):
- CA: self-signed, basicConstraints CA:true pathlen 0 (critical), keyUsage
  keyCertSign + cRLSign (critical), subject key identifier.
- server: CN = first DNS name, SAN DNS names and IP addresses, EKU serverAuth,
  keyUsage digitalSignature.
- user: CN = the person's display name (any Unicode, NFC), optional O and OU,
  SAN `sip:` URIs (as URIs) and e-mail addresses (rfc822Name), at least one
  of them; EKU clientAuth; keyUsage digitalSignature.
EC P-256 with SHA-256 by default; P-384 and RSA are there for sites that want them.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal, Union, get_args

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ec-p256", "ec-p384", "rsa-2048", "rsa-3072"]
KEY_KINDS: tuple[str, ...] = get_args(KeyKind)
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
IpAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

DEFAULT_CRL_LIFETIME = timedelta(days=7)
# Certificates start a little in the past so a peer whose clock lags a few
# minutes does not see a fresh certificate as not yet valid.
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=5)

_NAME_MAX = 64  # RFC 5280 upper bound for CN, O and OU
_SIP_URI = re.compile(r"^sips?:[^@\s]+@[^@\s]+$", re.IGNORECASE)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DNS_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# Invisible characters that reorder or hide text: a display name is shown to
# every participant, so it must read as what it is.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class PkiError(Exception):
    """A request the PKI refuses: bad input, missing CA, an existing file. The message says which."""


@dataclass(frozen=True)
class Validity:
    """A certificate's validity window, both ends timezone-aware."""

    not_before: datetime
    not_after: datetime

    def __post_init__(self) -> None:
        if self.not_before.tzinfo is None or self.not_after.tzinfo is None:
            raise PkiError("validity times must be timezone-aware")
        if self.not_after <= self.not_before:
            raise PkiError("validity window is empty: not_after must be after not_before")

    @classmethod
    def for_days(cls, days: int, *, now: datetime) -> Validity:
        """Valid from a few minutes before `now` for `days` days."""
        if days < 1:
            raise PkiError(f"validity must be at least 1 day, not {days}")
        return cls(now - CLOCK_SKEW_ALLOWANCE, now + timedelta(days=days))


def generate_key(kind: KeyKind = "ec-p256") -> PrivateKey:
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "rsa-3072":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise PkiError(f"unknown key type {kind!r} (known: {', '.join(KEY_KINDS)})")


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


# -- input checks ----------------------------------------------------------


def normalize_display_name(name: str) -> str:
    """NFC-normalize a person's name and refuse what cannot be shown honestly."""
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise PkiError("display name is empty")
    if len(name) > _NAME_MAX:
        raise PkiError(f"display name is {len(name)} characters long; at most {_NAME_MAX} fit in a certificate")
    for ch in name:
        if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS:
            raise PkiError(f"display name contains the invisible control character U+{ord(ch):04X}")
    return name


def _check_name_part(label: str, value: str) -> str:
    value = unicodedata.normalize("NFC", value.strip())
    if not value or len(value) > _NAME_MAX:
        raise PkiError(f"{label} must be 1 to {_NAME_MAX} characters")
    if any(unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS for ch in value):
        raise PkiError(f"{label} contains an invisible control character")
    return value


def check_sip_uri(uri: str) -> str:
    if not uri.isascii() or not _SIP_URI.match(uri):
        raise PkiError(f"not a SIP URI of the form sip:user@host (ASCII): {uri!r}")
    return uri


def check_email(email: str) -> str:
    if not email.isascii() or not _EMAIL.match(email):
        raise PkiError(f"not an e-mail address (ASCII, user@domain): {email!r}")
    return email


def check_dns_name(name: str) -> str:
    name = name.strip().rstrip(".").lower()
    if not name.isascii() or len(name) > 253 or not _DNS_NAME.match(name):
        raise PkiError(f"not a DNS name (use the ASCII/punycode form): {name!r}")
    return name


def parse_ip(text: str) -> IpAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise PkiError(f"not an IP address: {text!r}") from None


# -- building --------------------------------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key, able to issue certificates and CRLs."""

    cert: x509.Certificate
    key: PrivateKey

    @classmethod
    def create(
        cls,
        *,
        common_name: str = "stc demo CA",
        organization: str | None = None,
        validity: Validity,
        key: PrivateKey | None = None,
    ) -> CertificateAuthority:
        key = key if key is not None else generate_key()
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, _check_name_part("CA common name", common_name))]
        if organization:  # most significant first: RFC 4514 then reads "CN=...,O=..."
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, _check_name_part("organization", organization)))
        name = x509.Name(attrs)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity.not_before)
            .not_valid_after(validity.not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, _hash_for(key))
        )
        return cls(cert, key)

    @classmethod
    def from_existing(cls, cert: x509.Certificate, key: PrivateKey) -> CertificateAuthority:
        """Adopt a CA made elsewhere, after checking it can sign what stc needs."""
        if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
            raise PkiError(f"CA key type {type(key).__name__} is not supported (use EC or RSA)")
        if cert.public_key() != key.public_key():
            raise PkiError("the CA key does not belong to the CA certificate")
        # What stc_wire.identity's verifier (web-PKI rules) demands of a CA: better refused now
        # than every certificate it issues refused later.
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            raise PkiError("the CA certificate has no basicConstraints extension: not a CA") from None
        if not bc.value.ca:
            raise PkiError("the CA certificate says CA:false: it cannot issue certificates")
        if not bc.critical:
            raise PkiError("the CA certificate's basicConstraints is not marked critical (RFC 5280 requires it)")
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            raise PkiError("the CA certificate has no keyUsage extension; keyCertSign and cRLSign are required") from None
        if not (ku.key_cert_sign and ku.crl_sign):
            raise PkiError("the CA certificate's keyUsage lacks keyCertSign or cRLSign")
        return cls(cert, key)

    # -- issuing ------------------------------------------------------------
    def _leaf_builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, validity: Validity
    ) -> x509.CertificateBuilder:
        try:
            ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(validity.not_before)
            .not_valid_after(validity.not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_digital_signature_only(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False)
        )

    def issue_server(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        dns_names: Sequence[str],
        ip_addresses: Sequence[IpAddress] = (),
        validity: Validity,
    ) -> x509.Certificate:
        names = [check_dns_name(n) for n in dns_names]
        if not names and not ip_addresses:
            raise PkiError("a server certificate needs at least one DNS name or IP address")
        cn = names[0] if names else str(ip_addresses[0])
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        san += [x509.IPAddress(ip) for ip in ip_addresses]
        return (
            self._leaf_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), public_key, validity)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(self.key, _hash_for(self.key))
        )

    def issue_user(
        self,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        *,
        display_name: str,
        sip_uris: Sequence[str] = (),
        emails: Sequence[str] = (),
        organization: str | None = None,
        org_unit: str | None = None,
        validity: Validity,
        extended_key_usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
    ) -> x509.Certificate:
        """A person's certificate. `extended_key_usages` is only changed by tests of rejection."""
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, normalize_display_name(display_name))]
        if organization:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, _check_name_part("organization", organization)))
        if org_unit:
            attrs.insert(
                1 if organization else 0,
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _check_name_part("organizational unit", org_unit)),
            )
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(check_sip_uri(u)) for u in sip_uris]
        san += [x509.RFC822Name(check_email(e)) for e in emails]
        if not san:
            raise PkiError("a user certificate needs a SIP URI or an e-mail address (the TLS client check requires a SAN)")
        return (
            self._leaf_builder(x509.Name(attrs), public_key, validity)
            .add_extension(x509.ExtendedKeyUsage(list(extended_key_usages)), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(self.key, _hash_for(self.key))
        )

    def issue_crl(
        self,
        revoked: Iterable[tuple[int, datetime]],
        *,
        now: datetime,
        lifetime: timedelta = DEFAULT_CRL_LIFETIME,
        crl_number: int = 1,
    ) -> x509.CertificateRevocationList:
        """A CRL listing `(serial, revoked_at)`: thisUpdate = now, nextUpdate = now + lifetime."""
        if lifetime <= timedelta(0):
            raise PkiError("the CRL lifetime must be positive")
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + lifetime)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for serial, revoked_at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at).build()
            )
        return builder.sign(self.key, _hash_for(self.key))


def _digital_signature_only() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


# -- encoding --------------------------------------------------------------


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM; unencrypted for the demo, or encrypted with `passphrase`."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def user_p12(
    name: str, key: PrivateKey, cert: x509.Certificate, ca_cert: x509.Certificate, passphrase: bytes
) -> bytes:
    """A PKCS#12 bundle (key, certificate, CA) for importing into a softphone or OS keychain."""
    if not passphrase:
        raise PkiError("a PKCS#12 bundle needs a non-empty passphrase")
    return pkcs12.serialize_key_and_certificates(
        name.encode("utf-8"), key, cert, [ca_cert], serialization.BestAvailableEncryption(passphrase)
    )


def load_private_key(data: bytes, passphrase: bytes | None, *, what: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, passphrase)
    except TypeError:
        # cryptography says TypeError both for "encrypted, no password" and the reverse.
        if passphrase is None:
            raise PkiError(f"{what} is encrypted: a passphrase is needed") from None
        raise PkiError(f"{what} is not encrypted, but a passphrase was given") from None
    except ValueError:
        raise PkiError(f"{what} cannot be read: not a PEM private key, or the passphrase is wrong") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise PkiError(f"{what} is a {type(key).__name__}; stc uses EC or RSA keys")
    return key


def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise PkiError(f"{what} is not a PEM certificate") from None


def utc_now() -> datetime:
    """The one clock read of the package, used by the command line only."""
    return datetime.now(timezone.utc)
