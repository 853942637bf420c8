"""SRTP profiles and thin wrappers over pylibsrtp for one direction of one call.

libsrtp keys RTP and RTCP of a stream from one master key; stc derives a separate master key for
SRTCP, so each direction holds two libsrtp sessions: one used only for RTP, one only for RTCP.
A packet that fails is reported as an `SrtpDropped` carrying a `DropReason`, so relays count
authentication failures and replays separately and never forward either.
"""

from __future__ import annotations

import enum

import pylibsrtp

__all__ = [
    "DropReason",
    "SrtpDropped",
    "SrtpProfile",
    "SrtpProtector",
    "SrtpUnprotector",
    "UnknownSrtpProfile",
    "drop_reason",
]


class UnknownSrtpProfile(ValueError):
    """A profile name that stc does not implement."""


class SrtpProfile(enum.Enum):
    """The SRTP protection profiles stc negotiates, named as in RFC 4568 / RFC 7714."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"

    @property
    def key_length(self) -> int:
        """Master key length in bytes."""
        return 16

    @property
    def salt_length(self) -> int:
        """Master salt length in bytes (14 for AES-CM, 12 for GCM, RFC 7714 section 12)."""
        return 14 if self is SrtpProfile.AES_CM_128_HMAC_SHA1_80 else 12

    @property
    def master_length(self) -> int:
        """Length of master key || master salt, the form libsrtp takes."""
        return self.key_length + self.salt_length

    @property
    def libsrtp_profile(self) -> int:
        """The pylibsrtp `Policy` profile constant."""
        if self is SrtpProfile.AES_CM_128_HMAC_SHA1_80:
            return pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80
        return pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM

    @classmethod
    def parse(cls, name: str) -> SrtpProfile:
        """The profile called `name`; `UnknownSrtpProfile` if stc has none by that name."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise UnknownSrtpProfile(
                f"unknown SRTP profile {name!r} (known: {known})"
            ) from None


class DropReason(enum.Enum):
    """Why a packet was not protected or unprotected."""

    AUTH = "auth"  # authentication tag wrong: forged, corrupted, or keyed differently
    REPLAY = "replay"  # index already seen or older than the replay window
    MALFORMED = "malformed"  # too short, too long, not RTP/RTCP, or any other libsrtp refusal


class SrtpDropped(Exception):
    """libsrtp refused a packet; `reason` says how to count it."""

    def __init__(self, reason: DropReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason


_REASON_BY_MESSAGE = {
    "authentication failure": DropReason.AUTH,
    "replay check failed (bad index)": DropReason.REPLAY,
    "replay check failed (index too old)": DropReason.REPLAY,
}


def drop_reason(error: Exception) -> DropReason:
    """Classify an exception raised by a pylibsrtp protect/unprotect call."""
    if isinstance(error, pylibsrtp.Error):
        return _REASON_BY_MESSAGE.get(str(error), DropReason.MALFORMED)
    return DropReason.MALFORMED  # ValueError: longer than libsrtp's 1500-byte buffer


def _session(profile: SrtpProfile, master: bytes, ssrc_type: int, *, outbound: bool) -> pylibsrtp.Session:
    if len(master) != profile.master_length:
        raise ValueError(
            f"{profile.value} needs {profile.master_length} bytes of master key and salt, "
            f"got {len(master)}"
        )
    policy = pylibsrtp.Policy(key=master, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
    if outbound:
        # Never protect an (SSRC, index) twice: that reuses keystream (a two-time pad) and, under
        # GCM, the nonce. stc_wire.translator keeps outbound indexes growing; libsrtp checks it.
        policy.allow_repeat_tx = False
    return pylibsrtp.Session(policy)


class SrtpProtector:
    """Protects RTP and RTCP leaving in one direction of one call (any SSRC)."""

    __slots__ = ("_rtp", "_rtcp")

    def __init__(self, profile: SrtpProfile, srtp_master: bytes, srtcp_master: bytes) -> None:
        outbound = pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        self._rtp = _session(profile, srtp_master, outbound, outbound=True)
        self._rtcp = _session(profile, srtcp_master, outbound, outbound=True)

    def protect_rtp(self, packet: bytes) -> bytes:
        try:
            return self._rtp.protect(packet)
        except (pylibsrtp.Error, ValueError) as error:
            raise SrtpDropped(drop_reason(error), str(error)) from None

    def protect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._rtcp.protect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as error:
            raise SrtpDropped(drop_reason(error), str(error)) from None


class SrtpUnprotector:
    """Verifies and decrypts SRTP and SRTCP arriving in one direction of one call (any SSRC)."""

    __slots__ = ("_rtp", "_rtcp")

    def __init__(self, profile: SrtpProfile, srtp_master: bytes, srtcp_master: bytes) -> None:
        inbound = pylibsrtp.Policy.SSRC_ANY_INBOUND
        self._rtp = _session(profile, srtp_master, inbound, outbound=False)
        self._rtcp = _session(profile, srtcp_master, inbound, outbound=False)

    def unprotect_rtp(self, packet: bytes) -> bytes:
        try:
            return self._rtp.unprotect(packet)
        except (pylibsrtp.Error, ValueError) as error:
            raise SrtpDropped(drop_reason(error), str(error)) from None

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        try:
            return self._rtcp.unprotect_rtcp(packet)
        except (pylibsrtp.Error, ValueError) as error:
            raise SrtpDropped(drop_reason(error), str(error)) from None
