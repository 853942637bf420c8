"""SIP messages out of a byte stream (SIP over TCP, RFC 3261 section 18.3). Pure: fed bytes, it
hands back whole messages.

On a stream, Content-Length is mandatory and the only way to find a message's end; CRLF
keep-alives (RFC 5626 section 3.5.1) between messages are skipped. A message larger than
`max_message`, or a head without Content-Length, cannot be resynchronised after: `SipParseError`,
and the connection is closed by its owner.
"""

from __future__ import annotations

from .sip import SipParseError

__all__ = ["SipStreamFramer"]

_END_OF_HEAD = b"\r\n\r\n"


class SipStreamFramer:
    """Splits a stream into SIP messages; see the module docstring."""

    def __init__(self, max_message: int = 65536) -> None:
        self.max_message = max_message
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Every message completed by `data` (maybe none). SipParseError if the stream is broken."""
        buffer = self._buffer
        buffer += data
        messages: list[bytes] = []
        while True:
            while buffer[:2] == b"\r\n":  # keep-alives between messages
                del buffer[:2]
            end = buffer.find(_END_OF_HEAD)
            if end < 0:
                if len(buffer) > self.max_message:
                    raise SipParseError(f"SIP message head longer than {self.max_message} bytes", 513)
                return messages
            length = _content_length(bytes(buffer[:end]))
            total = end + len(_END_OF_HEAD) + length
            if total > self.max_message:
                raise SipParseError(f"SIP message of {total} bytes exceeds {self.max_message}", 513)
            if len(buffer) < total:
                return messages
            messages.append(bytes(buffer[:total]))
            del buffer[:total]

    @property
    def pending(self) -> int:
        """Bytes held for a message not complete yet."""
        return len(self._buffer)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit():
                raise SipParseError(f"bad Content-Length {text[:20]!r} on a stream")
            return int(text)
    raise SipParseError("no Content-Length on a stream transport (RFC 3261 18.3)")
