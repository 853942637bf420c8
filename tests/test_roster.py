"""The signed roster: canonical encoding, signatures with EC/RSA/Ed25519 keys, the client's checks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from stc_wire.identity import PeerIdentity
from stc_wire.roster import (
    MAX_SIGNED_ROSTER,
    Roster,
    RosterEntry,
    RosterError,
    RosterRejected,
    RosterSigner,
    RosterVerifier,
    RosterVersions,
    SignedRoster,
    canonical_json,
    identity_json,
    iso_utc,
)

ZOE = "Zoë Ålice-Øster"
T0 = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KEYS = {
    "ec-p256": EC_KEY,
    "ec-p384": ec.generate_private_key(ec.SECP384R1()),
    "rsa-2048": RSA_KEY,
    "ed25519": ed25519.Ed25519PrivateKey.generate(),
}


def peer(name: str, fingerprint: str) -> PeerIdentity:
    return PeerIdentity(
        display_name=name,
        subject=f"CN={name},O=ACME",
        organization="ACME",
        org_unit="Ops",
        sip_uris=(f"sip:{fingerprint[:4]}@example.org",),
        emails=(),
        issuer="CN=stc test CA",
        serial=0xABCDEF,
        fingerprint_sha256=fingerprint,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=365),
    )


def entries(room: str = "1000") -> tuple[RosterEntry, ...]:
    return (
        RosterEntry("1714557600.3", room, None, "PJSIP/intruder-00000003", '"Mallory" <666>', "2026-05-01T10:00:05+0000"),
        RosterEntry("1714557600.1", room, identity_json(peer(ZOE, "ab" * 32)), "PJSIP/stc-00000001", None, iso_utc(T0), True),
        RosterEntry("1714557600.2", room, identity_json(peer("Bob 李", "cd" * 32)), "PJSIP/stc-00000002", None, iso_utc(T0)),
    )


def roster(version: int = 100, room: str = "1000", **kwargs: Any) -> Roster:
    return Roster("stc-server-1", room, version, iso_utc(T0 + timedelta(seconds=6)), entries=entries(room), **kwargs)


def test_entries_are_sorted_and_split_by_authentication() -> None:
    r = roster()
    assert [e.channel_id for e in r.entries] == ["1714557600.1", "1714557600.2", "1714557600.3"]
    assert [e.channel_id for e in r.unauthenticated] == ["1714557600.3"]
    assert [e.display_name for e in r.authenticated] == [ZOE, "Bob 李"]
    assert r.unauthenticated[0].display_name == '"Mallory" <666>'
    assert r.entries[2].joined_at == "2026-05-01T10:00:05.000000Z"  # ARI's +0000 normalized


def test_canonical_bytes_are_sorted_compact_utf8() -> None:
    small = Roster(
        "srv", "1000", 7, "2026-05-01T10:00:00Z",
        entries=(RosterEntry("1.1", "1000", None, "PJSIP/x-1", ZOE, "2026-05-01T09:59:00+0000"),),
    )
    expected = (
        '{"entries":[{"caller_id":"Zoë Ålice-Øster","channel_id":"1.1","channel_name":"PJSIP/x-1",'
        '"identity":null,"joined_at":"2026-05-01T09:59:00.000000Z","room":"1000","talking":false}],'
        '"format":1,"issued_at":"2026-05-01T10:00:00.000000Z","room":"1000","server_id":"srv",'
        '"state":"ok","version":7}'
    ).encode("utf-8")
    assert small.canonical_bytes() == expected
    r = roster()
    data = r.canonical_bytes()
    # The same roster built from entries in another order encodes identically.
    shuffled = Roster("stc-server-1", "1000", 100, iso_utc(T0 + timedelta(seconds=6)), entries=entries()[::-1])
    assert shuffled.canonical_bytes() == data


def test_canonical_json_refuses_lone_surrogates_and_nan() -> None:
    with pytest.raises(RosterError):
        canonical_json({"x": "\ud800"})
    with pytest.raises(RosterError):
        canonical_json({"x": float("nan")})


def test_json_round_trip_keeps_unicode_names() -> None:
    r = roster()
    again = Roster.from_bytes(r.canonical_bytes())
    assert again == r
    assert again.entries[0].peer_identity() == peer(ZOE, "ab" * 32)


@pytest.mark.parametrize("key_name", sorted(KEYS))
def test_sign_and_verify_round_trip(key_name: str) -> None:
    key = KEYS[key_name]
    signed = RosterSigner(key).sign(roster())
    wire = signed.to_bytes()
    assert SignedRoster.from_bytes(wire) == signed
    accepted = RosterVerifier(key.public_key(), room="1000", server_id="stc-server-1").accept(wire)
    assert accepted == roster()
    assert accepted.entries[0].display_name == ZOE


@pytest.mark.parametrize("key_name", ["ec-p256", "rsa-2048"])
def test_tampering_with_any_byte_is_refused(key_name: str) -> None:
    key = KEYS[key_name]
    signed = RosterSigner(key).sign(roster())
    wire = signed.to_bytes()
    verifier = RosterVerifier(key.public_key())
    siglen_at = 10 + len(signed.payload)
    framing = set(range(0, 5)) | set(range(6, 10)) | {siglen_at, siglen_at + 1}  # magic, format, lengths
    for offset in range(len(wire)):
        tampered = bytearray(wire)
        tampered[offset] ^= 0x01
        with pytest.raises(RosterRejected) as info:
            verifier.accept(bytes(tampered))
        expected = "malformed" if offset in framing else "bad-signature"
        assert info.value.reason == expected, offset
    assert verifier.accept(wire) == roster()


def test_a_changed_name_with_a_valid_envelope_is_a_bad_signature() -> None:
    signed = RosterSigner(EC_KEY).sign(roster())
    forged = SignedRoster(signed.algorithm, signed.payload.replace("Zoë".encode(), "Zoe".encode()), signed.signature)
    with pytest.raises(RosterRejected) as info:
        RosterVerifier(EC_KEY.public_key()).accept(forged)
    assert info.value.reason == "bad-signature"


def test_another_servers_key_is_a_bad_signature() -> None:
    signed = RosterSigner(ec.generate_private_key(ec.SECP256R1())).sign(roster())
    with pytest.raises(RosterRejected) as info:
        RosterVerifier(EC_KEY.public_key()).accept(signed)
    assert info.value.reason == "bad-signature"


def test_algorithm_must_match_the_server_key() -> None:
    signed = RosterSigner(KEYS["ed25519"]).sign(roster())
    relabelled = SignedRoster(1, signed.payload, signed.signature)
    with pytest.raises(RosterRejected, match="bad-signature"):
        RosterVerifier(KEYS["ed25519"].public_key()).accept(relabelled)
    with pytest.raises(RosterRejected, match="bad-signature"):
        RosterVerifier(EC_KEY.public_key()).accept(signed)


def test_versions_must_grow_and_replays_are_named() -> None:
    signer = RosterSigner(EC_KEY)
    verifier = RosterVerifier(EC_KEY.public_key())
    v100, v101 = signer.sign(roster(100)), signer.sign(roster(101))
    assert verifier.accept(v100).version == 100
    assert verifier.accept(v101).version == 101
    for old, reason in ((v101, "replayed"), (v100, "replayed"), (signer.sign(roster(99)), "stale-version")):
        with pytest.raises(RosterRejected) as info:
            verifier.accept(old)
        assert info.value.reason == reason
    # A different roster with the current version number is stale too.
    with pytest.raises(RosterRejected, match="stale-version"):
        verifier.accept(signer.sign(roster(101, state="unknown")))
    assert verifier.last_version("1000") == 101
    # Versions are per room.
    assert verifier.accept(signer.sign(roster(5, room="2000"))).room == "2000"


def test_rejected_rosters_do_not_move_the_version() -> None:
    signer = RosterSigner(EC_KEY)
    verifier = RosterVerifier(EC_KEY.public_key(), room="1000")
    with pytest.raises(RosterRejected, match="wrong-room"):
        verifier.accept(signer.sign(roster(500, room="2000")))
    assert verifier.last_version("2000") is None
    assert verifier.accept(signer.sign(roster(100))).version == 100


def test_wrong_server_id() -> None:
    signed = RosterSigner(EC_KEY).sign(roster())
    with pytest.raises(RosterRejected) as info:
        RosterVerifier(EC_KEY.public_key(), server_id="other").accept(signed)
    assert info.value.reason == "wrong-server"


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"XXXX" + bytes(20),
        b"STCR\x02\x01" + bytes(10),
        b"STCR\x01\x01\x00\x00\x10\x00" + b"{}",
        b"STCR\x01\x01\x00\x00\x00\x02{}\x00\x05abc",
        b"STCR" + bytes(MAX_SIGNED_ROSTER),
    ],
)
def test_malformed_envelopes(wire: bytes) -> None:
    with pytest.raises(RosterRejected) as info:
        RosterVerifier(EC_KEY.public_key()).accept(wire)
    assert info.value.reason == "malformed"


def sign_payload(payload: bytes) -> SignedRoster:
    """A correctly signed envelope around any payload, to reach the payload checks."""
    from stc_wire.roster import _signed_data

    return SignedRoster(1, payload, EC_KEY.sign(_signed_data(1, payload), ec.ECDSA(hashes.SHA256())))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: o.update(format=2),
        lambda o: o.update(version=-1),
        lambda o: o.update(version=True),
        lambda o: o.update(state="maybe"),
        lambda o: o.update(extra=1),
        lambda o: o.update(issued_at="yesterday"),
        lambda o: o["entries"][0].update(identity={"display_name": "x"}),
        lambda o: o["entries"][0].update(caller_id="spoof"),
        lambda o: o["entries"][1].update(room="2000"),
        lambda o: o["entries"].append(dict(o["entries"][0])),
        lambda o: o["entries"][0].update(talking="yes"),
    ],
)
def test_malformed_payloads_are_refused(mutate: Any) -> None:
    obj = roster().to_json()
    mutate(obj)
    with pytest.raises(RosterRejected) as info:
        RosterVerifier(EC_KEY.public_key()).accept(sign_payload(canonical_json(obj)))
    assert info.value.reason == "malformed"
    with pytest.raises(RosterRejected, match="malformed"):
        RosterVerifier(EC_KEY.public_key()).accept(sign_payload(b"\xff not json"))


def test_verifier_from_certificate() -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stc-server")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(RSA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
        .sign(RSA_KEY, hashes.SHA256())
    )
    verifier = RosterVerifier.from_certificate(cert)
    assert verifier.accept(RosterSigner(RSA_KEY).sign(roster())).version == 100


def test_weak_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="RSA key of 1024 bits"):
        RosterSigner(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    with pytest.raises(ValueError, match="unsupported EC curve"):
        RosterSigner(ec.generate_private_key(ec.SECP256K1()))


def test_versions_grow_per_room_and_survive_a_restart() -> None:
    versions = RosterVersions()
    now = int(T0.timestamp() * 1_000_000)
    first = versions.next("1000", now)
    assert first == now
    assert versions.next("1000", now) == now + 1  # same microsecond: still greater
    assert versions.next("2000", now) == now
    assert versions.next("1000", now - 5_000_000) == now + 2  # clock went back: still greater
    restarted = RosterVersions()
    assert restarted.next("1000", now + 1_000_000) > now + 2


def test_entry_invariants() -> None:
    with pytest.raises(RosterError, match="no caller_id"):
        RosterEntry("1.1", "1000", identity_json(peer(ZOE, "ab" * 32)), "PJSIP/x", "spoof", iso_utc(T0))
    with pytest.raises(RosterError, match="time zone"):
        RosterEntry("1.1", "1000", None, "PJSIP/x", None, "2026-05-01T10:00:00")
    with pytest.raises(RosterError, match="room"):
        Roster("s", "1000", 1, iso_utc(T0), entries=entries("2000"))


def test_rosters_for_another_room_or_server_or_out_of_time_are_refused() -> None:
    key = KEYS["ec-p256"]
    issued = T0 + timedelta(seconds=6)  # see roster()
    now = issued + timedelta(seconds=5)

    def verifier(**kwargs: Any) -> RosterVerifier:
        kwargs.setdefault("server_id", "stc-server-1")
        return RosterVerifier(key.public_key(), max_age=60, clock=lambda: now, **kwargs)

    signed = RosterSigner(key).sign(roster()).to_bytes()
    assert verifier().accept(signed, rooms={"1000", "2000"}) == roster()
    cases = {
        "wrong-room": lambda: verifier().accept(signed, rooms={"2000"}),
        "wrong-server": lambda: verifier(server_id="another-server").accept(signed, rooms={"1000"}),
    }
    for reason, attempt in cases.items():
        with pytest.raises(RosterRejected) as refused:
            attempt()
        assert refused.value.reason == reason
    with pytest.raises(RosterRejected) as refused:
        verifier().accept(signed, rooms=set())
    assert refused.value.reason == "wrong-room" and "not in a call" in str(refused.value)

    now = issued + timedelta(seconds=61)
    with pytest.raises(RosterRejected) as refused:
        verifier().accept(signed)
    assert refused.value.reason == "too-old"
    now = issued - timedelta(seconds=61)
    with pytest.raises(RosterRejected) as refused:
        verifier().accept(signed)
    assert refused.value.reason == "from-the-future"
    now = issued - timedelta(seconds=59)  # within the allowed skew
    assert verifier().accept(signed) == roster()
