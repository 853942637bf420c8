"""SIP over a stream: messages found by Content-Length, whatever the chunking."""

from __future__ import annotations

import pytest

from stc_wire.sip import SipParseError, parse_message
from stc_wire.sip_stream import SipStreamFramer

OPTIONS = (b"OPTIONS sip:1000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK1\r\n"
           b"From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:1000@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Max-Forwards: 70\r\nContent-Length: 5\r\n\r\nhello")
COMPACT = OPTIONS.replace(b"Content-Length: 5", b"l: 0").replace(b"hello", b"")


def test_whole_and_byte_by_byte_give_the_same_messages_and_keepalives_are_skipped() -> None:
    stream = b"\r\n\r\n" + OPTIONS + b"\r\n" + COMPACT + OPTIONS
    whole = SipStreamFramer().feed(stream)
    framer = SipStreamFramer()
    pieces = [m for byte in stream for m in framer.feed(bytes([byte]))]
    assert whole == pieces == [OPTIONS, COMPACT, OPTIONS]
    assert framer.pending == 0
    assert parse_message(whole[0]).body == b"hello"


@pytest.mark.parametrize("broken", [
    OPTIONS.replace(b"Content-Length: 5\r\n", b""),  # a stream cannot do without it
    OPTIONS.replace(b"Content-Length: 5", b"Content-Length: five"),
])
def test_a_message_that_cannot_be_delimited_breaks_the_stream(broken: bytes) -> None:
    with pytest.raises(SipParseError):
        SipStreamFramer().feed(broken)


def test_oversized_messages_are_refused_before_they_are_buffered() -> None:
    framer = SipStreamFramer(max_message=1024)
    with pytest.raises(SipParseError):
        framer.feed(OPTIONS.replace(b"Content-Length: 5", b"Content-Length: 999999"))
    with pytest.raises(SipParseError):
        SipStreamFramer(max_message=1024).feed(b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * 2000)
