"""Length-prefixed typed frames: the byte layer of the stc tunnel.

A frame is a 5-byte header, `type` (u8) and `length` (u32, big-endian, the
payload size), then the payload. The decoder is pure: feed it bytes as they
arrive, take whole frames out. Anything it cannot accept raises FramingError,
after which the connection is closed (the stream cannot be resynchronised).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">BI")
# Large enough for a 64 KiB SIP message or a signed roster of a few hundred
# participants; small enough that a peer cannot make us buffer much.
MAX_PAYLOAD = 256 * 1024


class FrameType(enum.IntEnum):
    HELLO = 0x01
    PING = 0x02
    PONG = 0x03
    CLOSE = 0x04
    SIP = 0x10
    MEDIA_OFFER = 0x20
    MEDIA_ANSWER = 0x21
    MEDIA_REJECT = 0x22
    MEDIA_END = 0x23
    LEG_LOST = 0x24
    ROSTER = 0x30


class FramingError(Exception):
    """The peer sent bytes that are not a valid frame stream."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes


def encode_frame(frame_type: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(int(frame_type), len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: `feed()` returns every frame completed by the new bytes."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._buffer = bytearray()
        self._max_payload = max_payload

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame (a cut-off frame if the stream ends now)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            type_code, length = HEADER.unpack_from(self._buffer)
            # Check the header before waiting for the payload: an oversized or
            # unknown frame is refused at once, not after buffering it.
            try:
                frame_type = FrameType(type_code)
            except ValueError:
                raise FramingError("unknown-frame", f"unknown frame type 0x{type_code:02x}") from None
            if length > self._max_payload:
                raise FramingError(
                    "oversized-frame",
                    f"{frame_type.name} frame of {length} bytes exceeds the maximum of {self._max_payload}",
                )
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(frame_type, bytes(self._buffer[HEADER.size:end])))
            del self._buffer[:end]
        return frames

    def check_eof(self) -> None:
        """Call when the stream ends: a partial frame means the peer was cut off mid-frame."""
        if self._buffer:
            raise FramingError("truncated-frame", f"stream ended inside a frame ({len(self._buffer)} bytes pending)")
