"""The stc-server's SRTP<->RTP media relay: SRTP with clients on the wan, plain RTP with Asterisk.

Per call: an even/odd wan port pair where the client sends SRTP/SRTCP, and an even/odd pbx port
pair that goes into the SDP given to Asterisk. The packet logic is `stc_wire.rtp`'s pure
`InboundPath`/`OutboundPath`; this module only moves datagrams.

Hot path: with a socket per flow at 50 packets a second, nearly every wake-up of the loop
carries one datagram per socket, and the stock asyncio loop spends about 18 us on each (a selector
event, a `Handle`, a transport, a protocol call: docs/libraries.md). So the relay's sockets are not
asyncio transports: they sit in one epoll set of our own, the loop watches only that epoll fd, and
one callback reads one datagram from every ready socket and runs it through its path, with no
per-datagram objects beyond the bytes. This works the same under asyncio and uvloop. Where
`select.epoll` is missing, each socket gets `loop.add_reader` (and no batching).
Measured figures and the `batch_interval` trade-off: docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass

from stc_wire.media_keys import CallKeys
from stc_wire.rtp import InboundPath, OutboundPath, PlainPeer, RelayStats, SecurePeer, bind_udp_pair
from stc_wire.srtp import SrtpProtector, SrtpUnprotector
from stc_wire.translator import SrtpSender

__all__ = ["CallMediaPorts", "MediaRelay", "UnknownCall"]

logger = logging.getLogger(__name__)

_RECV_SIZE = 2048  # above any RTP on an Ethernet path; libsrtp refuses more than 1500 anyway
_MAX_PASSES_PER_TICK = 8  # with batching: datagrams read per socket per tick, at most
Handler = Callable[[bytes, tuple[str, int]], None]


class UnknownCall(KeyError):
    """No open call has this tag."""

    def __str__(self) -> str:
        return f"no open media call {self.args[0]!r}"


@dataclass(frozen=True)
class CallMediaPorts:
    """Where one call's media goes. RTCP is always RTP + 1."""

    wan_rtp_port: int  # the client sends SRTP here (and SRTCP to wan_rtcp_port)
    wan_rtcp_port: int
    pbx_rtp_port: int  # the RTP port to put in the SDP given to Asterisk
    pbx_rtcp_port: int


class _Readiness:
    """Runs a socket's handler on one datagram each time the socket is readable.

    With `batch_interval` (seconds) the relay's sockets are not watched by the loop at all:
    a timer drains every ready socket once per interval. Each wake-up of a process costs far
    more than relaying one datagram (tens of microseconds on a VM), so this bounds wake-ups to
    1/interval a second whatever the load, and adds up to one interval of delay (asyncio and
    uvloop timers have millisecond resolution).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, batch_interval: float | None = None) -> None:
        self._loop = loop
        self._table: dict[int, tuple[Callable[[int], tuple[bytes, tuple[str, int]]], Handler]] = {}
        self.wakeups = 0  # loop callbacks run: datagrams / wakeups is the batching achieved
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._interval = batch_interval
        self._timer: asyncio.TimerHandle | None = None
        if self._epoll is not None:
            if batch_interval is None:
                loop.add_reader(self._epoll.fileno(), self._dispatch)
            else:
                self._timer = loop.call_later(batch_interval, self._tick)

    def add(self, sock: socket.socket, handler: Handler) -> None:
        fd = sock.fileno()
        self._table[fd] = (sock.recvfrom, handler)
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            self._loop.add_reader(fd, self._read_one, fd)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._table.pop(fd, None) is None:
            return
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            self._loop.remove_reader(fd)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._epoll is not None:
            if self._interval is None:
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        else:
            for fd in self._table:
                self._loop.remove_reader(fd)
        self._table.clear()

    def _dispatch(self) -> int:
        """One datagram from every ready socket; returns how many sockets were ready.

        Level-triggered: a socket with more datagrams queued is reported again next time, so
        reading one each keeps every call served in turn.
        """
        table = self._table
        self.wakeups += 1
        events = self._epoll.poll(0)  # type: ignore[union-attr]
        for fd, _ in events:
            entry = table.get(fd)
            if entry is None:
                continue
            recvfrom, handler = entry
            try:
                data, source = recvfrom(_RECV_SIZE)
            except OSError:  # spurious wake-up, or an ICMP error queued on the socket
                continue
            try:
                handler(data, source)
            except Exception:  # a bug must not stop every other call's media
                logger.exception("media handler failed")
        return len(events)

    def _tick(self) -> None:
        assert self._interval is not None
        self._timer = self._loop.call_later(self._interval, self._tick)
        wakeups = self.wakeups
        for _ in range(_MAX_PASSES_PER_TICK):  # a socket may hold several datagrams by now
            if not self._dispatch():
                break
        self.wakeups = wakeups + 1  # one wake-up, however many passes

    def _read_one(self, fd: int) -> None:
        entry = self._table.get(fd)
        if entry is None:
            return
        recvfrom, handler = entry
        try:
            data, source = recvfrom(_RECV_SIZE)
        except OSError:
            return
        handler(data, source)


class _Call:
    """Sockets, peers and paths of one call."""

    def __init__(
        self,
        tag: str,
        wan: tuple[socket.socket, socket.socket],
        pbx: tuple[socket.socket, socket.socket],
        pbx_host: str,
    ) -> None:
        self.tag = tag
        self.wan_rtp, self.wan_rtcp = wan
        self.pbx_rtp, self.pbx_rtcp = pbx
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
    added delay for far fewer wake-ups under load (see `_Readiness`); by default every datagram
    is relayed as soon as the loop sees it. Not thread-safe: call it from the loop's thread.
    """

    def __init__(
        self,
        *,
        wan_host: str,
        pbx_host: str = "127.0.0.1",
        wan_ports: range | None = None,
        pbx_ports: range | None = None,
        batch_interval: float | None = None,
    ) -> None:
        self.wan_host = wan_host
        self.pbx_host = pbx_host
        self._wan_ports = wan_ports
        self._pbx_ports = pbx_ports
        self._calls: dict[str, _Call] = {}
        self._closed_totals = RelayStats()
        self._readiness: _Readiness | None = None
        self._batch_interval = batch_interval

    async def open_call(self, call_tag: str, keys: CallKeys | None = None) -> CallMediaPorts:
        """Bind the call's four sockets and start relaying; keys now or by `install_keys`."""
        if call_tag in self._calls:
            raise ValueError(f"media call {call_tag!r} is already open")
        if self._readiness is None:
            self._readiness = _Readiness(asyncio.get_running_loop(), self._batch_interval)
        wan = bind_udp_pair(self.wan_host, self._wan_ports)
        try:
            pbx = bind_udp_pair(self.pbx_host, self._pbx_ports)
        except OSError:
            for sock in wan:
                sock.close()
            raise
        call = _Call(call_tag, wan, pbx, self.pbx_host)
        if keys is not None:
            call.install_keys(keys)
        readiness = self._readiness
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
        return RelayStats.total(self._closed_totals, (call.stats for call in self._calls.values()))

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
            self._readiness.close()
            self._readiness = None

    def _call(self, call_tag: str) -> _Call:
        try:
            return self._calls[call_tag]
        except KeyError:
            raise UnknownCall(call_tag) from None
