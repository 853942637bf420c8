"""Frame layer and tunnel state machine, in memory (no sockets)."""

from __future__ import annotations

import pytest

from stc_wire.framing import HEADER, MAX_PAYLOAD, Frame, FrameDecoder, FrameType, FramingError, encode_frame
from stc_wire.messages import (
    Close,
    CloseCode,
    Hello,
    MediaAnswer,
    MediaOffer,
    MessageError,
    Ping,
    Pong,
    SipMessage,
    decode_message,
    encode_message,
)
from stc_wire.tunnel import Role, State, TunnelConnection, TunnelError

INVITE = b"INVITE sip:1000@stc SIP/2.0\r\nCall-ID: a\r\nContent-Length: 0\r\n\r\n"


def test_frame_round_trip_whole() -> None:
    data = encode_frame(FrameType.SIP, INVITE) + encode_frame(FrameType.PING, b"x")
    frames = FrameDecoder().feed(data)
    assert frames == [Frame(FrameType.SIP, INVITE), Frame(FrameType.PING, b"x")]


def test_frame_round_trip_byte_by_byte() -> None:
    data = encode_frame(FrameType.SIP, INVITE) + encode_frame(FrameType.PONG, b"") + encode_frame(FrameType.SIP, b"y" * 300)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(data)):
        frames += decoder.feed(data[i:i + 1])
    assert [f.type for f in frames] == [FrameType.SIP, FrameType.PONG, FrameType.SIP]
    assert frames[0].payload == INVITE and frames[2].payload == b"y" * 300
    assert decoder.pending == 0
    decoder.check_eof()


def test_header_layout_is_type_then_big_endian_length() -> None:
    assert encode_frame(FrameType.SIP, b"abc") == b"\x10\x00\x00\x00\x03abc"
    assert HEADER.size == 5


def test_oversized_frame_refused_from_its_header_alone() -> None:
    header = HEADER.pack(FrameType.SIP, MAX_PAYLOAD + 1)
    with pytest.raises(FramingError) as err:
        FrameDecoder().feed(header)
    assert err.value.reason == "oversized-frame"
    with pytest.raises(ValueError):
        encode_frame(FrameType.SIP, b"x" * (MAX_PAYLOAD + 1))


def test_max_size_frame_accepted() -> None:
    frames = FrameDecoder().feed(encode_frame(FrameType.SIP, b"z" * MAX_PAYLOAD))
    assert len(frames[0].payload) == MAX_PAYLOAD


def test_unknown_frame_type() -> None:
    with pytest.raises(FramingError) as err:
        FrameDecoder().feed(b"\x7f\x00\x00\x00\x00")
    assert err.value.reason == "unknown-frame"
    assert "0x7f" in str(err.value)


@pytest.mark.parametrize("cut", [1, 4, 5, 10])
def test_truncated_frame_detected_at_eof(cut: int) -> None:
    data = encode_frame(FrameType.SIP, INVITE)[:cut]
    decoder = FrameDecoder()
    assert decoder.feed(data) == []
    with pytest.raises(FramingError) as err:
        decoder.check_eof()
    assert err.value.reason == "truncated-frame"


@pytest.mark.parametrize(
    "message",
    [
        Hello((1, 2), ("sip", "roster"), "stc-client/0.1"),
        Hello((1,), (), "s", {"display_name": "Zoë Ålice-Øster"}),
        Ping(b"12345678"),
        Pong(b""),
        Close(CloseCode.POLICY, "certificate revoked"),
        SipMessage(INVITE),
        MediaOffer("s1", "call@host", ("AES_CM_128_HMAC_SHA1_80",), bytes(range(32))),
        MediaAnswer("s1", "AEAD_AES_128_GCM", bytes(32), 20000, 20001),
    ],
)
def test_message_round_trip(message: object) -> None:
    [frame] = FrameDecoder().feed(encode_message(message))  # type: ignore[arg-type]
    assert decode_message(frame) == message


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.HELLO, b"not json"),
        Frame(FrameType.HELLO, b"[1]"),
        Frame(FrameType.HELLO, b'{"versions": [], "capabilities": []}'),
        Frame(FrameType.HELLO, b'{"versions": [true], "capabilities": []}'),
        Frame(FrameType.CLOSE, b'{"code": "x", "reason": "r"}'),
        Frame(FrameType.MEDIA_OFFER, b'{"stream_id": "s", "call_id": "c", "profiles": [], "public_key": "AAAA"}'),
        Frame(FrameType.MEDIA_ANSWER, b'{"stream_id":"s","profile":"p","public_key":"' + b"A" * 43 + b'=","rtp_port":0,"rtcp_port":1}'),
        Frame(FrameType.SIP, b""),
        Frame(FrameType.HELLO, b"\xff\xfe"),
    ],
)
def test_malformed_payload_is_a_message_error(frame: Frame) -> None:
    with pytest.raises(MessageError):
        decode_message(frame)


def pair() -> tuple[TunnelConnection, TunnelConnection]:
    client = TunnelConnection(Role.CLIENT, capabilities=("sip",), agent="c")
    server = TunnelConnection(Role.SERVER, capabilities=("sip", "roster"), agent="s", peer_info={"display_name": "alice"})
    client.start()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    return client, server


def test_hello_negotiates_highest_common_version() -> None:
    client = TunnelConnection(Role.CLIENT, versions=(1, 2, 3))
    server = TunnelConnection(Role.SERVER, versions=(1, 2))
    client.start()
    [hello] = server.receive_data(client.data_to_send())
    assert isinstance(hello, Hello) and hello.versions == (1, 2, 3)
    [answer] = client.receive_data(server.data_to_send())
    assert isinstance(answer, Hello) and answer.versions == (2,)
    assert client.version == server.version == 2
    assert client.state is server.state is State.OPEN


def test_server_hello_carries_the_client_identity() -> None:
    client, _ = pair()
    assert client.peer_hello is not None and client.peer_hello.peer == {"display_name": "alice"}
    assert client.peer_hello.capabilities == ("sip", "roster")


def test_no_common_version_closes_with_reason() -> None:
    client = TunnelConnection(Role.CLIENT, versions=(9,))
    server = TunnelConnection(Role.SERVER, versions=(1,))
    client.start()
    with pytest.raises(TunnelError) as err:
        server.receive_data(client.data_to_send())
    assert err.value.reason == "unsupported-version"
    [close] = client.receive_data(server.data_to_send())
    assert isinstance(close, Close) and close.code == CloseCode.UNSUPPORTED_VERSION
    assert "no common protocol version" in close.reason


def test_frame_before_hello_is_refused() -> None:
    server = TunnelConnection(Role.SERVER)
    with pytest.raises(TunnelError) as err:
        server.receive_data(encode_message(SipMessage(INVITE)))
    assert err.value.reason == "no-hello"
    assert server.state is State.CLOSED


def test_ping_is_answered_automatically_and_not_surfaced() -> None:
    client, server = pair()
    client.ping(b"abc")
    assert server.receive_data(client.data_to_send()) == []
    assert client.receive_data(server.data_to_send()) == [Pong(b"abc")]


def test_sip_flows_both_ways_after_hello() -> None:
    client, server = pair()
    client.send(SipMessage(INVITE))
    assert server.receive_data(client.data_to_send()) == [SipMessage(INVITE)]
    server.send(SipMessage(b"SIP/2.0 100 Trying\r\n\r\n"))
    assert client.receive_data(server.data_to_send()) == [SipMessage(b"SIP/2.0 100 Trying\r\n\r\n")]


def test_garbage_after_hello_closes_with_reason_sent_to_peer() -> None:
    client, server = pair()
    with pytest.raises(TunnelError) as err:
        server.receive_data(b"\xee" * 10)
    assert err.value.reason == "unknown-frame"
    [close] = client.receive_data(server.data_to_send())
    assert isinstance(close, Close) and "unknown-frame" in close.reason


def test_close_carries_reason_and_stops_input() -> None:
    client, server = pair()
    client.close(CloseCode.NORMAL, "user hung up the client")
    [close] = server.receive_data(client.data_to_send())
    assert close == Close(CloseCode.NORMAL, "user hung up the client")
    assert server.state is State.CLOSED
    assert server.receive_data(encode_message(Ping())) == []
    server.receive_eof()  # an orderly close: no error


def test_eof_mid_frame_is_truncation() -> None:
    client, server = pair()
    client.send(SipMessage(INVITE))
    server.receive_data(client.data_to_send()[:7])
    with pytest.raises(TunnelError) as err:
        server.receive_eof()
    assert err.value.reason == "truncated-frame"


def test_eof_without_close_is_reported() -> None:
    _, server = pair()
    with pytest.raises(TunnelError) as err:
        server.receive_eof()
    assert err.value.reason == "eof"


def test_second_hello_refused() -> None:
    client, server = pair()
    with pytest.raises(TunnelError) as err:
        server.receive_data(encode_message(Hello((1,))))
    assert err.value.reason == "duplicate-hello"


def test_send_before_open_is_a_local_error() -> None:
    with pytest.raises(TunnelError):
        TunnelConnection(Role.CLIENT).send(SipMessage(INVITE))
