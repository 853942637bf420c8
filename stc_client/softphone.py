"""The softphone's side of stc-client: a local SIP endpoint whose calls travel the tunnel.

The softphone sends plain SIP to this UDP listener; every message goes through
the authenticated tunnel (never onto the network in the clear). For each new
call the client opens local RTP ports for the softphone and runs a fresh X25519
exchange with the server (MEDIA_OFFER before the INVITE, on the same ordered
stream); the softphone's RTP only leaves the host as SRTP under those keys.
REGISTER is answered here: the tunnel, not a SIP registration, is what
identifies the user to the server.

Calls are dialogs (Call-ID and the softphone's tag), and each remembers the address
its INVITE came from: in-dialog requests, responses and the BYE on tunnel loss go
there, never to whichever local program spoke last. SDP reaches the softphone only
as stc rewrote it: an offer or answer for a call without keys is refused. A call
whose softphone sends no media and answers no in-dialog OPTIONS for
`sip.softphone_timeout` seconds is hung up (a phone that died without a BYE).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

from stc_wire import messages as wire
from stc_wire.media_keys import KeyAgreement, KeyAgreementError, Side
from stc_wire.sdp import RelayRefused, SdpError, audio_endpoint, offers_rtcp_mux
from stc_wire.sip import (
    SipParseError,
    SipRequest,
    SipResponse,
    is_keepalive,
    make_response,
    make_via,
    new_branch,
    new_tag,
    parse_message,
    parse_name_addr,
    uri_with_host_port,
)
from stc_wire.sip_proxy import (
    is_initial_invite,
    point_contact_at,
    pop_own_via,
    push_via,
    refuse_unkeyed_sdp,
    request_user,
    rewrite_sdp,
    sdp_of,
    strip_private_headers,
)
from stc_wire.sip_stream import SipStreamFramer
from stc_wire.srtp import SrtpProfile
from stc_wire.tunnel import TunnelError

from .dialog import CallDialog, CallState, UpstreamLeg, answer_in_gap
from .media import ClientCallPorts, ClientMedia

log = logging.getLogger(__name__)

Address = tuple[str, int]
DialogKey = tuple[str, str]  # (Call-ID, the softphone's tag)
_MEMORY = 256  # ended calls and transactions remembered, at most
MAX_TCP_PEERS = 32  # softphone TCP connections at once
TCP_PORT_ATTEMPTS = 5  # with listen_port 0: UDP ports tried until TCP gets the same number too


@dataclass
class ClientCall:
    call_id: str
    stream_id: str
    room: str
    agreement: KeyAgreement | None
    softphone_tag: str = ""  # the From tag of the softphone's INVITE
    softphone_address: Address = ("", 0)  # where its INVITE came from: everything for it goes there
    softphone_contact: str = ""  # the Request-URI of requests for the softphone
    invite: SipRequest | None = None  # as the softphone sent it (for a BYE on tunnel loss)
    to_header: str = ""
    confirmed: bool = False
    profile: SrtpProfile | None = None
    started: datetime | None = None
    ports: ClientCallPorts | None = None
    max_cseq: int = 0  # highest CSeq of the softphone's own requests in this dialog
    # Requests towards the softphone (Asterisk's, and our liveness probes) share one CSeq space:
    # ours are slotted in by shifting Asterisk's by `cseq_shift`, and their answers shifted back.
    cseq_shift: int = 0
    far_cseq: int = 0  # highest CSeq of Asterisk's requests in this dialog (unshifted)
    shifted: OrderedDict[int, int] = field(default_factory=OrderedDict)  # sent CSeq -> Asterisk's
    probe_cseq: int | None = None  # our OPTIONS in flight
    probe_sent_at: float = 0.0
    alive_at: float = 0.0  # loop time of the softphone's last sign of life (media, SIP)
    media_seen: int = -1  # softphone packets counted at the last check
    rtcp_mux: bool = False  # the softphone offered RTCP on its RTP port (RFC 5761) and got it
    end_reason: str = ""
    dialog: CallDialog = field(default_factory=CallDialog)
    leg: UpstreamLeg | None = None  # after a rejoin: the dialog upstream (None: the softphone's own)
    phone_sdp: bytes = b""  # the softphone's latest SDP (offer or answer): what a rejoin offers
    rejoin: asyncio.Task[None] | None = None
    last_gap: float | None = None  # seconds the last rejoin took, from the loss to the 2xx
    in_room_as: str = ""  # the upstream Call-ID of the leg last answered: what a rejoin replaces
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # a rejoin attempt ended, or the leg was lost

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.softphone_tag)

    @property
    def upstream_call_id(self) -> str:
        """The Call-ID the server and Asterisk know this call by (what media keys are bound to)."""
        return self.leg.call_id if self.leg is not None else self.call_id


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, owner: "SoftphoneProxy") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.owner.from_softphone(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("softphone socket error: %s", exc)


SendToServer = Callable[[wire.Message], Awaitable[None]]


class SoftphoneProxy:
    def __init__(self, host: str, port: int, media: ClientMedia, profiles: tuple[SrtpProfile, ...],
                 on_change: Callable[[], None] = lambda: None, *, softphone_timeout: float = 30.0,
                 on_call_end: Callable[[ClientCall], None] = lambda call: None,
                 softphones: tuple[tuple[str, int | None], ...] = (), reconnect_timeout: float = 30.0,
                 on_reconnect: Callable[[ClientCall], None] = lambda call: None) -> None:
        self.host = host
        self.port = port
        self.media = media
        self.profiles = profiles
        self.softphone_timeout = softphone_timeout
        self.reconnect_timeout = reconnect_timeout  # a call without its upstream leg ends after this
        self.rejoin_attempt_timeout = 8.0  # no answer to a rejoin INVITE: place a new one
        self._on_reconnect = on_reconnect  # a call lost its upstream leg, or got it back
        # Upstream Call-ID -> (call, leg), for every leg a rejoin placed (stale ones too: a late 2xx is hung up).
        self._legs: OrderedDict[str, tuple[ClientCall, UpstreamLeg]] = OrderedDict()
        self._tunnel_ready = asyncio.Event()
        self.softphones = softphones  # (host, port or None); empty: any local program
        self.calls: dict[DialogKey, ClientCall] = {}
        # Calls just ended, so a retransmitted BYE (or its 200) still finds the softphone's contact.
        self.recently_ended: OrderedDict[DialogKey, ClientCall] = OrderedDict()
        self.drops: Counter[str] = Counter()
        self._send: SendToServer | None = None
        self._last_softphone: Address | None = None  # only for requests outside any dialog
        self._origins: OrderedDict[str, Address] = OrderedDict()  # out-of-dialog branch -> sender
        self._transport: asyncio.DatagramTransport | None = None
        self._secret = secrets.token_hex(16)
        self._on_change = on_change
        self._on_call_end = on_call_end
        self._queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(maxsize=1000)
        self._worker: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp: dict[Address, asyncio.StreamWriter] = {}  # softphones connected over TCP

    async def start(self) -> None:
        await self._bind()
        self._worker = asyncio.create_task(self._work())
        self._watcher = asyncio.create_task(self._watch_softphones())
        log.info("SIP for the softphone on udp%s %s:%d", "+tcp" if self._tcp_server else "", self.host, self.port)
        if not self.softphones:
            log.warning("any program on this machine may place calls through this client: "
                        "set sip.softphones to your softphone's address")

    async def _bind(self) -> None:
        """UDP on listen_port and TCP on the same number (RFC 3261 section 18: every element takes
        both). With port 0 the kernel picks UDP's port, whose TCP twin may be taken: then a fresh
        UDP port is tried. TCP stays off (UDP only, one warning) only if no attempt gets both."""
        attempts = TCP_PORT_ATTEMPTS if self.port == 0 else 1
        for attempt in range(1, attempts + 1):
            transport = await self._bind_udp(self.port if attempts == 1 else 0)
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp_server = await asyncio.start_server(self._tcp_peer, self.host, port)
            except OSError as exc:
                if attempt < attempts:
                    log.debug("SIP over TCP: port %d is taken (%s); trying another UDP port", port, exc)
                    transport.close()
                    continue
                log.warning("SIP over TCP not available on %s:%d: %s (UDP only)", self.host, port, exc)
            self._transport, self.port = transport, port
            return

    async def _bind_udp(self, port: int) -> asyncio.DatagramTransport:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=(self.host, port))
        return transport

    async def close(self) -> None:
        await self.tunnel_lost("client shutting down", rejoin=False)
        for task in (self._worker, self._watcher):
            if task is not None:
                task.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for link in list(self._tcp.values()):
            link.close()

    def tunnel_up(self, send: SendToServer) -> None:
        self._send = send
        self._tunnel_ready.set()  # calls waiting to rejoin go now

    @property
    def active_call(self) -> ClientCall | None:
        for call in self.calls.values():
            if call.confirmed and call.profile is not None:
                return call
        return None

    def _find(self, call_id: str, *tags: str | None) -> ClientCall | None:
        return _lookup(self.calls, call_id, tags)

    def _find_ended(self, call_id: str, *tags: str | None) -> ClientCall | None:
        return _lookup(self.recently_ended, call_id, tags)

    # -- from the softphone --------------------------------------------------
    def from_softphone(self, data: bytes, addr: Address) -> None:
        if is_keepalive(data):
            return
        try:
            self._queue.put_nowait((data, addr))
        except asyncio.QueueFull:
            self.drops["queue-full"] += 1

    async def _work(self) -> None:
        # One message at a time keeps SIP in order (MEDIA_OFFER before its INVITE).
        while True:
            data, addr = await self._queue.get()
            try:
                await self._handle_softphone(data, addr)
            except Exception:
                log.exception("error handling SIP from the softphone (dropped)")
                self.drops["internal-error"] += 1

    def _allowed(self, addr: Address) -> bool:
        if not self.softphones:
            return True
        host, port = addr[0], addr[1]
        return any(host == h and (p is None or p == port) for h, p in self.softphones)

    async def _handle_softphone(self, data: bytes, addr: Address) -> None:
        if not self._allowed(addr):
            # Not a configured softphone: another program must not call (or hang up) as this user.
            self.drops["foreign-source"] += 1
            log.warning("SIP from %s:%d refused: not a configured softphone (sip.softphones)", *addr)
            try:
                msg = parse_message(data)
            except SipParseError:
                return
            if isinstance(msg, SipRequest):
                self._refuse(msg, addr, 403, "not a softphone of this stc-client (sip.softphones)")
            return
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.drops["malformed"] += 1
            log.warning("malformed SIP from the softphone %s:%d dropped: %s", *addr, exc)
            self._answer_unparseable(data, addr, exc)
            return
        strip_private_headers(msg)
        if isinstance(msg, SipRequest):
            await self._request_from_softphone(msg, addr)
        else:
            await self._response_from_softphone(msg)

    def _answer_unparseable(self, data: bytes, addr: Address, exc: SipParseError) -> None:
        """A 400 when the datagram is a request whose Via we can copy; otherwise only the logged drop."""
        if self._transport is None:
            return
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        start = lines[0].split(b" ")
        if len(start) != 3 or start[2] != b"SIP/2.0" or start[0] == b"ACK" or not start[0].isalpha():
            return
        # Copy the headers a response needs, as they are (they may be the broken part).
        wanted = (b"via:", b"v:", b"from:", b"f:", b"to:", b"t:", b"call-id:", b"i:", b"cseq:")
        copied = [line for line in lines[1:] if line.lower().startswith(wanted) and len(line) < 1024]
        if not any(line.lower().startswith((b"via:", b"v:")) for line in copied):
            return
        status = exc.status if 400 <= exc.status < 700 else 400
        reason = exc.args[0] if exc.args else "Bad Request"
        response = b"\r\n".join([f"SIP/2.0 {status} Bad Request".encode(), *copied,
                                  f'Warning: 399 stc "{_quoted(str(reason))}"'.encode(), b"Content-Length: 0", b"", b""])
        self._to_softphone(response, addr)

    async def _request_from_softphone(self, request: SipRequest, addr: Address) -> None:
        if request.method == "REGISTER":
            self._last_softphone = addr
            ok = make_response(request, 200, to_tag=new_tag())
            if (contact := request.get("Contact")) is not None:
                ok.append("Contact", f"{contact};expires={request.get('Expires') or '3600'}" if "expires" not in contact.lower() else contact)
            self._to_softphone(ok.to_bytes(), addr)
            return
        call = self._find(request.call_id, request.from_tag)
        if call is not None and call.dialog.gap and addr == call.softphone_address:
            self._request_in_gap(call, request, addr)
            return
        if self._send is None:
            if request.method != "ACK":
                self._to_softphone(make_response(request, 503, headers=[("Warning", '399 stc "secure tunnel is down"')]).to_bytes(), addr)
            return
        if is_initial_invite(request) and call is None:
            call = await self._start_call(request, addr)
            if call is None:
                return
        elif call is None:
            if request.to_tag is not None and request.body:
                # An offer in a dialog we hold no keys for: it must not reach Asterisk unrewritten.
                self._refuse(request, addr, 481, "no such call (its media keys are gone)")
                return
            self._last_softphone = addr
            if (branch := request.top_via_branch) is not None:
                self._remember_origin(branch, addr)
            ended = self._find_ended(request.call_id, request.from_tag)
            if ended is not None and addr == ended.softphone_address and ended.dialog.lost_since is not None:
                # Retransmitted, the BYE that ended the call while it was reconnecting: answered as then.
                if (answer := answer_in_gap(request)) is not None:
                    self._to_softphone(answer.to_bytes(), addr)
                return
            if ended is not None and ended.leg is not None and addr == ended.softphone_address:
                # A retransmitted BYE of a rejoined call: it belongs to the upstream dialog too.
                request = request.copy()
                ended.leg.request_up(request)
        if call is not None:
            if addr != call.softphone_address:
                # Another local program speaking in this call's dialog: it is not this call's phone.
                self.drops["foreign-source"] += 1
                log.warning("%s for call %s from %s:%d, not from its softphone: refused",
                            request.method, request.call_id, *addr)
                self._refuse(request, addr, 403, "not the softphone of this call")
                return
            call.max_cseq = max(call.max_cseq, request.cseq[0])
            call.alive_at = asyncio.get_running_loop().time()
            if (request.method == "INVITE" and request.to_tag is not None) or (request.method == "ACK" and request.body):
                # A re-offer, or the answer to a late offer: where the phone takes its media now.
                try:
                    sd = sdp_of(request)
                    if sd is not None:
                        endpoint = audio_endpoint(sd)
                        self.media.set_softphone_media(call.stream_id, _local_if_unspecified(endpoint.address, addr),
                                                       endpoint.rtp_port, endpoint.rtcp_port)
                        call.phone_sdp = request.body
                except (RelayRefused, SdpError) as exc:
                    self._refuse(request, addr, 488, f"media cannot be relayed securely: {exc}")
                    return
        upstream = request
        if call is not None and call.leg is not None:  # the call was rejoined: speak the upstream dialog
            upstream = request.copy()
            call.leg.request_up(upstream)
        try:
            await self._send(wire.SipMessage(upstream.to_bytes()))
        except TunnelError as exc:  # the tunnel just went: the phone retransmits, and tunnel_lost follows
            log.info("%s from the softphone not sent: %s", request.method, exc)
            return
        if request.method == "BYE" and call is not None:
            self._end_call(call, "you hung up")

    def _request_in_gap(self, call: ClientCall, request: SipRequest, addr: Address) -> None:
        """The softphone speaks while its call has no upstream leg: answered here, never queued."""
        call.max_cseq = max(call.max_cseq, request.cseq[0])
        call.alive_at = asyncio.get_running_loop().time()
        answer = answer_in_gap(request)
        if answer is not None:
            self._to_softphone(answer.to_bytes(), addr)
        if request.method == "BYE":
            self._end_call(call, "you hung up while the call was reconnecting")

    def _remember_origin(self, branch: str, addr: Address) -> None:
        self._origins[branch] = addr
        while len(self._origins) > _MEMORY:
            self._origins.popitem(last=False)

    async def _start_call(self, invite: SipRequest, addr: Address) -> ClientCall | None:
        assert self._send is not None
        try:
            sd = sdp_of(invite)
            # No SDP: a late offer. Keys do not depend on it; the offer comes in the 200 OK and
            # the phone's answer in its ACK, both rewritten like any other.
            endpoint = audio_endpoint(sd) if sd is not None else None
        except (RelayRefused, SdpError) as exc:
            self._refuse(invite, addr, 488, str(exc))
            return None
        for old in [c for c in self.calls.values() if c.call_id == invite.call_id]:
            # Same Call-ID, another tag: the phone restarted and reuses its Call-ID. Its old call
            # is over; hang it up so the room does not keep a ghost of it.
            log.warning("call %s: the softphone started it again with a new tag: the old call ends", invite.call_id)
            await self._hang_up_towards_server(old, "the softphone restarted")
            self._end_call(old, "your softphone restarted the call")
        stream_id = secrets.token_hex(8)
        call = ClientCall(invite.call_id, stream_id, request_user(invite), KeyAgreement(Side.CLIENT),
                          softphone_tag=invite.from_tag or "", softphone_address=addr)
        contact = invite.get("Contact")
        call.softphone_contact = parse_name_addr(contact).uri if contact else f"sip:{addr[0]}:{addr[1]}"
        call.invite = invite.copy()
        call.phone_sdp = invite.body if sd is not None else b""
        call.alive_at = asyncio.get_running_loop().time()
        try:
            call.ports = await self.media.open_call(stream_id)
        except OSError as exc:
            self._refuse(invite, addr, 503, f"no local media ports: {exc}")
            return None
        if endpoint is not None:
            self.media.set_softphone_media(stream_id, _local_if_unspecified(endpoint.address, addr),
                                           endpoint.rtp_port, endpoint.rtcp_port)
        if sd is not None and offers_rtcp_mux(sd):
            call.rtcp_mux = True
            self.media.set_rtcp_mux(stream_id)
        self.calls[call.key] = call
        assert call.agreement is not None
        await self._send(wire.MediaOffer(stream_id, invite.call_id, tuple(p.value for p in self.profiles), call.agreement.public_bytes))
        log.info("call %s to room %s: media offer sent", invite.call_id, call.room)
        return call

    async def _own_response(self, response: SipResponse) -> None:
        """The softphone's answer to our probe: alive, unless it no longer knows the dialog."""
        call = self._find(response.call_id, response.to_tag)
        if call is None or response.cseq != (call.probe_cseq, "OPTIONS") or response.status < 200:
            return
        call.probe_cseq = None
        if response.status in (408, 481):
            await self._hang_up_towards_server(call, "softphone lost the call")
            self._end_call(call, f"your softphone no longer knows this call ({response.status})")
        else:
            call.alive_at = asyncio.get_running_loop().time()

    async def _response_from_softphone(self, response: SipResponse) -> None:
        if not pop_own_via(response, self.host, self.port):
            self.drops["foreign-via"] += 1
            return
        if not response.get_all("Via"):
            await self._own_response(response)  # the answer to a request of our own: ends here
            return
        call = self._find(response.call_id, response.to_tag)
        if call is not None:
            call.alive_at = asyncio.get_running_loop().time()
            number, method = response.cseq
            if number in call.shifted:  # back to the CSeq Asterisk sent
                response.set("CSeq", f"{call.shifted[number]} {method}")
            try:
                sd = sdp_of(response)
                if sd is not None:
                    endpoint = audio_endpoint(sd)
                    self.media.set_softphone_media(call.stream_id, endpoint.address, endpoint.rtp_port, endpoint.rtcp_port)
                    call.phone_sdp = response.body
            except (RelayRefused, SdpError) as exc:
                log.warning("softphone answer with SDP that cannot be relayed dropped: %s", exc)
                return
            if call.dialog.gap:
                return  # the request it answers came on a leg that is gone
            if call.leg is not None:
                call.leg.response_up(response)
        if self._send is not None:
            await self._send(wire.SipMessage(response.to_bytes()))
        if call is not None and response.cseq[1] == "BYE":
            self._end_call(call, "the conference hung up")

    def _refuse(self, request: SipRequest, addr: Address, status: int, why: str) -> None:
        log.warning("%s refused with %d: %s", request.method, status, why)
        if request.method != "ACK":
            response = make_response(request, status, to_tag=new_tag(), headers=[("Warning", f'399 stc "{why}"')])
            self._to_softphone(response.to_bytes(), addr)

    # -- from the server -----------------------------------------------------
    async def on_server_message(self, message: wire.Message) -> None:
        if isinstance(message, wire.MediaAnswer):
            self._media_answer(message)
        elif isinstance(message, wire.MediaReject):
            log.error("server refused the call's media: %s", message.reason)
            for call in list(self.calls.values()):
                if call.stream_id == message.stream_id:
                    if call.dialog.gap:  # a rejoin refused: the call cannot come back
                        self._give_up(call, f"the server refused the rejoined call's media: {message.reason}")
                    else:
                        self.media.close_call(call.stream_id)
        elif isinstance(message, wire.MediaEnd):
            for call in list(self.calls.values()):
                if call.stream_id == message.stream_id:
                    log.warning("call %s: the server ended it (no media reached it)", call.call_id)
                    if call.confirmed:
                        self._to_softphone(self._bye_to_softphone(call, "stc server saw no media").to_bytes(),
                                           call.softphone_address)
                    self._end_call(call, "the server received no media from this call")
        elif isinstance(message, wire.SipMessage):
            await self._sip_from_server(message.data)

    def _media_answer(self, answer: wire.MediaAnswer) -> None:
        call = next((c for c in self.calls.values() if c.stream_id == answer.stream_id), None)
        if call is None or call.agreement is None:
            log.warning("MEDIA_ANSWER for an unknown or already keyed stream ignored")
            return
        try:
            profile = SrtpProfile.parse(answer.profile)
            if profile not in self.profiles:
                raise KeyAgreementError(f"server chose {answer.profile}, which we did not offer")
            keys = call.agreement.derive(answer.public_key, call_id=call.upstream_call_id, stream_id=call.stream_id,
                                         profile=profile)
        except (KeyAgreementError, ValueError) as exc:
            log.error("call %s: media keys refused: %s", call.call_id, exc)
            if call.dialog.gap:
                self._give_up(call, "bad media answer to the rejoin")
            else:
                self._end_call(call, "bad media answer")
            return
        call.agreement = None
        call.profile = profile
        self.media.install_keys(call.stream_id, keys, answer.rtp_port, answer.rtcp_port)
        self._on_change()

    async def _sip_from_server(self, data: bytes) -> None:
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.drops["malformed-from-server"] += 1
            log.warning("malformed SIP from the server dropped: %s", exc)
            return
        if msg.call_id in self._legs and not await self._from_upstream_leg(msg):
            return
        # The softphone's tag is in From on responses to its requests, in To on Asterisk's requests.
        if isinstance(msg, SipResponse):
            call = self._find(msg.call_id, msg.from_tag)
        else:
            call = self._find(msg.call_id, msg.to_tag)
        if call is None or call.ports is None:
            if msg.body:  # SDP nobody rewrote: never for the softphone's eyes
                await self._refuse_unkeyed_sdp(msg)
                return
        if call is not None and call.ports is not None:
            ports = call.ports
            try:
                rewrite_sdp(msg, self.host, ports.softphone_rtp_port, ports.softphone_rtcp_port, rtcp_mux=call.rtcp_mux)
            except (RelayRefused, SdpError) as exc:
                log.error("server SDP cannot be relayed (Call-ID %s): %s", msg.call_id, exc)
                return
        # Where it goes: the call's own phone; after the call, the phone it was; a response outside
        # any call to the sender of its request; a request outside any call to the last phone seen.
        dialog = call
        if isinstance(msg, SipResponse):
            known = call or self._find_ended(msg.call_id, msg.from_tag)
            target = known.softphone_address if known is not None else self._origins.get(msg.top_via_branch or "")
        else:
            dialog = call or self._find_ended(msg.call_id, msg.to_tag)
            target = dialog.softphone_address if dialog is not None else self._last_softphone
        if target is None:
            self.drops["no-softphone"] += 1
            return
        tcp = target in self._tcp
        point_contact_at(msg, self.host, self.port, transport="tcp" if tcp else None)
        if isinstance(msg, SipResponse):
            if call is not None:
                self._track_response(call, msg)
            self._to_softphone(msg.to_bytes(), target)
            return
        push_via(msg, self.host, self.port, self._secret, transport="TCP" if tcp else "UDP")
        if dialog is not None:
            self._shift_cseq(dialog, msg)
            msg.uri = dialog.softphone_contact
        else:
            msg.uri = uri_with_host_port(msg.uri, *target)
        self._to_softphone(msg.to_bytes(), target)

    def _shift_cseq(self, call: ClientCall, request: SipRequest) -> None:
        number, method = request.cseq
        if method != "ACK":
            call.far_cseq = max(call.far_cseq, number)
        if call.cseq_shift:
            sent = number + call.cseq_shift
            request.set("CSeq", f"{sent} {method}")
            call.shifted[sent] = number
            while len(call.shifted) > 32:
                call.shifted.popitem(last=False)

    async def _refuse_unkeyed_sdp(self, msg: SipRequest | SipResponse) -> None:
        """SDP for a dialog we hold no keys for: a request gets 488, a 2xx an ACK and a BYE."""
        self.drops["sdp-without-keys"] += 1
        log.warning("SDP from the server for a call without media keys (Call-ID %s) refused", msg.call_id)
        if self._send is None:
            return
        target = parse_name_addr(msg.get("To") or "").uri  # the server points it at Asterisk
        for reply in refuse_unkeyed_sdp(msg, host=self.host, port=self.port, target_uri=target):
            await self._send(wire.SipMessage(reply.to_bytes()))

    def _track_response(self, call: ClientCall, response: SipResponse) -> None:
        number, method = response.cseq
        if method == "INVITE" and response.status >= 200:
            if response.status < 300:
                if call.dialog.state in (CallState.EARLY, CallState.CONFIRMED):
                    call.dialog.confirmed()
                call.confirmed = True
                call.to_header = response.get("To") or ""
                call.started = call.started or datetime.now(timezone.utc)
                self._on_change()
            elif not call.confirmed:
                self._end_call(call, f"the call failed ({response.status} {response.reason})")
        elif method == "BYE" and response.status >= 200:
            self._end_call(call, "you hung up")

    def _to_softphone(self, data: bytes, addr: Address) -> None:
        link = self._tcp.get(addr)
        if link is not None:
            if not link.is_closing():
                link.write(data)
        elif self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    def _via_transport(self, addr: Address) -> str:
        return "TCP" if addr in self._tcp else "UDP"

    # -- SIP over TCP ---------------------------------------------------------
    async def _tcp_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One softphone's TCP connection: its messages join the UDP ones in the same queue."""
        peer = writer.get_extra_info("peername")
        address: Address = (str(peer[0]), int(peer[1]))
        if len(self._tcp) >= MAX_TCP_PEERS:
            self.drops["tcp-peers"] += 1
            log.warning("SIP over TCP from %s:%d refused: %d connections already", *address, MAX_TCP_PEERS)
            writer.close()
            return
        self._tcp[address] = writer
        framer = SipStreamFramer()
        try:
            while data := await reader.read(65536):
                for message in framer.feed(data):
                    self.from_softphone(message, address)
        except SipParseError as exc:
            self.drops["malformed"] += 1
            log.warning("SIP over TCP from %s:%d is broken (%s): connection closed", *address, exc)
        except ConnectionError:
            pass
        finally:
            if self._tcp.get(address) is writer:
                del self._tcp[address]
            writer.close()

    # -- liveness -------------------------------------------------------------
    async def _watch_softphones(self) -> None:
        """Probe a confirmed call's softphone once it falls silent; hang up the ones that are gone."""
        timeout = self.softphone_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(timeout / 10, 3.0))
            now = loop.time()
            for call in list(self.calls.values()):
                if not call.confirmed:
                    continue
                try:
                    stats = self.media.stats(call.stream_id)
                except KeyError:
                    continue
                seen = stats.outbound_packets  # RTP and RTCP the softphone sent
                if seen != call.media_seen:
                    call.media_seen = seen
                    call.alive_at = now
                silent = now - call.alive_at
                if silent >= timeout:
                    log.warning("call %s: the softphone sent nothing and answered no OPTIONS for %.0f s: "
                                "hanging up", call.call_id, silent)
                    await self._hang_up_towards_server(call, "softphone gone")
                    self._end_call(call, f"your softphone stopped answering for {silent:.0f} s")
                elif silent >= timeout / 3 and (call.probe_cseq is None or now - call.probe_sent_at >= timeout / 6):
                    self._probe(call, now)

    def _probe(self, call: ClientCall, now: float) -> None:
        """An in-dialog OPTIONS to the softphone; its answer is a sign of life."""
        call.cseq_shift += 1
        call.probe_cseq = call.far_cseq + call.cseq_shift
        call.probe_sent_at = now
        assert call.invite is not None
        probe = SipRequest("OPTIONS", call.softphone_contact, [])
        probe.append("Via", str(make_via(self.host, self.port, new_branch(),
                                         transport=self._via_transport(call.softphone_address))))
        probe.append("Max-Forwards", "70")
        probe.append("From", call.to_header)  # we speak for the far end of the softphone's dialog
        probe.append("To", call.invite.get("From") or "")
        probe.append("Call-ID", call.call_id)
        probe.append("CSeq", f"{call.probe_cseq} OPTIONS")
        probe.append("Content-Length", "0")
        self._to_softphone(probe.to_bytes(), call.softphone_address)

    # -- clean-up -------------------------------------------------------------
    def _end_call(self, call: ClientCall, why: str) -> None:
        if self.calls.get(call.key) is not call:
            return
        del self.calls[call.key]
        call.end_reason = why
        call.dialog.ended()
        call.settled.set()
        if call.rejoin is not None and call.rejoin is not asyncio.current_task():
            call.rejoin.cancel()
        self.recently_ended[call.key] = call
        while len(self.recently_ended) > _MEMORY:
            self.recently_ended.popitem(last=False)
        self.media.close_call(call.stream_id)
        log.info("call %s ended (%s); media released", call.call_id, why)
        self._on_call_end(call)
        self._on_change()

    async def _hang_up_towards_server(self, call: ClientCall, why: str) -> None:
        """A BYE (or CANCEL) as the softphone would send it, so Asterisk ends the call now."""
        if self._send is None or call.invite is None or call.dialog.gap:
            return
        invite = call.invite
        if call.confirmed:
            request = SipRequest("BYE", invite.uri, [])
            request.append("Via", str(make_via(self.host, self.port, new_branch())))
            request.append("Max-Forwards", "70")
            request.append("From", invite.get("From") or "")
            request.append("To", call.to_header)
            request.append("Call-ID", call.call_id)
            request.append("CSeq", f"{max(call.max_cseq, invite.cseq[0]) + 1} BYE")
            request.append("Reason", f'Q.850;cause=41;text="stc: {_quoted(why)}"')
        else:
            request = SipRequest("CANCEL", invite.uri, [])
            request.append("Via", invite.get_all("Via")[0])
            request.append("Max-Forwards", "70")
            request.append("From", invite.get("From") or "")
            request.append("To", invite.get("To") or "")
            request.append("Call-ID", call.call_id)
            request.append("CSeq", f"{invite.cseq[0]} CANCEL")
        request.append("Content-Length", "0")
        if call.leg is not None:  # the call was rejoined: the BYE is for the upstream dialog
            call.leg.request_up(request)
        try:
            await self._send(wire.SipMessage(request.to_bytes()))
        except Exception as exc:  # the tunnel is going: the server hangs up what it carried
            log.debug("hang-up for call %s not sent: %s", call.call_id, exc)

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

    # -- rejoining ------------------------------------------------------------
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

    def _bye_to_softphone(self, call: ClientCall, why: str) -> SipRequest:
        assert call.invite is not None
        call.cseq_shift += 1  # a CSeq above any Asterisk sent in this dialog
        bye = SipRequest("BYE", call.softphone_contact, [])
        bye.append("Via", str(make_via(self.host, self.port, new_branch(),
                                       transport=self._via_transport(call.softphone_address))))
        bye.append("Max-Forwards", "70")
        bye.append("From", call.to_header)  # we speak for the far end of the softphone's dialog
        bye.append("To", call.invite.get("From") or "")
        bye.append("Call-ID", call.call_id)
        bye.append("CSeq", f"{call.far_cseq + call.cseq_shift} BYE")
        bye.append("Reason", f'Q.850;cause=41;text="{_quoted(why)}"')
        bye.append("Content-Length", "0")
        return bye


def _lookup(table: Mapping[DialogKey, ClientCall], call_id: str, tags: tuple[str | None, ...]) -> ClientCall | None:
    """The call of the first (Call-ID, tag) dialog found in `table`."""
    for tag in tags:
        call = table.get((call_id, tag or ""))
        if call is not None:
            return call
    return None


def _quoted(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable() and ch not in '"\\')[:200]


def _local_if_unspecified(address: str, addr: Address) -> str:
    return addr[0] if address in ("0.0.0.0", "::") else address
