"""SIP message core: samples modelled on SIPp 3.6 and Asterisk 22 PJSIP, RFC 4475 torture
messages, header rewriting helpers. Every sample is also fed truncated at every byte."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from stc_wire.sip import (
    MAX_HEADER_COUNT,
    MAX_HEADER_LINE,
    MAX_MESSAGE_SIZE,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    is_keepalive,
    make_request,
    make_response,
    make_via,
    name_addr_with_host_port,
    new_branch,
    parse_message,
    parse_name_addr,
    parse_sip_uri,
    parse_via,
    sip_uri_host_port,
    split_header_values,
    uri_with_host_port,
)

DATA = Path(__file__).parent / "data" / "sip"


def load(name: str) -> bytes:
    """A sample with CRLF line ends (the files keep LF; see tests/data/sip/README.md)."""
    raw = (DATA / name).read_bytes()
    assert b"\r" not in raw, f"{name} must be stored with LF line ends"
    return raw.replace(b"\n", b"\r\n")


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8", "surrogateescape")


def request(data: bytes) -> SipRequest:
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    return msg


def response(data: bytes) -> SipResponse:
    msg = parse_message(data)
    assert isinstance(msg, SipResponse)
    return msg


# name, start line (method, uri) or (status, reason), call id, cseq, from tag, to tag, top branch, body length
SAMPLES = [
    ("sipp_invite.sip", ("INVITE", "sip:1000@127.0.0.1:5060"), "1-31337@127.0.0.1", (1, "INVITE"),
     "31337SIPpTag001", None, "z9hG4bK-31337-1-0", 209),
    ("asterisk_100_trying.sip", (100, "Trying"), "1-31337@127.0.0.1", (1, "INVITE"),
     "31337SIPpTag001", None, "z9hG4bK-31337-1-0", 0),
    ("asterisk_200_ok_invite.sip", (200, "OK"), "1-31337@127.0.0.1", (1, "INVITE"),
     "31337SIPpTag001", "6c1b2f4e-2d9a-4b7c-8e51-0f3a9d7c2b6e", "z9hG4bK-31337-1-0", 255),
    ("sipp_ack.sip", ("ACK", "sip:127.0.0.1:5080"), "1-31337@127.0.0.1", (1, "ACK"),
     "31337SIPpTag001", "6c1b2f4e-2d9a-4b7c-8e51-0f3a9d7c2b6e", "z9hG4bK-31337-1-5", 0),
    ("sipp_reinvite_sendonly.sip", ("INVITE", "sip:127.0.0.1:5080"), "1-31337@127.0.0.1", (2, "INVITE"),
     "31337SIPpTag001", "6c1b2f4e-2d9a-4b7c-8e51-0f3a9d7c2b6e", "z9hG4bK-31337-1-7", 221),
    ("asterisk_200_ok_reinvite_recvonly.sip", (200, "OK"), "1-31337@127.0.0.1", (2, "INVITE"),
     "31337SIPpTag001", "6c1b2f4e-2d9a-4b7c-8e51-0f3a9d7c2b6e", "z9hG4bK-31337-1-7", 255),
    ("sipp_bye.sip", ("BYE", "sip:127.0.0.1:5080"), "1-31337@127.0.0.1", (3, "BYE"),
     "31337SIPpTag001", "6c1b2f4e-2d9a-4b7c-8e51-0f3a9d7c2b6e", "z9hG4bK-31337-1-9", 0),
    ("asterisk_bye.sip", ("BYE", "sip:sipp@127.0.0.1:5061"), "1-31337@127.0.0.1", (24861, "BYE"),
     "6c1b2f4e-2d9a-4b7c-8e51-0f3a9d7c2b6e", "31337SIPpTag001",
     "z9hG4bKPj0d6f4a1c-5b2e-4f7a-9c3d-8e1b6a2f5c90", 0),
    ("asterisk_options.sip", ("OPTIONS", "sip:sipp@127.0.0.1:5061"), "5b7d9f1b-3d5f-4a7c-9e1b-3d5f7a9c1e35",
     (31204, "OPTIONS"), "9b2e4d6f-1a3c-4e5b-8d7f-2c4a6e8b0d13", None,
     "z9hG4bKPj3e9a7c51-0b4d-4e2f-a6c8-1d5f7b9e3a20", 0),
    ("sipp_register.sip", ("REGISTER", "sip:127.0.0.1:5060"), "1-31338@127.0.0.1", (1, "REGISTER"),
     "31338SIPpTag001", None, "z9hG4bK-31338-1-0", 0),
    ("asterisk_401_register.sip", (401, "Unauthorized"), "1-31338@127.0.0.1", (1, "REGISTER"),
     "31338SIPpTag001", "z9hG4bK-31338-1-0", "z9hG4bK-31338-1-0", 0),
    ("sipp_register_auth.sip", ("REGISTER", "sip:127.0.0.1:5060"), "1-31338@127.0.0.1", (2, "REGISTER"),
     "31338SIPpTag001", None, "z9hG4bK-31338-1-2", 0),
    ("asterisk_200_ok_register.sip", (200, "OK"), "1-31338@127.0.0.1", (2, "REGISTER"),
     "31338SIPpTag001", "z9hG4bK-31338-1-2", "z9hG4bK-31338-1-2", 0),
    ("sipp_cancel.sip", ("CANCEL", "sip:1000@127.0.0.1:5060"), "2-31337@127.0.0.1", (1, "CANCEL"),
     "31337SIPpTag002", None, "z9hG4bK-31337-2-0", 0),
    ("asterisk_487_invite.sip", (487, "Request Terminated"), "2-31337@127.0.0.1", (1, "INVITE"),
     "31337SIPpTag002", "a4d2c8e0-7f1b-4c3d-9e5a-6b8d0f2a4c57", "z9hG4bK-31337-2-0", 0),
]
SAMPLE_NAMES = [row[0] for row in SAMPLES]


def test_every_sample_file_is_in_the_table() -> None:
    assert sorted(p.name for p in DATA.glob("*.sip")) == sorted(SAMPLE_NAMES)


@pytest.mark.parametrize(
    ("name", "start", "call_id", "cseq", "from_tag", "to_tag", "branch", "body_length"), SAMPLES
)
def test_sample_fields(name, start, call_id, cseq, from_tag, to_tag, branch, body_length) -> None:
    data = load(name)
    msg = parse_message(data)
    if isinstance(start[0], int):
        assert isinstance(msg, SipResponse)
        assert (msg.status, msg.reason, msg.version) == (*start, "SIP/2.0")
    else:
        assert isinstance(msg, SipRequest)
        assert (msg.method, msg.uri, msg.version) == (*start, "SIP/2.0")
    assert msg.call_id == call_id
    assert msg.cseq == cseq
    assert msg.from_tag == from_tag
    assert msg.to_tag == to_tag
    assert msg.top_via_branch == branch
    assert len(msg.body) == body_length
    assert msg.body == data[len(data) - body_length:]
    # Header lines are kept in order with their original names.
    head_lines = data[: len(data) - body_length].decode().split("\r\n")[1:-2]
    assert msg.headers == [
        (name, value.strip(" ")) for name, value in (line.split(":", 1) for line in head_lines)
    ]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_round_trips_byte_for_byte(name: str) -> None:
    data = load(name)
    assert parse_message(data).to_bytes() == data


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_truncation_of_a_sample_is_rejected(name: str) -> None:
    data = load(name)
    for cut in range(len(data)):
        with pytest.raises(SipParseError):
            parse_message(data[:cut])


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_octets_after_the_body_are_discarded(name: str) -> None:
    # RFC 3261 18.3: a UDP datagram longer than its Content-Length says.
    data = load(name)
    msg = parse_message(data + b"INVITE sip:x SIP/2.0\r\n\r\n")
    assert msg.to_bytes() == data


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_mutated_samples_never_raise_anything_else(name: str) -> None:
    data = load(name)
    rng = random.Random(name)
    for _ in range(300):
        mutated = bytearray(data)
        position = rng.randrange(len(mutated))
        action = rng.randrange(3)
        if action == 0:
            mutated[position] = rng.randrange(256)
        elif action == 1:
            del mutated[position]
        else:
            mutated.insert(position, rng.choice(b"\r\n :;,<>\"\\@[]\x00\xff"))
        try:
            msg = parse_message(bytes(mutated))
        except SipParseError as exc:
            assert 400 <= exc.status <= 599
            continue
        # Whatever parses serializes to something that parses to the same message
        # (plus a Content-Length if it had none), and serializing is then stable.
        out = msg.to_bytes()
        again = parse_message(out)
        assert again.to_bytes() == out
        assert again.body == msg.body
        assert [h for h in again.headers if h[0] != "Content-Length"] == [
            h for h in msg.headers if h[0] != "Content-Length"]


def test_crlf_before_the_start_line_is_ignored() -> None:
    data = load("sipp_bye.sip")
    assert parse_message(b"\r\n\r\n" + data).to_bytes() == data


def test_bare_lf_line_ends_are_accepted_and_canonicalised_on_change() -> None:
    data = load("sipp_bye.sip").replace(b"\r\n", b"\n")
    msg = request(data)
    assert msg.cseq == (3, "BYE")
    assert msg.to_bytes() == data  # unmodified: as received
    msg.set("Max-Forwards", "69")
    assert msg.to_bytes() == load("sipp_bye.sip").replace(b"Max-Forwards: 70", b"Max-Forwards: 69").replace(
        b"Content-Length:     0", b"Content-Length: 0"
    )


# ---------------------------------------------------------------------------
# Changing a message
# ---------------------------------------------------------------------------


def test_proxy_style_rewrite_of_an_invite() -> None:
    msg = request(load("sipp_invite.sip"))
    via = make_via("127.0.0.1", 40123, "z9hG4bKstc1")
    msg.prepend("Via", str(via))
    msg.set("Contact", name_addr_with_host_port(msg.get("Contact") or "", "127.0.0.1", 40123))
    new_body = msg.body.replace(b"m=audio 6000 ", b"m=audio 31000 ")
    msg.set_body(new_body, "application/sdp")
    out = msg.to_bytes()
    assert out.startswith(b"INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\n"
                          b"Via: SIP/2.0/UDP 127.0.0.1:40123;branch=z9hG4bKstc1;rport\r\n"
                          b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-1-0\r\n")
    assert b"\r\nContact: sip:sipp@127.0.0.1:40123\r\n" in out
    assert b"\r\nContent-Length: 210\r\n\r\nv=0\r\n" in out
    again = request(out)
    assert again.body == new_body
    assert again.get_all("Via") == [str(via), "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-1-0"]
    assert again.top_via_branch == "z9hG4bKstc1"
    # The response path: the proxy pops its own Via again.
    assert again.pop_first_value("Via") == str(via)
    assert again.top_via_branch == "z9hG4bK-31337-1-0"


def test_body_setter_and_with_body_fix_content_length() -> None:
    original = request(load("sipp_invite.sip"))
    copy = original.with_body(b"")
    assert copy.get("Content-Type") is None
    assert b"\r\nContent-Length: 0\r\n\r\n" in copy.to_bytes()
    assert original.get("Content-Type") == "application/sdp"  # with_body copied
    assert len(original.body) == 209
    original.body = b"v=0\r\n"
    assert request(original.to_bytes()).body == b"v=0\r\n"
    assert b"\r\nContent-Length: 5\r\n" in original.to_bytes()


def test_content_length_is_added_when_missing() -> None:
    data = crlf(
        "OPTIONS sip:a@example.com SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:b@example.com>;tag=1\n"
        "To: <sip:a@example.com>\nCall-ID: c1\nCSeq: 1 OPTIONS\n\nhello"
    )
    msg = request(data)
    assert msg.body == b"hello"  # without Content-Length the rest of the datagram is the body
    assert msg.to_bytes() == data.replace(b"CSeq: 1 OPTIONS\r\n", b"CSeq: 1 OPTIONS\r\nContent-Length: 5\r\n")


def test_header_access_is_case_insensitive_with_compact_forms() -> None:
    msg = request(load("sipp_invite.sip"))
    assert msg.get("v") == msg.get("VIA") == "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-1-0"
    assert msg.get("i") == "1-31337@127.0.0.1"
    assert msg.get("l") == "209"
    assert msg.get("c") == "application/sdp"
    assert msg.content_type == "application/sdp"
    assert msg.get("X-Missing") is None
    assert msg.get_all("X-Missing") == []


def test_set_keeps_the_place_and_spelling_of_the_first_line() -> None:
    msg = request(crlf(
        "INVITE sip:a@h SIP/2.0\nv: SIP/2.0/UDP one;branch=z9hG4bK1\nf: <sip:b@h>;tag=1\nt: <sip:a@h>\n"
        "i: c\nCSeq: 1 INVITE\nX-A: 1\nx-a: 2\nl: 0\n\n"
    ))
    msg.set("X-A", "3")
    assert msg.headers[5:] == [("X-A", "3"), ("l", "0")]
    msg.set("Subject", "hi")
    assert msg.headers[-1] == ("Subject", "hi")
    assert msg.remove("subject") == 1 and msg.remove("subject") == 0
    msg.prepend("Via", "SIP/2.0/UDP zero;branch=z9hG4bK0")
    assert [n for n, _ in msg.headers[:2]] == ["Via", "v"]
    msg.prepend("Record-Route", "<sip:p;lr>")
    assert msg.headers[0] == ("Record-Route", "<sip:p;lr>")
    msg.append("X-B", "b")
    assert msg.headers[-1] == ("X-B", "b")
    assert b"\r\nl: 0\r\n" in msg.to_bytes()  # compact Content-Length kept, value fixed


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Evil", "a\r\nVia: injected"), ("X-Evil", "a\nb"), ("Bad Name", "x"), ("", "x"), ("X:Y", "z")],
)
def test_header_injection_is_refused(name: str, value: str) -> None:
    msg = request(load("sipp_bye.sip"))
    for operation in (msg.set, msg.prepend, msg.append):
        with pytest.raises(ValueError):
            operation(name, value)


def test_comma_joined_via_is_split_and_popped() -> None:
    msg = request(crlf(
        "BYE sip:a@h SIP/2.0\nVia: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2\n"
        "Via: SIP/2.0/UDP p3;branch=z9hG4bK3\nFrom: <sip:b@h>;tag=1\nTo: <sip:a@h>;tag=2\nCall-ID: c\n"
        "CSeq: 2 BYE\nContent-Length: 0\n\n"
    ))
    assert [parse_via(v).host for v in msg.get_all("Via")] == ["p1", "p2", "p3"]
    msg.replace_first_value("Via", "SIP/2.0/UDP q1;branch=z9hG4bKq")
    assert msg.get("Via") == "SIP/2.0/UDP q1;branch=z9hG4bKq, SIP/2.0/UDP p2;branch=z9hG4bK2"
    assert msg.pop_first_value("Via") == "SIP/2.0/UDP q1;branch=z9hG4bKq"
    assert msg.top_via.host == "p2"
    assert msg.pop_first_value("Via") == "SIP/2.0/UDP p2;branch=z9hG4bK2"
    assert msg.get_all("Via") == ["SIP/2.0/UDP p3;branch=z9hG4bK3"]
    assert msg.pop_first_value("Via") is not None and msg.pop_first_value("Via") is None
    with pytest.raises(KeyError):
        msg.replace_first_value("Via", "SIP/2.0/UDP x")


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a, b,c", ["a", "b", "c"]),
        ('"Doe, John" <sip:j@h>, <sip:k@h;x=1,2>', ['"Doe, John" <sip:j@h>', "<sip:k@h;x=1,2>"]),
        ('"a \\" , b" <sip:x@h>', ['"a \\" , b" <sip:x@h>']),
        ("*", ["*"]),
        (" , ,", []),
    ],
)
def test_split_header_values(value: str, items: list[str]) -> None:
    assert split_header_values(value) == items


def test_get_all_does_not_split_headers_with_their_own_commas() -> None:
    msg = response(load("asterisk_401_register.sip"))
    assert len(msg.get_all("WWW-Authenticate")) == 1
    assert msg.get_all("WWW-Authenticate")[0].count(",") == 4
    ok = response(load("asterisk_200_ok_invite.sip"))
    assert ok.get_all("Allow")[:3] == ["OPTIONS", "REGISTER", "SUBSCRIBE"] and len(ok.get_all("Allow")) == 14
    assert response(load("asterisk_200_ok_register.sip")).get_all("Date") == ["Wed, 27 Nov 2024 00:00:02 GMT"]


# ---------------------------------------------------------------------------
# Local answers
# ---------------------------------------------------------------------------


def test_make_response_100_trying() -> None:
    req = request(load("sipp_invite.sip"))
    trying = make_response(req, 100)
    assert (trying.status, trying.reason) == (100, "Trying")
    assert trying.headers == [
        ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-1-0"),
        ("From", "sipp <sip:sipp@127.0.0.1:5061>;tag=31337SIPpTag001"),
        ("To", "1000 <sip:1000@127.0.0.1:5060>"),
        ("Call-ID", "1-31337@127.0.0.1"),
        ("CSeq", "1 INVITE"),
        ("Content-Length", "0"),
    ]
    assert trying.to_bytes().startswith(b"SIP/2.0 100 Trying\r\nVia: ")
    assert response(trying.to_bytes()) == trying


def test_make_response_488_with_tag_and_extra_headers() -> None:
    req = request(load("sipp_invite.sip"))
    refused = make_response(
        req, 488, to_tag="stc1", headers=[("Warning", '399 stc "media not relayable"')]
    )
    assert refused.reason == "Not Acceptable Here"
    assert refused.to_tag == "stc1"
    assert refused.get("To") == "1000 <sip:1000@127.0.0.1:5060>;tag=stc1"
    assert refused.get("Warning") == '399 stc "media not relayable"'
    assert refused.body == b"" and refused.to_bytes().endswith(b"Content-Length: 0\r\n\r\n")
    again = response(refused.to_bytes())
    assert (again.status, again.cseq, again.call_id, again.top_via_branch) == (
        488, (1, "INVITE"), "1-31337@127.0.0.1", "z9hG4bK-31337-1-0")


def test_make_response_keeps_an_existing_to_tag_and_all_vias() -> None:
    req = request(crlf(
        "BYE sip:a@h SIP/2.0\nVia: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2\n"
        "Max-Forwards: 70\nVia: SIP/2.0/UDP p3;branch=z9hG4bK3\nf: <sip:b@h>;tag=1\nt: <sip:a@h>;tag=2\ni: c\n"
        "CSeq: 2 BYE\nContent-Length: 0\n\n"
    ))
    answer = make_response(req, 503, "Tunnel Down", to_tag="other")
    assert answer.to_tag == "2"
    assert answer.reason == "Tunnel Down"
    assert answer.get_all("Via") == [
        "SIP/2.0/UDP p1;branch=z9hG4bK1", "SIP/2.0/UDP p2;branch=z9hG4bK2", "SIP/2.0/UDP p3;branch=z9hG4bK3"]
    assert [n for n, _ in answer.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Content-Length"]


def test_make_response_200_for_register_and_bad_status() -> None:
    req = request(load("sipp_register.sip"))
    ok = make_response(req, 200, to_tag="reg1", headers=[("Contact", req.get("Contact") + ";expires=3600")])
    assert ok.get("Contact") == "<sip:alice@127.0.0.1:5061;transport=udp>;expires=3600"
    assert ok.cseq == (1, "REGISTER")
    with pytest.raises(ValueError):
        make_response(req, 99)
    with pytest.raises(ValueError):
        make_response(req, 200, headers=[("X", "a\r\nb")])


# ---------------------------------------------------------------------------
# Header value helpers
# ---------------------------------------------------------------------------

VIAS = [
    ("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-31337-1-0",
     "UDP", "127.0.0.1", 5061, "z9hG4bK-31337-1-0", None, None),
    ("SIP/2.0/UDP 127.0.0.1:5061;rport=5061;received=127.0.0.1;branch=z9hG4bK-1",
     "UDP", "127.0.0.1", 5061, "z9hG4bK-1", 5061, "127.0.0.1"),
    ("SIP/2.0/UDP 127.0.0.1:5080;rport;branch=z9hG4bKPj1", "UDP", "127.0.0.1", 5080, "z9hG4bKPj1", None, None),
    ("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKx", "TLS", "2001:db8::9", 5061, "z9hG4bKx", None, None),
    ("SIP  /  2.0 / TCP   host.example.com ;  branch = z9hG4bKabc", "TCP", "host.example.com", None,
     "z9hG4bKabc", None, None),
    ("SIP/2.0/UDP 192.0.2.1 : 5070;received=2001:db8::9:255;BRANCH=z9hG4bKb", "UDP", "192.0.2.1", 5070,
     "z9hG4bKb", None, "2001:db8::9:255"),
]


@pytest.mark.parametrize(("value", "transport", "host", "port", "branch", "rport", "received"), VIAS)
def test_parse_via(value, transport, host, port, branch, rport, received) -> None:
    via = parse_via(value)
    assert (via.transport, via.host, via.port, via.branch, via.rport, via.received) == (
        transport, host, port, branch, rport, received)
    assert parse_via(str(via)) == via


def test_via_build_and_rewrite() -> None:
    via = make_via("127.0.0.1", 40123, "z9hG4bKabc")
    assert str(via) == "SIP/2.0/UDP 127.0.0.1:40123;branch=z9hG4bKabc;rport"
    assert str(make_via("::1", None, "z9hG4bKd", transport="TCP", rport=False)) == "SIP/2.0/TCP [::1];branch=z9hG4bKd"
    answered = via.with_param("rport", "40123").with_param("received", "10.0.0.5")
    assert str(answered) == "SIP/2.0/UDP 127.0.0.1:40123;branch=z9hG4bKabc;rport=40123;received=10.0.0.5"
    assert answered.rport == 40123
    moved = parse_via("SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport").with_sent_by("10.1.2.3", 5070)
    assert str(moved) == "SIP/2.0/UDP 10.1.2.3:5070;branch=z9hG4bK-1;rport"
    assert str(moved.without_param("RPORT")) == "SIP/2.0/UDP 10.1.2.3:5070;branch=z9hG4bK-1"
    assert moved.has_param("rport") and not moved.has_param("maddr")
    with pytest.raises(ValueError):
        via.with_sent_by("h", 70000)
    branch = new_branch()
    assert branch.startswith("z9hG4bK") and len(branch) == 23 and branch != new_branch()
    assert Via("UDP", "h").branch is None


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0 127.0.0.1",
        "SIP/2.0/UDP",
        "SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bK1",
        "SIP/2.0/UDP 127.0.0.1:5060;branch=",
        "SIP/2.0/UDP [::1;branch=z9hG4bK1",
        "SIP/2.0/UDP [zz::1]:5060",
        "SIP/2.0/UDP host name;branch=z9hG4bK1",
        'SIP/2.0/UDP h;x="unterminated',
        "SIP/2.0/UDP h;;branch=z9hG4bK1",
        "",
    ],
)
def test_bad_via_is_rejected(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(value)


NAME_ADDRS = [
    # value, display name, uri, params, rewritten to 10.0.0.1:5070
    ("sipp <sip:sipp@127.0.0.1:5061>;tag=31337SIPpTag001", "sipp", "sip:sipp@127.0.0.1:5061",
     (("tag", "31337SIPpTag001"),), "sipp <sip:sipp@10.0.0.1:5070>;tag=31337SIPpTag001"),
    ("sip:sipp@127.0.0.1:5061", None, "sip:sipp@127.0.0.1:5061", (), "sip:sipp@10.0.0.1:5070"),
    ("<sip:127.0.0.1:5080>", None, "sip:127.0.0.1:5080", (), "<sip:10.0.0.1:5070>"),
    ("sip:alice@example.com;tag=1", None, "sip:alice@example.com", (("tag", "1"),),
     "sip:alice@10.0.0.1:5070;tag=1"),
    ('"Alice \\"A\\" Smith" <sips:alice@[2001:db8::1]:5061;transport=tls>;expires=3600;'
     '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"',
     '"Alice \\"A\\" Smith"', "sips:alice@[2001:db8::1]:5061;transport=tls",
     (("expires", "3600"), ("+sip.instance", '"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"')),
     '"Alice \\"A\\" Smith" <sips:alice@10.0.0.1:5070;transport=tls>;expires=3600;'
     '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'),
    ("<sip:alice@127.0.0.1:5061;transport=udp>;expires=3599", None, "sip:alice@127.0.0.1:5061;transport=udp",
     (("expires", "3599"),), "<sip:alice@10.0.0.1:5070;transport=udp>;expires=3599"),
    ("Bob<sip:bob@h>  ;  tag = x ; lr", "Bob", "sip:bob@h", (("tag", "x"), ("lr", None)),
     "Bob <sip:bob@10.0.0.1:5070>;tag=x;lr"),
    ('"Watson, Thomas" < sip:t.watson@example.org >', '"Watson, Thomas"', "sip:t.watson@example.org", (),
     '"Watson, Thomas" <sip:t.watson@10.0.0.1:5070>'),
]


@pytest.mark.parametrize(("value", "display", "uri", "params", "rewritten"), NAME_ADDRS)
def test_name_addr(value, display, uri, params, rewritten) -> None:
    parsed = parse_name_addr(value)
    assert (parsed.display_name, parsed.uri, parsed.params) == (display, uri, params)
    assert name_addr_with_host_port(value, "10.0.0.1", 5070) == rewritten
    assert parse_name_addr(str(parsed)) == parsed


def test_name_addr_tag_and_star() -> None:
    assert parse_name_addr("<sip:a@h>;TAG=abc").tag == "abc"
    assert parse_name_addr("*").uri == "*"
    assert str(NameAddr("sip:a@h;lr")) == "<sip:a@h;lr>"
    assert str(NameAddr("sip:a@h;lr", bracketed=False)) == "<sip:a@h;lr>"  # brackets needed
    assert str(parse_name_addr("sip:a@h").with_param("tag", "t")) == "sip:a@h;tag=t"
    assert str(parse_name_addr("<sip:a@h:5060>").with_host_port("::1", None)) == "<sip:a@[::1]>"


@pytest.mark.parametrize(
    "value",
    [
        '"unterminated <sip:a@example.com>',  # RFC 4475 3.1.2.6 (quotbal)
        "<sip:a@example.com",
        "",
        "sip:a@example.com extra",
        '"Name" sip:a@example.com',
        "not a uri",
        "<sip:a@h> junk",
        "<>",
        "<sip:a@h>;tag=",
        '"A" "B" <sip:a@h>',
    ],
)
def test_bad_name_addr_is_rejected(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(value)


@pytest.mark.parametrize(
    ("uri", "host", "port"),
    [
        ("sip:1000@127.0.0.1:5060", "127.0.0.1", 5060),
        ("sip:127.0.0.1:5080", "127.0.0.1", 5080),
        ("sips:alice@[2001:db8::1]:5061;transport=tls", "2001:db8::1", 5061),
        ("sip:alice@example.com", "example.com", None),
        ("sip:user;par=u%40example.net@example.com", "example.com", None),
        ("SIP:Alice@Example.COM;lr", "Example.COM", None),
        ("sip:example.com?Subject=hi", "example.com", None),
        ("sip:alice:secret@host:5070", "host", 5070),
        ("sip:[::1]", "::1", None),
    ],
)
def test_sip_uri_host_port(uri: str, host: str, port: int | None) -> None:
    assert sip_uri_host_port(uri) == (host, port)
    assert str(parse_sip_uri(uri)) == uri


def test_uri_with_host_port_keeps_user_params_and_headers() -> None:
    uri = "sip:alice:secret@host:5070;transport=udp?Subject=x"
    assert uri_with_host_port(uri, "10.0.0.1", None) == "sip:alice:secret@10.0.0.1;transport=udp?Subject=x"
    assert uri_with_host_port("sip:h", "::1", 5060) == "sip:[::1]:5060"
    parsed = parse_sip_uri(uri)
    assert (parsed.userinfo, parsed.params, parsed.headers) == ("alice:secret", ";transport=udp", "?Subject=x")
    assert parsed.param("transport") == "udp"


@pytest.mark.parametrize(
    ("uri", "status"),
    [
        ("tel:+15551234", 416),
        ("mailto:a@example.com", 416),
        ("sip:", 400),
        ("sip:alice@", 400),
        ("sip:@host", 400),
        ("sip:host:0", 400),
        ("sip:host:65536", 400),
        ("sip:host:", 400),
        ("sip:[::1", 400),
        ("sip:ho st", 400),
    ],
)
def test_bad_sip_uri_is_rejected(uri: str, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        sip_uri_host_port(uri)
    assert info.value.status == status


# ---------------------------------------------------------------------------
# RFC 4475 torture messages, valid ones (section 3.1.1)
# ---------------------------------------------------------------------------

TORTURE_SDP_150 = (
    "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.3\ns=-\nc=IN IP4 192.0.2.4\nt=0 0\n"
    "m=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n"
)

# RFC 4475 3.1.1.1: a short tortuous INVITE (folding, LWS, compact and mixed-case names).
WSINV = crlf(r"""INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

""" + TORTURE_SDP_150)


def test_rfc4475_wsinv() -> None:
    msg = request(WSINV)
    assert (msg.method, msg.uri) == ("INVITE", "sip:vivekg@chair-dnrc.example.com;unknownparam")
    assert msg.to_tag == "1918181833n"
    assert msg.from_tag == "98asjd8"
    assert parse_name_addr(msg.get("From") or "").display_name == r'"J Rosenberg \\\""'
    assert msg.get("Max-Forwards") == "0068"
    assert msg.cseq == (9, "INVITE")
    assert msg.call_id == "wsinv.ndaksdj@192.0.2.1"
    vias = [parse_via(v) for v in msg.get_all("Via")]
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert msg.get("Subject") == ""
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert msg.get("Route") == "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"
    contact = parse_name_addr(msg.get("Contact") or "")
    assert contact.display_name == r'"Quoted string \"\""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert msg.body == crlf(TORTURE_SDP_150)
    assert msg.to_bytes() == WSINV
    # Once changed, it is written unfolded, and parses to the same headers.
    msg.set("Max-Forwards", "67")
    out = msg.to_bytes()
    assert not any(line[:1] in (b" ", b"\t") for line in out.split(b"\r\n"))
    again = request(out)
    assert again.headers == msg.headers and again.body == msg.body


# RFC 4475 3.1.1.2: wide range of valid characters (control characters quoted in To, UTF-8).
INTMETH = crlf(
    "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:"
    "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\n"
    "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\n"
    'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*@example.com>\n'
    "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u0440\u0430\u0431"
    "\u043e\u0442\u0430\u044e\u0449\u0438\u0439\";tag=_token~1'+`*%!-.\n"
    "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\n"
    "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\n"
    "Max-Forwards: 255\n"
    "extensionHeader-!.%*+_`'~: \ufeff\u5927\u505c\u96fb\n"
    "Content-Length: 0\n\n"
)


def test_rfc4475_intmeth() -> None:
    msg = request(INTMETH)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert sip_uri_host_port(msg.uri) == ("example.com", None)
    assert msg.top_via_branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.to_tag is None
    assert msg.from_tag == "_token~1'+`*%!-."
    assert parse_name_addr(msg.get("From") or "").param("fromParam''~+*_!.-%") == '"работающий"'
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert msg.to_bytes() == INTMETH
    msg.set("Max-Forwards", "254")
    assert request(msg.to_bytes()).headers == msg.headers


# RFC 4475 3.1.1.3: valid use of % escaping.
ESC01 = crlf("""INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0
To: sip:%75se%72@example.com
From: <sip:I%20have%20spaces@example.net>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: 150

""" + TORTURE_SDP_150)


def test_rfc4475_esc01() -> None:
    msg = request(ESC01)
    assert parse_sip_uri(msg.uri).userinfo == "sips%3Auser%40example.com"
    assert sip_uri_host_port(msg.uri) == ("example.net", None)
    assert msg.call_id == "esc01.239409asdfakjkn23onasd0-3234"
    assert msg.content_type == "application/sdp"
    contact = msg.get("Contact") or ""
    assert name_addr_with_host_port(contact, "192.0.2.99", 5070) == (
        "<sip:cal%6Cer@192.0.2.99:5070;%6C%72;n%61me=v%61lue%25%34%31>")
    assert msg.to_bytes() == ESC01


# RFC 4475 3.1.1.5: % is not an escape in a method or a header name.
ESC02 = crlf("""RE%47IST%45R sip:registrar.example.com SIP/2.0
To: "%Z%45" <sip:resource@example.com>
From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP host.example.com;branch=z9hG4bK209823
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@host1.example.com>
C%6Fntact: <sip:alias2@host2.example.com>
Contact: <sip:alias3@host3.example.com>
l: 0

""")


def test_rfc4475_esc02() -> None:
    msg = request(ESC02)
    assert msg.method == "RE%47IST%45R"
    assert msg.get_all("Contact") == ["<sip:alias1@host1.example.com>", "<sip:alias3@host3.example.com>"]
    assert msg.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert msg.to_bytes() == ESC02


# RFC 4475 3.1.1.8: extra octets (another request) after a Content-Length 0 body in a datagram.
DBLREQ_REGISTER = crlf("""REGISTER sip:example.com SIP/2.0
To: sip:j.user@example.com
From: sip:j.user@example.com;tag=43251j3j324
Max-Forwards: 8
I: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:j.user@host.example.com
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.125;branch=z9hG4bKkdjuw23492
Content-Length: 0

""")
DBLREQ = DBLREQ_REGISTER + crlf("""INVITE sip:joe@example.com SIP/2.0
t: sip:joe@example.com
From: sip:caller@example.net;tag=141334
Max-Forwards: 8
Call-ID: dblreq.0ha0isnda977644900765@192.0.2.15
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.15;branch=z9hG4bKkdjuw380234
Content-Type: application/sdp
Content-Length: 150

""" + TORTURE_SDP_150)


def test_rfc4475_dblreq() -> None:
    msg = request(DBLREQ)
    assert msg.method == "REGISTER" and msg.body == b""
    assert msg.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    assert msg.to_tag is None and msg.from_tag == "43251j3j324"
    assert msg.to_bytes() == DBLREQ_REGISTER


# RFC 4475 3.1.1.9 (semiuri), 3.1.1.10 (transports), 3.1.1.6 (lwsdisp).
SEMIURI = crlf("""OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0
To: sip:j_user@example.com
From: sip:caller@example.org;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
l: 0

""")
TRANSPORTS = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: <sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID:  transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee
l: 0

""")
LWSDISP = crlf("""OPTIONS sip:user@example.com SIP/2.0
To: sip:user@example.com
From: caller<sip:caller@example.com>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.example.com
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP funky.example.com;branch=z9hG4bKkdjuw
l: 0

""")


def test_rfc4475_semiuri_transports_lwsdisp() -> None:
    semi = request(SEMIURI)
    assert parse_sip_uri(semi.uri).userinfo == "user;par=u%40example.net"
    assert len(semi.get_all("Accept")) == 6 and semi.get_all("Accept")[-1] == "message/sipfrag"
    transports = request(TRANSPORTS)
    assert transports.call_id == "transports.kijh4akdnaqjkwendsasfdj"
    assert [parse_via(v).transport for v in transports.get_all("Via")] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]
    lws = request(LWSDISP)
    assert parse_name_addr(lws.get("From") or "").display_name == "caller"
    for data in (SEMIURI, TRANSPORTS, LWSDISP):
        assert parse_message(data).to_bytes() == data


# RFC 4475 3.1.1.12 (unreason) and 3.1.1.13 (noreason): unusual and empty reason phrases.
UNREASON = crlf("""SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@example.com;tag=11141343
To: sip:user@example.edu;tag=2229
Content-Length: 154
Content-Type: application/sdp
Contact: <sip:user@host198.example.com>

""" + TORTURE_SDP_150.replace("192.0.2.3", "192.0.2.198").replace("192.0.2.4", "192.0.2.198"))
# The trailing SP of the status line matters: it is written as an escape so no editor strips it.
NOREASON = crlf("""SIP/2.0 100\x20
Via: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@example.com>;tag=39ansfi3
To: <sip:user@example.edu>;tag=902jndnke3
Content-Length: 0

""")


def test_rfc4475_reason_phrases() -> None:
    unusual = response(UNREASON)
    assert (unusual.status, unusual.reason) == (200, "= 2**3 * 5**2 но сто девяносто девять - простое")
    assert len(unusual.body) == 154
    empty = response(NOREASON)
    assert (empty.status, empty.reason) == (100, "")
    for data in (UNREASON, NOREASON):
        msg = parse_message(data)
        assert msg.to_bytes() == data
        msg.set("X-Changed", "1")
        assert parse_message(msg.to_bytes()) == msg


# RFC 4475 3.3.11: Max-Forwards 0 parses (a proxy answers 483 itself).
def test_zero_max_forwards_parses() -> None:
    data = load("sipp_bye.sip").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert request(data).get("Max-Forwards") == "0"


# ---------------------------------------------------------------------------
# Messages that must be refused (RFC 4475 3.1.2 and 3.3, plus garbage)
# ---------------------------------------------------------------------------

_OPTIONS_HEADERS = """To: sip:user@example.com
From: sip:caller@example.net;tag=3923942
Call-ID: torture.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
Max-Forwards: 70
"""

_OPTIONS_LINE = "OPTIONS sip:user@example.com SIP/2.0"
_NINES = "9" * 5000  # int() of this many digits is slow, and refused past 4300

INVALID = [
    # RFC 4475 3.1.2.2 (clerr): Content-Length larger than the message.
    ("clerr", crlf("""INVITE sip:user@example.com SIP/2.0
Max-Forwards: 80
To: sip:j.user@example.com
From: sip:caller@example.net;tag=93942939o2
Contact: <sip:caller@hungry.example.net>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bK-39234-23523
Content-Type: application/sdp
Content-Length: 9999

""" + TORTURE_SDP_150), 400),
    # 3.1.2.3 (ncl): negative Content-Length.
    ("ncl", crlf("INVITE sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace("OPTIONS", "INVITE")
                 + "Content-Length: -999\n\n" + TORTURE_SDP_150), 400),
    # 3.1.2.4 (scalar02): overlarge CSeq and Max-Forwards.
    ("scalar02", crlf("""REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bK342sdfoi3
To: <sip:user@example.com>
From: <sip:user@example.com>;tag=239232jh3
CSeq: 36893488147419103232 REGISTER
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
Max-Forwards: 300
Expires: 10000000000000000000000000000000000000000000000
Contact: <sip:user@host129.example.com>
  ;expires=280297596632815
Content-Length: 0

"""), 400),
    ("max-forwards 300", crlf("OPTIONS sip:user@example.com SIP/2.0\n"
                              + _OPTIONS_HEADERS.replace("Max-Forwards: 70", "Max-Forwards: 300")
                              + "Content-Length: 0\n\n"), 400),
    # 3.1.2.5 (scalar1024): overlarge CSeq in a response.
    ("scalar1024", crlf("""SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP host129.example.com;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:user@example.com>
From: <sip:other@example.net>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalar1024.39I32e2easdjfejw
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0

"""), 400),
    # 3.1.2.6 (quotbal, body left out): unterminated quoted display name in To.
    ("quotbal", crlf("""INVITE sip:user@example.com SIP/2.0
To: "Mr. J. User <sip:j.user@example.com>
From: sip:caller@example.net;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:caller@host59.example.net>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.59:5050;branch=z9hG4bKkdjuw39234
Content-Length: 0

"""), 400),
    ("bad From", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace(
        "From: sip:caller@example.net;tag=3923942", "From: <sip:caller@example.net") + "Content-Length: 0\n\n"), 400),
    # 3.1.2.7 (ltgtruri): Request-URI in <>.
    ("ltgtruri", crlf("INVITE <sip:user@example.com> SIP/2.0\n" + _OPTIONS_HEADERS.replace("OPTIONS", "INVITE")
                      + "Content-Length: 0\n\n"), 400),
    # 3.1.2.8 (lwsruri): LWS inside the Request-URI.
    ("lwsruri", crlf("INVITE sip:user@example.com; lr SIP/2.0\n" + _OPTIONS_HEADERS.replace("OPTIONS", "INVITE")
                     + "Content-Length: 0\n\n"), 400),
    # 3.1.2.9 (lwsstart): several SP between request-line elements.
    ("lwsstart", crlf("INVITE  sip:user@example.com  SIP/2.0\n" + _OPTIONS_HEADERS.replace("OPTIONS", "INVITE")
                      + "Content-Length: 0\n\n"), 400),
    # 3.1.2.11 (escruri): headers in the Request-URI.
    ("escruri", crlf("INVITE sip:user@example.com?Route=%3Csip:example.com%3E SIP/2.0\n"
                     + _OPTIONS_HEADERS.replace("OPTIONS", "INVITE") + "Content-Length: 0\n\n"), 400),
    # 3.1.2.16 (badvers): unknown SIP version.
    ("badvers", crlf("OPTIONS sip:t.watson@example.org SIP/7.0\n" + _OPTIONS_HEADERS + "Content-Length: 0\n\n"), 505),
    ("badvers response", crlf("SIP/3.0 200 OK\n" + _OPTIONS_HEADERS + "Content-Length: 0\n\n"), 505),
    # 3.1.2.17 (mismatch01) and 3.1.2.18 (mismatch02): CSeq method differs from the method.
    ("mismatch01", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace(
        "CSeq: 15932 OPTIONS", "CSeq: 8 INVITE") + "Content-Length: 0\n\n"), 400),
    ("mismatch02", crlf("NEWMETHOD sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace(
        "CSeq: 15932 OPTIONS", "CSeq: 8 INVITE") + "Content-Length: 0\n\n"), 400),
    # 3.1.2.19 (bigcode): overlarge status code.
    ("bigcode", crlf("SIP/2.0 4294967301 better not break the receiver\n" + _OPTIONS_HEADERS
                     + "Content-Length: 0\n\n"), 400),
    ("status 099", crlf("SIP/2.0 099 Early\n" + _OPTIONS_HEADERS + "Content-Length: 0\n\n"), 400),
    # 3.3.1 (insuf): missing Call-ID, From, To.
    ("insuf", crlf("""INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 152

""" + TORTURE_SDP_150.replace("192.0.2.3", "192.0.2.95").replace("192.0.2.4", "192.0.2.95")), 400),
    # 3.3.8 (multi01): two Call-IDs, two To, two From.
    ("multi01", crlf("INVITE sip:user@company.com SIP/2.0\nCall-ID: multi01.98asdh@192.0.2.1\nCSeq: 59 INVITE\n"
                     "Call-ID: multi01.98asdh@192.0.2.2\nFrom: sip:caller@example.com;tag=3413415\n"
                     "Via: SIP/2.0/UDP 192.0.2.25;branch=z9hG4bKsdf0978sdfh\nTo: sip:user@example.com\n"
                     "To: sip:other@example.net\nFrom: sip:caller@example.net;tag=2923420123\n"
                     "Max-Forwards: 70\nContent-Length: 0\n\n"), 400),
    # 3.3.9 (mcl01): two Content-Length values.
    ("mcl01", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS
                   + "Content-Length: 13\nContent-Length: 5\nContent-Type: text/plain\n\n"
                   "There's no way to know how many octets are supposed to be here.\n"), 400),
    # Missing mandatory headers, one at a time.
    *[
        (f"no {name}", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + "\n".join(
            line for line in _OPTIONS_HEADERS.splitlines() if not line.startswith(name + ":"))
            + "\nContent-Length: 0\n\n"), 400)
        for name in ("To", "From", "Call-ID", "CSeq", "Via")
    ],
    ("empty Via", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace(
        "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423", "Via:") + "Content-Length: 0\n\n"), 400),
    ("bad top Via", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace(
        "SIP/2.0/UDP host5", "SIP/2.0 host5") + "Content-Length: 0\n\n"), 400),
    ("bad CSeq", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS.replace(
        "CSeq: 15932 OPTIONS", "CSeq: OPTIONS") + "Content-Length: 0\n\n"), 400),
    ("Content-Length not a number", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS
                                         + "Content-Length: 0x10\n\n"), 400),
    ("huge Content-Length", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS
                                 + "Content-Length: 99999999999999999999\n\n"), 400),
    *[
        (f"{name} of 5000 digits", crlf(first + "\n" + _OPTIONS_HEADERS.replace(old, new)
                                        + "Content-Length: 0\n\n"), 400)
        for name, first, old, new in [
            ("CSeq", _OPTIONS_LINE, "CSeq: 15932", "CSeq: " + _NINES),
            ("Max-Forwards", _OPTIONS_LINE, "Max-Forwards: 70", "Max-Forwards: " + _NINES),
            ("Via port", _OPTIONS_LINE, "host5.example.net;", f"host5.example.net:{_NINES};"),
            ("status code", "SIP/2.0 " + _NINES + " OK", "x", "x"),
            ("Content-Length", _OPTIONS_LINE, "Max-Forwards: 70", "Content-Length: " + _NINES),
        ]
    ],
    # Garbage of all kinds.
    ("empty", b"", 400),
    ("keep-alive", b"\r\n\r\n", 400),
    ("binary", bytes(range(256)), 400),
    ("text", b"hello world\r\n\r\n", 400),
    ("http", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),
    ("start line only", b"OPTIONS sip:user@example.com SIP/2.0\r\n\r\n", 400),
    ("no blank line", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS), 400),
    ("header without colon", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS
                                  + "NoColonHere\n\n"), 400),
    ("bad header name", crlf("OPTIONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS
                             + "Bad Name: x\n\n"), 400),
    ("continuation first", crlf("OPTIONS sip:user@example.com SIP/2.0\n continued\n" + _OPTIONS_HEADERS
                                + "\n"), 400),
    ("no version", crlf("OPTIONS sip:user@example.com\n" + _OPTIONS_HEADERS + "\n"), 400),
    ("bad method", crlf("OPT(IONS sip:user@example.com SIP/2.0\n" + _OPTIONS_HEADERS + "\n"), 400),
    ("uri without scheme", crlf("OPTIONS user@example.com SIP/2.0\n" + _OPTIONS_HEADERS + "\n"), 400),
    ("bad sip uri", crlf("OPTIONS sip:user@ SIP/2.0\n" + _OPTIONS_HEADERS + "\n"), 400),
    ("status line without code", crlf("SIP/2.0 OK\n" + _OPTIONS_HEADERS + "\n"), 400),
]


@pytest.mark.parametrize(("name", "data", "status"), INVALID, ids=[row[0] for row in INVALID])
def test_invalid_message_is_rejected(name: str, data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status == status
    assert str(info.value)  # a message that says what is wrong


@pytest.mark.parametrize("data", [WSINV, INTMETH, ESC01, ESC02, DBLREQ_REGISTER, UNREASON, NOREASON])
def test_every_truncation_of_a_torture_message_is_rejected(data: bytes) -> None:
    for cut in range(len(data)):
        with pytest.raises(SipParseError):
            parse_message(data[:cut])


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------


def test_oversized_message_gets_513() -> None:
    data = load("sipp_bye.sip")
    assert b"Content-Length:     0\r\n" in data  # five columns, like a five-digit length

    def with_body(length: int) -> bytes:
        return data.replace(b"    0", str(length).rjust(5).encode()) + b"x" * length

    at_limit = with_body(MAX_MESSAGE_SIZE - len(data))
    assert len(at_limit) == MAX_MESSAGE_SIZE
    assert len(request(at_limit).body) == MAX_MESSAGE_SIZE - len(data)
    with pytest.raises(SipParseError) as info:
        parse_message(with_body(MAX_MESSAGE_SIZE - len(data) + 1))
    assert info.value.status == 513


def test_header_count_limit() -> None:
    data = load("sipp_bye.sip")
    extra = MAX_HEADER_COUNT - len(request(data).headers)
    at_limit = data.replace(b"Content-Length", b"X-Pad: 1\r\n" * extra + b"Content-Length")
    assert len(request(at_limit).headers) == MAX_HEADER_COUNT
    over = data.replace(b"Content-Length", b"X-Pad: 1\r\n" * (extra + 1) + b"Content-Length")
    with pytest.raises(SipParseError, match="headers"):
        parse_message(over)


def test_header_line_limit() -> None:
    data = load("sipp_bye.sip")
    room = MAX_HEADER_LINE - len("Subject: ")
    fits = data.replace(b"Performance Test", b"x" * room)
    assert len(request(fits).get("Subject") or "") == room
    with pytest.raises(SipParseError, match="longer than"):
        parse_message(data.replace(b"Performance Test", b"x" * (MAX_HEADER_LINE + 1)))
    # Folding does not get around it.
    folded = data.replace(b"Performance Test", b"x\r\n " * (MAX_HEADER_LINE // 2))
    with pytest.raises(SipParseError, match="longer than"):
        parse_message(folded)
    with pytest.raises(SipParseError, match="start line"):
        parse_message(data.replace(b"sip:127.0.0.1:5080", b"sip:" + b"a" * MAX_HEADER_LINE + b"@h"))


def test_keepalive_detection() -> None:
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n")
    assert not is_keepalive(b"") and not is_keepalive(load("sipp_bye.sip"))


def test_non_utf8_bytes_round_trip() -> None:
    data = load("sipp_bye.sip").replace(b"Performance Test", b"caf\xe9 \xff")
    msg = request(data)
    assert msg.to_bytes() == data
    msg.set("Max-Forwards", "69")
    assert b"Subject: caf\xe9 \xff\r\n" in msg.to_bytes()


def test_make_request_builds_our_own_request_in_rfc3261_order() -> None:
    request = make_request("BYE", "sip:1000@127.0.0.1:5080", via="SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx",
                           from_="<sip:alice@x>;tag=a", to="<sip:1000@y>;tag=b", call_id="c1", cseq=7,
                           headers=[("Reason", 'Q.850;cause=16;text="bye"')])
    assert request.to_bytes() == (
        b"BYE sip:1000@127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\nMax-Forwards: 70\r\n"
        b"From: <sip:alice@x>;tag=a\r\nTo: <sip:1000@y>;tag=b\r\nCall-ID: c1\r\nCSeq: 7 BYE\r\n"
        b'Reason: Q.850;cause=16;text="bye"\r\nContent-Length: 0\r\n\r\n')
    request.set_body(b"v=0\r\n", "application/sdp")
    assert parse_message(request.to_bytes()).body == b"v=0\r\n"
