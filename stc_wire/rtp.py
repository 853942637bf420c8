"""The media path core both relays share, and its small helpers.

An `InboundPath` takes SRTP (or SRTCP) from the network and hands plain RTP to the local peer;
an `OutboundPath` does the reverse. Both are pure: fed `handle(datagram, source)` by a socket
shell, they call `send(packet, address)` and count every drop in a `RelayStats`. They never look
into RTP payloads (any codec passes); libsrtp checks the headers itself.
`bind_udp_pair` is the one helper here that touches the OS (it binds, it does no I/O).
"""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields

from stc_wire.srtp import DropReason, SrtpDropped

__all__ = [
    "Address",
    "InboundPath",
    "OutboundPath",
    "PlainPeer",
    "RelayStats",
    "SecurePeer",
    "bind_udp_pair",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]
Send = Callable[[bytes, Address], object]  # raises OSError when the OS refuses
Transform = Callable[[bytes], bytes]  # raises SrtpDropped


@dataclass(slots=True)
class RelayStats:
    """Counters of one call's media path (or the sum over calls).

    "Inbound" is SRTP/SRTCP from the network that authenticated and went on in plain to the local
    side (Asterisk on the server, the softphone on the client); "outbound" is plain RTP/RTCP from
    the local side that was protected and sent to the network. Bytes are SRTP (wire) sizes.
    """

    inbound_packets: int = 0
    inbound_bytes: int = 0
    outbound_packets: int = 0
    outbound_bytes: int = 0
    auth_drops: int = 0  # SRTP authentication failed: forged, corrupted or wrong keys
    replay_drops: int = 0  # SRTP index seen before or older than the replay window
    malformed_drops: int = 0  # libsrtp refused it otherwise (short, oversize, not RTP)
    unknown_source_drops: int = 0  # plain packet from an address that is not the local peer
    no_destination_drops: int = 0  # nowhere to send it yet (peer address not known)
    unkeyed_drops: int = 0  # arrived before the call's keys were installed
    send_errors: int = 0  # the OS refused to send (counted, packet lost)
    keepalives: int = 0  # authenticated latch keep-alives (not forwarded)
    repeats_refused: int = 0  # outbound: libsrtp refused an index already used (never sent)

    def count_drop(self, reason: DropReason) -> None:
        if reason is DropReason.AUTH:
            self.auth_drops += 1
        elif reason is DropReason.REPLAY:
            self.replay_drops += 1
        else:
            self.malformed_drops += 1

    def copy(self) -> RelayStats:
        return RelayStats(*(getattr(self, f.name) for f in fields(self)))

    def add(self, other: RelayStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @classmethod
    def total(cls, closed: RelayStats, open_calls: Iterable[RelayStats]) -> RelayStats:
        """The counters of calls already closed plus those still open, as a new value."""
        total = closed.copy()
        for stats in open_calls:
            total.add(stats)
        return total

    @property
    def drops(self) -> int:
        return (
            self.auth_drops
            + self.replay_drops
            + self.malformed_drops
            + self.unknown_source_drops
            + self.no_destination_drops
            + self.unkeyed_drops
            + self.repeats_refused
        )


class PlainPeer:
    """Where the plain RTP (or RTCP) peer is: given by its SDP, or latched from its first packet.

    Until an SDP address is set, the first packet from `host` (any port) latches its source, as
    for a peer that does symmetric RTP. An SDP address replaces whatever was latched. After that,
    packets from any other address are refused.
    """

    __slots__ = ("host", "address", "from_sdp")

    def __init__(self, host: str) -> None:
        self.host = host
        self.address: Address | None = None
        self.from_sdp = False

    def set_from_sdp(self, host: str, port: int) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"bad media port {port}")
        self.address = (host, port)
        self.from_sdp = True

    def accepts(self, source: Address) -> bool:
        """True if `source` is the peer; latches it if no peer is known yet."""
        address = self.address
        if source == address:
            return True
        source = source[:2]  # IPv6 sources carry flow info and scope id as well
        if source == address:
            return True
        if address is None and source[0] == self.host:
            self.address = source
            return True
        return False


class SecurePeer:
    """The network side's address for RTP (or RTCP) of one call.

    `latching=True` (server): the address follows the source of the latest packet that
    authenticated, so a client behind NAT is found and a NAT rebinding is followed; a replayed or
    forged packet from elsewhere fails SRTP and moves nothing. `latching=False` (client): fixed to
    the server's address, and packets from any other source are dropped before any crypto.
    """

    __slots__ = ("address", "latching", "label")

    def __init__(self, *, latching: bool, label: str, address: Address | None = None) -> None:
        self.address = address
        self.latching = latching
        self.label = label


class InboundPath:
    """SRTP or SRTCP from the network, verified, then plain to the local peer."""

    __slots__ = ("unprotect", "send", "secure_peer", "plain_peer", "stats")

    def __init__(
        self, *, send: Send, secure_peer: SecurePeer, plain_peer: PlainPeer, stats: RelayStats
    ) -> None:
        self.unprotect: Transform | None = None  # set when the call's keys arrive
        self.send = send
        self.secure_peer = secure_peer
        self.plain_peer = plain_peer
        self.stats = stats

    def handle(self, data: bytes, source: Address) -> None:
        stats = self.stats
        unprotect = self.unprotect
        if unprotect is None:
            stats.unkeyed_drops += 1
            return
        secure = self.secure_peer
        if source != secure.address and not secure.latching:
            stats.unknown_source_drops += 1
            return
        try:
            plain = unprotect(data)
        except SrtpDropped as drop:
            stats.count_drop(drop.reason)
            return
        self.deliver(plain, len(data), source)

    def deliver(self, plain: bytes, wire_size: int, source: Address) -> None:
        """The rest of `handle` once `plain` has authenticated (from `source`, `wire_size` bytes
        of SRTP): follow the source, swallow keep-alives, send on to the local peer."""
        stats = self.stats
        secure = self.secure_peer
        if source != secure.address:
            logger.info("%s now at %s:%s", secure.label, source[0], source[1])
            secure.address = source
        if len(plain) == 12 and is_latch_keepalive(plain):  # length first: cheap on the hot path
            stats.keepalives += 1  # it did its job (latching); Asterisk never sees it
            return
        destination = self.plain_peer.address
        if destination is None:
            stats.no_destination_drops += 1
            return
        try:
            self.send(plain, destination)
        except OSError:
            stats.send_errors += 1
            return
        stats.inbound_packets += 1
        stats.inbound_bytes += wire_size


class OutboundPath:
    """Plain RTP or RTCP from the local peer, protected, then to the network peer."""

    __slots__ = ("protect", "send", "secure_peer", "plain_peer", "stats")

    def __init__(
        self, *, send: Send, secure_peer: SecurePeer, plain_peer: PlainPeer, stats: RelayStats
    ) -> None:
        self.protect: Transform | None = None  # set when the call's keys arrive
        self.send = send
        self.secure_peer = secure_peer
        self.plain_peer = plain_peer
        self.stats = stats

    def handle(self, data: bytes, source: Address) -> None:
        stats = self.stats
        if not self.plain_peer.accepts(source):
            stats.unknown_source_drops += 1
            return
        protect = self.protect
        if protect is None:
            stats.unkeyed_drops += 1
            return
        destination = self.secure_peer.address
        if destination is None:
            stats.no_destination_drops += 1
            return
        try:
            packet = protect(data)
        except SrtpDropped as drop:
            if drop.reason is DropReason.REPLAY:  # a keystream would have been reused
                stats.repeats_refused += 1
            else:
                stats.count_drop(drop.reason)
            return
        try:
            self.send(packet, destination)
        except OSError:
            stats.send_errors += 1
            return
        stats.outbound_packets += 1
        stats.outbound_bytes += len(packet)


# A client sends this (as SRTP) when a call is keyed and while its softphone is silent, so the
# server latches the client's media address (NAT) before the client has anything to say:
# an RTP header with payload type 127 and no payload, never forwarded to Asterisk.
LATCH_KEEPALIVE_PT = 127


def latch_keepalive(ssrc: int, seq: int, timestamp: int = 0) -> bytes:
    return bytes([0x80, LATCH_KEEPALIVE_PT]) + (seq & 0xFFFF).to_bytes(2, "big") + \
        (timestamp & 0xFFFFFFFF).to_bytes(4, "big") + (ssrc & 0xFFFFFFFF).to_bytes(4, "big")


def is_latch_keepalive(packet: bytes) -> bool:
    return len(packet) == 12 and (packet[1] & 0x7F) == LATCH_KEEPALIVE_PT


def empty_receiver_report(ssrc: int) -> bytes:
    """RTCP RR with no report blocks (RFC 3550 6.4.2): latches the RTCP path, harmless to Asterisk."""
    return b"\x80\xc9\x00\x01" + (ssrc & 0xFFFFFFFF).to_bytes(4, "big")


def bind_udp_pair(
    host: str, ports: range | None = None, *, attempts: int = 64
) -> tuple[socket.socket, socket.socket]:
    """Two non-blocking UDP sockets on `host`: RTP on an even port, RTCP on the next one.

    Without `ports`, the kernel picks an ephemeral port and its even/odd neighbour is tried;
    with `ports`, even ports in the range are tried from a random start. OSError if no pair is
    free after `attempts` tries.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if ports is not None:
        evens = [p for p in range(ports.start + ports.start % 2, ports.stop - 1, 2) if p > 0]
        if not evens:
            raise ValueError(f"port range {ports} holds no even/odd pair")
        start = random.randrange(len(evens))
        candidates = [evens[(start + i) % len(evens)] for i in range(min(attempts, len(evens)))]
    for attempt in range(attempts if ports is None else len(candidates)):
        first = socket.socket(family, socket.SOCK_DGRAM)
        second = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if ports is None:
                first.bind((host, 0))
                port = first.getsockname()[1]
                second.bind((host, port ^ 1))  # the even/odd neighbour
                rtp, rtcp = (first, second) if port % 2 == 0 else (second, first)
            else:
                first.bind((host, candidates[attempt]))
                second.bind((host, candidates[attempt] + 1))
                rtp, rtcp = first, second
        except OSError:
            first.close()
            second.close()
            continue
        rtp.setblocking(False)
        rtcp.setblocking(False)
        return rtp, rtcp
    raise OSError(f"no free even/odd UDP port pair on {host} after {attempts} tries")
