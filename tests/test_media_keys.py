"""Per-call key agreement: the documented test vector, both sides agreeing, and refusals."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from stc_wire.media_keys import (
    CallKeys,
    KeyAgreement,
    KeyAgreementError,
    ProfileMismatch,
    Side,
    derive_call_keys,
    negotiate_profile,
    transcript,
)
from stc_wire.srtp import SrtpProfile, SrtpProtector, SrtpUnprotector, UnknownSrtpProfile

# RFC 7748 section 6.1: Alice is the client, Bob the server.
CLIENT_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
SERVER_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
RFC7748_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
CALL_ID = "a84b4c76e66710@pc33.example.com"
STREAM_ID = "1"

# docs/protocol.md, "Test vector".
VECTORS = {
    SrtpProfile.AES_CM_128_HMAC_SHA1_80: (
        "3b184832e5a896ea50e43258d3b036383c65e43542abce6e3feeec96abab6076",
        "44cfaf6575eab9e4ce1b0e5875dc38476970920de9c5b1c93a04b684c3a6",
        "4a68abc5c5d1111f236c0dee0747f6e3284feab4bfe2070225ba13456081",
        "d6079760a3c5da00c2c7dbcb504cd3426cad162b9f7e176988ce281125d4",
        "c02f3641c24387299bbaea05197f9595718ea617bbdfb5b8658d3efd6d9e",
    ),
    SrtpProfile.AEAD_AES_128_GCM: (
        "1f91e6cf336e57f4956993ef020253865f7eedbd6ccceaaa1a81b580288141c4",
        "e2b8a338d770cd26ea197d554e5e16df8aa90127b7fc67018e582312",
        "2187a1994d40590e77dd492ddd6d802ada007160b1385ef0a1e9a2d8",
        "2915bdae1911d54ecda6c49885934c2781b7359e8e5543e09fb3bc0d",
        "c9f2f94fe149abebd2f2a45c3c7f52aba245aaea44596f2bcfb24af6",
    ),
}


def _pair() -> tuple[KeyAgreement, KeyAgreement]:
    return (
        KeyAgreement(Side.CLIENT, X25519PrivateKey.from_private_bytes(CLIENT_PRIVATE)),
        KeyAgreement(Side.SERVER, X25519PrivateKey.from_private_bytes(SERVER_PRIVATE)),
    )


def _as_list(keys: CallKeys) -> list[bytes]:
    return [
        keys.client_to_server_srtp,
        keys.client_to_server_srtcp,
        keys.server_to_client_srtp,
        keys.server_to_client_srtcp,
    ]


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_documented_vector(profile: SrtpProfile) -> None:
    client, server = _pair()
    salt_hex, *outputs_hex = VECTORS[profile]
    keys = client.derive(server.public_bytes, call_id=CALL_ID, stream_id=STREAM_ID, profile=profile)
    assert [k.hex() for k in _as_list(keys)] == outputs_hex
    assert all(len(k) == profile.master_length for k in _as_list(keys))
    tr = transcript(
        call_id=CALL_ID,
        stream_id=STREAM_ID,
        profile=profile,
        client_public=client.public_bytes,
        server_public=server.public_bytes,
    )
    assert hashlib.sha256(tr).hexdigest() == salt_hex


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_matches_hkdf_written_out(profile: SrtpProfile) -> None:
    """RFC 5869 extract-then-expand with hmac alone gives the same four outputs."""
    client, server = _pair()
    salt = hashlib.sha256(
        transcript(
            call_id=CALL_ID,
            stream_id=STREAM_ID,
            profile=profile,
            client_public=client.public_bytes,
            server_public=server.public_bytes,
        )
    ).digest()
    prk = hmac.new(salt, RFC7748_SHARED, "sha256").digest()
    labels = [
        b"stc client->server srtp",
        b"stc client->server srtcp",
        b"stc server->client srtp",
        b"stc server->client srtcp",
    ]
    # L <= 32, so HKDF-Expand is the first block T(1) = HMAC(PRK, info || 0x01), truncated.
    expected = [
        hmac.new(prk, label + b"\x01", "sha256").digest()[: profile.master_length]
        for label in labels
    ]
    keys = server.derive(client.public_bytes, call_id=CALL_ID, stream_id=STREAM_ID, profile=profile)
    assert _as_list(keys) == expected


def test_transcript_is_length_prefixed() -> None:
    client, server = _pair()
    tr = transcript(
        call_id="ab",
        stream_id="c",
        profile=SrtpProfile.AEAD_AES_128_GCM,
        client_public=client.public_bytes,
        server_public=server.public_bytes,
    )
    assert tr.startswith(b"\x00\x1astc media key agreement v1\x00\x02ab\x00\x01c\x00\x10AEAD_AES_128_GCM")
    assert tr.endswith(b"\x00\x20" + client.public_bytes + b"\x00\x20" + server.public_bytes)


def test_both_sides_derive_the_same_fresh_keys() -> None:
    client, server = KeyAgreement(Side.CLIENT), KeyAgreement(Side.SERVER)
    profile = SrtpProfile.AES_CM_128_HMAC_SHA1_80
    on_client = client.derive(server.public_bytes, call_id="c1", stream_id="7", profile=profile)
    on_server = server.derive(client.public_bytes, call_id="c1", stream_id="7", profile=profile)
    assert on_client == on_server
    assert len(set(_as_list(on_client))) == 4  # four distinct keys
    # And they really key SRTP: the client's protector is the server's unprotector.
    protector = SrtpProtector(profile, on_client.client_to_server_srtp, on_client.client_to_server_srtcp)
    unprotector = SrtpUnprotector(profile, on_server.client_to_server_srtp, on_server.client_to_server_srtcp)
    rtp = bytes([0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9]) + b"\xd5" * 160
    assert unprotector.unprotect_rtp(protector.protect_rtp(rtp)) == rtp


@pytest.mark.parametrize(
    "change",
    [
        {"call_id": "other-call"},
        {"stream_id": "2"},
        {"profile": SrtpProfile.AEAD_AES_128_GCM},
    ],
)
def test_every_bound_input_changes_every_key(change: dict[str, object]) -> None:
    base: dict[str, object] = {
        "call_id": CALL_ID,
        "stream_id": STREAM_ID,
        "profile": SrtpProfile.AES_CM_128_HMAC_SHA1_80,
    }
    first = _pair()[0].derive(_pair()[1].public_bytes, **base)  # type: ignore[arg-type]
    second = _pair()[0].derive(_pair()[1].public_bytes, **{**base, **change})  # type: ignore[arg-type]
    for a, b in zip(_as_list(first), _as_list(second)):
        assert a[:16] != b[:16]


def test_swapped_roles_do_not_agree() -> None:
    client, server = _pair()
    as_server = KeyAgreement(Side.SERVER, X25519PrivateKey.from_private_bytes(CLIENT_PRIVATE))
    profile = SrtpProfile.AES_CM_128_HMAC_SHA1_80
    right = client.derive(server.public_bytes, call_id=CALL_ID, stream_id=STREAM_ID, profile=profile)
    wrong = as_server.derive(server.public_bytes, call_id=CALL_ID, stream_id=STREAM_ID, profile=profile)
    assert right != wrong


@pytest.mark.parametrize(
    "small_order_point",
    [
        bytes(32),
        b"\x01" + bytes(31),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ],
)
def test_small_order_public_key_is_refused(small_order_point: bytes) -> None:
    with pytest.raises(KeyAgreementError, match="small-order"):
        KeyAgreement(Side.SERVER).derive(
            small_order_point, call_id="c", stream_id="1", profile=SrtpProfile.AEAD_AES_128_GCM
        )
    with pytest.raises(KeyAgreementError, match="all zero"):
        derive_call_keys(
            bytes(32),
            call_id="c",
            stream_id="1",
            profile=SrtpProfile.AEAD_AES_128_GCM,
            client_public=bytes(32),
            server_public=bytes(32),
        )


def test_bad_public_key_length_and_reuse_are_refused() -> None:
    client, server = _pair()
    with pytest.raises(KeyAgreementError, match="32 bytes, got 31"):
        client.derive(server.public_bytes[:31], call_id="c", stream_id="1", profile=SrtpProfile.AEAD_AES_128_GCM)
    client.derive(server.public_bytes, call_id="c", stream_id="1", profile=SrtpProfile.AEAD_AES_128_GCM)
    with pytest.raises(KeyAgreementError, match="already used"):
        client.derive(server.public_bytes, call_id="c", stream_id="1", profile=SrtpProfile.AEAD_AES_128_GCM)


def test_repr_hides_keys() -> None:
    client, server = _pair()
    keys = client.derive(
        server.public_bytes, call_id=CALL_ID, stream_id=STREAM_ID, profile=SrtpProfile.AES_CM_128_HMAC_SHA1_80
    )
    shown = repr(keys) + str(keys) + repr(client) + f"{keys!r}"
    for secret in _as_list(keys) + [CLIENT_PRIVATE, SERVER_PRIVATE, RFC7748_SHARED]:
        assert secret.hex() not in shown
        assert repr(secret) not in shown
        assert repr(secret[:8])[2:-1] not in shown
    assert "AES_CM_128_HMAC_SHA1_80" in repr(keys)


def test_call_keys_reject_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="28 bytes"):
        CallKeys(SrtpProfile.AEAD_AES_128_GCM, bytes(30), bytes(28), bytes(28), bytes(28))


def test_negotiate_profile_prefers_our_order_and_skips_unknown_names() -> None:
    cm, gcm = SrtpProfile.AES_CM_128_HMAC_SHA1_80, SrtpProfile.AEAD_AES_128_GCM
    assert negotiate_profile(["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"], [gcm, cm]) is gcm
    assert negotiate_profile(["FUTURE_PROFILE", "AES_CM_128_HMAC_SHA1_80"], [gcm, cm]) is cm


def test_negotiate_profile_mismatch_says_why() -> None:
    with pytest.raises(ProfileMismatch, match=r"offered \[AEAD_AES_256_GCM\], we support \[AES_CM_128_HMAC_SHA1_80\]"):
        negotiate_profile(["AEAD_AES_256_GCM"], [SrtpProfile.AES_CM_128_HMAC_SHA1_80])
    with pytest.raises(ProfileMismatch, match="offered \\[nothing\\]"):
        negotiate_profile([], list(SrtpProfile))


def test_profile_parse() -> None:
    assert SrtpProfile.parse("AEAD_AES_128_GCM") is SrtpProfile.AEAD_AES_128_GCM
    assert (SrtpProfile.AES_CM_128_HMAC_SHA1_80.key_length, SrtpProfile.AES_CM_128_HMAC_SHA1_80.salt_length) == (16, 14)
    assert (SrtpProfile.AEAD_AES_128_GCM.key_length, SrtpProfile.AEAD_AES_128_GCM.salt_length) == (16, 12)
    with pytest.raises(UnknownSrtpProfile, match="unknown SRTP profile 'aes_cm_128_hmac_sha1_80'"):
        SrtpProfile.parse("aes_cm_128_hmac_sha1_80")
