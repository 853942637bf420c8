"""The stc-client's media bridge: the softphone's plain RTP/RTCP <-> SRTP/SRTCP to the server.

Per call: an even/odd port pair on the softphone's host (127.0.0.1) that goes into the SDP given
to the softphone, and two wan sockets that talk SRTP/SRTCP with the server's wan ports. The packet
logic is `stc_wire.rtp`'s pure paths. One call is about 100 datagrams a second, each its own
wake-up, so what a wake-up costs is most of the client's CPU: where the loop can watch sockets,
they sit in the relay's own epoll set (`stc_wire.readiness`, as on the server), with no asyncio
transport or protocol per datagram; elsewhere (Windows' proactor loop) they are asyncio datagram
endpoints.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass

from stc_wire.media_keys import CallKeys
from stc_wire.readiness import DatagramReadiness
from stc_wire.rtp import (
    Address,
    InboundPath,
    OutboundPath,
    PlainPeer,
    RelayStats,
    SecurePeer,
    bind_udp_pair,
    empty_receiver_report,
    latch_keepalive,
)
from stc_wire.srtp import SrtpDropped, SrtpProtector, SrtpUnprotector
from stc_wire.translator import OutboundTranslator, SrtpSender

__all__ = ["ClientCallPorts", "ClientMedia", "UnknownCall"]

Send = Callable[[bytes, Address], object]

logger = logging.getLogger(__name__)
# Latch keep-alives while the softphone is silent (also keeps a NAT binding open).
KEEPALIVE_INTERVAL = 1.0


class UnknownCall(KeyError):
    """No open call has this tag."""

    def __str__(self) -> str:
        return f"no open media call {self.args[0]!r}"


@dataclass(frozen=True)
class ClientCallPorts:
    """Where the softphone sends one call's media (RTCP is RTP + 1)."""

    softphone_rtp_port: int
    softphone_rtcp_port: int


class _Endpoint(asyncio.DatagramProtocol):
    """Hands each datagram to a path; nothing else."""

    def __init__(self, handle: Callable[[bytes, Address], None], ipv6: bool) -> None:
        if ipv6:  # IPv6 sources are 4-tuples; the paths compare (host, port)
            self.datagram_received = lambda data, source: handle(data, source[:2])  # type: ignore[method-assign,assignment]
        else:
            self.datagram_received = handle  # type: ignore[method-assign,assignment]

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the peer is not there (yet); UDP goes on.
        logger.debug("media socket error: %s", exc)


def _sender(transport: asyncio.DatagramTransport) -> Callable[[bytes, Address], None]:
    return transport.sendto  # type: ignore[return-value]


class _ClientCall:
    """Peers and paths of one call; the transports' `send` is filled in once they exist."""

    def __init__(self, tag: str, softphone_host: str) -> None:
        self.tag = tag
        self.stats = RelayStats()
        self.transports: list[asyncio.DatagramTransport] = []  # endpoint mode
        self.sockets: list[socket.socket] = []  # readiness mode
        self.keepalive: asyncio.Task[None] | None = None
        # Keep-alives are their own SRTP stream: this SSRC is never the translator's output SSRC.
        self.keepalive_ssrc = random.getrandbits(32)
        self.keepalive_protector: SrtpProtector | None = None
        self.rtcp_mux = False  # the softphone sends and takes RTCP on its RTP port
        self.local_ports = (0, 0)  # the softphone-side RTP and RTCP ports
        self.server_rtp = SecurePeer(latching=False, label=f"call {tag}: server RTP")
        self.server_rtcp = SecurePeer(latching=False, label=f"call {tag}: server RTCP")
        self.softphone_rtp = PlainPeer(softphone_host)
        self.softphone_rtcp = PlainPeer(softphone_host)
        self.rtp_in = InboundPath(send=_unbound, secure_peer=self.server_rtp, plain_peer=self.softphone_rtp, stats=self.stats)
        self.rtcp_in = InboundPath(send=_unbound, secure_peer=self.server_rtcp, plain_peer=self.softphone_rtcp, stats=self.stats)
        self.rtp_out = OutboundPath(send=_unbound, secure_peer=self.server_rtp, plain_peer=self.softphone_rtp, stats=self.stats)
        self.rtcp_out = OutboundPath(send=_unbound, secure_peer=self.server_rtcp, plain_peer=self.softphone_rtcp, stats=self.stats)

    async def keep_latched(self, interval: float) -> None:
        """Send latch keep-alives until the softphone's own media flows (and as NAT keep-alive while it is silent)."""
        ssrc = self.keepalive_ssrc
        seq = random.getrandbits(15)
        while True:
            before = self.stats.outbound_packets
            protector = self.keepalive_protector
            if protector is None:
                return
            protect_rtp, protect_rtcp = protector.protect_rtp, protector.protect_rtcp
            for path, packet, protect in (
                (self.rtp_out, latch_keepalive(ssrc, seq), protect_rtp),
                (self.rtcp_out, empty_receiver_report(ssrc), protect_rtcp),
            ):
                destination = path.secure_peer.address
                if destination is not None:
                    try:
                        path.send(protect(packet), destination)
                    except (OSError, SrtpDropped):
                        self.stats.send_errors += 1
            seq += 1
            await asyncio.sleep(interval)
            while self.stats.outbound_packets > before:  # media flows: nothing to add
                before = self.stats.outbound_packets
                await asyncio.sleep(interval)

    def from_softphone_rtp_port(self, data: bytes, source: Address) -> None:
        # RFC 5761: with rtcp-mux, RTCP (packet types 192-223 in the second byte) shares the port.
        if self.rtcp_mux and len(data) > 1 and 192 <= data[1] <= 223:
            self.rtcp_out.handle(data, source)
        else:
            self.rtp_out.handle(data, source)

    def forget_keys(self) -> None:
        self.rtp_in.unprotect = self.rtcp_in.unprotect = None
        self.rtp_out.protect = self.rtcp_out.protect = None
        self.keepalive_protector = None


class ClientMedia:
    """All calls' media of one stc-client, on the running event loop.

    `server_host` is resolved once, at the first `open_call`; the wan sockets bind to
    `wan_bind_host` (any address by default) and accept only datagrams from the server's address.
    `readiness`: watch the sockets in our own epoll set (True), through asyncio datagram
    endpoints (False), or the first where the loop allows it (None, the default).
    """

    def __init__(
        self,
        server_host: str,
        *,
        softphone_host: str = "127.0.0.1",
        wan_bind_host: str | None = None,
        readiness: bool | None = None,
    ) -> None:
        self.server_host = server_host
        self.softphone_host = softphone_host
        self._wan_bind_host = wan_bind_host
        self._use_readiness = readiness
        self._readiness: DatagramReadiness | None = None
        self._server_ip: str | None = None
        self._server_family = socket.AF_INET
        self._calls: dict[str, _ClientCall] = {}
        self._closed_totals = RelayStats()

    async def _resolve_server(self) -> str:
        if self._server_ip is None:
            loop = asyncio.get_running_loop()
            infos = await loop.getaddrinfo(self.server_host, None, type=socket.SOCK_DGRAM)
            if not infos:
                raise OSError(f"cannot resolve stc server {self.server_host!r}")
            family, _, _, _, sockaddr = infos[0]
            self._server_family = family
            self._server_ip = str(sockaddr[0])
        return self._server_ip

    async def open_call(self, call_tag: str) -> ClientCallPorts:
        """Open the softphone-side port pair and the wan sockets; keys come by `install_keys`."""
        if call_tag in self._calls:
            raise ValueError(f"media call {call_tag!r} is already open")
        await self._resolve_server()
        loop = asyncio.get_running_loop()
        call = _ClientCall(call_tag, self.softphone_host)
        self._calls[call_tag] = call  # registered first so close_call cleans up a failure
        ipv6_wan = self._server_family == socket.AF_INET6
        wan_host = self._wan_bind_host or ("::" if ipv6_wan else "0.0.0.0")
        if self._use_readiness is None:
            self._use_readiness = DatagramReadiness.supported(loop)
        try:
            if self._use_readiness:
                sends = self._open_watched(call, wan_host, ipv6_wan)
            else:
                sends = await self._open_endpoints(call, wan_host, ipv6_wan)
        except BaseException:
            self.close_call(call_tag)
            raise
        call.rtp_in.send, call.rtcp_in.send, call.rtp_out.send, call.rtcp_out.send = sends
        ports = ClientCallPorts(softphone_rtp_port=call.local_ports[0], softphone_rtcp_port=call.local_ports[1])
        logger.info("call %s: media open, softphone side %s", call_tag, ports)
        return ports

    def _open_watched(self, call: _ClientCall, wan_host: str, ipv6_wan: bool) -> tuple[Send, Send, Send, Send]:
        """The call's four sockets in our epoll set; their `sendto`s (local RTP/RTCP, wan RTP/RTCP)."""
        if self._readiness is None:
            self._readiness = DatagramReadiness(asyncio.get_running_loop(), )
        local_rtp, local_rtcp = bind_udp_pair(self.softphone_host)
        call.sockets.extend((local_rtp, local_rtcp))
        family = socket.AF_INET6 if ipv6_wan else socket.AF_INET
        for _ in range(2):
            wan = socket.socket(family, socket.SOCK_DGRAM)
            call.sockets.append(wan)
            wan.setblocking(False)
            wan.bind((wan_host, 0))
        wan_rtp, wan_rtcp = call.sockets[2:]
        ipv6_local = local_rtp.family == socket.AF_INET6
        for sock, handle, ipv6 in (
            (local_rtp, call.from_softphone_rtp_port, ipv6_local),
            (local_rtcp, call.rtcp_out.handle, ipv6_local),
            (wan_rtp, call.rtp_in.handle, ipv6_wan),
            (wan_rtcp, call.rtcp_in.handle, ipv6_wan),
        ):
            self._readiness.add(sock, _two_tuple_sources(handle) if ipv6 else handle)
        call.local_ports = (local_rtp.getsockname()[1], local_rtcp.getsockname()[1])
        return local_rtp.sendto, local_rtcp.sendto, wan_rtp.sendto, wan_rtcp.sendto

    async def _open_endpoints(self, call: _ClientCall, wan_host: str, ipv6_wan: bool) -> tuple[Send, Send, Send, Send]:
        """The portable way: four asyncio datagram endpoints (they run on the proactor loop)."""
        loop = asyncio.get_running_loop()
        local_socks: list[socket.socket] = []
        try:
            local_socks.extend(bind_udp_pair(self.softphone_host))
            ipv6_local = local_socks[0].family == socket.AF_INET6

            async def endpoint(
                handle: Callable[[bytes, Address], None], ipv6: bool, **where: object
            ) -> asyncio.DatagramTransport:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Endpoint(handle, ipv6), **where  # type: ignore[arg-type]
                )
                call.transports.append(transport)
                return transport  # type: ignore[no-any-return]

            local_rtp = await endpoint(call.from_softphone_rtp_port, ipv6_local, sock=local_socks[0])
            del local_socks[0]
            local_rtcp = await endpoint(call.rtcp_out.handle, ipv6_local, sock=local_socks[0])
            del local_socks[0]
            wan_rtp = await endpoint(call.rtp_in.handle, ipv6_wan, local_addr=(wan_host, 0))
            wan_rtcp = await endpoint(call.rtcp_in.handle, ipv6_wan, local_addr=(wan_host, 0))
        finally:
            for sock in local_socks:  # bound but not yet owned by a transport
                sock.close()
        call.local_ports = (local_rtp.get_extra_info("sockname")[1], local_rtcp.get_extra_info("sockname")[1])
        return _sender(local_rtp), _sender(local_rtcp), _sender(wan_rtp), _sender(wan_rtcp)

    def set_rtcp_mux(self, call_tag: str) -> None:
        """The softphone multiplexes RTCP on its RTP port (RFC 5761), and so do we towards it:
        its RTCP arrives on our RTP port, and the server's RTCP leaves from there to its RTP port."""
        call = self._call(call_tag)
        call.rtcp_mux = True
        call.rtcp_in.send = call.rtp_in.send
        call.rtcp_in.plain_peer = call.rtcp_out.plain_peer = call.softphone_rtp

    def set_softphone_media(self, call_tag: str, host: str, rtp_port: int, rtcp_port: int) -> None:
        """The softphone's RTP/RTCP address from its SDP (else latched from its first packet)."""
        call = self._call(call_tag)
        call.softphone_rtp.set_from_sdp(host, rtp_port)
        call.softphone_rtcp.set_from_sdp(host, rtcp_port)

    def install_keys(self, call_tag: str, keys: CallKeys, server_rtp_port: int, server_rtcp_port: int) -> None:
        """Key the call and aim it at the server's wan ports; media flows from now on."""
        call = self._call(call_tag)
        if self._server_ip is None:  # open_call resolved it; a call cannot exist without that
            raise RuntimeError("server address not resolved")
        for port in (server_rtp_port, server_rtcp_port):
            if not 0 < port < 65536:
                raise ValueError(f"bad server media port {port}")
        call.server_rtp.address = (self._server_ip, server_rtp_port)
        call.server_rtcp.address = (self._server_ip, server_rtcp_port)
        protector = SrtpProtector(keys.profile, keys.client_to_server_srtp, keys.client_to_server_srtcp)
        unprotector = SrtpUnprotector(keys.profile, keys.server_to_client_srtp, keys.server_to_client_srtcp)
        # The softphone's RTP leaves under our own SSRC and a growing index (stc_wire.translator);
        # keep-alives are a stream of their own (another SSRC) straight through `protector`.
        sender = SrtpSender(protector, OutboundTranslator(ssrc=call.keepalive_ssrc ^ 0x5A5A5A5A))
        call.keepalive_protector = protector
        call.rtp_out.protect = sender.protect_rtp
        call.rtcp_out.protect = sender.protect_rtcp
        call.rtp_in.unprotect = unprotector.unprotect_rtp
        call.rtcp_in.unprotect = unprotector.unprotect_rtcp
        if call.keepalive is None:
            call.keepalive = asyncio.get_running_loop().create_task(call.keep_latched(KEEPALIVE_INTERVAL))
            call.keepalive.add_done_callback(_log_if_failed)
        logger.info(
            "call %s: SRTP keys installed (%s), server media at %s:%s/%s",
            call_tag, keys.profile.value, self._server_ip, server_rtp_port, server_rtcp_port,
        )

    def suspend(self, call_tag: str) -> None:
        """The server's end of the call is gone (a lost tunnel): send nothing more under its keys.
        The softphone-side ports stay open; `install_keys` with a rejoin's keys resumes the call."""
        call = self._call(call_tag)
        if call.keepalive is not None:
            call.keepalive.cancel()
            call.keepalive = None
        call.forget_keys()
        logger.info("call %s: media suspended until the call is keyed again", call_tag)

    def close_call(self, call_tag: str) -> None:
        """Close the call's sockets and drop its SRTP sessions; unknown calls are ignored.

        asyncio closes the sockets on the loop's next iteration.
        """
        call = self._calls.pop(call_tag, None)
        if call is None:
            return
        if call.keepalive is not None:
            call.keepalive.cancel()
        for transport in call.transports:
            transport.close()
        for sock in call.sockets:
            if self._readiness is not None:
                self._readiness.remove(sock)
            sock.close()
        call.forget_keys()
        self._closed_totals.add(call.stats)
        logger.info("call %s: media closed %s", call_tag, call.stats)

    def stats(self, call_tag: str | None = None) -> RelayStats:
        """A copy of one call's counters, or the sum over every call carried."""
        if call_tag is not None:
            return self._call(call_tag).stats.copy()
        return RelayStats.total(self._closed_totals, (call.stats for call in self._calls.values()))

    def close(self) -> None:
        for tag in list(self._calls):
            self.close_call(tag)
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None

    @property
    def watched(self) -> bool:
        """True when the media sockets sit in our own epoll set rather than asyncio endpoints."""
        return self._readiness is not None

    def _call(self, call_tag: str) -> _ClientCall:
        try:
            return self._calls[call_tag]
        except KeyError:
            raise UnknownCall(call_tag) from None


def _two_tuple_sources(handle: Callable[[bytes, Address], None]) -> Callable[[bytes, Address], None]:
    """IPv6 sources are 4-tuples (flow info, scope id); the paths compare (host, port)."""
    return lambda data, source: handle(data, source[:2])


def _unbound(packet: bytes, address: Address) -> None:
    raise OSError("media transport not ready")


def _log_if_failed(task: asyncio.Task[None]) -> None:
    """A call's keep-alive task that died of a bug says so (with its traceback) instead of vanishing."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("a call's media keep-alive stopped on an unexpected error", exc_info=task.exception())
