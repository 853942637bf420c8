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
from collections.abc import Callable, Mapping
from datetime import datetime, timezone

from stc_wire import messages as wire
from stc_wire.media_keys import KeyAgreement, KeyAgreementError, Side
from stc_wire.sdp import RelayRefused, SdpError, audio_endpoint, offers_rtcp_mux
from stc_wire.sip import (
    SipParseError,
    SipRequest,
    SipResponse,
    is_keepalive,
    make_request,
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

from .client_call import MEMORY as _MEMORY
from .client_call import Address, ClientCall, DialogKey, SendToServer
from .client_call import quoted as _quoted
from .dialog import CallState, UpstreamLeg, answer_in_gap
from .liveness import SoftphoneLiveness
from .media import ClientMedia
from .rejoin import Rejoining

__all__ = ["MAX_TCP_PEERS", "TCP_PORT_ATTEMPTS", "Address", "ClientCall", "DialogKey", "SendToServer", "SoftphoneProxy"]

log = logging.getLogger(__name__)

MAX_TCP_PEERS = 32  # softphone TCP connections at once
TCP_PORT_ATTEMPTS = 5  # with listen_port 0: UDP ports tried until TCP gets the same number too


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, owner: "SoftphoneProxy") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.owner.from_softphone(data, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("softphone socket error: %s", exc)



class SoftphoneProxy(Rejoining, SoftphoneLiveness):
    """The proxy core; the rejoin half and the liveness probes are in rejoin.py and liveness.py."""

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
            request = make_request("BYE", invite.uri, via=str(make_via(self.host, self.port, new_branch())),
                                   from_=invite.get("From") or "", to=call.to_header, call_id=call.call_id,
                                   cseq=max(call.max_cseq, invite.cseq[0]) + 1,
                                   headers=[("Reason", f'Q.850;cause=41;text="stc: {_quoted(why)}"')])
        else:
            request = make_request("CANCEL", invite.uri, via=invite.get_all("Via")[0], from_=invite.get("From") or "",
                                   to=invite.get("To") or "", call_id=call.call_id, cseq=invite.cseq[0])
        if call.leg is not None:  # the call was rejoined: the BYE is for the upstream dialog
            call.leg.request_up(request)
        try:
            await self._send(wire.SipMessage(request.to_bytes()))
        except Exception as exc:  # the tunnel is going: the server hangs up what it carried
            log.debug("hang-up for call %s not sent: %s", call.call_id, exc)


def _lookup(table: Mapping[DialogKey, ClientCall], call_id: str, tags: tuple[str | None, ...]) -> ClientCall | None:
    """The call of the first (Call-ID, tag) dialog found in `table`."""
    for tag in tags:
        call = table.get((call_id, tag or ""))
        if call is not None:
            return call
    return None


def _local_if_unspecified(address: str, addr: Address) -> str:
    return addr[0] if address in ("0.0.0.0", "::") else address
