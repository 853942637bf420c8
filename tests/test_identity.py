"""stc_wire.identity: every rejection reason, the accepted identity, fail-closed CRLs."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stc_pki.pki import CertificateAuthority, Validity, generate_key, load_private_key
from stc_wire.identity import (
    CertificateRejected,
    PeerIdentity,
    TrustAnchors,
    TrustAnchorsError,
    check_client_certificate,
    check_server_certificate,
    identity_of,
    verify_crl,
)
from tests.certs import TestPki, make_test_pki

ZOE = "Zoë Ålice-Øster"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def trust(pki: TestPki) -> TrustAnchors:
    return TrustAnchors.load(pki.ca, pki.crl)


@pytest.fixture(scope="module")
def ca(pki: TestPki) -> CertificateAuthority:
    cert = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    return CertificateAuthority(cert, load_private_key(pki.ca_key.read_bytes(), None, what="test CA key"))


def now() -> datetime:
    return datetime.now(timezone.utc)


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def der_of(path: Path) -> bytes:
    return cert_of(path).public_bytes(serialization.Encoding.DER)


def rejection(fn, *args) -> CertificateRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(CertificateRejected) as info:
        fn(*args)
    return info.value


# -- accepted ------------------------------------------------------------------


def test_alice_is_accepted_with_every_field(pki: TestPki, trust: TrustAnchors) -> None:
    cert = cert_of(pki.users["alice"].cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    who = check_client_certificate(der, trust, now())
    assert who.display_name == "Alice"
    assert who.subject == "CN=Alice,O=stc test"
    assert who.organization == "stc test"
    assert who.org_unit is None
    assert who.sip_uris == ("sip:alice@stc.test",)
    assert who.emails == ("alice@stc.test",)
    assert who.issuer == cert_of(pki.ca).subject.rfc4514_string() == "CN=stc test CA,O=stc test"
    assert who.serial == cert.serial_number
    assert who.fingerprint_sha256 == hashlib.sha256(der).hexdigest()
    assert who.not_before == cert.not_valid_before_utc and who.not_before.tzinfo is not None
    assert who.not_after == cert.not_valid_after_utc
    assert who == identity_of(cert)


def test_unicode_display_name_survives_intact(pki: TestPki, trust: TrustAnchors) -> None:
    who = check_client_certificate(der_of(pki.users["zoe"].cert), trust, now())
    assert who.display_name == ZOE
    assert who.display_name.encode("utf-8") == ZOE.encode("utf-8")  # same code points, NFC
    assert who.organization == "Ørganisation"
    assert who.org_unit == "Tëst"
    assert ZOE in who.subject
    assert who.sip_uris == ("sip:zoe@stc.test",)


def test_identity_json_round_trip(pki: TestPki, trust: TrustAnchors) -> None:
    who = check_client_certificate(der_of(pki.users["zoe"].cert), trust, now())
    wire = json.dumps(who.to_json(), ensure_ascii=False)
    back = PeerIdentity.from_json(json.loads(wire))
    assert back == who
    assert who.to_json()["serial"] == f"{who.serial:x}"


@pytest.mark.parametrize(
    "field, value",
    [
        ("display_name", 5),
        ("sip_uris", "sip:a@b"),
        ("serial", "xyz"),
        ("fingerprint_sha256", "AB" * 32),
        ("not_after", "yesterday"),
        ("not_after", "2030-01-01T00:00:00"),
    ],
)
def test_identity_from_json_refuses_bad_fields(pki: TestPki, field: str, value: object) -> None:
    d = identity_of(cert_of(pki.users["alice"].cert)).to_json()
    d[field] = value
    with pytest.raises(ValueError, match=field):
        PeerIdentity.from_json(d)


def test_short_fingerprint_groups_the_first_16_hex_digits(pki: TestPki) -> None:
    who = identity_of(cert_of(pki.users["bob"].cert))
    short = who.short_fingerprint()
    assert short.replace(" ", "") == who.fingerprint_sha256[:16]
    assert [len(g) for g in short.split(" ")] == [4, 4, 4, 4]


def test_validity_bounds_are_inclusive(pki: TestPki, trust: TrustAnchors) -> None:
    cert = cert_of(pki.users["alice"].cert)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert check_client_certificate(der, trust, cert.not_valid_before_utc).serial == cert.serial_number
    assert check_client_certificate(der, TrustAnchors(trust.cas), cert.not_valid_after_utc).serial == cert.serial_number
    late = cert.not_valid_after_utc + timedelta(seconds=1)
    assert rejection(check_client_certificate, der, TrustAnchors(trust.cas), late).reason == "expired"
    early = cert.not_valid_before_utc - timedelta(seconds=1)
    assert rejection(check_client_certificate, der, trust, early).reason == "not-yet-valid"


# -- rejected clients ----------------------------------------------------------


@pytest.mark.parametrize(
    "user, reason, words",
    [
        ("expired", "expired", "expired at"),
        ("not_yet_valid", "not-yet-valid", "not valid before"),
        ("revoked", "revoked", "revoked on"),
        ("no_client_auth", "no-client-auth", "client authentication"),
        ("other_ca", "untrusted-issuer", "stc other CA"),
    ],
)
def test_client_rejections(pki: TestPki, trust: TrustAnchors, user: str, reason: str, words: str) -> None:
    exc = rejection(check_client_certificate, der_of(pki.users[user].cert), trust, now())
    assert exc.reason == reason
    assert words in str(exc)


@pytest.mark.parametrize("leaf", [None, b""])
def test_no_certificate(trust: TrustAnchors, leaf: bytes | None) -> None:
    assert rejection(check_client_certificate, leaf, trust, now()).reason == "no-certificate"
    assert rejection(check_server_certificate, leaf, trust, "localhost", now()).reason == "no-certificate"


def test_garbage_certificate_and_intermediate_are_malformed(pki: TestPki, trust: TrustAnchors) -> None:
    assert rejection(check_client_certificate, b"\x30\x03\x02\x01\x00", trust, now()).reason == "malformed"
    good = der_of(pki.users["alice"].cert)
    assert rejection(check_client_certificate, good, trust, now(), [b"junk"]).reason == "malformed"


def test_server_certificate_is_not_a_client_certificate(pki: TestPki, trust: TrustAnchors) -> None:
    assert rejection(check_client_certificate, der_of(pki.server.cert), trust, now()).reason == "no-client-auth"


def _user_cert(
    ca: CertificateAuthority, *, san: bool, eku: bool, cn: str | None = "No Extras"
) -> bytes:
    key = generate_key()
    validity = Validity.for_days(30, now=now())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name("x@stc.test")]), critical=cn is None
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def test_user_certificate_without_san_is_refused(ca: CertificateAuthority, trust: TrustAnchors) -> None:
    exc = rejection(check_client_certificate, _user_cert(ca, san=False, eku=True), trust, now())
    assert exc.reason == "no-san"
    assert "subjectAltName" in str(exc)


def test_user_certificate_without_eku_is_refused(ca: CertificateAuthority, trust: TrustAnchors) -> None:
    exc = rejection(check_client_certificate, _user_cert(ca, san=True, eku=False), trust, now())
    assert exc.reason == "no-client-auth"
    assert "no extendedKeyUsage" in str(exc)


def test_certificate_without_cn_shows_its_address(ca: CertificateAuthority, trust: TrustAnchors) -> None:
    who = check_client_certificate(_user_cert(ca, san=True, eku=True, cn=None), trust, now())
    assert who.display_name == "x@stc.test"


def test_forged_ca_with_the_same_name_is_untrusted(pki: TestPki, trust: TrustAnchors) -> None:
    impostor = CertificateAuthority.create(
        common_name="stc test CA", organization="stc test", validity=Validity.for_days(30, now=now())
    )
    key = generate_key()
    cert = impostor.issue_user(
        key.public_key(), display_name="Alice", sip_uris=["sip:alice@stc.test"], validity=Validity.for_days(1, now=now())
    )
    exc = rejection(check_client_certificate, cert.public_bytes(serialization.Encoding.DER), trust, now())
    assert exc.reason == "untrusted-issuer"
    assert "does not chain" in str(exc)


def test_no_trusted_ca_configured(pki: TestPki) -> None:
    exc = rejection(check_client_certificate, der_of(pki.users["alice"].cert), TrustAnchors(()), now())
    assert exc.reason == "untrusted-issuer"


def test_second_ca_in_the_bundle_is_trusted(pki: TestPki) -> None:
    second = CertificateAuthority.create(common_name="second CA", validity=Validity.for_days(30, now=now()))
    key = generate_key()
    cert = second.issue_user(
        key.public_key(), display_name="Dora", emails=["dora@stc.test"], validity=Validity.for_days(1, now=now())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    first_only = TrustAnchors((cert_of(pki.ca),))
    assert rejection(check_client_certificate, der, first_only, now()).reason == "untrusted-issuer"
    both = TrustAnchors((cert_of(pki.ca), second.cert))
    who = check_client_certificate(der, both, now())
    assert (who.display_name, who.issuer, who.emails) == ("Dora", "CN=second CA", ("dora@stc.test",))


def test_naive_time_is_a_programming_error(pki: TestPki, trust: TrustAnchors) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        check_client_certificate(der_of(pki.users["alice"].cert), trust, datetime.now())


# -- CRLs: fail closed ---------------------------------------------------------


def test_without_a_crl_there_is_no_revocation_check(pki: TestPki, trust: TrustAnchors) -> None:
    no_crl = TrustAnchors(trust.cas, None)
    who = check_client_certificate(der_of(pki.users["revoked"].cert), no_crl, now())
    assert who.display_name == "Revoked User"


def test_crl_signed_by_an_impostor_fails_closed(pki: TestPki, trust: TrustAnchors) -> None:
    impostor = CertificateAuthority.create(
        common_name="stc test CA", organization="stc test", validity=Validity.for_days(30, now=now())
    )
    forged = impostor.issue_crl([], now=now())  # same issuer name, empty: would un-revoke everyone
    forged_trust = replace(trust, crl=forged)
    for user in ("alice", "revoked"):
        exc = rejection(check_client_certificate, der_of(pki.users[user].cert), forged_trust, now())
        assert exc.reason == "crl-invalid"
        assert "not signed by any trusted CA" in str(exc)


def test_crl_with_a_flipped_signature_bit_fails_closed(pki: TestPki, trust: TrustAnchors) -> None:
    assert trust.crl is not None
    der = bytearray(trust.crl.public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature's s value
    tampered = x509.load_der_x509_crl(bytes(der))
    exc = rejection(check_client_certificate, der_of(pki.users["alice"].cert), replace(trust, crl=tampered), now())
    assert exc.reason == "crl-invalid"


def test_expired_crl_fails_closed(pki: TestPki, trust: TrustAnchors, ca: CertificateAuthority) -> None:
    assert trust.crl is not None and trust.crl.next_update_utc is not None
    after = trust.crl.next_update_utc + timedelta(minutes=1)
    exc = rejection(check_client_certificate, der_of(pki.users["alice"].cert), trust, after)
    assert exc.reason == "crl-expired"
    stale = ca.issue_crl([], now=now() - timedelta(days=8), lifetime=timedelta(days=7))
    exc = rejection(check_client_certificate, der_of(pki.users["alice"].cert), replace(trust, crl=stale), now())
    assert exc.reason == "crl-expired"
    assert "stc-pki crl" in str(exc)


def test_crl_of_another_trusted_ca_does_not_cover_this_leaf(pki: TestPki, trust: TrustAnchors) -> None:
    second = CertificateAuthority.create(common_name="second CA", validity=Validity.for_days(30, now=now()))
    both = TrustAnchors((*trust.cas, second.cert), second.issue_crl([], now=now()))
    exc = rejection(check_client_certificate, der_of(pki.users["alice"].cert), both, now())
    assert exc.reason == "crl-invalid"
    assert "not from the issuer" in str(exc)


def test_verify_crl_names_the_signing_ca(trust: TrustAnchors, ca: CertificateAuthority) -> None:
    crl = ca.issue_crl([], now=now())
    assert verify_crl(crl, trust.cas, now()) == ca.cert
    assert rejection(verify_crl, crl, (), now()).reason == "crl-invalid"


# -- servers -------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "stc-server.test", "STC-Server.Test.", "127.0.0.1"])
def test_server_accepted_by_name_and_address(pki: TestPki, trust: TrustAnchors, host: str) -> None:
    who = check_server_certificate(der_of(pki.server.cert), trust, host, now())
    assert who.display_name == "localhost"
    assert who.serial == cert_of(pki.server.cert).serial_number


@pytest.mark.parametrize("host", ["stc-server", "other.test", "127.0.0.2", "::1", "evil.localhost"])
def test_server_hostname_mismatch(pki: TestPki, trust: TrustAnchors, host: str) -> None:
    exc = rejection(check_server_certificate, der_of(pki.server.cert), trust, host, now())
    assert exc.reason == "wrong-host"
    assert "localhost, stc-server.test, 127.0.0.1" in str(exc)


def test_wrong_host_server(pki: TestPki, trust: TrustAnchors) -> None:
    assert rejection(check_server_certificate, der_of(pki.wrong_host_server.cert), trust, "localhost", now()).reason == (
        "wrong-host"
    )
    who = check_server_certificate(der_of(pki.wrong_host_server.cert), trust, "other.test", now())
    assert who.display_name == "other.test"


def test_user_certificate_is_not_a_server_certificate(pki: TestPki, trust: TrustAnchors) -> None:
    exc = rejection(check_server_certificate, der_of(pki.users["alice"].cert), trust, "localhost", now())
    assert exc.reason == "no-server-auth"


def test_server_expiry_and_untrusted_issuer(pki: TestPki, trust: TrustAnchors) -> None:
    server = cert_of(pki.server.cert)
    later = server.not_valid_after_utc + timedelta(days=1)
    no_crl = TrustAnchors(trust.cas)
    assert rejection(check_server_certificate, der_of(pki.server.cert), no_crl, "localhost", later).reason == "expired"
    other = CertificateAuthority.create(common_name="evil CA", validity=Validity.for_days(30, now=now()))
    key = generate_key()
    fake = other.issue_server(key.public_key(), dns_names=["localhost"], validity=Validity.for_days(1, now=now()))
    fake_der = fake.public_bytes(serialization.Encoding.DER)
    exc = rejection(check_server_certificate, fake_der, trust, "localhost", now())
    assert exc.reason == "untrusted-issuer"
    assert "evil CA" in str(exc)


def test_server_revoked_and_wildcard(ca: CertificateAuthority, trust: TrustAnchors) -> None:
    key = generate_key()
    cert = ca.issue_server(key.public_key(), dns_names=["*.stc.test"], validity=Validity.for_days(1, now=now()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert check_server_certificate(der, TrustAnchors(trust.cas), "a.stc.test", now()).serial == cert.serial_number
    assert rejection(check_server_certificate, der, trust, "a.b.stc.test", now()).reason == "wrong-host"
    assert rejection(check_server_certificate, der, trust, "stc.test", now()).reason == "wrong-host"
    crl = ca.issue_crl([(cert.serial_number, now())], now=now())
    exc = rejection(check_server_certificate, der, TrustAnchors(trust.cas, crl), "a.stc.test", now())
    assert exc.reason == "revoked"


# -- loading -------------------------------------------------------------------


def test_trust_anchors_load_pem_and_der(pki: TestPki, tmp_path: Path) -> None:
    loaded = TrustAnchors.load(pki.ca, pki.crl)
    assert loaded.cas == (cert_of(pki.ca),)
    assert loaded.crl is not None
    der_crl = tmp_path / "crl.der"
    der_crl.write_bytes(loaded.crl.public_bytes(serialization.Encoding.DER))
    assert TrustAnchors.load(pki.ca, der_crl).crl == loaded.crl
    assert TrustAnchors.load(pki.ca, None).crl is None


def test_trust_anchors_load_errors(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(TrustAnchorsError, match="cannot read CA bundle"):
        TrustAnchors.load(tmp_path / "missing.pem", None)
    empty = tmp_path / "empty.pem"
    empty.write_text("nothing here\n")
    with pytest.raises(TrustAnchorsError, match="no PEM certificate"):
        TrustAnchors.load(empty, None)
    with pytest.raises(TrustAnchorsError, match="is not a CRL"):
        TrustAnchors.load(pki.ca, empty)
    with pytest.raises(TrustAnchorsError, match="cannot read CRL"):
        TrustAnchors.load(pki.ca, tmp_path / "missing.crl")
