"""The admission binding, in memory: round trips per key type, and every way a forged one is refused."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from stc_wire.binding import (
    MAX_BINDING_CHARS,
    Binding,
    BindingRejected,
    BindingSigner,
    BindingVerifier,
    signer_id,
)
from stc_wire.identity import PeerIdentity
from stc_wire.roster import PrivateKey

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)
NOW = T0.timestamp()
CALL_ID = "7f3c9a01e2b84d5c@10.0.0.7"
CHANNEL = "1714557600.42"
KEYS: dict[str, PrivateKey] = {
    "ec-p256": ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}


def certificate(key: PrivateKey, name: str = "stc-server") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(T0 - timedelta(days=1))
               .not_valid_after(T0 + timedelta(days=365)))
    return builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())


CERTS = {name: certificate(key) for name, key in KEYS.items()}


def zoe() -> PeerIdentity:
    return PeerIdentity(
        display_name="Zoë Ålice-Øster",
        subject="CN=Zoë Ålice-Øster,OU=Låb,O=Ørganisation",
        organization="Ørganisation",
        org_unit="Låb",
        sip_uris=("sip:zoe@example.org",),
        emails=("zoe@example.org",),
        issuer="CN=stc test CA,O=Ørganisation",
        serial=0x1F2E3D4C5B6A79880123456789ABCDEF01234567,
        fingerprint_sha256="ab" * 32,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=365),
    )


def token(kind: str = "ec-p256") -> str:
    binding = Binding.new(zoe(), "1000", CALL_ID, now=NOW, ttl=30)
    return BindingSigner(KEYS[kind], CERTS[kind]).sign(binding)


def sealed(kind: str = "ec-p256") -> str:
    signer = BindingSigner(KEYS[kind], CERTS[kind])
    return signer.sign(Binding.new(zoe(), "1000", CALL_ID, now=NOW, ttl=30).for_channel(CHANNEL))


def verifier(*kinds: str) -> BindingVerifier:
    return BindingVerifier(CERTS[k] for k in (kinds or ("ec-p256",)))


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_token_and_channel_binding_round_trip_with_every_key_type(kind: str) -> None:
    text = token(kind)
    assert len(text) <= MAX_BINDING_CHARS
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")  # a SIP header token
    got = verifier(kind).verify_token(text, now=NOW + 29)
    assert got.identity == zoe() and got.room == "1000" and got.call_id == CALL_ID and got.channel is None
    bound = verifier(kind).verify_channel(sealed(kind), channel=CHANNEL, call_id=CALL_ID, room="1000")
    assert bound.identity == zoe() and bound.channel == CHANNEL
    assert bound.identity.to_json() == zoe().to_json()  # the roster shows exactly the certificate's identity


def test_a_p256_binding_is_compact() -> None:
    assert len(sealed("ec-p256")) < 1000


def test_two_bindings_for_the_same_call_differ_by_their_nonce() -> None:
    assert token() != token()


@pytest.mark.parametrize("which", ["token", "channel"])
def test_any_changed_byte_is_refused(which: str) -> None:
    text = token() if which == "token" else sealed()
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    check = verifier()
    for index in range(len(raw)):
        forged = bytearray(raw)
        forged[index] ^= 0x01
        forged_text = base64.urlsafe_b64encode(bytes(forged)).rstrip(b"=").decode()
        with pytest.raises(BindingRejected):
            if which == "token":
                check.verify_token(forged_text, now=NOW)
            else:
                check.verify_channel(forged_text, channel=CHANNEL, call_id=CALL_ID, room="1000")


def test_an_edited_payload_signed_by_nobody_is_refused_as_bad_signature() -> None:
    text = sealed()
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    start = raw.index(b'"room":"1000"')
    raw[start + 9:start + 13] = b"2000"
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(BindingRejected) as refused:
        verifier().verify_channel(forged, channel=CHANNEL, call_id=CALL_ID)
    assert refused.value.reason == "bad-signature"


def test_truncated_extended_and_garbage_values_are_refused() -> None:
    text = sealed()
    for forged in (text[:-4], text + "AAAA", "", "not base64!", "A" * (MAX_BINDING_CHARS + 1), text[:10]):
        with pytest.raises(BindingRejected):
            verifier().verify_channel(forged, channel=CHANNEL, call_id=CALL_ID)


def test_an_expired_token_is_refused() -> None:
    with pytest.raises(BindingRejected) as refused:
        verifier().verify_token(token(), now=NOW + 31)
    assert refused.value.reason == "expired"


def test_a_binding_by_another_key_is_refused_even_under_the_trusted_signer_id() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BindingRejected) as refused:
        verifier().verify_token(BindingSigner(other, certificate(other)).sign(
            Binding.new(zoe(), "1000", CALL_ID, now=NOW, ttl=30)), now=NOW)
    assert refused.value.reason == "unknown-signer"
    # A forger who copies the trusted server's signer id still lacks its key.
    impostor = BindingSigner(other, certificate(other))
    impostor.signer = signer_id(CERTS["ec-p256"])
    with pytest.raises(BindingRejected) as refused:
        verifier().verify_token(impostor.sign(Binding.new(zoe(), "1000", CALL_ID, now=NOW, ttl=30)), now=NOW)
    assert refused.value.reason == "bad-signature"


def test_every_server_of_the_deployment_verifies_the_others_bindings() -> None:
    both = verifier("ec-p256", "ed25519")
    assert both.verify_token(token("ed25519"), now=NOW).room == "1000"
    assert both.verify_token(token("ec-p256"), now=NOW).room == "1000"
    with pytest.raises(BindingRejected):
        verifier("ec-p256").verify_token(token("ed25519"), now=NOW)


def test_a_signer_refuses_a_key_that_is_not_its_certificates() -> None:
    with pytest.raises(ValueError):
        BindingSigner(KEYS["ec-p256"], CERTS["ec-p384"])


def test_a_channel_binding_holds_only_for_its_channel_call_and_room() -> None:
    check = verifier()
    cases = {
        "wrong-channel": dict(channel="1714557600.43", call_id=CALL_ID, room="1000"),  # copied to another channel
        "wrong-call": dict(channel=CHANNEL, call_id="other@10.0.0.7", room="1000"),
        "wrong-room": dict(channel=CHANNEL, call_id=CALL_ID, room="2000"),
    }
    for reason, where in cases.items():
        with pytest.raises(BindingRejected) as refused:
            check.verify_channel(sealed(), **where)  # type: ignore[arg-type]
        assert refused.value.reason == reason


def test_a_token_is_not_a_channel_binding_and_back() -> None:
    with pytest.raises(BindingRejected) as refused:
        verifier().verify_channel(token(), channel=CHANNEL, call_id=CALL_ID)
    assert refused.value.reason == "not-channel-bound"
    with pytest.raises(BindingRejected) as refused:
        verifier().verify_token(sealed(), now=NOW)
    assert refused.value.reason == "not-a-token"


def test_a_channel_binding_outlives_the_token_expiry() -> None:
    later = verifier().verify_channel(sealed(), channel=CHANNEL, call_id=CALL_ID, room="1000")
    assert later.expires == int(NOW + 30)  # the admission deadline, checked once by stc-admit


def test_the_payload_is_canonical_json_without_secrets() -> None:
    text = sealed()
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    length = int.from_bytes(raw[10:12], "big")
    payload = json.loads(raw[12:12 + length])
    assert sorted(payload) == ["ch", "cid", "exp", "id", "n", "room"]
    assert payload["ch"] == CHANNEL and payload["id"][8] == "ab" * 32


def test_an_oversized_identity_is_refused_when_signing() -> None:
    big = PeerIdentity(**{**zoe().__dict__, "subject": "CN=" + "x" * 2000})
    with pytest.raises(BindingRejected) as refused:
        BindingSigner(KEYS["ec-p256"], CERTS["ec-p256"]).sign(Binding.new(big, "1000", CALL_ID, now=NOW, ttl=30))
    assert refused.value.reason == "too-long"
