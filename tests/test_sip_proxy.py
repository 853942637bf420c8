"""The proxy steps both stc ends apply to SIP, in memory."""

from __future__ import annotations

import pytest

from stc_wire.sdp import RelayRefused, SessionDescription
from stc_wire.sip import SipRequest, SipResponse, make_response, parse_message
from stc_wire.sip_proxy import (
    point_contact_at,
    pop_own_via,
    proxy_branch,
    push_via,
    request_user,
    rewrite_sdp,
    strip_private_headers,
)

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 40000 {proto} 8\r\na=rtpmap:8 PCMA/8000\r\n")


def invite(proto: str = "RTP/AVP", extra: str = "") -> SipRequest:
    body = SDP.format(proto=proto)
    msg = parse_message((
        "INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK-abc;rport\r\n"
        "From: \"Alice\" <sip:alice@127.0.0.1:6000>;tag=1\r\nTo: <sip:1000@127.0.0.1>\r\n"
        "Call-ID: c1\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:6000;transport=udp>\r\n"
        f"{extra}Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
    assert isinstance(msg, SipRequest)
    return msg


def test_cancel_and_ack_share_the_invite_branch_other_requests_do_not() -> None:
    branch = proxy_branch("s", "z9hG4bK-abc", "INVITE")
    assert proxy_branch("s", "z9hG4bK-abc", "CANCEL") == branch == proxy_branch("s", "z9hG4bK-abc", "ACK")
    assert proxy_branch("s", "z9hG4bK-abc", "BYE") != branch
    assert proxy_branch("other secret", "z9hG4bK-abc", "INVITE") != branch
    assert branch.startswith("z9hG4bK")


def test_via_pushed_on_requests_and_popped_from_their_responses() -> None:
    request = invite()
    push_via(request, "127.0.0.1", 7000, "s")
    assert request.top_via.host == "127.0.0.1" and request.top_via.port == 7000
    response = make_response(request, 200)
    assert pop_own_via(response, "127.0.0.1", 7000)
    assert response.top_via.port == 6000  # the softphone's Via is what is left
    foreign = make_response(invite(), 200)
    assert not pop_own_via(foreign, "127.0.0.1", 7000)  # not ours: the caller drops it


def test_a_client_cannot_forge_the_admission_token() -> None:
    request = invite(extra="X-STC-Token: forged\r\nx-stc-other: y\r\n")
    assert strip_private_headers(request) == 2
    assert request.get("X-STC-Token") is None and b"forged" not in request.to_bytes()


def test_contact_and_sdp_point_at_the_proxy() -> None:
    request = invite()
    point_contact_at(request, "127.0.0.2", 7000)
    assert "127.0.0.2:7000" in (request.get("Contact") or "") and "alice@" in (request.get("Contact") or "")
    endpoint = rewrite_sdp(request, "127.0.0.2", 20000, 20001)
    assert endpoint is not None and (endpoint.address, endpoint.rtp_port) == ("127.0.0.1", 40000)
    sd = SessionDescription.from_bytes(request.body)
    assert "c=IN IP4 127.0.0.2" in str(sd) and "m=audio 20000 RTP/AVP 8" in str(sd)
    assert int(request.get("Content-Length") or 0) == len(request.body)
    assert request_user(request) == "1000"


def test_sdp_with_its_own_srtp_is_refused_not_relayed() -> None:
    with pytest.raises(RelayRefused):
        rewrite_sdp(invite("RTP/SAVP"), "127.0.0.2", 20000, 20001)


def test_response_without_sdp_is_left_alone() -> None:
    response = make_response(invite(), 180)
    assert isinstance(response, SipResponse)
    assert rewrite_sdp(response, "127.0.0.2", 20000, 20001) is None
