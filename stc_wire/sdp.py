"""SDP (RFC 4566 / RFC 8866) as values, and the rewrite that sends media through the stc relay.

Modelled on aiortc's sdp.py: `SessionDescription.parse(text)` gives a value and
`str(value)` gives the text back (CRLF line ends, line order preserved). Every
line is kept as a `(type, value)` pair in its original order; the typed views
(origin, connection, media line, attributes) are read from those lines and are
validated at parse time, so a malformed description fails early with SdpError.

`rewrite_for_relay` returns a new description whose audio goes to the relay.
It refuses (RelayRefused) anything it cannot rewrite safely: passing such an
SDP through would let media flow around the relay, in the clear.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

logger = logging.getLogger(__name__)

MAX_SDP_SIZE = 64 * 1024
"""Longest SDP text accepted (characters); a SIP datagram cannot carry more anyway."""

SdpLine = tuple[str, str]
"""One line: its type letter and everything after the '='."""
Attribute = tuple[str, "str | None"]
"""`a=name:value` as (name, value); a flag attribute `a=name` as (name, None)."""
Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]

DIRECTIONS: tuple[Direction, ...] = ("sendrecv", "sendonly", "recvonly", "inactive")
RELAYABLE_PROTOS = frozenset({"RTP/AVP", "RTP/AVPF"})
"""Plain RTP profiles: the only media the relay can turn into SRTP."""

# Attributes that describe the phone's own transport or keys and would be
# wrong (or unsafe) once media goes through the relay: ICE candidates point
# around it, SDES/DTLS/ZRTP/MIKEY keying would be end-to-end with a party that
# never sees the keys, and rtcp-mux the relay does not offer.
RELAY_DROPPED_ATTRIBUTES = frozenset(
    {
        "candidate",
        "remote-candidates",
        "ice-ufrag",
        "ice-pwd",
        "ice-options",
        "ice-lite",
        "ice-mismatch",
        "ice-pacing",
        "end-of-candidates",
        "crypto",
        "fingerprint",
        "setup",
        "tls-id",
        "zrtp-hash",
        "key-mgmt",
        "rtcp-mux",
        "rtcp-mux-only",
    }
)

# RFC 3551 table 4: static audio payload types (encoding/clock rate[/channels]).
STATIC_AUDIO_PAYLOADS: dict[int, str] = {
    0: "PCMU/8000",
    3: "GSM/8000",
    4: "G723/8000",
    5: "DVI4/8000",
    6: "DVI4/16000",
    7: "LPC/8000",
    8: "PCMA/8000",
    9: "G722/8000",
    10: "L16/44100/2",
    11: "L16/44100",
    12: "QCELP/8000",
    13: "CN/8000",
    14: "MPA/90000",
    15: "G728/8000",
    16: "DVI4/11025",
    17: "DVI4/22050",
    18: "G729/8000",
}

_LINE_RE = re.compile(r"([a-z])=(.*)\Z", re.DOTALL)
_MEDIA_RE = re.compile(r"(\S+) ([0-9]+)(?:/([0-9]+))? (\S+)((?: \S+)*)\Z")
_RTPMAP_RE = re.compile(r"([0-9]{1,3}) ([^\s/]+/[0-9]+(?:/[0-9]+)?)\Z")
_RTCP_RE = re.compile(r"([0-9]+)(?: (\S+) (\S+) (\S+))?\Z")
_DIGITS_RE = re.compile(r"[0-9]+\Z")
_MAX_VERSION_DIGITS = 64


class SdpError(Exception):
    """Text that is not a valid session description."""


class RelayRefused(SdpError):
    """A valid description the relay cannot rewrite safely; answer the call with 488."""


def _check_port(port: int, what: str) -> None:
    if not 0 < port <= 65535:
        raise ValueError(f"{what} {port} is not in 1-65535")


@dataclass(frozen=True)
class Origin:
    """`o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>`."""

    username: str
    session_id: str
    session_version: int
    net_type: str
    addr_type: str
    address: str

    @classmethod
    def parse(cls, value: str) -> Origin:
        fields = value.split(" ")
        if len(fields) != 6 or not all(fields):
            raise SdpError(f"malformed o= line {value!r}")
        if not _DIGITS_RE.match(fields[1]) or not _DIGITS_RE.match(fields[2]):
            raise SdpError(f"o= session id and version must be numbers: {value!r}")
        if len(fields[2]) > _MAX_VERSION_DIGITS:
            raise SdpError(f"o= session version longer than {_MAX_VERSION_DIGITS} digits")
        return cls(fields[0], fields[1], int(fields[2]), fields[3], fields[4], fields[5])

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.net_type} {self.addr_type} {self.address}"
        )


@dataclass(frozen=True)
class Connection:
    """`c=<nettype> <addrtype> <address>[/<ttl>][/<count>]`."""

    net_type: str
    addr_type: str
    address: str
    suffix: str = ""
    """The multicast '/ttl[/count]' part, or ''."""

    @classmethod
    def parse(cls, value: str) -> Connection:
        fields = value.split(" ")
        if len(fields) != 3 or not all(fields):
            raise SdpError(f"malformed c= line {value!r}")
        address, slash, suffix = fields[2].partition("/")
        if not address:
            raise SdpError(f"malformed c= line {value!r}")
        return cls(fields[0], fields[1], address, slash + suffix)

    @property
    def is_unspecified(self) -> bool:
        """c=IN IP4 0.0.0.0 (or ::): the RFC 2543 way to put a call on hold."""
        return self.address in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.net_type} {self.addr_type} {self.address}{self.suffix}"


def _parse_attribute(value: str) -> Attribute:
    name, colon, rest = value.partition(":")
    return (name, rest if colon else None)


def _format_attribute(name: str, value: str | None) -> str:
    return name if value is None else f"{name}:{value}"


def _attributes(lines: tuple[SdpLine, ...]) -> tuple[Attribute, ...]:
    return tuple(_parse_attribute(value) for kind, value in lines if kind == "a")


def _first_attribute(lines: tuple[SdpLine, ...], name: str) -> str | None:
    for attr, value in _attributes(lines):
        if attr == name:
            return "" if value is None else value
    return None


def _connection(lines: tuple[SdpLine, ...]) -> Connection | None:
    for kind, value in lines:
        if kind == "c":
            return Connection.parse(value)
    return None


def _direction(lines: tuple[SdpLine, ...]) -> Direction | None:
    for name, _ in _attributes(lines):
        for direction in DIRECTIONS:
            if name == direction:
                return direction
    return None


@dataclass(frozen=True)
class MediaDescription:
    """One `m=` section: its media line, then its own lines (i, c, b, k, a) in order."""

    kind: str
    port: int
    port_count: int | None
    proto: str
    formats: tuple[str, ...]
    lines: tuple[SdpLine, ...] = ()

    @classmethod
    def parse_media_line(cls, value: str) -> MediaDescription:
        match = _MEDIA_RE.match(value)
        if match is None:
            raise SdpError(f"malformed m= line {value!r}")
        kind, port, count, proto, formats = match.groups()
        # Lengths first: int() of thousands of digits is slow, and refused past 4300.
        if len(port) > 5 or int(port) > 65535:
            raise SdpError(f"m= port {port} is not in 0-65535")
        if count is not None and (len(count) > 5 or int(count) == 0):
            raise SdpError(f"m= port count {count} is not in 1-99999")
        return cls(kind, int(port), int(count) if count else None, proto, tuple(formats.split()))

    @property
    def media_line(self) -> str:
        count = f"/{self.port_count}" if self.port_count is not None else ""
        formats = "".join(f" {fmt}" for fmt in self.formats)
        return f"{self.kind} {self.port}{count} {self.proto}{formats}"

    @property
    def is_active(self) -> bool:
        """Port 0 means declined or disabled (RFC 3264 section 6, 8.2)."""
        return self.port != 0

    @property
    def connection(self) -> Connection | None:
        """The media-level c= line (see `effective_connection` for the session fallback)."""
        return _connection(self.lines)

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        return _attributes(self.lines)

    def attribute(self, name: str) -> str | None:
        """Value of the first `a=name:...` ('' for a flag), or None."""
        return _first_attribute(self.lines, name)

    @property
    def direction(self) -> Direction | None:
        """The media-level direction attribute, or None (then the session's applies)."""
        return _direction(self.lines)

    def __str__(self) -> str:
        return "".join(f"{kind}={value}\r\n" for kind, value in [("m", self.media_line), *self.lines])


@dataclass(frozen=True)
class SessionDescription:
    """A whole description: session-level lines in order (v= first), then the media sections."""

    lines: tuple[SdpLine, ...]
    media: tuple[MediaDescription, ...] = ()

    @classmethod
    def parse(cls, text: str) -> SessionDescription:
        if len(text) > MAX_SDP_SIZE:
            raise SdpError(f"SDP of {len(text)} characters exceeds the limit of {MAX_SDP_SIZE}")
        session: list[SdpLine] = []
        media: list[MediaDescription] = []
        current: list[SdpLine] | None = None
        for raw in re.split(r"\r\n|\n", text):
            if not raw:
                continue  # trailing (or stray) empty lines carry nothing
            match = _LINE_RE.match(raw)
            if match is None:
                raise SdpError(f"malformed SDP line {raw[:80]!r}")
            kind, value = match.groups()
            if "\r" in value or "\x00" in value:
                raise SdpError(f"control character in SDP line {raw[:80]!r}")
            if not session:
                if (kind, value) != ("v", "0"):
                    raise SdpError(f"SDP must start with v=0, not {raw[:80]!r}")
            elif kind == "v":
                raise SdpError("second v= line")
            if kind == "m":
                if current is not None:
                    media[-1] = replace(media[-1], lines=tuple(current))
                media.append(MediaDescription.parse_media_line(value))
                current = []
                continue
            _validate_line(kind, value, in_media=current is not None)
            (session if current is None else current).append((kind, value))
        if current is not None:
            media[-1] = replace(media[-1], lines=tuple(current))
        if not session:
            raise SdpError("empty SDP")
        origins = [value for kind, value in session if kind == "o"]
        if len(origins) != 1:
            raise SdpError(f"SDP needs exactly one o= line, found {len(origins)}")
        return cls(tuple(session), tuple(media))

    @classmethod
    def from_bytes(cls, data: bytes) -> SessionDescription:
        """Parse a SIP body (UTF-8, RFC 8866 section 5)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(f"SDP is not UTF-8: {exc}") from None
        return cls.parse(text)

    def to_bytes(self) -> bytes:
        return str(self).encode("utf-8")

    def __str__(self) -> str:
        head = "".join(f"{kind}={value}\r\n" for kind, value in self.lines)
        return head + "".join(str(m) for m in self.media)

    # -- typed views of the session-level lines ------------------------------
    def _value(self, kind: str) -> str | None:
        for k, value in self.lines:
            if k == kind:
                return value
        return None

    @property
    def version(self) -> int:
        return int(self._value("v") or "0")

    @property
    def origin(self) -> Origin:
        value = self._value("o")
        assert value is not None  # checked by parse
        return Origin.parse(value)

    @property
    def name(self) -> str | None:
        """The s= line."""
        return self._value("s")

    @property
    def timing(self) -> str | None:
        """The first t= line as written ('0 0')."""
        return self._value("t")

    @property
    def connection(self) -> Connection | None:
        return _connection(self.lines)

    @property
    def attributes(self) -> tuple[Attribute, ...]:
        return _attributes(self.lines)

    def attribute(self, name: str) -> str | None:
        return _first_attribute(self.lines, name)

    @property
    def direction(self) -> Direction | None:
        return _direction(self.lines)

    def effective_connection(self, media: MediaDescription) -> Connection | None:
        """Where a media section's address comes from: its own c=, else the session's."""
        return media.connection or self.connection


def _validate_line(kind: str, value: str, *, in_media: bool) -> None:
    if kind == "o":
        if in_media:
            raise SdpError("o= line inside a media section")
        Origin.parse(value)
    elif kind == "c":
        Connection.parse(value)
    elif kind == "a":
        name, attr_value = _parse_attribute(value)
        if not name:
            raise SdpError(f"attribute without a name: a={value!r}")
        if name == "rtpmap" and (attr_value is None or not _RTPMAP_RE.match(attr_value)):
            raise SdpError(f"malformed a=rtpmap:{attr_value}")
        if name == "rtcp" and (attr_value is None or not _valid_rtcp(attr_value)):
            raise SdpError(f"malformed a=rtcp:{attr_value}")


def _valid_rtcp(value: str) -> bool:
    match = _RTCP_RE.match(value)
    return match is not None and len(match.group(1)) <= 5 and 0 < int(match.group(1)) <= 65535


# ---------------------------------------------------------------------------
# What a proxy asks of a description
# ---------------------------------------------------------------------------


def codecs(media: MediaDescription) -> dict[int, str]:
    """Payload type -> 'encoding/rate[/channels]' for the formats of an m= line.

    a=rtpmap entries win; static audio types (0 PCMU, 8 PCMA, ...) need none.
    Dynamic types without an rtpmap, and non-numeric formats, are left out.
    """
    rtpmaps: dict[int, str] = {}
    for name, value in media.attributes:
        if name == "rtpmap" and value is not None:
            match = _RTPMAP_RE.match(value)
            if match is not None:
                rtpmaps.setdefault(int(match.group(1)), match.group(2))
    result: dict[int, str] = {}
    for fmt in media.formats:
        if not fmt.isascii() or not fmt.isdigit() or len(fmt) > 3 or int(fmt) > 127:
            continue
        pt = int(fmt)
        if pt in rtpmaps:
            result[pt] = rtpmaps[pt]
        elif media.kind == "audio" and pt in STATIC_AUDIO_PAYLOADS:
            result[pt] = STATIC_AUDIO_PAYLOADS[pt]
    return result


class AudioEndpoint(NamedTuple):
    """Where a party wants to receive its audio."""

    address: str
    """As written in c=: an IP literal, possibly 0.0.0.0 (hold), or a host name."""
    rtp_port: int
    rtcp_port: int
    """From a=rtcp (RFC 3605) if present, else rtp_port + 1."""


def _relay_audio_index(sd: SessionDescription, *, decline_non_audio: bool) -> int:
    """Index of the one audio section the relay will carry; RelayRefused if there is none safe."""
    active = [(i, m) for i, m in enumerate(sd.media) if m.is_active]
    audio = [(i, m) for i, m in active if m.kind == "audio"]
    if not audio:
        raise RelayRefused("no active audio stream")
    if len(audio) > 1:
        raise RelayRefused(f"{len(audio)} active audio streams; the relay carries one")
    others = [m.kind for _, m in active if m.kind != "audio"]
    if others and not decline_non_audio:
        raise RelayRefused(f"active {others[0]} stream; only audio is relayed")
    index, media = audio[0]
    if media.proto.upper() not in RELAYABLE_PROTOS:
        # RTP/SAVP, RTP/SAVPF, UDP/TLS/RTP/SAVPF...: the phone keys its own
        # SRTP or DTLS, which the relay can neither see nor re-key.
        raise RelayRefused(f"audio transport {media.proto} is not plain RTP/AVP or RTP/AVPF")
    if media.port_count not in (None, 1):
        raise RelayRefused(f"audio stream uses {media.port_count} ports; the relay offers one")
    if _rtcp_port(media) > 65535:
        raise RelayRefused(f"audio port {media.port} leaves no port for RTCP")
    connection = sd.effective_connection(media)
    if connection is None:
        raise RelayRefused("no connection address for the audio stream")
    if connection.net_type != "IN" or connection.addr_type not in ("IP4", "IP6"):
        raise RelayRefused(
            f"audio connection type {connection.net_type} {connection.addr_type} is not IN IP4/IP6"
        )
    if connection.suffix or _is_multicast(connection.address):
        raise RelayRefused(f"audio connection {connection} is multicast")
    return index


def _is_multicast(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_multicast
    except ValueError:
        return False  # a host name


def _rtcp_port(media: MediaDescription) -> int:
    value = media.attribute("rtcp")
    if value:
        return int(value.split(" ", 1)[0])
    return media.port + 1


def audio_endpoint(sd: SessionDescription) -> AudioEndpoint:
    """Address, RTP port and RTCP port of the audio stream the relay would carry.

    Raises RelayRefused on the same descriptions `rewrite_for_relay` refuses.
    An address in a=rtcp differing from c= is not reported: the relay learns
    the real RTCP source from the packets (symmetric RTP).
    """
    index = _relay_audio_index(sd, decline_non_audio=True)
    media = sd.media[index]
    connection = sd.effective_connection(media)
    assert connection is not None  # checked above
    return AudioEndpoint(connection.address, media.port, _rtcp_port(media))


def _audio_section(sd: SessionDescription) -> MediaDescription | None:
    for media in sd.media:
        if media.kind == "audio" and media.is_active:
            return media
    return None


def media_direction(sd: SessionDescription) -> Direction:
    """Direction of the (first active) audio stream: media-level attribute, else session-level,
    else sendrecv; 'inactive' when no audio stream is active."""
    media = _audio_section(sd)
    if media is None:
        return "inactive"
    return media.direction or sd.direction or "sendrecv"


def is_hold(sd: SessionDescription) -> bool:
    """Whether the sender of this description puts the call on hold (RFC 6337 section 5.3):
    a=sendonly or a=inactive, or the old RFC 2543 c=0.0.0.0."""
    media = _audio_section(sd)
    if media is None:
        return True
    connection = sd.effective_connection(media)
    if connection is not None and connection.is_unspecified:
        return True
    return media_direction(sd) in ("sendonly", "inactive")


# ---------------------------------------------------------------------------
# The relay rewrite
# ---------------------------------------------------------------------------


def _address_type(address: str) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"relay address {address!r} is not an IP address") from None
    return "IP4" if parsed.version == 4 else "IP6"


def _relay_connection(old: str, address: str, addr_type: str) -> str:
    connection = Connection.parse(old)
    if connection.is_unspecified:
        # Keep an RFC 2543 hold as a hold: the far end must still send nothing.
        return old
    return str(Connection("IN", addr_type, address))


def _drop_attributes(lines: tuple[SdpLine, ...]) -> list[SdpLine]:
    return [
        (kind, value)
        for kind, value in lines
        if not (kind == "a" and _parse_attribute(value)[0] in RELAY_DROPPED_ATTRIBUTES)
    ]


def rewrite_for_relay(
    sd: SessionDescription,
    *,
    address: str,
    port: int,
    rtcp_port: int | None = None,
    rewrite_origin: bool = True,
    bump_version: bool = False,
    decline_non_audio: bool = True,
) -> SessionDescription:
    """A new description whose single active audio stream is received at the relay.

    - c= lines (session level, and the audio section's own) point at `address`;
      a c=0.0.0.0 hold stays as it is. The audio m= port becomes `port`.
    - RTCP: with `rtcp_port` None the relay uses port + 1 and any a=rtcp goes;
      otherwise a=rtcp is rewritten, or added when `rtcp_port` != port + 1.
    - ICE, SDES (a=crypto), DTLS (a=fingerprint, a=setup), ZRTP, MIKEY and
      rtcp-mux attributes go, at session and media level (RELAY_DROPPED_ATTRIBUTES).
    - o= takes the relay address if `rewrite_origin`, and session version + 1
      if `bump_version` (for a re-offer whose rewritten form changed).
    - Inactive streams (port 0) stay exactly as they are.
    - Other active streams (video, T.38, BFCP...) are declined with port 0 if
      `decline_non_audio` (the default: an audio+video phone can still join an
      audio conference, and the far end answers port 0 for them, RFC 3264
      section 6), else the whole description is refused.

    Raises RelayRefused when this cannot be done safely (see `_relay_audio_index`),
    ValueError for a bad `address` or port.
    """
    _check_port(port, "relay port")
    _check_port(rtcp_port if rtcp_port is not None else port + 1, "relay RTCP port")
    addr_type = _address_type(address)
    audio_index = _relay_audio_index(sd, decline_non_audio=decline_non_audio)

    session: list[SdpLine] = []
    for kind, value in _drop_attributes(sd.lines):
        if kind == "c":
            value = _relay_connection(value, address, addr_type)
        elif kind == "o" and (rewrite_origin or bump_version):
            origin = Origin.parse(value)
            if rewrite_origin:
                origin = replace(origin, net_type="IN", addr_type=addr_type, address=address)
            if bump_version:
                origin = replace(origin, session_version=origin.session_version + 1)
            value = str(origin)
        session.append((kind, value))

    media: list[MediaDescription] = []
    for index, section in enumerate(sd.media):
        if index == audio_index:
            media.append(_rewrite_audio(section, address, addr_type, port, rtcp_port))
        elif section.is_active:
            logger.debug("declining an active %s stream: only audio is relayed", section.kind)
            media.append(replace(section, port=0, port_count=None, lines=tuple(_drop_attributes(section.lines))))
        else:
            media.append(section)
    return SessionDescription(tuple(session), tuple(media))


def _rewrite_audio(
    section: MediaDescription, address: str, addr_type: str, port: int, rtcp_port: int | None
) -> MediaDescription:
    lines: list[SdpLine] = []
    rtcp_written = False
    for kind, value in _drop_attributes(section.lines):
        if kind == "c":
            value = _relay_connection(value, address, addr_type)
        elif kind == "a" and _parse_attribute(value)[0] == "rtcp":
            if rtcp_port is None or rtcp_written:
                continue
            # Keep the address form if the phone used it (RFC 3605 section 2.1).
            has_address = _RTCP_RE.match(_parse_attribute(value)[1] or "")
            if has_address is not None and has_address.group(2):
                value = f"rtcp:{rtcp_port} IN {addr_type} {address}"
            else:
                value = f"rtcp:{rtcp_port}"
            rtcp_written = True
        lines.append((kind, value))
    if rtcp_port is not None and not rtcp_written and rtcp_port != port + 1:
        first_attribute = next((i for i, (kind, _) in enumerate(lines) if kind == "a"), len(lines))
        lines.insert(first_attribute, ("a", f"rtcp:{rtcp_port}"))
    return replace(section, port=port, port_count=None, lines=tuple(lines))


def _active_audio_index(sd: SessionDescription) -> int | None:
    return next((i for i, m in enumerate(sd.media) if m.kind == "audio" and m.is_active), None)


def offers_rtcp_mux(sd: SessionDescription) -> bool:
    """True if the active audio stream offers RTCP multiplexed on its RTP port (RFC 5761)."""
    index = _active_audio_index(sd)
    if index is None:
        return False
    return sd.media[index].attribute("rtcp-mux") is not None or sd.attribute("rtcp-mux") is not None


def with_rtcp_mux(sd: SessionDescription) -> SessionDescription:
    """The description with `a=rtcp-mux` on its active audio stream (an answer accepting it)."""
    index = _active_audio_index(sd)
    if index is None or sd.media[index].attribute("rtcp-mux") is not None:
        return sd
    media = list(sd.media)
    section = media[index]
    media[index] = replace(section, lines=(*section.lines, ("a", "rtcp-mux")))
    return SessionDescription(sd.lines, tuple(media))
