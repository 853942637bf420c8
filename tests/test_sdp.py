"""SDP values and the relay rewrite: round trips, line-by-line rewrite outputs, every refusal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stc_wire.sdp import (
    RELAY_DROPPED_ATTRIBUTES,
    AudioEndpoint,
    Connection,
    MediaDescription,
    Origin,
    RelayRefused,
    SdpError,
    SessionDescription,
    audio_endpoint,
    codecs,
    is_hold,
    media_direction,
    rewrite_for_relay,
)
from stc_wire.sip import SipRequest, parse_message

DATA = Path(__file__).parent / "data" / "sip"


def sip_body(name: str) -> str:
    """The SDP body of a SIP sample (stored with LF, sent with CRLF)."""
    msg = parse_message((DATA / name).read_bytes().replace(b"\n", b"\r\n"))
    return msg.body.decode()


def sdp(*lines: str) -> str:
    return "".join(f"{line}\r\n" for line in lines)


def lines_of(description: SessionDescription) -> list[str]:
    text = str(description)
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    return text.split("\r\n")[:-1]


SIPP_OFFER = sip_body("sipp_invite.sip")
SIPP_HOLD = sip_body("sipp_reinvite_sendonly.sip")
ASTERISK_ANSWER = sip_body("asterisk_200_ok_invite.sip")
ASTERISK_HOLD_ANSWER = sip_body("asterisk_200_ok_reinvite_recvonly.sip")

# A desktop softphone behind NAT: ICE, best-effort SDES on RTP/AVP, rtcp-mux, a video stream.
PHONE_OFFER = sdp(
    "v=0",
    "o=alice 3456 2345 IN IP4 192.168.1.20",
    "s=Talk",
    "c=IN IP4 192.168.1.20",
    "t=0 0",
    "a=ice-pwd:31ec21eb38b2ec6d36e8dc7b",
    "a=ice-ufrag:1a2b3c4d",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "m=audio 7078 RTP/AVP 96 97 0 8 101",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:97 speex/16000",
    "a=rtpmap:101 telephone-event/8000",
    "a=rtcp:7079",
    "a=candidate:1 1 UDP 2130706431 192.168.1.20 7078 typ host",
    "a=candidate:1 2 UDP 2130706430 192.168.1.20 7079 typ host",
    "a=candidate:2 1 UDP 1694498815 203.0.113.7 41000 typ srflx raddr 192.168.1.20 rport 7078",
    "a=end-of-candidates",
    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
    "a=rtcp-mux",
    "a=sendrecv",
    "m=video 9078 RTP/AVP 98",
    "a=rtpmap:98 VP8/90000",
    "a=candidate:1 1 UDP 2130706431 192.168.1.20 9078 typ host",
    "a=sendrecv",
)

# IPv6, connection only at media level, RFC 3605 a=rtcp with an address, a disabled video stream.
IPV6_OFFER = sdp(
    "v=0",
    "o=- 20518 0 IN IP6 2001:db8::1",
    "s=-",
    "t=0 0",
    "m=audio 49170 RTP/AVPF 0 96",
    "c=IN IP6 2001:db8::1",
    "b=AS:64",
    "a=rtpmap:96 iLBC/8000",
    "a=rtcp:53020 IN IP6 2001:db8::1",
    "a=rtcp-fb:* nack",
    "m=video 0 RTP/AVP 31",
    "c=IN IP6 2001:db8::1",
    "a=candidate:1 1 UDP 2130706431 2001:db8::1 9000 typ host",
)

# RFC 2543 style hold: the null address.
NULL_HOLD = sdp(
    "v=0",
    "o=bob 2808844564 2808844565 IN IP4 192.0.2.2",
    "s=-",
    "c=IN IP4 0.0.0.0",
    "t=0 0",
    "m=audio 49174 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)

ROUND_TRIP = {
    "sipp offer": SIPP_OFFER,
    "sipp hold": SIPP_HOLD,
    "asterisk answer": ASTERISK_ANSWER,
    "asterisk hold answer": ASTERISK_HOLD_ANSWER,
    "phone offer": PHONE_OFFER,
    "ipv6 offer": IPV6_OFFER,
    "null hold": NULL_HOLD,
    # RFC 8866 section 5 example, with its optional fields.
    "rfc 8866": sdp(
        "v=0",
        "o=jdoe 3724394400 3724394405 IN IP4 198.51.100.1",
        "s=Call to John Smith",
        "i=SDP Offer #1",
        "u=http://www.jdoe.example.com/home.html",
        "e=Jane Doe <jane@jdoe.example.com>",
        "p=+1 617 555-6011",
        "c=IN IP4 198.51.100.1",
        "t=0 0",
        "m=audio 49170 RTP/AVP 0",
        "m=audio 49180 RTP/AVP 0",
        "m=video 51372 RTP/AVP 99",
        "c=IN IP6 2001:db8::2",
        "a=rtpmap:99 h263-1998/90000",
    ),
    "dtls": sdp(
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 0",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:EsAw",
        "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1",
        "a=fingerprint:sha-256 D2:FA:0E:C3:22:59:5E:14:95:69:92:3D:13:B4:84:24"
        ":2C:C2:A2:C0:3E:FD:34:8E:5E:EA:6F:AF:52:CE:E6:0F",
        "a=setup:actpass",
        "a=mid:0",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
    ),
}


@pytest.mark.parametrize("text", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_round_trip(text: str) -> None:
    parsed = SessionDescription.parse(text)
    assert str(parsed) == text
    assert SessionDescription.from_bytes(text.encode()) == parsed
    assert parsed.to_bytes() == text.encode()
    # LF-only input is read the same and written with CRLF.
    assert str(SessionDescription.parse(text.replace("\r\n", "\n"))) == text


def test_fields_of_the_asterisk_answer() -> None:
    answer = SessionDescription.parse(ASTERISK_ANSWER)
    assert answer.version == 0
    assert answer.origin == Origin("-", "1732665600", 1732665602, "IN", "IP4", "127.0.0.1")
    assert answer.name == "Asterisk"
    assert answer.timing == "0 0"
    assert answer.connection == Connection("IN", "IP4", "127.0.0.1")
    assert answer.attributes == ()
    assert len(answer.media) == 1
    audio = answer.media[0]
    assert (audio.kind, audio.port, audio.port_count, audio.proto, audio.formats) == (
        "audio", 10042, None, "RTP/AVP", ("0", "8", "101"))
    assert audio.connection is None
    assert answer.effective_connection(audio) == answer.connection
    assert audio.attributes == (
        ("rtpmap", "0 PCMU/8000"),
        ("rtpmap", "8 PCMA/8000"),
        ("rtpmap", "101 telephone-event/8000"),
        ("fmtp", "101 0-16"),
        ("ptime", "20"),
        ("maxptime", "150"),
        ("sendrecv", None),
    )
    assert audio.attribute("ptime") == "20"
    assert audio.attribute("sendrecv") == ""
    assert audio.attribute("rtcp") is None
    assert audio.direction == "sendrecv"
    assert codecs(audio) == {0: "PCMU/8000", 8: "PCMA/8000", 101: "telephone-event/8000"}
    assert audio_endpoint(answer) == AudioEndpoint("127.0.0.1", 10042, 10043)


def test_fields_of_a_multicast_and_multi_port_description() -> None:
    parsed = SessionDescription.parse(sdp(
        "v=0", "o=- 1 1 IN IP4 h", "s=-", "c=IN IP4 224.2.1.1/127/3", "t=0 0", "m=audio 49170/2 RTP/AVP 0"))
    assert parsed.connection == Connection("IN", "IP4", "224.2.1.1", "/127/3")
    assert str(parsed.connection) == "IN IP4 224.2.1.1/127/3"
    assert parsed.media[0].port_count == 2
    assert parsed.media[0].media_line == "audio 49170/2 RTP/AVP 0"


@pytest.mark.parametrize(
    ("media_line", "rtpmaps", "expected"),
    [
        ("audio 1 RTP/AVP 0 8 18 96", (), {0: "PCMU/8000", 8: "PCMA/8000", 18: "G729/8000"}),
        ("audio 1 RTP/AVP 96 0", ("96 opus/48000/2", "0 PCMU/8000"), {96: "opus/48000/2", 0: "PCMU/8000"}),
        ("audio 1 RTP/AVP 8", ("8 PCMA/16000",), {8: "PCMA/16000"}),  # rtpmap wins over the table
        ("audio 1 RTP/AVP 0", ("101 telephone-event/8000",), {0: "PCMU/8000"}),  # only listed formats
        ("video 1 RTP/AVP 0 98", ("98 VP8/90000",), {98: "VP8/90000"}),  # static table is audio only
        ("image 1 udptl t38", (), {}),
        ("audio 1 RTP/AVP 200", (), {}),
    ],
)
def test_codecs(media_line: str, rtpmaps: tuple[str, ...], expected: dict[int, str]) -> None:
    text = sdp("v=0", "o=- 1 1 IN IP4 h", "s=-", "c=IN IP4 h", "t=0 0", f"m={media_line}",
               *[f"a=rtpmap:{m}" for m in rtpmaps])
    assert codecs(SessionDescription.parse(text).media[0]) == expected


# ---------------------------------------------------------------------------
# The relay rewrite, line by line
# ---------------------------------------------------------------------------


def test_rewrite_sipp_offer() -> None:
    out = rewrite_for_relay(SessionDescription.parse(SIPP_OFFER), address="127.0.0.1", port=31000)
    assert lines_of(out) == [
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 31000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-15",
    ]
    assert audio_endpoint(out) == ("127.0.0.1", 31000, 31001)


def test_rewrite_asterisk_answer_towards_the_phone() -> None:
    answer = SessionDescription.parse(ASTERISK_ANSWER)
    out = rewrite_for_relay(answer, address="10.8.0.1", port=42000, rtcp_port=42001, bump_version=True)
    expected = ASTERISK_ANSWER.replace("1732665602 IN IP4 127.0.0.1", "1732665603 IN IP4 10.8.0.1").replace(
        "c=IN IP4 127.0.0.1", "c=IN IP4 10.8.0.1").replace("m=audio 10042", "m=audio 42000")
    assert str(out) == expected
    assert str(answer) == ASTERISK_ANSWER  # a new value; the input is untouched


def test_rewrite_phone_offer_strips_ice_sdes_mux_and_declines_video() -> None:
    out = rewrite_for_relay(SessionDescription.parse(PHONE_OFFER), address="127.0.0.1", port=31000)
    assert lines_of(out) == [
        "v=0",
        "o=alice 3456 2345 IN IP4 127.0.0.1",
        "s=Talk",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
        "m=audio 31000 RTP/AVP 96 97 0 8 101",
        "a=rtpmap:96 opus/48000/2",
        "a=fmtp:96 useinbandfec=1",
        "a=rtpmap:97 speex/16000",
        "a=rtpmap:101 telephone-event/8000",
        "a=sendrecv",
        "m=video 0 RTP/AVP 98",
        "a=rtpmap:98 VP8/90000",
        "a=sendrecv",
    ]
    # Nothing of the phone's own addresses or keys is left.
    assert "192.168.1.20" not in str(out) and "203.0.113.7" not in str(out) and "inline:" not in str(out)


@pytest.mark.parametrize(
    ("rtcp_port", "rtcp_line"),
    [(None, None), (31001, "a=rtcp:31001"), (31005, "a=rtcp:31005")],
)
def test_rewrite_rtcp_attribute_that_was_present(rtcp_port: int | None, rtcp_line: str | None) -> None:
    out = rewrite_for_relay(
        SessionDescription.parse(PHONE_OFFER), address="127.0.0.1", port=31000, rtcp_port=rtcp_port)
    audio = lines_of(out)[6:]
    expected_head = ["m=audio 31000 RTP/AVP 96 97 0 8 101", "a=rtpmap:96 opus/48000/2",
                     "a=fmtp:96 useinbandfec=1", "a=rtpmap:97 speex/16000",
                     "a=rtpmap:101 telephone-event/8000"]
    assert audio[:6] == expected_head + ([rtcp_line] if rtcp_line else ["a=sendrecv"])
    assert audio_endpoint(out).rtcp_port == (rtcp_port or 31001)


@pytest.mark.parametrize(
    ("rtcp_port", "expected_media"),
    [
        (None, ["m=audio 31000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000"]),
        (31001, ["m=audio 31000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000"]),  # implied: not added
        (40000, ["m=audio 31000 RTP/AVP 0 8 101", "a=rtcp:40000", "a=rtpmap:0 PCMU/8000"]),
    ],
)
def test_rewrite_adds_rtcp_only_when_not_port_plus_one(rtcp_port, expected_media) -> None:
    out = rewrite_for_relay(
        SessionDescription.parse(SIPP_OFFER), address="127.0.0.1", port=31000, rtcp_port=rtcp_port)
    assert lines_of(out)[5:5 + len(expected_media)] == expected_media
    assert audio_endpoint(out) == ("127.0.0.1", 31000, rtcp_port or 31001)


def test_rewrite_ipv6_media_level_connection_and_rtcp_address() -> None:
    offer = SessionDescription.parse(IPV6_OFFER)
    assert audio_endpoint(offer) == ("2001:db8::1", 49170, 53020)
    out = rewrite_for_relay(offer, address="::1", port=30000, rtcp_port=30001)
    assert lines_of(out) == [
        "v=0",
        "o=- 20518 0 IN IP6 ::1",
        "s=-",
        "t=0 0",
        "m=audio 30000 RTP/AVPF 0 96",
        "c=IN IP6 ::1",
        "b=AS:64",
        "a=rtpmap:96 iLBC/8000",
        "a=rtcp:30001 IN IP6 ::1",
        "a=rtcp-fb:* nack",
        # The disabled stream is left exactly as it was.
        "m=video 0 RTP/AVP 31",
        "c=IN IP6 2001:db8::1",
        "a=candidate:1 1 UDP 2130706431 2001:db8::1 9000 typ host",
    ]
    # Across families: an IPv4 relay for an IPv6 phone.
    out4 = rewrite_for_relay(offer, address="127.0.0.1", port=30000, rtcp_port=30001, rewrite_origin=False)
    assert lines_of(out4)[1] == "o=- 20518 0 IN IP6 2001:db8::1"
    assert lines_of(out4)[5] == "c=IN IP4 127.0.0.1"
    assert lines_of(out4)[8] == "a=rtcp:30001 IN IP4 127.0.0.1"


def test_rewrite_keeps_a_null_address_hold() -> None:
    hold = SessionDescription.parse(NULL_HOLD)
    assert is_hold(hold) and media_direction(hold) == "sendrecv"
    assert audio_endpoint(hold) == ("0.0.0.0", 49174, 49175)
    out = rewrite_for_relay(hold, address="127.0.0.1", port=31000)
    assert lines_of(out) == [
        "v=0",
        "o=bob 2808844564 2808844565 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 0.0.0.0",
        "t=0 0",
        "m=audio 31000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ]
    assert is_hold(out)


def test_rewrite_of_a_sendonly_reinvite_keeps_the_direction() -> None:
    out = rewrite_for_relay(SessionDescription.parse(SIPP_HOLD), address="127.0.0.1", port=31000, bump_version=True)
    assert lines_of(out)[1] == "o=user1 53655765 2353687639 IN IP4 127.0.0.1"
    assert lines_of(out)[-1] == "a=sendonly"
    assert media_direction(out) == "sendonly" and is_hold(out)


def test_rewrite_origin_options() -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    untouched = rewrite_for_relay(offer, address="10.0.0.1", port=31000, rewrite_origin=False)
    assert untouched.origin == offer.origin
    bumped = rewrite_for_relay(offer, address="10.0.0.1", port=31000, rewrite_origin=False, bump_version=True)
    assert bumped.origin.session_version == offer.origin.session_version + 1
    assert bumped.origin.address == "127.0.0.1"


def test_rewrite_drops_keying_and_ice_everywhere() -> None:
    names = sorted(RELAY_DROPPED_ATTRIBUTES)
    text = sdp("v=0", "o=- 1 1 IN IP4 192.0.2.9", "s=-", "c=IN IP4 192.0.2.9", "t=0 0",
               *[f"a={name}:x" for name in names], "m=audio 5004 RTP/AVP 0",
               *[f"a={name}" for name in names], "a=ptime:20")
    out = rewrite_for_relay(SessionDescription.parse(text), address="127.0.0.1", port=31000)
    assert lines_of(out) == [
        "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
        "m=audio 31000 RTP/AVP 0", "a=ptime:20",
    ]


def test_rewrite_argument_errors() -> None:
    offer = SessionDescription.parse(SIPP_OFFER)
    for kwargs in ({"address": "relay.example", "port": 1}, {"address": "127.0.0.1", "port": 0},
                   {"address": "127.0.0.1", "port": 65536},
                   {"address": "127.0.0.1", "port": 1000, "rtcp_port": 0},
                   {"address": "127.0.0.1", "port": 65535}):
        with pytest.raises(ValueError):
            rewrite_for_relay(offer, **kwargs)


def test_rewritten_sdp_travels_in_the_sip_message() -> None:
    invite = parse_message((DATA / "sipp_invite.sip").read_bytes().replace(b"\n", b"\r\n"))
    assert isinstance(invite, SipRequest)
    rewritten = rewrite_for_relay(SessionDescription.from_bytes(invite.body), address="127.0.0.1", port=31000)
    invite.set_body(rewritten.to_bytes(), "application/sdp")
    again = parse_message(invite.to_bytes())
    assert SessionDescription.from_bytes(again.body) == rewritten
    assert again.get("Content-Length") == str(len(rewritten.to_bytes()))


# ---------------------------------------------------------------------------
# What the relay refuses (the proxy answers 488)
# ---------------------------------------------------------------------------

_HEAD = ("v=0", "o=- 1 1 IN IP4 192.0.2.9", "s=-", "c=IN IP4 192.0.2.9", "t=0 0")
_HEAD_NO_C = ("v=0", "o=- 1 1 IN IP4 192.0.2.9", "s=-", "t=0 0")

REFUSED = [
    ("sdes srtp", sdp(*_HEAD, "m=audio 5004 RTP/SAVP 0",
                      "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"),
     "RTP/SAVP"),
    ("savpf", sdp(*_HEAD, "m=audio 5004 RTP/SAVPF 0"), "RTP/SAVPF"),
    ("dtls", ROUND_TRIP["dtls"], "UDP/TLS/RTP/SAVPF"),
    ("rtp over tcp", sdp(*_HEAD, "m=audio 5004 TCP/RTP/AVP 0"), "TCP/RTP/AVP"),
    ("no connection", sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0"), "no connection address"),
    ("connection only on another stream", sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0", "m=video 0 RTP/AVP 31",
                                              "c=IN IP4 192.0.2.9"), "no connection address"),
    ("atm address", sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0", "c=ATM NSAP 47.0091.8100.0000.0060.3e64.fd01"),
     "not IN IP4/IP6"),
    ("ipx address", sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0", "c=IN IPX 0000.0000"), "not IN IP4/IP6"),
    ("multicast with ttl", sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0", "c=IN IP4 224.2.1.1/127"), "multicast"),
    ("multicast", sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0", "c=IN IP6 ff0e::101"), "multicast"),
    ("no audio at all", sdp(*_HEAD, "m=video 5006 RTP/AVP 31"), "no active audio"),
    ("audio disabled", sdp(*_HEAD, "m=audio 0 RTP/AVP 0"), "no active audio"),
    ("no media", sdp(*_HEAD), "no active audio"),
    ("two audio streams", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "m=audio 5006 RTP/AVP 8"), "2 active audio"),
    ("two ports", sdp(*_HEAD, "m=audio 5004/2 RTP/AVP 0"), "2 ports"),
    ("no port left for rtcp", sdp(*_HEAD, "m=audio 65535 RTP/AVP 0"), "no port for RTCP"),
]


@pytest.mark.parametrize(("name", "text", "reason"), REFUSED, ids=[row[0] for row in REFUSED])
def test_relay_refused(name: str, text: str, reason: str) -> None:
    description = SessionDescription.parse(text)
    with pytest.raises(RelayRefused, match=re.escape(reason)):
        rewrite_for_relay(description, address="127.0.0.1", port=31000)
    with pytest.raises(RelayRefused, match=re.escape(reason)):
        audio_endpoint(description)


def test_active_video_is_refused_when_not_declined() -> None:
    offer = SessionDescription.parse(PHONE_OFFER)
    with pytest.raises(RelayRefused, match="active video stream"):
        rewrite_for_relay(offer, address="127.0.0.1", port=31000, decline_non_audio=False)
    # ...and a disabled one is no reason to refuse.
    only_audio = SessionDescription.parse(IPV6_OFFER)
    rewrite_for_relay(only_audio, address="127.0.0.1", port=31000, decline_non_audio=False)


def test_relay_refused_is_an_sdp_error() -> None:
    assert issubclass(RelayRefused, SdpError)


# ---------------------------------------------------------------------------
# Direction and hold
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "direction", "hold"),
    [
        (SIPP_OFFER, "sendrecv", False),
        (SIPP_HOLD, "sendonly", True),
        (ASTERISK_ANSWER, "sendrecv", False),
        (ASTERISK_HOLD_ANSWER, "recvonly", False),
        (sdp(*_HEAD, "a=inactive", "m=audio 5004 RTP/AVP 0"), "inactive", True),
        (sdp(*_HEAD, "a=sendonly", "m=audio 5004 RTP/AVP 0", "a=sendrecv"), "sendrecv", False),  # media wins
        (sdp(*_HEAD, "a=recvonly", "m=audio 5004 RTP/AVP 0"), "recvonly", False),
        (sdp(*_HEAD, "m=audio 0 RTP/AVP 0", "a=sendrecv"), "inactive", True),
        (sdp(*_HEAD, "m=audio 0 RTP/AVP 0", "m=audio 5004 RTP/AVP 0", "a=sendonly"), "sendonly", True),
        (NULL_HOLD, "sendrecv", True),
        (sdp(*_HEAD_NO_C, "m=audio 5004 RTP/AVP 0", "c=IN IP6 ::"), "sendrecv", True),
    ],
)
def test_direction_and_hold(text: str, direction: str, hold: bool) -> None:
    description = SessionDescription.parse(text)
    assert media_direction(description) == direction
    assert is_hold(description) is hold


# ---------------------------------------------------------------------------
# Malformed descriptions
# ---------------------------------------------------------------------------

INVALID = [
    ("empty", ""),
    ("only line ends", "\r\n\r\n"),
    ("not v=0 first", sdp("o=- 1 1 IN IP4 h", "v=0", "s=-")),
    ("version 1", sdp("v=1", "o=- 1 1 IN IP4 h", "s=-")),
    ("no origin", sdp("v=0", "s=-", "t=0 0")),
    ("two origins", sdp("v=0", "o=- 1 1 IN IP4 h", "o=- 1 1 IN IP4 h", "s=-")),
    ("origin in media", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "o=- 1 1 IN IP4 h")),
    ("short origin", sdp("v=0", "o=- 1 1 IN IP4", "s=-")),
    ("origin version not a number", sdp("v=0", "o=- 1 x IN IP4 h", "s=-")),
    ("second v=", sdp(*_HEAD, "v=0")),
    ("media port not a number", sdp(*_HEAD, "m=audio x RTP/AVP 0")),
    ("media port too big", sdp(*_HEAD, "m=audio 70000 RTP/AVP 0")),
    ("media line too short", sdp(*_HEAD, "m=audio 5004")),
    ("media line with two spaces", sdp(*_HEAD, "m=audio  5004 RTP/AVP 0")),
    ("connection too short", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "c=IN IP4")),
    ("connection without address", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "c=IN IP4 /127")),
    ("space in type", sdp(*_HEAD, "m =video 3227 RTP/AVP 31")),  # RFC 4475 3.1.1.8's second body
    ("upper-case type", sdp(*_HEAD, "M=audio 5004 RTP/AVP 0")),
    ("no equals", sdp(*_HEAD, "garbage")),
    ("attribute without name", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "a=")),
    ("bad rtpmap", sdp(*_HEAD, "m=audio 5004 RTP/AVP 96", "a=rtpmap:96 opus")),
    ("rtpmap without value", sdp(*_HEAD, "m=audio 5004 RTP/AVP 96", "a=rtpmap")),
    ("bad rtcp", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "a=rtcp:abc")),
    ("rtcp port 0", sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "a=rtcp:0")),
    ("nul byte", sdp(*_HEAD, "s=a\x00b")),
    ("stray carriage return", "v=0\r\no=- 1 1 IN IP4 h\r\r\ns=-\r\n"),
    ("oversized", sdp(*_HEAD, *["a=x-pad:" + "y" * 100] * 700)),
]


@pytest.mark.parametrize(("name", "text"), INVALID, ids=[row[0] for row in INVALID])
def test_invalid_sdp(name: str, text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


def test_non_utf8_body() -> None:
    with pytest.raises(SdpError, match="UTF-8"):
        SessionDescription.from_bytes(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=\xff\r\n")


def test_every_truncation_parses_or_fails_cleanly() -> None:
    # SDP has no length of its own: a cut description may still be valid, but
    # nothing other than SdpError may come out, and what parses round-trips.
    for text in ROUND_TRIP.values():
        for cut in range(len(text)):
            try:
                parsed = SessionDescription.parse(text[:cut])
            except SdpError:
                continue
            assert SessionDescription.parse(str(parsed)) == parsed


def test_media_description_str() -> None:
    media = MediaDescription("audio", 5004, None, "RTP/AVP", ("0", "8"), (("c", "IN IP4 h"), ("a", "ptime:20")))
    assert str(media) == "m=audio 5004 RTP/AVP 0 8\r\nc=IN IP4 h\r\na=ptime:20\r\n"
    assert media.is_active and not MediaDescription("audio", 0, None, "RTP/AVP", ("0",)).is_active


@pytest.mark.parametrize(
    "text",
    [
        sdp(*_HEAD, "m=audio " + "9" * 5000 + " RTP/AVP 0"),
        sdp(*_HEAD, "m=audio 5004/" + "9" * 5000 + " RTP/AVP 0"),
        sdp(*_HEAD, "m=audio 5004/0 RTP/AVP 0"),
        sdp("v=0", "o=- 1 " + "9" * 5000 + " IN IP4 h", "s=-"),
        sdp(*_HEAD, "m=audio 5004 RTP/AVP 0", "a=rtcp:" + "9" * 5000),
    ],
    ids=["port", "port count", "port count 0", "session version", "rtcp port"],
)
def test_huge_numbers_are_refused_as_sdp_errors(text: str) -> None:
    with pytest.raises(SdpError):
        SessionDescription.parse(text)


def test_huge_format_numbers_are_skipped_by_codecs() -> None:
    media = SessionDescription.parse(sdp(*_HEAD, "m=audio 5004 RTP/AVP 0 " + "9" * 5000)).media[0]
    assert codecs(media) == {0: "PCMU/8000"}


@pytest.mark.parametrize("text", ROUND_TRIP.values(), ids=ROUND_TRIP.keys())
def test_mutated_descriptions_fail_only_with_sdp_errors(text: str) -> None:
    # What a proxy does with an SDP from the network must end in a value or an
    # SdpError (RelayRefused is one), never in another exception.
    import random

    rng = random.Random(text)
    for _ in range(300):
        mutated = list(text)
        position = rng.randrange(len(mutated))
        action = rng.randrange(3)
        if action == 0:
            mutated[position] = chr(rng.randrange(128))
        elif action == 1:
            del mutated[position]
        else:
            mutated.insert(position, rng.choice(" \r\n:/=0a9mcv-"))
        try:
            parsed = SessionDescription.parse("".join(mutated))
            media_direction(parsed)
            is_hold(parsed)
            for media in parsed.media:
                codecs(media)
            endpoint = audio_endpoint(parsed)
            out = rewrite_for_relay(parsed, address="127.0.0.1", port=31000)
        except SdpError:
            continue
        assert 0 < endpoint.rtp_port <= 65535 and 0 < endpoint.rtcp_port <= 65535
        assert SessionDescription.parse(str(out)) == out
        relayed = audio_endpoint(out)
        assert relayed.rtp_port == 31000
        assert relayed.address == "127.0.0.1" or relayed.address == endpoint.address in ("0.0.0.0", "::")
