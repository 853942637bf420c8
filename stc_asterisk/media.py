"""The stc-server's SRTP<->RTP media relay: SRTP with clients on the wan, plain RTP with Asterisk.

Per call: an even/odd wan port pair where the client sends SRTP/SRTCP, and an even/odd pbx port
pair that goes into the SDP given to Asterisk. With `single_port`, every call's SRTP and SRTCP
share one wan socket instead, told apart by source address (`stc_wire.demux`): an operator opens
one UDP port, not a range. The packet logic is `stc_wire.rtp`'s pure
`InboundPath`/`OutboundPath`; this module only moves datagrams.

Hot path: the relay's sockets are not asyncio transports but sit in one epoll set of our own
(`stc_wire.readiness`), drained per wake-up with no per-datagram objects beyond the bytes.
Measured figures and the `batch_interval` trade-off: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from stc_wire.demux import SourceDemux
from stc_wire.media_keys import CallKeys
from stc_wire.readiness import SHARED_DRAIN_LIMIT
from stc_wire.readiness import DatagramReadiness as _Readiness
from stc_wire.rtp import InboundPath, OutboundPath, PlainPeer, RelayStats, SecurePeer, bind_udp_pair
from stc_wire.srtp import SrtpProtector, SrtpUnprotector
from stc_wire.translator import SrtpSender

__all__ = ["CallMediaPorts", "MediaRelay", "UnknownCall"]

logger = logging.getLogger(__name__)


class UnknownCall(KeyError):
    """No open call has this tag."""

    def __str__(self) -> str:
        return f"no open media call {self.args[0]!r}"


@dataclass(frozen=True)
class CallMediaPorts:
    """Where one call's media goes. RTCP is always RTP + 1."""

    wan_rtp_port: int  # the client sends SRTP here (and SRTCP to wan_rtcp_port)
    wan_rtcp_port: int  # == wan_rtp_port on a single-port relay
    pbx_rtp_port: int  # the RTP port to put in the SDP given to Asterisk
    pbx_rtcp_port: int


class _Call:
    """Sockets, peers and paths of one call."""

    def __init__(
        self,
        tag: str,
        wan: tuple[socket.socket, socket.socket],
        pbx: tuple[socket.socket, socket.socket],
        pbx_host: str,
        *,
        shared_wan: bool = False,
    ) -> None:
        self.tag = tag
        self.wan_rtp, self.wan_rtcp = wan
        self.pbx_rtp, self.pbx_rtcp = pbx
        self.shared_wan = shared_wan  # the wan socket is the relay's single port, not ours to close
        self.stats = RelayStats()
        self.client_rtp = SecurePeer(latching=True, label=f"call {tag}: client RTP")
        self.client_rtcp = SecurePeer(latching=True, label=f"call {tag}: client RTCP")
        self.asterisk_rtp = PlainPeer(pbx_host)
        self.asterisk_rtcp = PlainPeer(pbx_host)
        self.rtp_in = InboundPath(
            send=self.pbx_rtp.sendto, secure_peer=self.client_rtp, plain_peer=self.asterisk_rtp, stats=self.stats
        )
        self.rtcp_in = InboundPath(
            send=self.pbx_rtcp.sendto, secure_peer=self.client_rtcp, plain_peer=self.asterisk_rtcp, stats=self.stats
        )
        self.rtp_out = OutboundPath(
            send=self.wan_rtp.sendto, secure_peer=self.client_rtp, plain_peer=self.asterisk_rtp, stats=self.stats
        )
        self.rtcp_out = OutboundPath(
            send=self.wan_rtcp.sendto, secure_peer=self.client_rtcp, plain_peer=self.asterisk_rtcp, stats=self.stats
        )

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The sockets this call owns (and watches)."""
        if self.shared_wan:
            return (self.pbx_rtp, self.pbx_rtcp)
        return (self.wan_rtp, self.wan_rtcp, self.pbx_rtp, self.pbx_rtcp)

    def install_keys(self, keys: CallKeys) -> None:
        unprotector = SrtpUnprotector(keys.profile, keys.client_to_server_srtp, keys.client_to_server_srtcp)
        # Asterisk's RTP leaves under our own SSRC and a growing index (stc_wire.translator).
        sender = SrtpSender(SrtpProtector(keys.profile, keys.server_to_client_srtp, keys.server_to_client_srtcp))
        self.rtp_in.unprotect = unprotector.unprotect_rtp
        self.rtcp_in.unprotect = unprotector.unprotect_rtcp
        self.rtp_out.protect = sender.protect_rtp
        self.rtcp_out.protect = sender.protect_rtcp


class MediaRelay:
    """All calls' media of one stc-server process, on the running event loop.

    `wan_ports` / `pbx_ports` restrict the ports used (a firewall range); by default the kernel's
    ephemeral ports are used. `batch_interval` (seconds, e.g. 0.001) trades up to that much
    added delay for far fewer wake-ups under load (see `stc_wire.readiness`); by default every datagram
    is relayed as soon as the loop sees it. `single_port`: every call's wan media on this one UDP
    port (0: one the kernel picks), demultiplexed by source (`stc_wire.demux`); None: a pair per
    call. Not thread-safe: call it from the loop's thread.
    """

    def __init__(
        self,
        *,
        wan_host: str,
        pbx_host: str = "127.0.0.1",
        wan_ports: range | None = None,
        pbx_ports: range | None = None,
        batch_interval: float | None = None,
        single_port: int | None = None,
    ) -> None:
        if single_port is not None and not 0 <= single_port < 65536:
            raise ValueError(f"bad single media port {single_port}")
        self.wan_host = wan_host
        self.pbx_host = pbx_host
        self._wan_ports = wan_ports
        self._pbx_ports = pbx_ports
        self._calls: dict[str, _Call] = {}
        self._closed_totals = RelayStats()
        self._readiness: _Readiness | None = None
        self._batch_interval = batch_interval
        self._single_port = single_port
        self._single: socket.socket | None = None  # bound at the first call
        self.demux: SourceDemux | None = SourceDemux() if single_port is not None else None

    async def open_call(self, call_tag: str, keys: CallKeys | None = None) -> CallMediaPorts:
        """Bind the call's four sockets and start relaying; keys now or by `install_keys`."""
        if call_tag in self._calls:
            raise ValueError(f"media call {call_tag!r} is already open")
        if self._readiness is None:
            self._readiness = _Readiness(asyncio.get_running_loop(), self._batch_interval)
        readiness = self._readiness
        if self.demux is not None:
            single = self._single_socket()
            wan = (single, single)
        else:
            wan = bind_udp_pair(self.wan_host, self._wan_ports)
        try:
            pbx = bind_udp_pair(self.pbx_host, self._pbx_ports)
        except OSError:
            if self.demux is None:
                for sock in wan:
                    sock.close()
            raise
        call = _Call(call_tag, wan, pbx, self.pbx_host, shared_wan=self.demux is not None)
        if keys is not None:
            call.install_keys(keys)
        if self.demux is not None:
            self.demux.add(call_tag, call.rtp_in, call.rtcp_in)
        else:
            readiness.add(call.wan_rtp, call.rtp_in.handle)
            readiness.add(call.wan_rtcp, call.rtcp_in.handle)
        readiness.add(call.pbx_rtp, call.rtp_out.handle)
        readiness.add(call.pbx_rtcp, call.rtcp_out.handle)
        self._calls[call_tag] = call
        ports = CallMediaPorts(
            wan_rtp_port=call.wan_rtp.getsockname()[1],
            wan_rtcp_port=call.wan_rtcp.getsockname()[1],
            pbx_rtp_port=call.pbx_rtp.getsockname()[1],
            pbx_rtcp_port=call.pbx_rtcp.getsockname()[1],
        )
        logger.info("call %s: media open %s", call_tag, ports)
        return ports

    def install_keys(self, call_tag: str, keys: CallKeys) -> None:
        """Key (or re-key) the call; until then its packets are dropped as unkeyed."""
        self._call(call_tag).install_keys(keys)
        logger.info("call %s: SRTP keys installed (%s)", call_tag, keys.profile.value)

    def set_asterisk_media(self, call_tag: str, host: str, rtp_port: int, rtcp_port: int) -> None:
        """Asterisk's RTP/RTCP address from its SDP: the only source accepted from now on."""
        call = self._call(call_tag)
        call.asterisk_rtp.set_from_sdp(host, rtp_port)
        call.asterisk_rtcp.set_from_sdp(host, rtcp_port)
        logger.info("call %s: Asterisk media at %s:%s/%s", call_tag, host, rtp_port, rtcp_port)

    def close_call(self, call_tag: str) -> None:
        """Free the call's sockets and SRTP sessions; closing an unknown call does nothing."""
        call = self._calls.pop(call_tag, None)
        if call is None:
            return
        if self.demux is not None:
            self.demux.remove(call_tag)
        for sock in call.sockets:
            if self._readiness is not None:
                self._readiness.remove(sock)
            sock.close()
        for path in (call.rtp_in, call.rtcp_in):
            path.unprotect = None
        for out in (call.rtp_out, call.rtcp_out):
            out.protect = None
        self._closed_totals.add(call.stats)
        logger.info("call %s: media closed %s", call_tag, call.stats)

    def stats(self, call_tag: str | None = None) -> RelayStats:
        """A copy of one call's counters, or the sum over every call this relay has carried."""
        if call_tag is not None:
            return self._call(call_tag).stats.copy()
        total = RelayStats.total(self._closed_totals, (call.stats for call in self._calls.values()))
        if self.demux is not None:  # single port: what belonged to no call (refused sources)
            total.add(self.demux.stats)
        return total

    @property
    def open_calls(self) -> int:
        return len(self._calls)

    @property
    def wakeups(self) -> int:
        """How many times the loop ran the relay's socket callback (for benchmarks)."""
        return 0 if self._readiness is None else self._readiness.wakeups

    def close(self) -> None:
        """Close every call and stop watching sockets."""
        for tag in list(self._calls):
            self.close_call(tag)
        if self._readiness is not None:
            if self._single is not None:
                self._readiness.remove(self._single)
            self._readiness.close()
            self._readiness = None
        if self._single is not None:
            self._single.close()
            self._single = None

    @property
    def single_port(self) -> int | None:
        """The wan port every call shares, once bound (None: a port pair per call)."""
        return None if self._single is None else int(self._single.getsockname()[1])

    def _single_socket(self) -> socket.socket:
        if self._single is None:
            assert self.demux is not None and self._readiness is not None and self._single_port is not None
            family = socket.AF_INET6 if ":" in self.wan_host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                # Every call's media queues here: room for bursts while the loop is busy.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((self.wan_host, self._single_port))
            except OSError:
                sock.close()
                raise
            sock.setblocking(False)
            self._single = sock
            # Every call's inbound media: drained until empty, not 16 at a time like a call's own sockets.
            self._readiness.add(sock, self.demux.handle, drain_limit=SHARED_DRAIN_LIMIT)
            logger.info("media: every call's SRTP/SRTCP on %s:%s", self.wan_host, sock.getsockname()[1])
        return self._single

    def _call(self, call_tag: str) -> _Call:
        try:
            return self._calls[call_tag]
        except KeyError:
            raise UnknownCall(call_tag) from None
