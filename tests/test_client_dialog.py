"""The client's call across lost tunnels, in memory: the dialog state machine, the leg map that
puts a rejoined upstream dialog under the softphone's own, and what the softphone hears in the gap."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from stc_client.dialog import BadTransition, CallDialog, CallState, UpstreamLeg, answer_in_gap
from stc_client.state import ClientState
from stc_wire.sip import SipRequest, SipResponse, make_response, parse_message
from test_client_state import SERVER


def request(method: str, cseq: int, *, call_id: str = "phone-call", from_tag: str = "phone",
            to_tag: str | None = "ast1", body: bytes = b"") -> SipRequest:
    to = "<sip:1000@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    raw = (f"{method} sip:1000@127.0.0.1:5060 SIP/2.0\r\n"
           f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-{method}-{cseq}\r\n"
           f'From: "Alice" <sip:alice@127.0.0.1>;tag={from_tag}\r\nTo: {to}\r\n'
           f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    msg = parse_message(raw)
    assert isinstance(msg, SipRequest)
    return msg


def leg(**kwargs: object) -> UpstreamLeg:
    values: dict[str, object] = dict(call_id="up-call", local_tag="ours", phone_call_id="phone-call",
                                     phone_tag="phone", phone_far_tag="ast1", invite_cseq=3)
    values.update(kwargs)
    made = UpstreamLeg(**values)  # type: ignore[arg-type]
    made.remote_tag = "ast2"
    return made


# -- the state machine ---------------------------------------------------------

def test_a_confirmed_call_is_kept_when_its_leg_is_lost_and_rejoins() -> None:
    dialog = CallDialog()
    dialog.confirmed()
    assert dialog.leg_lost(now=10.0) is True
    assert dialog.state is CallState.RECONNECTING and dialog.gap and dialog.lost_since == 10.0
    dialog.rejoin_sent()
    assert dialog.state is CallState.REJOINING and dialog.gap
    assert dialog.rejoin_answered(200) is CallState.CONFIRMED
    assert not dialog.gap and dialog.lost_since is None and dialog.rejoins == 1


def test_an_unanswered_call_is_not_kept() -> None:
    dialog = CallDialog()
    assert dialog.leg_lost(now=1.0) is False
    assert dialog.state is CallState.ENDED


def test_losing_the_leg_again_while_rejoining_keeps_the_first_deadline() -> None:
    dialog = CallDialog()
    dialog.confirmed()
    dialog.leg_lost(now=5.0)
    dialog.rejoin_sent()
    assert dialog.leg_lost(now=9.0) is True
    assert dialog.state is CallState.RECONNECTING and dialog.lost_since == 5.0


@pytest.mark.parametrize("status", [408, 480, 500, 503, 504])
def test_a_rejoin_refused_for_a_passing_reason_is_tried_again(status: int) -> None:
    dialog = CallDialog(CallState.REJOINING, lost_since=1.0)
    assert dialog.rejoin_answered(status) is CallState.RECONNECTING
    dialog.rejoin_sent()  # allowed again


@pytest.mark.parametrize("status", [403, 404, 486, 488, 603])
def test_a_rejoin_refused_by_decision_ends_the_call(status: int) -> None:
    dialog = CallDialog(CallState.REJOINING, lost_since=1.0)
    assert dialog.rejoin_answered(status) is CallState.ENDED
    assert dialog.leg_lost(now=2.0) is False  # nothing brings it back


def test_an_ended_call_is_never_rejoined() -> None:
    dialog = CallDialog()
    dialog.confirmed()
    dialog.ended()
    assert dialog.leg_lost(now=3.0) is False
    with pytest.raises(BadTransition):
        dialog.rejoin_sent()
    with pytest.raises(BadTransition):
        dialog.rejoin_answered(200)


def test_a_rejoin_without_answer_goes_back_to_reconnecting() -> None:
    dialog = CallDialog(CallState.REJOINING, lost_since=1.0)
    dialog.rejoin_timed_out()
    assert dialog.state is CallState.RECONNECTING


# -- the softphone during the gap ---------------------------------------------

def test_in_the_gap_bye_and_options_get_200_reinvite_gets_503_ack_nothing() -> None:
    bye = answer_in_gap(request("BYE", 2))
    options = answer_in_gap(request("OPTIONS", 2))
    reinvite = answer_in_gap(request("INVITE", 2))
    update = answer_in_gap(request("UPDATE", 2))
    assert bye is not None and bye.status == 200 and bye.cseq == (2, "BYE")
    assert options is not None and options.status == 200
    assert reinvite is not None and reinvite.status == 503 and reinvite.get("Retry-After")
    assert update is not None and update.status == 503
    assert answer_in_gap(request("ACK", 2)) is None


# -- the leg map ------------------------------------------------------------------

def test_the_softphones_requests_go_up_in_the_upstream_dialog() -> None:
    up = leg()
    bye = request("BYE", 2)
    up.request_up(bye)
    assert bye.call_id == "up-call" and bye.from_tag == "ours" and bye.to_tag == "ast2"
    assert bye.cseq == (3, "BYE")  # shifted by one: above the INVITE the rejoin placed
    assert 'From: "Alice" <sip:alice@127.0.0.1>;tag=ours' in bye.to_bytes().decode()


def test_the_softphones_cseq_stays_above_the_rejoin_invite() -> None:
    up = leg(invite_cseq=5)  # the softphone had used up to 4
    reinvite = request("INVITE", 5)
    up.request_up(reinvite)
    assert reinvite.cseq[0] > up.invite_cseq


def test_answers_from_upstream_come_down_in_the_softphones_dialog() -> None:
    up = leg()
    bye = request("BYE", 7)
    sent = bye.copy()
    up.request_up(sent)
    ok = make_response(sent, 200)
    up.response_down(ok)
    assert ok.call_id == "phone-call" and ok.from_tag == "phone" and ok.to_tag == "ast1"
    assert ok.cseq == (7, "BYE")


def test_requests_from_upstream_follow_the_far_cseq_the_softphone_knows_and_answers_go_back() -> None:
    up = leg()
    far_bye = request("BYE", 102, call_id="up-call", from_tag="ast2", to_tag="ours")
    up.request_down(far_bye, far_seen=1)  # Asterisk's first leg had sent CSeq 1 (none, really)
    assert far_bye.call_id == "phone-call" and far_bye.from_tag == "ast1" and far_bye.to_tag == "phone"
    assert far_bye.cseq == (2, "BYE")  # above what the softphone saw from its far end
    answer = make_response(far_bye, 200)
    up.response_up(answer)
    assert answer.call_id == "up-call" and answer.from_tag == "ast2" and answer.to_tag == "ours"
    assert answer.cseq == (102, "BYE")  # the number Asterisk used


def test_a_leg_knows_the_answer_to_its_own_invite() -> None:
    up = leg(invite_cseq=3)
    raw = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-x\r\n"
           b"From: <sip:alice@127.0.0.1>;tag=ours\r\nTo: <sip:1000@127.0.0.1>;tag=ast2\r\n"
           b"Call-ID: up-call\r\nCSeq: 3 INVITE\r\nContent-Length: 0\r\n\r\n")
    ok = parse_message(raw)
    assert isinstance(ok, SipResponse)
    assert up.is_own_invite_answer(ok)
    ok.set("CSeq", "4 INVITE")
    assert not up.is_own_invite_answer(ok)  # a re-INVITE of the softphone's, translated


# -- the window while a call reconnects ------------------------------------------------------------

def test_the_window_shows_reconnecting_yellow_then_green_and_the_history_keeps_the_gap() -> None:
    now = [datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)]
    state = ClientState(clock=lambda: now[0])
    state.tunnel_up(SERVER)
    state.call_started("1000", "AES_CM_128_HMAC_SHA1_80")
    assert state.light == "green"
    state.call_reconnecting("the way to the conference was lost")
    state.tunnel_down("tunnel-closed", "the tunnel closed: eof", call_kept=True)
    snap = state.snapshot()
    assert snap["light"] == "yellow" and snap["label"] == "Reconnecting"
    assert snap["call"] is not None and snap["reconnecting"]["reason"] == "the way to the conference was lost"
    now[0] += timedelta(seconds=2)
    state.tunnel_up(SERVER)
    assert state.light == "yellow" and "rejoining room 1000" in state.snapshot()["reason"]
    state.call_rejoined(2.0)
    snap = state.snapshot()
    assert snap["light"] == "green" and snap["reconnecting"] is None and snap["label"] == "In a secure call"
    assert [h["kind"] for h in snap["history"]] == ["reconnecting", "reconnected"]
    assert "after 2.0 s" in snap["history"][-1]["message"]


def test_a_tunnel_lost_without_a_kept_call_is_red_as_before() -> None:
    state = ClientState()
    state.tunnel_up(SERVER)
    state.call_started("1000", "AES_CM_128_HMAC_SHA1_80")
    state.tunnel_down("tunnel-closed", "gone")
    assert state.light == "red" and state.call is None


def test_the_rejoin_invite_is_a_new_dialog_for_the_same_room_with_the_softphones_sdp() -> None:
    up = UpstreamLeg(call_id="up-call", local_tag="ours", phone_call_id="phone-call", phone_tag="phone",
                     phone_far_tag="ast1", invite_cseq=4)
    phone_invite = request("INVITE", 1, to_tag=None, body=b"v=0\r\n")
    invite = up.invite(phone_invite, b"v=0\r\nm=audio 4000 RTP/AVP 8\r\n", via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-r",
                       contact="<sip:stc@127.0.0.1:5060>", replaces="phone-call")
    assert invite.uri == phone_invite.uri and invite.call_id == "up-call"
    assert invite.from_tag == "ours" and invite.to_tag is None and invite.cseq == (4, "INVITE")
    assert invite.get("X-STC-Rejoins") == "phone-call"
    assert invite.body.startswith(b"v=0") and invite.content_type == "application/sdp"
    raw = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-r\r\n"
           b"From: <sip:alice@127.0.0.1>;tag=ours\r\nTo: <sip:1000@127.0.0.1>;tag=ast2\r\n"
           b"Call-ID: up-call\r\nCSeq: 4 INVITE\r\nContact: <sip:1000@127.0.0.1:5080>\r\nContent-Length: 0\r\n\r\n")
    ok = parse_message(raw)
    assert isinstance(ok, SipResponse)
    up.remote_tag, up.to_header, up.remote_target = ok.to_tag, ok.get("To") or "", "sip:1000@127.0.0.1:5080"
    ack = up.ack("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-a")
    assert ack.uri == "sip:1000@127.0.0.1:5080" and ack.cseq == (4, "ACK") and ack.to_tag == "ast2"
    bye = up.bye("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-b", "stc: over")
    assert bye.cseq == (5, "BYE") and bye.call_id == "up-call" and bye.from_tag == "ours"
    failed = make_response(invite, 503)
    failure_ack = up.ack(up.via, failed)
    assert failure_ack.get("Via") == up.via and failure_ack.uri == phone_invite.uri
