"""Per-call SRTP key agreement: ephemeral X25519 inside the authenticated tunnel, then HKDF-SHA256.

Each side of a call makes an ephemeral X25519 key and sends its public key in a tunnel frame.
Both derive, from the shared secret and a transcript that binds the call, four SRTP master
keys (key || salt): one for SRTP and one for SRTCP in each direction. The exact encoding is in
docs/protocol.md (Per-call SRTP key derivation), with a test vector that tests/test_media_keys.py checks.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stc_wire.srtp import SrtpProfile, UnknownSrtpProfile

__all__ = [
    "CallKeys",
    "KeyAgreement",
    "KeyAgreementError",
    "ProfileMismatch",
    "Side",
    "TRANSCRIPT_LABEL",
    "derive_call_keys",
    "negotiate_profile",
    "transcript",
]

#: First field of the transcript; a new encoding gets a new label.
TRANSCRIPT_LABEL = b"stc media key agreement v1"
PUBLIC_KEY_LENGTH = 32

_INFO_C2S_SRTP = b"stc client->server srtp"
_INFO_C2S_SRTCP = b"stc client->server srtcp"
_INFO_S2C_SRTP = b"stc server->client srtp"
_INFO_S2C_SRTCP = b"stc server->client srtcp"


class KeyAgreementError(ValueError):
    """The key agreement for a call cannot go on (bad peer key, reuse, bad input)."""


class ProfileMismatch(KeyAgreementError):
    """Client and server share no SRTP profile."""


class Side(enum.Enum):
    """Which end of the tunnel a `KeyAgreement` belongs to."""

    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, repr=False)
class CallKeys:
    """The four SRTP master keys (master key || master salt) of one call."""

    profile: SrtpProfile
    client_to_server_srtp: bytes
    client_to_server_srtcp: bytes
    server_to_client_srtp: bytes
    server_to_client_srtcp: bytes

    def __post_init__(self) -> None:
        for name in (
            "client_to_server_srtp",
            "client_to_server_srtcp",
            "server_to_client_srtp",
            "server_to_client_srtcp",
        ):
            if len(getattr(self, name)) != self.profile.master_length:
                raise ValueError(
                    f"{name} must be {self.profile.master_length} bytes for {self.profile.value}"
                )

    def __repr__(self) -> str:  # never show key material (logs, tracebacks)
        return f"CallKeys(profile={self.profile.value}, keys=<hidden>)"


def _field(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise KeyAgreementError(f"transcript field too long ({len(value)} bytes, max 65535)")
    return len(value).to_bytes(2, "big") + value


def transcript(
    *,
    call_id: str,
    stream_id: str,
    profile: SrtpProfile,
    client_public: bytes,
    server_public: bytes,
) -> bytes:
    """The bytes hashed into the HKDF salt: each field as a 2-byte big-endian length, then it."""
    for name, key in (("client", client_public), ("server", server_public)):
        if len(key) != PUBLIC_KEY_LENGTH:
            raise KeyAgreementError(f"{name} public key must be 32 bytes, got {len(key)}")
    return b"".join(
        _field(value)
        for value in (
            TRANSCRIPT_LABEL,
            call_id.encode("utf-8"),
            stream_id.encode("utf-8"),
            profile.value.encode("ascii"),
            client_public,
            server_public,
        )
    )


def derive_call_keys(
    shared_secret: bytes,
    *,
    call_id: str,
    stream_id: str,
    profile: SrtpProfile,
    client_public: bytes,
    server_public: bytes,
) -> CallKeys:
    """HKDF-SHA256(IKM=shared_secret, salt=SHA-256(transcript)) expanded under four labels."""
    if len(shared_secret) != 32:
        raise KeyAgreementError(f"X25519 shared secret must be 32 bytes, got {len(shared_secret)}")
    if hmac.compare_digest(shared_secret, bytes(32)):
        raise KeyAgreementError(
            "X25519 shared secret is all zero: the peer sent a small-order public key"
        )
    salt = hashlib.sha256(
        transcript(
            call_id=call_id,
            stream_id=stream_id,
            profile=profile,
            client_public=client_public,
            server_public=server_public,
        )
    ).digest()

    def expand(info: bytes) -> bytes:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=profile.master_length, salt=salt, info=info)
        return hkdf.derive(shared_secret)

    return CallKeys(
        profile=profile,
        client_to_server_srtp=expand(_INFO_C2S_SRTP),
        client_to_server_srtcp=expand(_INFO_C2S_SRTCP),
        server_to_client_srtp=expand(_INFO_S2C_SRTP),
        server_to_client_srtcp=expand(_INFO_S2C_SRTCP),
    )


class KeyAgreement:
    """One side's ephemeral X25519 key for one call; `derive` may be called once."""

    def __init__(self, side: Side, private_key: X25519PrivateKey | None = None) -> None:
        self.side = side
        self._private: X25519PrivateKey | None = (
            X25519PrivateKey.generate() if private_key is None else private_key
        )
        self.public_bytes: bytes = self._private.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )

    def __repr__(self) -> str:
        return f"KeyAgreement(side={self.side.value}, used={self._private is None})"

    def derive(
        self, peer_public: bytes, *, call_id: str, stream_id: str, profile: SrtpProfile
    ) -> CallKeys:
        """The call's keys from the peer's 32-byte public key; forgets the private key."""
        if self._private is None:
            raise KeyAgreementError("this ephemeral key was already used for a call")
        if len(peer_public) != PUBLIC_KEY_LENGTH:
            raise KeyAgreementError(
                f"peer public key must be {PUBLIC_KEY_LENGTH} bytes, got {len(peer_public)}"
            )
        private, self._private = self._private, None
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:
            # cryptography refuses an all-zero result itself; say why in our words.
            raise KeyAgreementError(
                "X25519 shared secret is all zero: the peer sent a small-order public key"
            ) from None
        if self.side is Side.CLIENT:
            client_public, server_public = self.public_bytes, peer_public
        else:
            client_public, server_public = peer_public, self.public_bytes
        return derive_call_keys(
            shared,
            call_id=call_id,
            stream_id=stream_id,
            profile=profile,
            client_public=client_public,
            server_public=server_public,
        )


def negotiate_profile(offered: Sequence[str], supported: Sequence[SrtpProfile]) -> SrtpProfile:
    """The first of `supported` (our preference order) that the peer `offered` by name.

    Names we do not know are skipped, so a peer may offer newer profiles first.
    """
    offered_profiles = set()
    for name in offered:
        try:
            offered_profiles.add(SrtpProfile.parse(name))
        except UnknownSrtpProfile:
            continue
    for profile in supported:
        if profile in offered_profiles:
            return profile
    raise ProfileMismatch(
        "no common SRTP profile: peer offered "
        f"[{', '.join(offered) or 'nothing'}], we support "
        f"[{', '.join(p.value for p in supported) or 'nothing'}]"
    )
