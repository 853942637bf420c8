"""Calls that outlive their upstream leg: the rejoin half of the softphone proxy.

When the tunnel (or Asterisk's channel) is lost, a call in the room is kept: the softphone hears
nothing of it, its requests are answered here during the gap, and once a tunnel is back a fresh
MEDIA_OFFER and INVITE for the same room place a new upstream leg under the softphone's dialog
(stc_client/dialog.py is its state machine). A call that is not back within `reconnect_timeout`
ends with a BYE to its softphone. `Rejoining` is a part of `SoftphoneProxy`, which holds the state
it uses (set in its __init__) and the methods named under TYPE_CHECKING below.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from stc_wire import messages as wire
from stc_wire.media_keys import KeyAgreement, Side
from stc_wire.sip import SipRequest, SipResponse, make_response, make_via, new_branch, new_tag, parse_name_addr
from stc_wire.srtp import SrtpProfile

from .client_call import MEMORY as _MEMORY
from .client_call import Address, ClientCall, DialogKey, SendToServer
from .client_call import quoted as _quoted
from .dialog import CallState, UpstreamLeg, answer_in_gap
from .media import ClientMedia

log = logging.getLogger(__name__)


class Rejoining:
    """The rejoin methods of SoftphoneProxy; the attributes below are its state, set in its __init__."""

    host: str
    port: int
    media: ClientMedia
    profiles: tuple[SrtpProfile, ...]
    calls: dict[DialogKey, ClientCall]
    recently_ended: OrderedDict[DialogKey, ClientCall]
    reconnect_timeout: float
    rejoin_attempt_timeout: float
    _on_reconnect: Callable[[ClientCall], None]
    _on_change: Callable[[], None]
    _legs: OrderedDict[str, tuple[ClientCall, UpstreamLeg]]
    _tunnel_ready: asyncio.Event
    _send: SendToServer | None

    if TYPE_CHECKING:  # the rest of SoftphoneProxy's (softphone.py; the BYE is liveness.py's)
        def _end_call(self, call: ClientCall, why: str) -> None: ...
        def _to_softphone(self, data: bytes, addr: Address) -> None: ...
        def _bye_to_softphone(self, call: ClientCall, why: str) -> SipRequest: ...

    async def tunnel_lost(self, why: str, *, rejoin: bool = True) -> None:
        """The tunnel is gone. A call in the room is kept (the softphone hears nothing of it) and
        rejoins once a tunnel is back; any other call, or every call with `rejoin` False, is hung
        up towards its own softphone and its media freed."""
        self._send = None
        self._tunnel_ready.clear()
        now = asyncio.get_running_loop().time()
        for call in list(self.calls.values()):
            if rejoin and call.profile is not None and call.dialog.leg_lost(now):
                self._hold(call, why)
                continue
            if call.confirmed and call.invite is not None:
                self._to_softphone(self._bye_to_softphone(call, "stc tunnel lost").to_bytes(), call.softphone_address)
            self._end_call(call, f"the secure tunnel was lost ({why})")

    def leg_lost(self, upstream_call_id: str, why: str) -> None:
        """The server says Asterisk lost this call's channel (it restarted, or its node went away):
        keep the softphone's call and rejoin, as after a lost tunnel."""
        call = next((c for c in self.calls.values() if c.upstream_call_id == upstream_call_id), None)
        if call is None or call.profile is None:
            return
        if call.dialog.leg_lost(asyncio.get_running_loop().time()):
            self._hold(call, why)
        else:
            self._give_up(call, why)

    def _request_in_gap(self, call: ClientCall, request: SipRequest, addr: Address) -> None:
        """The softphone speaks while its call has no upstream leg: answered here, never queued."""
        call.max_cseq = max(call.max_cseq, request.cseq[0])
        call.alive_at = asyncio.get_running_loop().time()
        answer = answer_in_gap(request)
        if answer is not None:
            self._to_softphone(answer.to_bytes(), addr)
        if request.method == "BYE":
            self._end_call(call, "you hung up while the call was reconnecting")

    def _hold(self, call: ClientCall, why: str) -> None:
        """The call lost its upstream leg: stop its media towards the server and start rejoining."""
        try:
            self.media.suspend(call.stream_id)
        except KeyError:
            pass
        call.agreement = None
        call.settled.set()  # a rejoin attempt in flight is over
        if call.rejoin is None or call.rejoin.done():
            call.rejoin = asyncio.create_task(self._keep_rejoining(call))
        log.warning("call %s: lost its way to the conference (%s): the softphone's call is kept, rejoining",
                    call.call_id, why)
        self._on_reconnect(call)
        self._on_change()

    async def _keep_rejoining(self, call: ClientCall) -> None:
        """Place a fresh INVITE for the room whenever a tunnel is up, until one is answered or
        `reconnect_timeout` has passed since the leg was lost (then the softphone gets a BYE)."""
        lost_since = call.dialog.lost_since
        assert lost_since is not None
        delay = 0.2
        try:
            async with asyncio.timeout_at(lost_since + self.reconnect_timeout):
                while call.dialog.state is CallState.RECONNECTING:
                    await self._tunnel_ready.wait()
                    call.settled.clear()
                    invite = await self._send_rejoin(call)
                    if invite is not None:
                        await self._await_rejoin(call, invite)
                    if call.dialog.state is CallState.RECONNECTING:
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 2.0)
        except TimeoutError:
            if call.dialog.gap:
                self._give_up(call, f"could not rejoin the conference within {self.reconnect_timeout:g} s")

    async def _await_rejoin(self, call: ClientCall, invite: SipRequest) -> None:
        """Wait for the rejoin's answer, sending the INVITE again now and then (the hop from the
        server to Asterisk is UDP, and nobody else retransmits it)."""
        waited, interval = 0.0, 0.5
        while not call.settled.is_set() and waited < self.rejoin_attempt_timeout:
            try:
                async with asyncio.timeout(interval):
                    await call.settled.wait()
            except TimeoutError:
                waited += interval
                interval = min(interval * 2, 2.0)
                if not call.settled.is_set() and call.dialog.state is CallState.REJOINING:
                    await self._send_up(invite)
        if not call.settled.is_set():
            log.warning("call %s: no answer to the rejoin within %g s: trying again", call.call_id, waited)
            call.dialog.rejoin_timed_out()

    async def _send_rejoin(self, call: ClientCall) -> SipRequest | None:
        """MEDIA_OFFER with a fresh key share, then an INVITE for the same room in a new dialog."""
        if self._send is None or call.invite is None:
            return None
        if not call.phone_sdp:
            self._give_up(call, "the call cannot be rejoined (the softphone's SDP is unknown)")
            return None
        leg = UpstreamLeg(call_id=f"{secrets.token_hex(16)}@stc-rejoin", local_tag=new_tag(),
                          phone_call_id=call.call_id, phone_tag=call.softphone_tag,
                          phone_far_tag=parse_name_addr(call.to_header).tag if call.to_header else None,
                          invite_cseq=call.max_cseq + 1)
        invite = leg.invite(call.invite, call.phone_sdp, via=self._new_via(),
                            contact=f"<sip:stc@{self.host}:{self.port}>", replaces=call.in_room_as or call.call_id)
        call.leg = leg
        self._legs[leg.call_id] = (call, leg)
        while len(self._legs) > _MEMORY:
            self._legs.popitem(last=False)
        agreement = KeyAgreement(Side.CLIENT)
        call.agreement = agreement
        call.dialog.rejoin_sent()
        try:
            await self._send(wire.MediaOffer(call.stream_id, leg.call_id, tuple(p.value for p in self.profiles),
                                             agreement.public_bytes))
            await self._send(wire.SipMessage(invite.to_bytes()))
        except Exception as exc:  # the tunnel went again: tunnel_lost puts the call back to reconnecting
            log.debug("rejoin of call %s not sent: %s", call.call_id, exc)
            return None
        log.info("call %s: rejoining room %s (new Call-ID %s, fresh media keys)", call.call_id, call.room, leg.call_id)
        return invite

    async def _from_upstream_leg(self, msg: SipRequest | SipResponse) -> bool:
        """A message of a dialog a rejoin placed: the answer to our INVITE is ours; the rest is put
        into the softphone's dialog (True: go on with it as with any message from the server)."""
        call, leg = self._legs[msg.call_id]
        if isinstance(msg, SipResponse) and leg.is_own_invite_answer(msg):
            await self._rejoin_answer(call, leg, msg)
            return False
        live = self.calls.get(call.key) is call
        # A call just ended still gets the answers to its last requests (the 200 to its BYE).
        remembered = live or (self.recently_ended.get(call.key) is call and isinstance(msg, SipResponse))
        if not remembered or call.leg is not leg or call.dialog.gap:
            # A leg given up, or a call that is over: answered here, never the softphone's business.
            if isinstance(msg, SipRequest) and msg.method != "ACK":
                await self._send_up(make_response(msg, 200 if msg.method == "BYE" else 481))
            return False
        if isinstance(msg, SipResponse):
            leg.response_down(msg)
        else:
            leg.request_down(msg, call.far_cseq)
        return True

    async def _rejoin_answer(self, call: ClientCall, leg: UpstreamLeg, response: SipResponse) -> None:
        status = response.status
        if status < 200:
            return
        live = self.calls.get(call.key) is call and call.leg is leg
        if status < 300:
            leg.remote_tag = response.to_tag
            leg.to_header = response.get("To") or ""
            if (contact := response.get("Contact")) is not None:
                leg.remote_target = parse_name_addr(contact).uri
            await self._send_up(leg.ack(self._new_via()))
            if live and call.dialog.state is CallState.CONFIRMED:
                return  # a retransmitted 2xx: our ACK was lost
            if not live or call.dialog.state is not CallState.REJOINING:
                # The call ended (or moved on) while this INVITE was out: leave the room again.
                await self._send_up(leg.bye(self._new_via(), f"stc: {_quoted('the call this rejoin was for is over')}"))
                return
        else:
            await self._send_up(leg.ack(leg.via, response))  # the ACK of a failure (hop by hop)
            if not live or call.dialog.state is not CallState.REJOINING:
                return
        lost_since = call.dialog.lost_since
        state = call.dialog.rejoin_answered(status)
        call.settled.set()
        if state is CallState.CONFIRMED:
            call.in_room_as = leg.call_id
            if lost_since is not None:
                call.last_gap = asyncio.get_running_loop().time() - lost_since
            log.info("call %s: back in room %s after %.1f s (Call-ID upstream %s)", call.call_id, call.room,
                     call.last_gap or 0.0, leg.call_id)
            self._on_reconnect(call)
            self._on_change()
        elif state is CallState.ENDED:
            self._give_up(call, f"the conference did not take the call back ({status} {response.reason})")
        else:
            log.warning("call %s: rejoin answered %d %s: trying again", call.call_id, status, response.reason)

    def _new_via(self) -> str:
        return str(make_via(self.host, self.port, new_branch()))

    async def _send_up(self, msg: SipRequest | SipResponse) -> None:
        if self._send is None:
            return
        try:
            await self._send(wire.SipMessage(msg.to_bytes()))
        except Exception as exc:  # the tunnel is going: nothing upstream to tell
            log.debug("SIP for the server not sent: %s", exc)

    def _give_up(self, call: ClientCall, why: str) -> None:
        """End a call for good: a BYE to its softphone (if it was answered), media freed."""
        if call.confirmed and call.invite is not None:
            self._to_softphone(self._bye_to_softphone(call, f"stc: {why}").to_bytes(), call.softphone_address)
        self._end_call(call, why)
