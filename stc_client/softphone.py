"""The softphone's side of stc-client: a local SIP endpoint whose calls travel the tunnel.

The softphone sends plain SIP to this UDP listener; every message goes through
the authenticated tunnel (never onto the network in the clear). For each new
call the client opens local RTP ports for the softphone and runs a fresh X25519
exchange with the server (MEDIA_OFFER before the INVITE, on the same ordered
stream); the softphone's RTP only leaves the host as SRTP under those keys.
REGISTER is answered here: the tunnel, not a SIP registration, is what
identifies the user to the server.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from stc_wire import messages as wire
from stc_wire.media_keys import KeyAgreement, KeyAgreementError, Side
from stc_wire.sdp import RelayRefused, SdpError, audio_endpoint
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
    request_user,
    rewrite_sdp,
    sdp_of,
    strip_private_headers,
)
from stc_wire.srtp import SrtpProfile

from .media import ClientCallPorts, ClientMedia

log = logging.getLogger(__name__)

Address = tuple[str, int]


@dataclass
class ClientCall:
    call_id: str
    stream_id: str
    room: str
    agreement: KeyAgreement | None
    softphone_contact: str = ""  # where in-dialog requests for the softphone go
    invite: SipRequest | None = None  # as the softphone sent it (for a BYE on tunnel loss)
    to_header: str = ""
    confirmed: bool = False
    profile: SrtpProfile | None = None
    started: datetime | None = None
    ports: ClientCallPorts | None = None


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
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.host = host
        self.port = port
        self.media = media
        self.profiles = profiles
        self.calls: dict[str, ClientCall] = {}
        # Calls just ended, so a retransmitted BYE (or its 200) still finds the softphone's contact.
        self.recently_ended: OrderedDict[str, ClientCall] = OrderedDict()
        self.drops: Counter[str] = Counter()
        self._send: SendToServer | None = None
        self._softphone: Address | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._secret = secrets.token_hex(16)
        self._on_change = on_change
        self._queue: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue(maxsize=1000)
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=(self.host, self.port))
        self.port = self._transport.get_extra_info("sockname")[1]
        self._worker = asyncio.create_task(self._work())
        log.info("SIP for the softphone on udp %s:%d", self.host, self.port)

    async def close(self) -> None:
        await self.tunnel_lost("client shutting down")
        if self._worker is not None:
            self._worker.cancel()
        if self._transport is not None:
            self._transport.close()

    def tunnel_up(self, send: SendToServer) -> None:
        self._send = send

    @property
    def active_call(self) -> ClientCall | None:
        for call in self.calls.values():
            if call.confirmed and call.profile is not None:
                return call
        return None

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

    async def _handle_softphone(self, data: bytes, addr: Address) -> None:
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.drops["malformed"] += 1
            log.warning("malformed SIP from the softphone %s:%d dropped: %s", *addr, exc)
            self._answer_unparseable(data, addr, exc)
            return
        self._softphone = addr
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
            ok = make_response(request, 200, to_tag=new_tag())
            if (contact := request.get("Contact")) is not None:
                ok.append("Contact", f"{contact};expires={request.get('Expires') or '3600'}" if "expires" not in contact.lower() else contact)
            self._to_softphone(ok.to_bytes(), addr)
            return
        if self._send is None:
            if request.method != "ACK":
                self._to_softphone(make_response(request, 503, headers=[("Warning", '399 stc "secure tunnel is down"')]).to_bytes(), addr)
            return
        if is_initial_invite(request):
            if not await self._start_call(request, addr):
                return
        call = self.calls.get(request.call_id)
        if call is not None and request.method == "INVITE" and request.to_tag is not None:
            try:
                sd = sdp_of(request)
                if sd is not None:
                    endpoint = audio_endpoint(sd)
                    self.media.set_softphone_media(call.stream_id, _local_if_unspecified(endpoint.address, addr),
                                                   endpoint.rtp_port, endpoint.rtcp_port)
            except (RelayRefused, SdpError) as exc:
                self._refuse(request, addr, 488, f"media cannot be relayed securely: {exc}")
                return
        await self._send(wire.SipMessage(request.to_bytes()))
        if request.method == "BYE" and call is not None:
            self._end_call(call.call_id, "softphone hung up")

    async def _start_call(self, invite: SipRequest, addr: Address) -> bool:
        assert self._send is not None
        try:
            sd = sdp_of(invite)
            if sd is None:
                raise RelayRefused("no SDP offer in the INVITE (stc needs one to key the media)")
            endpoint = audio_endpoint(sd)
        except (RelayRefused, SdpError) as exc:
            self._refuse(invite, addr, 488, str(exc))
            return False
        if invite.call_id in self.calls:
            return True  # a retransmission
        stream_id = secrets.token_hex(8)
        call = ClientCall(invite.call_id, stream_id, request_user(invite), KeyAgreement(Side.CLIENT))
        contact = invite.get("Contact")
        call.softphone_contact = parse_name_addr(contact).uri if contact else f"sip:{addr[0]}:{addr[1]}"
        call.invite = invite.copy()
        try:
            call.ports = await self.media.open_call(stream_id)
        except OSError as exc:
            self._refuse(invite, addr, 503, f"no local media ports: {exc}")
            return False
        self.media.set_softphone_media(stream_id, _local_if_unspecified(endpoint.address, addr), endpoint.rtp_port, endpoint.rtcp_port)
        self.calls[invite.call_id] = call
        assert call.agreement is not None
        await self._send(wire.MediaOffer(stream_id, invite.call_id, tuple(p.value for p in self.profiles), call.agreement.public_bytes))
        log.info("call %s to room %s: media offer sent", invite.call_id, call.room)
        return True

    async def _response_from_softphone(self, response: SipResponse) -> None:
        if not pop_own_via(response, self.host, self.port):
            self.drops["foreign-via"] += 1
            return
        call = self.calls.get(response.call_id)
        if call is not None:
            try:
                sd = sdp_of(response)
                if sd is not None:
                    endpoint = audio_endpoint(sd)
                    self.media.set_softphone_media(call.stream_id, endpoint.address, endpoint.rtp_port, endpoint.rtcp_port)
            except (RelayRefused, SdpError) as exc:
                log.warning("softphone answer with SDP that cannot be relayed dropped: %s", exc)
                return
        if self._send is not None:
            await self._send(wire.SipMessage(response.to_bytes()))
        if call is not None and response.cseq[1] == "BYE":
            self._end_call(call.call_id, "server side hung up")

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
                    self.media.close_call(call.stream_id)
        elif isinstance(message, wire.SipMessage):
            self._sip_from_server(message.data)

    def _media_answer(self, answer: wire.MediaAnswer) -> None:
        call = next((c for c in self.calls.values() if c.stream_id == answer.stream_id), None)
        if call is None or call.agreement is None:
            log.warning("MEDIA_ANSWER for an unknown or already keyed stream ignored")
            return
        try:
            profile = SrtpProfile.parse(answer.profile)
            if profile not in self.profiles:
                raise KeyAgreementError(f"server chose {answer.profile}, which we did not offer")
            keys = call.agreement.derive(answer.public_key, call_id=call.call_id, stream_id=call.stream_id, profile=profile)
        except (KeyAgreementError, ValueError) as exc:
            log.error("call %s: media keys refused: %s", call.call_id, exc)
            self._end_call(call.call_id, "bad media answer")
            return
        call.agreement = None
        call.profile = profile
        self.media.install_keys(call.stream_id, keys, answer.rtp_port, answer.rtcp_port)
        self._on_change()

    def _sip_from_server(self, data: bytes) -> None:
        try:
            msg = parse_message(data)
        except SipParseError as exc:
            self.drops["malformed-from-server"] += 1
            log.warning("malformed SIP from the server dropped: %s", exc)
            return
        if self._softphone is None:
            self.drops["no-softphone"] += 1
            return
        call = self.calls.get(msg.call_id)
        point_contact_at(msg, self.host, self.port)
        if call is not None and call.ports is not None:
            ports = call.ports
            try:
                rewrite_sdp(msg, self.host, ports.softphone_rtp_port, ports.softphone_rtcp_port)
            except (RelayRefused, SdpError) as exc:
                log.error("server SDP cannot be relayed (Call-ID %s): %s", msg.call_id, exc)
                return
        if isinstance(msg, SipResponse):
            if call is not None:
                self._track_response(call, msg)
            self._to_softphone(msg.to_bytes(), self._softphone)
            return
        push_via(msg, self.host, self.port, self._secret)
        dialog = call or self.recently_ended.get(msg.call_id)
        if dialog is not None and dialog.softphone_contact:
            msg.uri = dialog.softphone_contact
        else:
            msg.uri = uri_with_host_port(msg.uri, *self._softphone)
        self._to_softphone(msg.to_bytes(), self._softphone)

    def _track_response(self, call: ClientCall, response: SipResponse) -> None:
        number, method = response.cseq
        if method == "INVITE" and response.status >= 200:
            if response.status < 300:
                call.confirmed = True
                call.to_header = response.get("To") or ""
                call.started = call.started or datetime.now(timezone.utc)
                self._on_change()
            elif not call.confirmed:
                self._end_call(call.call_id, f"call failed with {response.status}")
        elif method == "BYE" and response.status >= 200:
            self._end_call(call.call_id, "hung up")

    def _to_softphone(self, data: bytes, addr: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, addr)

    # -- clean-up -------------------------------------------------------------
    def _end_call(self, call_id: str, why: str) -> None:
        call = self.calls.pop(call_id, None)
        if call is None:
            return
        self.recently_ended[call_id] = call
        while len(self.recently_ended) > 256:
            self.recently_ended.popitem(last=False)
        self.media.close_call(call.stream_id)
        log.info("call %s ended (%s); media released", call_id, why)
        self._on_change()

    async def tunnel_lost(self, why: str) -> None:
        """The tunnel is gone: hang up every call towards the softphone and free its media."""
        self._send = None
        for call in list(self.calls.values()):
            if call.confirmed and call.invite is not None and self._softphone is not None:
                self._to_softphone(self._bye_for(call).to_bytes(), self._softphone)
            self._end_call(call.call_id, why)

    def _bye_for(self, call: ClientCall) -> SipRequest:
        assert call.invite is not None
        bye = SipRequest("BYE", call.softphone_contact, [])
        bye.append("Via", str(make_via(self.host, self.port, new_branch())))
        bye.append("Max-Forwards", "70")
        bye.append("From", call.to_header)  # we speak for the far end of the softphone's dialog
        bye.append("To", call.invite.get("From") or "")
        bye.append("Call-ID", call.call_id)
        bye.append("CSeq", "1 BYE")
        bye.append("Reason", 'Q.850;cause=41;text="stc tunnel lost"')
        return bye


def _quoted(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable() and ch not in '"\\')[:200]


def _local_if_unspecified(address: str, addr: Address) -> str:
    return addr[0] if address in ("0.0.0.0", "::") else address
