"""Typed messages carried in tunnel frames, and their payload encodings.

Control payloads are UTF-8 JSON objects; SIP and ROSTER payloads are opaque
bytes. Decoding validates field names and types so that a malformed payload
becomes a MessageError (and a close with a reason), never a KeyError deep in
a handler.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Union

from .framing import Frame, FrameType, encode_frame

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)


class MessageError(Exception):
    """A frame whose payload does not decode to a valid message."""

    reason = "malformed-message"


class CloseCode:
    NORMAL = 1000
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_VERSION = 1003
    KEEPALIVE_TIMEOUT = 1004
    POLICY = 1008
    SERVER_SHUTDOWN = 1001
    INTERNAL_ERROR = 1011


def _json(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MessageError("payload is not a JSON object")
    return value


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise MessageError(f"missing field {name!r}")
    value = obj[name]
    # bool is an int subclass: refuse it where a number is meant.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError(f"field {name!r} has the wrong type")
    return value


def _str_list(obj: dict[str, Any], name: str) -> tuple[str, ...]:
    value = _field(obj, name, list)
    if not all(isinstance(v, str) for v in value):
        raise MessageError(f"field {name!r} must be a list of strings")
    return tuple(value)


def _b64(obj: dict[str, Any], name: str, length: int | None = None) -> bytes:
    try:
        raw = base64.b64decode(_field(obj, name, str), validate=True)
    except ValueError:
        raise MessageError(f"field {name!r} is not base64") from None
    if length is not None and len(raw) != length:
        raise MessageError(f"field {name!r} must be {length} bytes")
    return raw


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Hello:
    """First frame each way. The client offers versions; the server answers with the one chosen."""

    TYPE: ClassVar[FrameType] = FrameType.HELLO
    versions: tuple[int, ...]
    capabilities: tuple[str, ...] = ()
    agent: str = ""
    # Set by the server only: the identity it authenticated the client as.
    peer: dict[str, Any] | None = None

    def payload(self) -> bytes:
        obj: dict[str, Any] = {"versions": list(self.versions), "capabilities": list(self.capabilities), "agent": self.agent}
        if self.peer is not None:
            obj["peer"] = self.peer
        return _dump(obj)

    @classmethod
    def decode(cls, payload: bytes) -> "Hello":
        obj = _json(payload)
        versions = _field(obj, "versions", list)
        if not versions or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions):
            raise MessageError("field 'versions' must be a non-empty list of integers")
        peer = obj.get("peer")
        if peer is not None and not isinstance(peer, dict):
            raise MessageError("field 'peer' must be an object")
        agent = obj.get("agent", "")
        if not isinstance(agent, str):
            raise MessageError("field 'agent' has the wrong type")
        return cls(tuple(versions), _str_list(obj, "capabilities"), agent, peer)


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar[FrameType] = FrameType.PING
    opaque: bytes = b""

    def payload(self) -> bytes:
        return self.opaque

    @classmethod
    def decode(cls, payload: bytes) -> "Ping":
        if len(payload) > 64:
            raise MessageError("PING payload longer than 64 bytes")
        return cls(payload)


@dataclass(frozen=True)
class Pong:
    TYPE: ClassVar[FrameType] = FrameType.PONG
    opaque: bytes = b""

    def payload(self) -> bytes:
        return self.opaque

    @classmethod
    def decode(cls, payload: bytes) -> "Pong":
        if len(payload) > 64:
            raise MessageError("PONG payload longer than 64 bytes")
        return cls(payload)


@dataclass(frozen=True)
class Close:
    TYPE: ClassVar[FrameType] = FrameType.CLOSE
    code: int
    reason: str

    def payload(self) -> bytes:
        return _dump({"code": self.code, "reason": self.reason})

    @classmethod
    def decode(cls, payload: bytes) -> "Close":
        obj = _json(payload)
        return cls(_field(obj, "code", int), _field(obj, "reason", str))


@dataclass(frozen=True)
class SipMessage:
    """One SIP message, as bytes, in either direction."""

    TYPE: ClassVar[FrameType] = FrameType.SIP
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, payload: bytes) -> "SipMessage":
        if not payload:
            raise MessageError("empty SIP frame")
        return cls(payload)


@dataclass(frozen=True)
class MediaOffer:
    """Client -> server: start keying one call's media stream."""

    TYPE: ClassVar[FrameType] = FrameType.MEDIA_OFFER
    stream_id: str
    call_id: str
    profiles: tuple[str, ...]
    public_key: bytes

    def payload(self) -> bytes:
        return _dump({
            "stream_id": self.stream_id,
            "call_id": self.call_id,
            "profiles": list(self.profiles),
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
        })

    @classmethod
    def decode(cls, payload: bytes) -> "MediaOffer":
        obj = _json(payload)
        return cls(_field(obj, "stream_id", str), _field(obj, "call_id", str), _str_list(obj, "profiles"),
                   _b64(obj, "public_key", 32))


@dataclass(frozen=True)
class MediaAnswer:
    """Server -> client: the chosen profile, the server's key share and where to send SRTP."""

    TYPE: ClassVar[FrameType] = FrameType.MEDIA_ANSWER
    stream_id: str
    profile: str
    public_key: bytes
    rtp_port: int
    rtcp_port: int

    def payload(self) -> bytes:
        return _dump({
            "stream_id": self.stream_id,
            "profile": self.profile,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
            "rtp_port": self.rtp_port,
            "rtcp_port": self.rtcp_port,
        })

    @classmethod
    def decode(cls, payload: bytes) -> "MediaAnswer":
        obj = _json(payload)
        ports = (_field(obj, "rtp_port", int), _field(obj, "rtcp_port", int))
        if not all(0 < p < 65536 for p in ports):
            raise MessageError("media port out of range")
        return cls(_field(obj, "stream_id", str), _field(obj, "profile", str), _b64(obj, "public_key", 32), *ports)


@dataclass(frozen=True)
class MediaReject:
    TYPE: ClassVar[FrameType] = FrameType.MEDIA_REJECT
    stream_id: str
    reason: str

    def payload(self) -> bytes:
        return _dump({"stream_id": self.stream_id, "reason": self.reason})

    @classmethod
    def decode(cls, payload: bytes) -> "MediaReject":
        obj = _json(payload)
        return cls(_field(obj, "stream_id", str), _field(obj, "reason", str))


@dataclass(frozen=True)
class MediaEnd:
    TYPE: ClassVar[FrameType] = FrameType.MEDIA_END
    stream_id: str

    def payload(self) -> bytes:
        return _dump({"stream_id": self.stream_id})

    @classmethod
    def decode(cls, payload: bytes) -> "MediaEnd":
        return cls(_field(_json(payload), "stream_id", str))


@dataclass(frozen=True)
class LegLost:
    """Server -> client: Asterisk lost this call's channel through no one's decision (it restarted,
    or its node went away). Unlike a BYE, the client keeps the softphone's call and rejoins the room.
    `call_id`: the SIP Call-ID of the lost leg; `reason`: a short code ("asterisk-restart", "asterisk-lost")."""

    TYPE: ClassVar[FrameType] = FrameType.LEG_LOST
    call_id: str
    reason: str

    def payload(self) -> bytes:
        return _dump({"call_id": self.call_id, "reason": self.reason})

    @classmethod
    def decode(cls, payload: bytes) -> "LegLost":
        obj = _json(payload)
        return cls(_field(obj, "call_id", str), _field(obj, "reason", str))


@dataclass(frozen=True)
class RosterUpdate:
    """Server -> client: a signed roster (encoding in stc_wire.roster)."""

    TYPE: ClassVar[FrameType] = FrameType.ROSTER
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, payload: bytes) -> "RosterUpdate":
        if not payload:
            raise MessageError("empty ROSTER frame")
        return cls(payload)


Message = Union[Hello, Ping, Pong, Close, SipMessage, MediaOffer, MediaAnswer, MediaReject, MediaEnd, RosterUpdate,
                LegLost]

_DECODERS: dict[FrameType, Any] = {
    cls.TYPE: cls for cls in (Hello, Ping, Pong, Close, SipMessage, MediaOffer, MediaAnswer, MediaReject, MediaEnd, RosterUpdate,
                              LegLost)
}


def decode_message(frame: Frame) -> Message:
    decoded: Message = _DECODERS[frame.type].decode(frame.payload)
    return decoded


def encode_message(message: Message) -> bytes:
    return encode_frame(message.TYPE, message.payload())
