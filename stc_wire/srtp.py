"""SRTP profiles and thin wrappers over pylibsrtp for one direction of one call.

libsrtp keys RTP and RTCP of a stream from one master key; stc derives a separate master key for
SRTCP, so each direction holds two libsrtp sessions: one used only for RTP, one only for RTCP.
A packet that fails is reported as an `SrtpDropped` carrying a `DropReason`, so relays count
authentication failures and replays separately and never forward either.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

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


# Drop reasons by libsrtp status code, for the direct calls below.
_REASON_BY_STATUS = tuple(_REASON_BY_MESSAGE.get(message, DropReason.MALFORMED) for message in pylibsrtp.ERRORS)
_MAX_TRAILER = {"protect": 16 + 128, "protect_rtcp": 4 + 16 + 128, "unprotect": 0, "unprotect_rtcp": 0}


def _direct(session: pylibsrtp.Session, name: str) -> Callable[[bytes], bytes]:
    """`session.<name>` without pylibsrtp's per-call Python layers (a type check, an `int *`
    allocation, two method calls): one copy into the session's own buffer, the libsrtp call, one
    copy out. The hot path calls this twice per relayed packet. Falls back to the public method
    if this pylibsrtp is not laid out as expected (it reaches into its cffi binding)."""
    public: Callable[[bytes], bytes] = getattr(session, name)
    try:
        from pylibsrtp._binding import ffi, lib

        function = getattr(lib, "srtp_" + name)
        cdata, buffer, ctx = session._cdata, session._buffer, session._srtp[0]  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # pragma: no cover - another pylibsrtp layout
        def checked(packet: bytes) -> bytes:
            try:
                return public(packet)
            except (pylibsrtp.Error, ValueError) as error:
                raise SrtpDropped(drop_reason(error), str(error)) from None

        return checked
    limit = len(buffer) - _MAX_TRAILER[name]
    length = ffi.new("int *")
    reasons = _REASON_BY_STATUS

    # `_owner` keeps the session (and so `ctx`, freed with it) alive as long as this function.
    def process(packet: bytes, _owner: pylibsrtp.Session = session) -> bytes:
        size = len(packet)
        if size > limit:
            raise SrtpDropped(DropReason.MALFORMED, "packet is too long")
        buffer[0:size] = packet
        length[0] = size
        status = function(ctx, cdata, length)
        if status:
            reason = reasons[status] if status < len(reasons) else DropReason.MALFORMED
            raise SrtpDropped(reason, f"libsrtp status {status}")
        return buffer[0:length[0]]  # type: ignore[no-any-return]

    return process


def _direct_with_header(session: pylibsrtp.Session) -> Callable[[bytes, bytes], bytes] | None:
    """SRTP-protects `packet` with its first 12 bytes replaced by `header` (the translator's),
    written straight into libsrtp's buffer: no rewritten copy of the packet is ever built.
    None if this pylibsrtp is not laid out as expected."""
    try:
        from pylibsrtp._binding import ffi, lib

        function = lib.srtp_protect
        cdata, buffer, ctx = session._cdata, session._buffer, session._srtp[0]  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # pragma: no cover - another pylibsrtp layout
        return None
    limit = len(buffer) - _MAX_TRAILER["protect"]
    length = ffi.new("int *")
    reasons = _REASON_BY_STATUS

    def process(header: bytes, packet: bytes, _owner: pylibsrtp.Session = session) -> bytes:
        size = len(packet)
        if size > limit or size < 12:
            raise SrtpDropped(DropReason.MALFORMED, "packet too long or shorter than an RTP header")
        buffer[0:size] = packet
        buffer[0:12] = header
        length[0] = size
        status = function(ctx, cdata, length)
        if status:
            reason = reasons[status] if status < len(reasons) else DropReason.MALFORMED
            raise SrtpDropped(reason, f"libsrtp status {status}")
        return buffer[0:length[0]]  # type: ignore[no-any-return]

    return process


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

    __slots__ = ("_rtp", "_rtcp", "protect_rtp", "protect_rtcp", "protect_rtp_with_header")

    def __init__(self, profile: SrtpProfile, srtp_master: bytes, srtcp_master: bytes) -> None:
        outbound = pylibsrtp.Policy.SSRC_ANY_OUTBOUND
        self._rtp = _session(profile, srtp_master, outbound, outbound=True)
        self._rtcp = _session(profile, srtcp_master, outbound, outbound=True)
        # Plain attributes, not methods: the relays call them per packet (SrtpDropped on refusal).
        self.protect_rtp: Callable[[bytes], bytes] = _direct(self._rtp, "protect")
        self.protect_rtcp: Callable[[bytes], bytes] = _direct(self._rtcp, "protect_rtcp")
        # protect_rtp(header + packet[12:]) without building that packet (None: not available).
        self.protect_rtp_with_header = _direct_with_header(self._rtp)


class SrtpUnprotector:
    """Verifies and decrypts SRTP and SRTCP arriving in one direction of one call (any SSRC)."""

    __slots__ = ("_rtp", "_rtcp", "unprotect_rtp", "unprotect_rtcp")

    def __init__(self, profile: SrtpProfile, srtp_master: bytes, srtcp_master: bytes) -> None:
        inbound = pylibsrtp.Policy.SSRC_ANY_INBOUND
        self._rtp = _session(profile, srtp_master, inbound, outbound=False)
        self._rtcp = _session(profile, srtcp_master, inbound, outbound=False)
        self.unprotect_rtp: Callable[[bytes], bytes] = _direct(self._rtp, "unprotect")
        self.unprotect_rtcp: Callable[[bytes], bytes] = _direct(self._rtcp, "unprotect_rtcp")
