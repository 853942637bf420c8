"""One tunnel's calls on the server: SIP to and from Asterisk, media keys, clean-up.

Each client gets a UDP socket of its own towards Asterisk, so Asterisk sees a
separate peer per client and sends in-dialog requests (a BYE from its side)
back to the right tunnel. SDP is rewritten so Asterisk's RTP goes to the media
relay; a call whose SDP cannot be rewritten is refused, never passed on with
media in the clear, and SDP for a call stc holds no keys for is refused in both
directions. Calls are dialogs (Call-ID and the client's tag): a softphone that
restarts and reuses its Call-ID makes a new call, and a message of one never
touches the other. When the tunnel closes, or a call's media goes silent for
`media.call_timeout` (no SRTP and no keep-alive from its client), the call is hung
up towards Asterisk and its ports are released.

A BYE from Asterisk for an answered call is held for `ASTERISK_LOSS_GRACE` seconds: when
Asterisk is going away meanwhile (its AMI or ARI connection drops, as in a restart), the
call was not hung up by anyone's decision, and the client gets LEG_LOST instead of the BYE
(it keeps the softphone's call and rejoins once Asterisk is back). Otherwise (a kick, an
ejection, the conference ending) the BYE goes on to the client as it came.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from stc_wire import messages as wire
from stc_wire.media_keys import CallKeys, KeyAgreement, KeyAgreementError, ProfileMismatch, Side, negotiate_profile
from stc_wire.sdp import RelayRefused, SdpError
from stc_wire.sip import (
    SipParseError,
    SipRequest,
    SipResponse,
    make_request,
    make_response,
    new_branch,
    parse_message,
    parse_name_addr,
    uri_with_host_port,
)
from stc_wire.sip_proxy import (
    REJOINS_HEADER,
    is_initial_invite,
    point_contact_at,
    pop_own_via,
    push_via,
    request_user,
    refuse_unkeyed_sdp,
    rewrite_sdp,
    sdp_of,
    strip_private_headers,
)
from stc_wire.srtp import SrtpProfile
from stc_wire.stream import CloseInfo

from .fastagi import BINDING_VARIABLE
from .limits import BoundedDict, TunnelGuard
from .media import CallMediaPorts, MediaRelay
from .tunnel_server import TunnelPeer

if TYPE_CHECKING:
    from .app import ServerApp
    from .rooms import RoomService

log = logging.getLogger(__name__)
TOKEN_HEADER = "X-STC-Token"
# Seconds a BYE from Asterisk waits to see whether Asterisk is going away (a restart sends
# every channel's BYE first, then drops AMI and ARI within a moment).
ASTERISK_LOSS_GRACE = 1.5
# When a rejoin's answer comes, and again this long after the one before, the leg it replaces
# is looked for in the room (a restarted server reads the room's members back within seconds).
RETIRE_LOOKS = (0.0, 2.0, 3.0)


DialogKey = tuple[str, str]  # (Call-ID, the client side's tag)


@dataclass
class ServerCall:
    call_id: str
    stream_id: str
    media_tag: str
    ports: CallMediaPorts
    profile: SrtpProfile
    keys: CallKeys
    token: str = ""
    room: str = ""
    invite: SipRequest | None = None  # as sent to Asterisk (for CANCEL/BYE on tunnel loss)
    asterisk: tuple[str, int] | None = None  # the SIP address of the node its room lives on
    to_tag: str | None = None
    confirmed: bool = False
    max_cseq: int = 0
    client_tag: str = ""  # the From tag of the client's INVITE: with the Call-ID, the dialog
    media_seen: int = -1  # packets counted at the last liveness check
    media_seen_at: float = 0.0  # loop time when that count last moved
    rejoins: str = ""  # a rejoin: the Call-ID of the leg it replaces (X-STC-Rejoins)

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.client_tag)


@dataclass
class RefusedMedia:
    reason: str


class _AsteriskSide(asyncio.DatagramProtocol):
    def __init__(self, owner: "TunnelCalls") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.owner.from_asterisk(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("Asterisk-side socket error: %s", exc)


@dataclass
class SipCounters:
    relayed_to_asterisk: int = 0
    relayed_to_client: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)


class TunnelCalls:
    """The ClientSession of one tunnel (see tunnel_server.ClientSession)."""

    def __init__(self, app: "ServerApp", peer: TunnelPeer) -> None:
        self.app = app
        self.peer = peer
        self.calls: dict[DialogKey, ServerCall] = {}  # bound to a dialog by their INVITE
        self.pending: dict[str, ServerCall] = {}  # keyed, INVITE not seen yet (by Call-ID)
        self.refused_media: dict[str, RefusedMedia] = BoundedDict(app.config.limits.remembered_calls)
        self.guard = TunnelGuard(app.config.limits, log)  # issue 11: offers, malformed frames, refusal log
        self.counters = SipCounters()
        self._secret = secrets.token_hex(16)  # seeds our Via branches
        self._transport: asyncio.DatagramTransport | None = None
        self._local: tuple[str, int] = ("", 0)
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._watch_pbx: asyncio.Task[None] | None = None
        self._held_byes: set[DialogKey] = set()  # Asterisk's BYEs waiting out ASTERISK_LOSS_GRACE

    @property
    def relay(self) -> MediaRelay:
        return self.app.media

    @property
    def asterisk_address(self) -> tuple[str, int]:
        """Where SIP goes that belongs to no call of ours: the first (or only) Asterisk node."""
        return self.app.config.asterisk.node_list()[0].sip_address

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _AsteriskSide(self), local_addr=(self.app.config.media.pbx_host, 0))
        self._transport = transport
        self._local = transport.get_extra_info("sockname")[:2]
        self._watch = asyncio.get_running_loop().create_task(self._watch_media())
        self._watch_pbx = asyncio.get_running_loop().create_task(self._watch_asterisk())
        log.info("[%s] %s: SIP towards Asterisk from %s:%d", self.peer.id, self.peer.identity.display_name, *self._local)

    # -- from the client ------------------------------------------------------
    async def on_message(self, message: wire.Message) -> None:
        if isinstance(message, wire.MediaOffer):
            await self._media_offer(message)
        elif isinstance(message, wire.SipMessage):
            await self._sip_from_client(message.data)
        elif isinstance(message, wire.MediaEnd):
            self._release_by_stream(message.stream_id)
        elif isinstance(message, wire.RosterUpdate) and self.app.rooms is not None:
            self.app.rooms.resync(self.peer, message.data)  # a client out of step; passed on to the room's node
        else:
            log.debug("[%s] ignoring %s", self.peer.id, type(message).__name__)

    async def _media_offer(self, offer: wire.MediaOffer) -> None:
        over_limit = self.guard.offers.check(offer.call_id, len(self.calls) + len(self.pending))
        if over_limit is not None:
            self.guard.refusals.refuse("media-offer-limit", "[%s] media offer for %s refused: %s", self.peer.id,
                                       offer.call_id, over_limit)
            if offer.call_id not in self.pending:  # a keyed call stays as it is
                self.refused_media[offer.call_id] = RefusedMedia(over_limit)
            await self.peer.send(wire.MediaReject(offer.stream_id, over_limit))
            return
        try:
            profile = negotiate_profile(offer.profiles, self.app.srtp_profiles)
        except ProfileMismatch as exc:
            self.guard.refusals.refuse("srtp-profile", "[%s] call %s refused: %s", self.peer.id, offer.call_id, exc)
            self.refused_media[offer.call_id] = RefusedMedia(str(exc))
            await self.peer.send(wire.MediaReject(offer.stream_id, str(exc)))
            return
        if offer.call_id in self.pending:
            await self.peer.send(wire.MediaReject(offer.stream_id, "media already keyed for this call"))
            return
        agreement = KeyAgreement(Side.SERVER)
        try:
            keys = agreement.derive(offer.public_key, call_id=offer.call_id, stream_id=offer.stream_id, profile=profile)
        except KeyAgreementError as exc:
            self.refused_media[offer.call_id] = RefusedMedia(str(exc))
            await self.peer.send(wire.MediaReject(offer.stream_id, str(exc)))
            return
        tag = f"{self.peer.id}/{offer.stream_id}"
        if any(call.media_tag == tag for call in self._all_calls()):  # a reused stream_id: refuse it, keep the rest
            self.refused_media[offer.call_id] = RefusedMedia("stream_id already in use")
            await self.peer.send(wire.MediaReject(offer.stream_id, "stream_id already in use on this tunnel"))
            return
        try:
            ports = await self.relay.open_call(tag, keys)
        except OSError as exc:
            self.refused_media[offer.call_id] = RefusedMedia(f"no media ports: {exc}")
            await self.peer.send(wire.MediaReject(offer.stream_id, "server has no free media ports"))
            return
        self.pending[offer.call_id] = ServerCall(offer.call_id, offer.stream_id, tag, ports, profile, keys)
        await self.peer.send(wire.MediaAnswer(offer.stream_id, profile.value, agreement.public_bytes,
                                              ports.wan_rtp_port, ports.wan_rtcp_port))

    async def _sip_from_client(self, data: bytes) -> None:
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.counters.malformed[str(exc.status)] += 1
            self.guard.refusals.refuse("malformed-sip", "[%s] malformed SIP from client dropped: %s", self.peer.id, exc)
            if self.guard.malformed.hit():
                await self.peer.stream.close(wire.CloseCode.PROTOCOL_ERROR,
                                             f"more than {self.guard.malformed.limit} malformed SIP frames")
            return
        rejoins = msg.get(REJOINS_HEADER) if isinstance(msg, SipRequest) and is_initial_invite(msg) else None
        strip_private_headers(msg)
        point_contact_at(msg, *self._local)
        # The client's tag is in From on its requests, in To on its responses.
        call = self.calls.get((msg.call_id, (msg.from_tag if isinstance(msg, SipRequest) else msg.to_tag) or ""))
        if isinstance(msg, SipRequest):
            if is_initial_invite(msg):
                if call is None:
                    call = self._bind_invite(msg)
                if not await self._admit_invite(msg, call):
                    return
                if call is not None and rejoins:
                    call.rejoins = rejoins[:256]
            if not self._rewrite_sdp_to_asterisk(msg, call):
                await self._refuse(msg, 488, "media cannot be relayed securely")
                return
            push_via(msg, *self._local, self._secret)
            host, port = call.asterisk if call is not None and call.asterisk else self.asterisk_address
            msg.uri = uri_with_host_port(msg.uri, host, port)
            if call is not None:
                call.max_cseq = max(call.max_cseq, msg.cseq[0])
                if msg.method == "INVITE" and msg.to_tag is None:
                    call.invite = msg.copy()
        else:
            if not self._rewrite_sdp_to_asterisk(msg, call):
                log.warning("[%s] client answered with SDP that cannot be relayed: dropped", self.peer.id)
                return
        self._send_to_asterisk(msg, call.asterisk if call is not None else None)
        if isinstance(msg, SipRequest) and msg.method == "BYE" and call is not None:
            self._release(call, "BYE from the client")

    def _bind_invite(self, invite: SipRequest) -> ServerCall | None:
        """An INVITE starts the dialog its MEDIA_OFFER was keyed for (ordered on the same stream)."""
        call = self.pending.pop(invite.call_id, None)
        if call is None:
            return None
        call.client_tag = invite.from_tag or ""
        self.calls[call.key] = call
        return call

    async def _admit_invite(self, invite: SipRequest, call: ServerCall | None) -> bool:
        refused = self.refused_media.pop(invite.call_id, None)
        if refused is not None:
            await self._refuse(invite, 488, refused.reason)
            return False
        if call is None:
            await self._refuse(invite, 488, "no media keys were agreed for this call")
            return False
        call.room = request_user(invite)
        if call.asterisk is None:  # a retransmission goes where its first copy went
            call.asterisk = self.app.asterisk_for_room(call.room)
        if not call.token:  # a retransmitted INVITE carries the token its first copy got
            call.token = self.app.admissions.issue(self.peer, call.call_id, call.room) if self.app.admissions else ""
        if call.token:
            invite.set(TOKEN_HEADER, call.token)
        log.info("[%s] %s calls room %s (Call-ID %s, %s)", self.peer.id, self.peer.identity.display_name,
                 call.room, invite.call_id, call.profile.value)
        return True

    def _rewrite_sdp_to_asterisk(self, msg: SipRequest | SipResponse, call: ServerCall | None) -> bool:
        try:
            if sdp_of(msg) is None:
                return True
            if call is None:
                self.counters.refused["sdp-without-keys"] += 1
                return False
            rewrite_sdp(msg, self.relay.pbx_host, call.ports.pbx_rtp_port, call.ports.pbx_rtcp_port)
            return True
        except (RelayRefused, SdpError) as exc:
            self.counters.refused["sdp"] += 1
            log.warning("[%s] SDP from client refused (Call-ID %s): %s", self.peer.id, msg.call_id, exc)
            return False

    async def _refuse(self, request: SipRequest, status: int, why: str) -> None:
        self.counters.refused[str(status)] += 1
        self.guard.refusals.refuse(f"sip-{status}", "[%s] %s refused with %d: %s", self.peer.id, request.method, status, why)
        if request.method == "ACK":
            return
        response = make_response(request, status, headers=[("Warning", f'399 stc "{why}"')])
        await self._send_to_client(response.to_bytes())

    def _send_to_asterisk(self, msg: SipRequest | SipResponse, to: tuple[str, int] | None = None) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.sendto(msg.to_bytes(), to or self.asterisk_address)
        self.counters.relayed_to_asterisk += 1

    # -- from Asterisk --------------------------------------------------------
    def from_asterisk(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.strip() == b"":
            return  # keep-alive
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.counters.malformed["asterisk"] += 1
            log.warning("[%s] malformed SIP from Asterisk %s:%d dropped: %s", self.peer.id, *addr, exc)
            return
        # The client's tag is in From on responses to its requests, in To on Asterisk's requests.
        call = self.calls.get((msg.call_id, (msg.to_tag if isinstance(msg, SipRequest) else msg.from_tag) or ""))
        if isinstance(msg, SipResponse):
            if not pop_own_via(msg, *self._local):
                log.warning("[%s] response from Asterisk not for us (top Via) dropped", self.peer.id)
                return
            if not msg.get_all("Via"):
                return  # the answer to a request of our own (a BYE or CANCEL we sent): ends here
        if call is None and self._sdp_for_unknown_call(msg, addr):
            return
        if isinstance(msg, SipResponse):
            self._track_response(msg, call)
        elif msg.method == "BYE" and call is not None:
            if call.confirmed and self.app.rooms is not None:
                if call.key not in self._held_byes:  # else a retransmission of the BYE held
                    self._held_byes.add(call.key)
                    self._spawn(self._bye_from_asterisk(call, msg))
                return
            # Asterisk hangs up: the client still gets the BYE; media ends with it.
            asyncio.get_running_loop().call_soon(self._release, call, "BYE from Asterisk")
        if call is not None:
            try:
                endpoint = rewrite_sdp(msg, self.relay.wan_host, call.ports.wan_rtp_port, call.ports.wan_rtcp_port)
            except (RelayRefused, SdpError) as exc:
                log.error("[%s] Asterisk SDP cannot be relayed (Call-ID %s): %s", self.peer.id, msg.call_id, exc)
                return
            if endpoint is not None:
                self.relay.set_asterisk_media(call.media_tag, endpoint.address, endpoint.rtp_port, endpoint.rtcp_port)
        self._spawn(self._send_to_client(msg.to_bytes()))

    async def _bye_from_asterisk(self, call: ServerCall, bye: SipRequest) -> None:
        """A hang-up, or Asterisk going away? Wait a moment and look (see ASTERISK_LOSS_GRACE)."""
        try:
            await asyncio.sleep(ASTERISK_LOSS_GRACE)
            lost = self._asterisk_going_away(call)
            self._release(call, "Asterisk went away" if lost else "BYE from Asterisk")
            if lost:
                log.warning("[%s] call %s: Asterisk went away under it: LEG_LOST, the client rejoins",
                            self.peer.id, call.call_id)
                self._send_to_asterisk(make_response(bye, 200))
                await self.peer.send(wire.LegLost(call.call_id, "asterisk-restart"))
            else:
                await self._send_to_client(bye.to_bytes())
        except Exception as exc:  # the tunnel is going away; on_close cleans up
            log.debug("[%s] BYE for call %s not passed on: %s", self.peer.id, call.call_id, exc)
        finally:
            self._held_byes.discard(call.key)

    async def _retire_replaced_leg(self, call: ServerCall) -> None:
        """A rejoined call is in the room: hang up the leg it replaces if that is still there (its
        stc-server died with it), but only a channel admitted for this tunnel's own certificate.
        Looked for again a little later too: a restarted server may not have read the room yet."""
        for delay in RETIRE_LOOKS:
            await asyncio.sleep(delay)
            if await self._retire_once(call):
                return

    async def _retire_once(self, call: ServerCall) -> bool:
        old_call_id, room = call.rejoins, call.room
        rooms = self._node_service(call)  # the node the room (and so the old leg) is on
        if rooms is None or not old_call_id:
            return True
        mine = self.peer.identity.fingerprint_sha256
        # Candidates: this certificate's channels in the room, and any not identified yet (a few
        # ARI look-ups, not one per member).
        candidates = [e.channel_id for e in rooms.conference.entries(room)
                      if e.identity is None or e.identity.get("fingerprint_sha256") == mine]
        try:
            for channel_id in candidates:
                if await rooms.ari.get_channel_variable(channel_id, "CHANNEL(pjsip,call-id)") != old_call_id:
                    continue
                value = await rooms.ari.get_channel_variable(channel_id, BINDING_VARIABLE)
                binding = rooms.binding_verifier.verify_channel(value or "", channel=channel_id, call_id=old_call_id)
                if binding.identity.fingerprint_sha256 != mine:
                    log.warning("[%s] rejoin names channel %s of another certificate: left alone", self.peer.id, channel_id)
                    return True
                log.info("[%s] hanging up channel %s: the rejoined call %s replaces it", self.peer.id, channel_id,
                         old_call_id)
                await rooms.ari.hangup_channel(channel_id)
                return True
        except Exception as exc:  # ARI down, a channel gone meanwhile, a binding refused: nothing to retire
            log.info("[%s] the leg %s a rejoin replaces was not retired: %s", self.peer.id, old_call_id, exc)
            return True
        return False

    async def _watch_asterisk(self) -> None:
        """Asterisk gone without a word (killed, its machine lost: AMI and ARI both down): every
        answered call's leg is lost. The client is told (LEG_LOST) and rejoins once it is back."""
        while True:
            await asyncio.sleep(0.5)
            if self.app.rooms is None:
                continue
            for call in [c for c in self.calls.values() if c.confirmed and c.key not in self._held_byes]:
                node = self._node_service(call)
                if node is None or node.ami.up or node.ari.connected:
                    continue  # only the node this call is on counts
                log.warning("[%s] call %s: Asterisk is unreachable (AMI and ARI down): LEG_LOST, the client rejoins",
                            self.peer.id, call.call_id)
                self._hang_up_towards_asterisk(call)  # in case it only lost AMI and ARI
                self._release(call, "Asterisk unreachable")
                try:
                    await self.peer.send(wire.LegLost(call.call_id, "asterisk-lost"))
                except Exception as exc:  # the tunnel is going away; on_close cleans up
                    log.debug("[%s] cannot send LEG_LOST: %s", self.peer.id, exc)

    def _node_service(self, call: ServerCall) -> "RoomService | None":
        """The RoomService of the Asterisk node this call went to (the first node's by default)."""
        for service in self.app.nodes.values():
            if call.asterisk is not None and service.node.sip_address == call.asterisk:
                return service
        return self.app.rooms

    def _asterisk_going_away(self, call: ServerCall) -> bool:
        rooms = self._node_service(call)
        return rooms is not None and not (rooms.ami.up and rooms.ari.connected)

    def _sdp_for_unknown_call(self, msg: SipRequest | SipResponse, source: tuple[str, int]) -> bool:
        """SDP from Asterisk for a dialog we hold no keys for never reaches a client: a request is
        answered 488, a 2xx is acknowledged and hung up. True when the message was consumed."""
        if not msg.body:
            return False
        self.counters.refused["sdp-without-keys"] += 1
        log.warning("[%s] SDP from Asterisk for a call stc holds no keys for (Call-ID %s) refused",
                    self.peer.id, msg.call_id)
        contact = msg.get("Contact") or msg.get("To") or ""
        host, port = source[:2]  # the node it came from
        target = uri_with_host_port(parse_name_addr(contact).uri, host, port) if contact else ""
        for reply in refuse_unkeyed_sdp(msg, host=self._local[0], port=self._local[1], target_uri=target):
            self._send_to_asterisk(reply, (host, port))
        return True

    def _track_response(self, response: SipResponse, call: ServerCall | None) -> None:
        number, method = response.cseq
        if call is None:
            return
        if method == "INVITE" and response.status >= 200:
            if 200 <= response.status < 300:
                if not call.confirmed and call.rejoins:
                    self._spawn(self._retire_replaced_leg(call))
                call.confirmed = True
                call.to_tag = response.to_tag
                if call.invite is not None and response.to_tag:
                    call.invite.set("To", response.get("To") or "")
            elif not call.confirmed:
                self._release(call, f"call failed with {response.status}")

    async def _send_to_client(self, data: bytes) -> None:
        try:
            await self.peer.send(wire.SipMessage(data))
            self.counters.relayed_to_client += 1
        except Exception as exc:  # the tunnel is going away; on_close cleans up
            log.debug("[%s] cannot send to client: %s", self.peer.id, exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- clean-up ------------------------------------------------------------
    def _release(self, call: ServerCall, why: str) -> None:
        if self.calls.get(call.key) is call:
            del self.calls[call.key]
        elif self.pending.get(call.call_id) is call:
            del self.pending[call.call_id]
        else:
            return  # released already
        self.relay.close_call(call.media_tag)
        if self.app.admissions and call.token:
            self.app.admissions.release(call.token)
        log.info("[%s] call %s ended (%s); media released", self.peer.id, call.call_id, why)

    def _all_calls(self) -> list[ServerCall]:
        return [*self.calls.values(), *self.pending.values()]

    def _release_by_stream(self, stream_id: str) -> None:
        for call in self._all_calls():
            if call.stream_id == stream_id:
                self._release(call, "client ended the media stream")

    async def _watch_media(self) -> None:
        """Hang up confirmed calls whose client sends nothing any more (no SRTP, no keep-alive)."""
        timeout = self.app.config.media.call_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(timeout / 10, 5.0))
            now = loop.time()
            for call in list(self.calls.values()):
                if not call.confirmed:
                    continue
                stats = self.relay.stats(call.media_tag)
                seen = stats.inbound_packets + stats.keepalives
                if seen != call.media_seen:
                    call.media_seen, call.media_seen_at = seen, now
                elif now - call.media_seen_at >= timeout:
                    log.warning("[%s] call %s: no media from the client for %.0f s: hanging up",
                                self.peer.id, call.call_id, now - call.media_seen_at)
                    self._hang_up_towards_asterisk(call)
                    self._release(call, "no media from the client")
                    self._spawn(self._send_media_end(call.stream_id))

    async def _send_media_end(self, stream_id: str) -> None:
        try:
            await self.peer.send(wire.MediaEnd(stream_id))
        except Exception as exc:  # the tunnel is going away; on_close cleans up
            log.debug("[%s] cannot send MEDIA_END: %s", self.peer.id, exc)

    def _hang_up_towards_asterisk(self, call: ServerCall) -> None:
        invite = call.invite
        if invite is None:
            return
        if call.confirmed:
            bye = make_request("BYE", invite.uri,
                               via=invite.get_all("Via")[0].split(";branch=")[0] + f";branch={new_branch()};rport",
                               from_=invite.get("From") or "", to=invite.get("To") or "", call_id=call.call_id,
                               cseq=call.max_cseq + 1, headers=[("Reason", 'Q.850;cause=16;text="stc tunnel closed"')])
            self._send_to_asterisk(bye, call.asterisk)
        else:
            cancel = make_request("CANCEL", invite.uri, via=invite.get_all("Via")[0], from_=invite.get("From") or "",
                                  to=(invite.get("To") or "").split(";tag=")[0], call_id=call.call_id,
                                  cseq=invite.cseq[0])
            self._send_to_asterisk(cancel, call.asterisk)

    async def on_close(self, info: CloseInfo) -> None:
        self.app.sessions.pop(self.peer.id, None)
        for watcher in (self._watch, self._watch_pbx):
            if watcher is not None:
                watcher.cancel()
        for call in self._all_calls():
            self._hang_up_towards_asterisk(call)
            self._release(call, f"tunnel closed: {info.reason}")
        for task in list(self._tasks):
            task.cancel()
        # Let Asterisk's answer to our BYE arrive before the socket goes (it is ignored).
        await asyncio.sleep(0.2)
        if self._transport is not None:
            self._transport.close()


