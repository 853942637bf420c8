"""The softphone's call as stc-client holds it across lost tunnels: a state machine and a leg map.

stc-client answers the softphone's call itself once it has had to rejoin the room: the
softphone keeps its dialog (Call-ID, tags, CSeq) while the client places a fresh INVITE
upstream (new Call-ID and tag, fresh media keys). `UpstreamLeg` translates every in-dialog
message between the two dialogs; until the first rejoin there is no leg and messages pass
unchanged. `CallDialog` is the explicit state machine: which events move a call where, and
what a request from the softphone gets while the call has no upstream leg. Pure, no I/O.

    EARLY --2xx--> CONFIRMED --tunnel or Asterisk lost--> RECONNECTING --tunnel up--> REJOINING
    REJOINING --2xx--> CONFIRMED;  REJOINING --5xx/408/timeout/tunnel lost--> RECONNECTING
    any --BYE (either side), kick, refusal, reconnect_timeout--> ENDED (never undone)
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass, field, replace

from stc_wire.sip import SipRequest, SipResponse, make_request, make_response, parse_name_addr
from stc_wire.sip_proxy import REJOINS_HEADER


class CallState(enum.Enum):
    EARLY = "early"  # the softphone's INVITE is on its way; nothing to keep yet
    CONFIRMED = "confirmed"  # in the room
    RECONNECTING = "reconnecting"  # upstream leg lost, waiting for a tunnel
    REJOINING = "rejoining"  # our own INVITE for the room is out
    ENDED = "ended"


class BadTransition(Exception):
    """An event that cannot happen in the call's current state (a bug, never the peer's doing)."""


# Final answers to a rejoin INVITE that are worth trying again: the server or Asterisk is
# (re)starting or overloaded. Anything else (403 not admitted, 404 no such room, 486, 6xx)
# is a decision: the call ends.
RETRYABLE = frozenset({408, 480, 500, 502, 503, 504})


@dataclass
class CallDialog:
    """The state of one softphone call, moved only by the event methods below."""

    state: CallState = CallState.EARLY
    lost_since: float | None = None  # loop time the upstream leg was lost (None: not lost)
    rejoins: int = 0  # rejoins that succeeded

    @property
    def gap(self) -> bool:
        """No upstream leg right now: the softphone's call is held by the client alone."""
        return self.state in (CallState.RECONNECTING, CallState.REJOINING)

    def confirmed(self) -> None:
        if self.state not in (CallState.EARLY, CallState.CONFIRMED):
            raise BadTransition(f"2xx to the softphone's INVITE while {self.state.value}")
        self.state = CallState.CONFIRMED

    def leg_lost(self, now: float) -> bool:
        """The tunnel (or Asterisk) went away under the call. True: keep the call and rejoin;
        False: the call ends (it was never answered, or is over)."""
        if self.state is CallState.CONFIRMED:
            self.state = CallState.RECONNECTING
            self.lost_since = now
            return True
        if self.state is CallState.REJOINING:
            self.state = CallState.RECONNECTING  # lost_since stays: the deadline counts from the first loss
            return True
        if self.state is CallState.RECONNECTING:
            return True
        self.state = CallState.ENDED
        return False

    def rejoin_sent(self) -> None:
        if self.state is not CallState.RECONNECTING:
            raise BadTransition(f"rejoin while {self.state.value}")
        self.state = CallState.REJOINING

    def rejoin_answered(self, status: int) -> CallState:
        """The final answer to our rejoin INVITE; the new state."""
        if self.state is not CallState.REJOINING:
            raise BadTransition(f"answer to a rejoin while {self.state.value}")
        if 200 <= status < 300:
            self.state = CallState.CONFIRMED
            self.lost_since = None
            self.rejoins += 1
        elif status in RETRYABLE:
            self.state = CallState.RECONNECTING
        else:
            self.state = CallState.ENDED
        return self.state

    def rejoin_timed_out(self) -> None:
        """No answer to our INVITE in time: try again (with a new one)."""
        if self.state is CallState.REJOINING:
            self.state = CallState.RECONNECTING

    def ended(self) -> None:
        self.state = CallState.ENDED


def answer_in_gap(request: SipRequest) -> SipResponse | None:
    """What a softphone's in-dialog request gets while the call has no upstream leg.

    BYE: 200 (the call ends, nothing is rejoined); OPTIONS: 200 (we are alive); ACK: nothing;
    anything else (a re-INVITE, UPDATE, INFO...): 503 with Retry-After, so it tries again later.
    """
    if request.method == "ACK":
        return None
    if request.method in ("BYE", "OPTIONS"):
        return make_response(request, 200)
    return make_response(request, 503, headers=[("Retry-After", "2"),
                                                ("Warning", '399 stc "reconnecting to the conference"')])


def _with_tag(value: str, tag: str | None) -> str:
    addr = parse_name_addr(value)
    if tag is None:
        return str(replace(addr, params=tuple(p for p in addr.params if p[0].lower() != "tag")))
    return str(addr.with_param("tag", tag))


def _swap_tag(msg: SipRequest | SipResponse, header: str, tag: str | None) -> None:
    value = msg.get(header)
    if value is not None:
        msg.set(header, _with_tag(value, tag))


@dataclass
class UpstreamLeg:
    """The dialog the client placed upstream for a softphone call, and the translation both ways.

    The softphone's dialog: `phone_call_id`, the softphone's own tag `phone_tag`, and the far
    tag it knows (`phone_far_tag`, Asterisk's tag on the first leg). The upstream dialog:
    `call_id`, our tag `local_tag`, Asterisk's `remote_tag` (set by the 2xx).

    CSeq: the softphone's requests go up shifted by one, so they stay above our own INVITE
    (`invite_cseq` is the softphone's highest CSeq so far plus one). Requests from upstream
    go down renumbered to follow the highest the softphone has seen from its far end
    (`far_seen`), and responses to them go back with the number upstream used.
    """

    call_id: str
    local_tag: str
    phone_call_id: str
    phone_tag: str
    phone_far_tag: str | None
    invite_cseq: int
    remote_tag: str | None = None
    request_uri: str = ""  # the room, as the softphone dialled it
    via: str = ""  # our Via on the INVITE (an ACK of a failure repeats it)
    from_header: str = ""  # the softphone's From with our tag
    remote_target: str = ""  # the Contact of the 2xx: where our ACK and BYE go
    to_header: str = ""  # To of the 2xx, with Asterisk's tag
    far_base: int | None = None  # down-CSeq = up-CSeq + far_base, fixed by the first request down
    _down: OrderedDict[int, int] = field(default_factory=OrderedDict)  # down-CSeq -> up-CSeq

    UP_SHIFT = 1

    # softphone -> upstream
    def request_up(self, request: SipRequest) -> None:
        number, method = request.cseq
        request.set("Call-ID", self.call_id)
        _swap_tag(request, "From", self.local_tag)
        _swap_tag(request, "To", self.remote_tag)
        request.set("CSeq", f"{number + self.UP_SHIFT} {method}")

    def response_up(self, response: SipResponse) -> None:
        """The softphone's answer to a request that came down from upstream."""
        number, method = response.cseq
        response.set("Call-ID", self.call_id)
        _swap_tag(response, "From", self.remote_tag)
        _swap_tag(response, "To", self.local_tag)
        response.set("CSeq", f"{self._down.get(number, number - (self.far_base or 0))} {method}")

    # upstream -> softphone
    def response_down(self, response: SipResponse) -> None:
        number, method = response.cseq
        response.set("Call-ID", self.phone_call_id)
        _swap_tag(response, "From", self.phone_tag)
        _swap_tag(response, "To", self.phone_far_tag)
        response.set("CSeq", f"{number - self.UP_SHIFT} {method}")

    def request_down(self, request: SipRequest, far_seen: int) -> None:
        """`far_seen`: the highest CSeq the softphone has had from its far end so far."""
        number, method = request.cseq
        if self.far_base is None:
            self.far_base = far_seen + 1 - number
        down = number + self.far_base
        request.set("Call-ID", self.phone_call_id)
        _swap_tag(request, "From", self.phone_far_tag)
        _swap_tag(request, "To", self.phone_tag)
        request.set("CSeq", f"{down} {method}")
        if method != "ACK":
            self._down[down] = number
            while len(self._down) > 32:
                self._down.popitem(last=False)

    # the client's own requests on this leg
    def invite(self, phone_invite: SipRequest, sdp: bytes, *, via: str, contact: str, replaces: str) -> SipRequest:
        """The rejoin INVITE: the room the softphone dialled, its latest SDP, and the Call-ID of the
        leg it replaces (a server that finds that leg still in the room hangs it up, if it was
        admitted for the same certificate). Remembers what the ACK and BYE need."""
        self.request_uri = phone_invite.uri
        self.via = via
        self.from_header = _with_tag(phone_invite.get("From") or "", self.local_tag)
        invite = make_request(
            "INVITE", self.request_uri, via=via, from_=self.from_header,
            to=_with_tag(phone_invite.get("To") or f"<{self.request_uri}>", None), call_id=self.call_id,
            cseq=self.invite_cseq, headers=[("Contact", phone_invite.get("Contact") or contact), (REJOINS_HEADER, replaces)])
        invite.set_body(sdp, "application/sdp")
        return invite

    def ack(self, via: str, failure: SipResponse | None = None) -> SipRequest:
        """The ACK of our INVITE's 2xx (`via` new), or of a failure (`via` the INVITE's, its To)."""
        return make_request(
            "ACK", self.request_uri if failure is not None else (self.remote_target or self.request_uri), via=via,
            from_=self.from_header, to=(failure.get("To") if failure is not None else self.to_header) or "",
            call_id=self.call_id, cseq=self.invite_cseq)

    def bye(self, via: str, reason_text: str) -> SipRequest:
        """Leave the room on this leg (a rejoin answered after its call was over)."""
        return make_request("BYE", self.remote_target or self.request_uri, via=via, from_=self.from_header,
                            to=self.to_header, call_id=self.call_id, cseq=self.invite_cseq + 1,
                            headers=[("Reason", f'Q.850;cause=16;text="{reason_text}"')])

    def is_own_invite_answer(self, response: SipResponse) -> bool:
        return response.call_id == self.call_id and response.cseq == (self.invite_cseq, "INVITE")
