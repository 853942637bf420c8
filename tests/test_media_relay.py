"""Client media and server relay on loopback with real UDP sockets, in one event loop.

softphone <-> ClientMedia <-> WireTap <-> MediaRelay <-> fake Asterisk

The tap sits on the wire between client and server: it records every SRTP packet and can alter,
replay or re-route them, as an attacker on the network (or a NAT) would. Besides the media, the
client sends latch keep-alives once keyed (a 12-byte RTP header the server swallows, and an empty
RTCP receiver report that goes on to Asterisk); `media_only` and `recv_media` skip them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from stc_asterisk.media import MediaRelay, UnknownCall
from stc_client.media import ClientMedia
from stc_wire.media_keys import CallKeys, KeyAgreement, Side
from stc_wire.rtp import RelayStats, bind_udp_pair
from stc_wire.readiness import DRAIN_LIMIT
from stc_wire.srtp import SrtpDropped, SrtpProfile, SrtpProtector, SrtpUnprotector

HOST = "127.0.0.1"
WAIT = 2.0  # seconds any single expected packet or counter may take on a busy 2-core box


def rtp_packet(seq: int, *, payload_type: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq, seq * 160, ssrc) + payload


def rtcp_receiver_report(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)  # RR with no report blocks


def call_keys(profile: SrtpProfile, call_id: str = "call-1@test") -> CallKeys:
    client, server = KeyAgreement(Side.CLIENT), KeyAgreement(Side.SERVER)
    keys = client.derive(server.public_bytes, call_id=call_id, stream_id="1", profile=profile)
    assert keys == server.derive(client.public_bytes, call_id=call_id, stream_id="1", profile=profile)
    return keys


async def recv(sock: socket.socket) -> tuple[bytes, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 4096), WAIT)


async def recv_media(sock: socket.socket) -> bytes:
    """The next datagram that is not an empty RTCP receiver report (a latch keep-alive)."""
    for _ in range(20):
        data, _ = await recv(sock)
        if len(data) != 8:
            return data
    raise AssertionError("only keep-alives arrived")


def media_only(srtp_packets: list[bytes]) -> list[bytes]:
    """Drop keep-alives (12-byte RTP or 8-byte RTCP before the SRTP trailer) from a capture."""
    return [packet for packet in srtp_packets if len(packet) > 100]


def seq_of(packet: bytes) -> int:
    return struct.unpack("!H", packet[2:4])[0]


def assert_translated(got: list[bytes], sent: list[bytes]) -> None:
    """The relay is an RTP translator: same payload type and payload, its own SSRC and a
    sequence that goes on one by one (stc_wire.translator)."""
    assert len(got) == len(sent)
    for g, p in zip(got, sent):
        assert (g[0], g[1] & 0x7F, g[12:]) == (p[0], p[1] & 0x7F, p[12:])
    assert len({g[8:12] for g in got}) == 1 and got[0][8:12] != sent[0][8:12]
    assert [(seq_of(g) - seq_of(got[0])) % 65536 for g in got] == list(range(len(got)))


async def nothing_arrives(sock: socket.socket, within: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 4096), within)
    except asyncio.TimeoutError:
        return True
    return False


async def nothing_arrives_into(sock: socket.socket, received: list[bytes], within: float) -> bool:
    """Wait for one datagram (appended to `received`); True if none came within `within`."""
    try:
        data, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(sock, 4096), within)
    except asyncio.TimeoutError:
        return True
    received.append(data)
    return False


async def until(predicate: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


class _TapSide(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, addr)


@dataclass
class WireTap:
    """One UDP flow (RTP or RTCP) between client and server, recorded and steerable."""

    server_address: tuple[str, int]
    to_server: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    tamper: Callable[[bytes], bytes] | None = None  # applied once to the next client->server media
    client_address: tuple[str, int] | None = None
    client_side: asyncio.DatagramTransport | None = None
    server_side: asyncio.DatagramTransport | None = None
    server_sides: list[asyncio.DatagramTransport] = field(default_factory=list)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.client_side, _ = await loop.create_datagram_endpoint(
            lambda: _TapSide(self._from_client), local_addr=(HOST, 0)
        )
        await self.new_server_side()
        return int(self.client_side.get_extra_info("sockname")[1])

    async def new_server_side(self) -> tuple[str, int]:
        """Talk to the server from a new source port from now on, as after a NAT rebinding."""
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _TapSide(self._from_server), local_addr=(HOST, 0)
        )
        self.server_side = transport
        self.server_sides.append(transport)
        return transport.get_extra_info("sockname")  # type: ignore[no-any-return]

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client_address = addr
        self.to_server.append(data)
        if self.tamper is not None and len(data) > 100:  # the next media packet, not a keep-alive
            data, self.tamper = self.tamper(data), None
        assert self.server_side is not None
        self.server_side.sendto(data, self.server_address)

    def _from_server(self, data: bytes, addr: tuple[str, int]) -> None:
        self.to_client.append(data)
        if self.client_address is not None and self.client_side is not None:
            self.client_side.sendto(data, self.client_address)

    def inject_to_server(self, data: bytes) -> None:
        assert self.server_side is not None
        self.server_side.sendto(data, self.server_address)

    def inject_to_client(self, data: bytes) -> None:
        assert self.client_side is not None and self.client_address is not None
        self.client_side.sendto(data, self.client_address)

    def close(self) -> None:
        for transport in [self.client_side, *self.server_sides]:
            if transport is not None:
                transport.close()


@dataclass
class Rig:
    relay: MediaRelay
    client: ClientMedia
    keys: CallKeys
    softphone_rtp: socket.socket
    softphone_rtcp: socket.socket
    asterisk_rtp: socket.socket
    asterisk_rtcp: socket.socket
    tap_rtp: WireTap
    tap_rtcp: WireTap
    softphone_ports: tuple[int, int]
    pbx_ports: tuple[int, int]
    wan_ports: tuple[int, int]

    def server_stats(self) -> RelayStats:
        return self.relay.stats("c1")

    def client_stats(self) -> RelayStats:
        return self.client.stats("c1")

    async def softphone_says(self, seq: int, payload_type: int = 0) -> tuple[bytes, bytes]:
        """RTP from the softphone; returns (sent, what Asterisk received)."""
        packet = rtp_packet(seq, payload_type=payload_type, ssrc=0x11111111, payload=os.urandom(160))
        self.softphone_rtp.sendto(packet, (HOST, self.softphone_ports[0]))
        data, _ = await recv(self.asterisk_rtp)
        return packet, data

    async def asterisk_says(self, seq: int, payload_type: int = 0) -> tuple[bytes, bytes]:
        packet = rtp_packet(seq, payload_type=payload_type, ssrc=0x22222222, payload=os.urandom(160))
        self.asterisk_rtp.sendto(packet, (HOST, self.pbx_ports[0]))
        data, _ = await recv(self.softphone_rtp)
        return packet, data


@asynccontextmanager
async def rig(
    profile: SrtpProfile = SrtpProfile.AES_CM_128_HMAC_SHA1_80, batch_interval: float | None = None,
    client_readiness: bool | None = None, single_port: int | None = None,
) -> AsyncIterator[Rig]:
    keys = call_keys(profile)
    relay = MediaRelay(wan_host=HOST, pbx_host=HOST, batch_interval=batch_interval, single_port=single_port)
    client = ClientMedia(HOST, wan_bind_host=HOST, readiness=client_readiness)
    softphone_rtp, softphone_rtcp = bind_udp_pair(HOST)
    asterisk_rtp, asterisk_rtcp = bind_udp_pair(HOST)
    taps: list[WireTap] = []
    try:
        ports = await relay.open_call("c1", keys)
        relay.set_asterisk_media("c1", HOST, asterisk_rtp.getsockname()[1], asterisk_rtcp.getsockname()[1])
        tap_rtp = WireTap((HOST, ports.wan_rtp_port))
        tap_rtcp = WireTap((HOST, ports.wan_rtcp_port))
        taps += [tap_rtp, tap_rtcp]
        tap_rtp_port, tap_rtcp_port = await tap_rtp.start(), await tap_rtcp.start()
        local = await client.open_call("c1")
        client.install_keys("c1", keys, tap_rtp_port, tap_rtcp_port)
        yield Rig(
            relay=relay,
            client=client,
            keys=keys,
            softphone_rtp=softphone_rtp,
            softphone_rtcp=softphone_rtcp,
            asterisk_rtp=asterisk_rtp,
            asterisk_rtcp=asterisk_rtcp,
            tap_rtp=tap_rtp,
            tap_rtcp=tap_rtcp,
            softphone_ports=(local.softphone_rtp_port, local.softphone_rtcp_port),
            pbx_ports=(ports.pbx_rtp_port, ports.pbx_rtcp_port),
            wan_ports=(ports.wan_rtp_port, ports.wan_rtcp_port),
        )
    finally:
        relay.close()
        client.close()
        for tap in taps:
            tap.close()
        for sock in (softphone_rtp, softphone_rtcp, asterisk_rtp, asterisk_rtcp):
            sock.close()


@pytest.mark.parametrize("profile", list(SrtpProfile))
async def test_rtp_both_ways_arrives_intact_and_is_encrypted_on_the_wire(profile: SrtpProfile) -> None:
    async with rig(profile) as r:
        assert r.pbx_ports[0] % 2 == 0 and r.pbx_ports[1] == r.pbx_ports[0] + 1
        assert r.wan_ports[0] % 2 == 0 and r.wan_ports[1] == r.wan_ports[0] + 1
        assert r.softphone_ports[0] % 2 == 0 and r.softphone_ports[1] == r.softphone_ports[0] + 1

        sent_up, got_up = [], []
        sent_down, got_down = [], []
        for seq, payload_type in zip(range(1, 7), [0, 8, 0, 8, 0, 8]):  # PCMU and PCMA
            sent, got = await r.softphone_says(seq, payload_type)
            sent_up.append(sent)
            got_up.append(got)
            sent, got = await r.asterisk_says(seq, payload_type)
            sent_down.append(sent)
            got_down.append(got)
        assert_translated(got_up, sent_up)
        assert_translated(got_down, sent_down)

        up_wire, down_wire = media_only(r.tap_rtp.to_server), r.tap_rtp.to_client
        assert len(up_wire) == 6 and len(down_wire) == 6
        other = call_keys(profile, call_id="another-call@test")
        eavesdropper_up = SrtpUnprotector(profile, other.client_to_server_srtp, other.client_to_server_srtcp)
        eavesdropper_down = SrtpUnprotector(profile, other.server_to_client_srtp, other.server_to_client_srtcp)
        for plain, got, secure in zip(sent_up + sent_down, got_up + got_down, up_wire + down_wire):
            assert secure != plain
            assert plain[12:] not in secure  # the payload is not carried in clear
            assert secure[:12] == got[:12]  # SRTP keeps the (translated) RTP header readable
        for secure in up_wire:
            with pytest.raises(SrtpDropped) as dropped:
                eavesdropper_up.unprotect_rtp(secure)
            assert dropped.value.reason.value == "auth"
        for secure in down_wire:
            with pytest.raises(SrtpDropped):
                eavesdropper_down.unprotect_rtp(secure)

        # Keep-alives are swallowed by the server (RTP) or passed on (the empty RTCP report).
        def counted() -> bool:
            server = r.server_stats()
            rtcp_up = r.tap_rtcp.to_server
            return (
                server.keepalives == len(r.tap_rtp.to_server) - 6
                and server.inbound_packets == 6 + len(rtcp_up)
                and server.inbound_bytes == sum(map(len, up_wire)) + sum(map(len, rtcp_up))
            )

        await until(counted)
        server, client = r.server_stats(), r.client_stats()
        assert server.keepalives >= 1
        assert server.outbound_packets == 6
        assert (client.inbound_packets, client.outbound_packets) == (6, 6)
        assert server.drops == 0 and client.drops == 0


async def test_rtcp_both_ways() -> None:
    async with rig() as r:
        up = rtcp_receiver_report(0x11111111)
        up = up + b"\x81\xca\x00\x02" + struct.pack("!I", 0x11111111) + b"\x01\x02ab"  # + SDES CNAME
        r.softphone_rtcp.sendto(up, (HOST, r.softphone_ports[1]))
        got_up = await recv_media(r.asterisk_rtcp)
        assert got_up == up.replace(struct.pack("!I", 0x11111111), got_up[4:8])  # our SSRC, all else as sent
        down = rtcp_receiver_report(0x22222222)
        r.asterisk_rtcp.sendto(down, (HOST, r.pbx_ports[1]))
        got_down = (await recv(r.softphone_rtcp))[0]
        assert got_down == down.replace(struct.pack("!I", 0x22222222), got_down[4:8])
        assert r.tap_rtcp.to_server[-1][:8] == got_up[:8] and r.tap_rtcp.to_server[-1][8:] != got_up[8:]
        assert r.tap_rtcp.to_client[0] != down
        # SRTCP is keyed apart from SRTP: the RTP key does not open it.
        rtp_key_only = SrtpUnprotector(r.keys.profile, r.keys.client_to_server_srtp, r.keys.client_to_server_srtp)
        with pytest.raises(SrtpDropped):
            rtp_key_only.unprotect_rtcp(r.tap_rtcp.to_server[0])
        assert r.server_stats().outbound_packets == 1 and r.client_stats().outbound_packets == 1


async def test_client_keepalive_latches_before_the_softphone_speaks() -> None:
    """Asterisk's media is dropped until the client is latched; the keyed client's keep-alive
    latches it, so Asterisk reaches a softphone that has not sent anything yet."""
    keys = call_keys(SrtpProfile.AES_CM_128_HMAC_SHA1_80)
    relay = MediaRelay(wan_host=HOST, pbx_host=HOST)
    client = ClientMedia(HOST, wan_bind_host=HOST)
    softphone_rtp, softphone_rtcp = bind_udp_pair(HOST)
    asterisk_rtp, asterisk_rtcp = bind_udp_pair(HOST)
    try:
        ports = await relay.open_call("c1", keys)
        relay.set_asterisk_media("c1", HOST, asterisk_rtp.getsockname()[1], asterisk_rtcp.getsockname()[1])
        packet = rtp_packet(1, payload_type=8, ssrc=5, payload=os.urandom(160))
        asterisk_rtp.sendto(packet, (HOST, ports.pbx_rtp_port))
        await until(lambda: relay.stats("c1").no_destination_drops == 1)

        local = await client.open_call("c1")
        client.set_softphone_media("c1", HOST, softphone_rtp.getsockname()[1], softphone_rtcp.getsockname()[1])
        client.install_keys("c1", keys, ports.wan_rtp_port, ports.wan_rtcp_port)
        await until(lambda: relay.stats("c1").keepalives >= 1)
        assert await nothing_arrives(asterisk_rtp, 0.05)  # the RTP keep-alive stops at the server

        packet = rtp_packet(2, payload_type=8, ssrc=5, payload=os.urandom(160))
        asterisk_rtp.sendto(packet, (HOST, ports.pbx_rtp_port))
        assert (await recv(softphone_rtp))[0][12:] == packet[12:]
        assert client.stats("c1").outbound_packets == 0 and local.softphone_rtp_port % 2 == 0
    finally:
        relay.close()
        client.close()
        for sock in (softphone_rtp, softphone_rtcp, asterisk_rtp, asterisk_rtcp):
            sock.close()


async def test_flipped_byte_is_dropped_as_auth_failure() -> None:
    async with rig() as r:
        _, first = await r.softphone_says(1)
        r.tap_rtp.tamper = lambda packet: packet[:40] + bytes([packet[40] ^ 0x01]) + packet[41:]
        packet = rtp_packet(2, payload_type=0, ssrc=0x11111111, payload=bytes(160))
        r.softphone_rtp.sendto(packet, (HOST, r.softphone_ports[0]))
        await until(lambda: r.server_stats().auth_drops == 1)
        assert await nothing_arrives(r.asterisk_rtp)
        _, got = await r.softphone_says(3)  # the flow goes on
        assert (seq_of(got) - seq_of(first)) % 65536 == 2  # the tampered packet's index was used, not reused
        assert r.server_stats().replay_drops == 0

        # Downstream too: the client refuses a corrupted packet from the server.
        await r.asterisk_says(1)
        genuine = r.tap_rtp.to_client[-1]
        r.asterisk_rtp.sendto(rtp_packet(2, payload_type=0, ssrc=0x22222222, payload=bytes(160)), (HOST, r.pbx_ports[0]))
        await until(lambda: len(r.tap_rtp.to_client) == 2)
        assert await recv(r.softphone_rtp)
        forged = genuine[:-1] + bytes([genuine[-1] ^ 0x80])
        unseen = struct.pack("!H", (seq_of(genuine) + 7) % 65536)
        forged = forged[:2] + unseen + forged[4:]  # an unseen index, so auth is what fails
        r.tap_rtp.inject_to_client(forged)
        await until(lambda: r.client_stats().auth_drops == 1)
        assert await nothing_arrives(r.softphone_rtp)


async def test_resent_old_packet_is_dropped_as_replay() -> None:
    async with rig() as r:
        for seq in (1, 2, 3):
            await r.softphone_says(seq)
        r.tap_rtp.inject_to_server(media_only(r.tap_rtp.to_server)[0])
        await until(lambda: r.server_stats().replay_drops == 1)
        assert await nothing_arrives(r.asterisk_rtp)
        assert r.server_stats().auth_drops == 0

        await r.asterisk_says(1)
        r.tap_rtp.inject_to_client(r.tap_rtp.to_client[0])
        await until(lambda: r.client_stats().replay_drops == 1)
        assert await nothing_arrives(r.softphone_rtp)


async def test_client_address_follows_authentic_packets_only() -> None:
    async with rig() as r:
        _, first_up = await r.softphone_says(1)
        first_side = r.tap_rtp.server_side
        assert first_side is not None

        # A stranger's packet (not authentic) from a new address moves nothing.
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind((HOST, 0))
        stranger.setblocking(False)
        try:
            forged = media_only(r.tap_rtp.to_server)[0]
            ahead = [struct.pack("!H", (seq_of(forged) + n) % 65536) for n in (5, 6)]
            stranger.sendto(forged[:2] + ahead[0] + forged[4:12] + os.urandom(170), (HOST, r.wan_ports[0]))
            stranger.sendto(forged[:2] + ahead[1] + forged[4:], (HOST, r.wan_ports[0]))
            await until(lambda: r.server_stats().auth_drops == 2)
            _, first_down = await r.asterisk_says(1)  # still reaches the client through the first address
            assert await nothing_arrives(stranger, 0.05)
        finally:
            stranger.close()

        # The client's NAT mapping changes: an authentic packet from the new address re-latches.
        new_address = await r.tap_rtp.new_server_side()
        _, got = await r.softphone_says(2)
        assert seq_of(got) == (seq_of(first_up) + 1) % 65536
        before = len(r.tap_rtp.to_client)
        _, got = await r.asterisk_says(2)
        assert seq_of(got) == (seq_of(first_down) + 1) % 65536
        assert len(r.tap_rtp.to_client) == before + 1
        assert r.relay._calls["c1"].client_rtp.address == new_address  # noqa: SLF001


async def test_single_port_relays_both_ways_refuses_strangers_and_follows_a_rebinding() -> None:
    """Every call's SRTP/SRTCP on one wan port (0: the kernel picks it): the call's source is bound
    by its first authentic packet, a stranger's packets are refused and counted, and an authentic
    packet from a new address (a NAT rebinding) re-latches the call."""
    async with rig(single_port=0) as r:
        port = r.relay.single_port
        assert port is not None and r.wan_ports == (port, port)
        other = await r.relay.open_call("c2", call_keys(SrtpProfile.AES_CM_128_HMAC_SHA1_80, call_id="other@test"))
        assert (other.wan_rtp_port, other.wan_rtcp_port) == (port, port)  # one port for every call
        sent, got = await r.softphone_says(1)
        assert_translated([got], [sent])
        sent, got = await r.asterisk_says(1)
        assert_translated([got], [sent])
        report = rtcp_receiver_report(0x11111111) + b"\x81\xca\x00\x02" + struct.pack("!I", 0x11111111) + b"\x01\x02ab"
        r.softphone_rtcp.sendto(report, (HOST, r.softphone_ports[1]))
        assert len(await recv_media(r.asterisk_rtcp)) == len(report)  # SRTCP on the same port, by packet type

        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind((HOST, 0))
        stranger.setblocking(False)
        try:
            genuine = media_only(r.tap_rtp.to_server)[0]
            stranger.sendto(genuine, (HOST, port))  # a replay from elsewhere
            stranger.sendto(genuine[:20] + os.urandom(len(genuine) - 20), (HOST, port))  # a forgery
            await until(lambda: r.relay.stats().unknown_source_drops == 2)
            _, got = await r.asterisk_says(2)  # still reaches the client at its own address
            assert await nothing_arrives(stranger, 0.05)
        finally:
            stranger.close()

        new_address = await r.tap_rtp.new_server_side()
        sent, got = await r.softphone_says(2)
        assert got[12:] == sent[12:]
        before = len(r.tap_rtp.to_client)
        await r.asterisk_says(3)
        assert len(r.tap_rtp.to_client) == before + 1  # sent to the new address
        assert r.relay._calls["c1"].client_rtp.address == new_address  # noqa: SLF001
        assert r.server_stats().drops == 0 and r.relay.stats("c2").inbound_packets == 0
    assert r.relay.single_port is None  # closed with the relay


async def test_the_single_port_is_drained_in_one_wakeup_beyond_a_call_sockets_limit() -> None:
    """The single port holds every call's inbound media: one wake-up reads all of it, not the
    DRAIN_LIMIT a call's own socket gets (else, with many calls, it falls behind and overflows)."""
    async with rig(single_port=0) as r:
        port = r.relay.single_port
        assert port is not None
        await r.softphone_says(1)
        readiness = r.relay._readiness  # noqa: SLF001
        assert readiness is not None and readiness._epoll is not None  # noqa: SLF001
        loop = asyncio.get_running_loop()
        loop.remove_reader(readiness._epoll.fileno())  # noqa: SLF001 - no loop wake-ups: one dispatch by hand
        protect = SrtpProtector(r.keys.profile, r.keys.client_to_server_srtp, r.keys.client_to_server_srtcp).protect_rtp
        count = 4 * DRAIN_LIMIT
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind((HOST, 0))  # an authentic source the relay re-latches to (as after a NAT rebinding)
        try:
            for seq in range(100, 100 + count):
                sender.sendto(protect(rtp_packet(seq, payload_type=8, ssrc=0x33333333, payload=os.urandom(160))),
                              (HOST, port))
            await asyncio.sleep(0.2)  # all queued in the kernel
            readiness._dispatch()  # noqa: SLF001 - one wake-up
            got = []
            while True:
                try:
                    got.append(r.asterisk_rtp.recv(2048))
                except BlockingIOError:
                    break
        finally:
            sender.close()
            loop.add_reader(readiness._epoll.fileno(), readiness._dispatch)  # noqa: SLF001
        assert [int.from_bytes(packet[2:4], "big") for packet in got] == list(range(100, 100 + count))
        assert r.server_stats().drops == 0


async def test_plain_packets_from_strangers_are_dropped() -> None:
    async with rig() as r:
        await r.softphone_says(1)
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.bind((HOST, 0))
        try:
            packet = rtp_packet(9, payload_type=0, ssrc=9, payload=bytes(160))
            stranger.sendto(packet, (HOST, r.pbx_ports[0]))  # not Asterisk's SDP address
            stranger.sendto(packet, (HOST, r.softphone_ports[0]))  # not the latched softphone
            await until(lambda: r.server_stats().unknown_source_drops == 1)
            await until(lambda: r.client_stats().unknown_source_drops == 1)
        finally:
            stranger.close()
        assert len(media_only(r.tap_rtp.to_server)) == 1 and r.tap_rtp.to_client == []


async def test_unkeyed_softphone_rtp_is_dropped_and_never_sent() -> None:
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniffer.bind((HOST, 0))
    sniffer.setblocking(False)
    client = ClientMedia(HOST, wan_bind_host=HOST)
    softphone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    softphone.bind((HOST, 0))
    try:
        ports = await client.open_call("early")
        for seq in range(3):
            softphone.sendto(rtp_packet(seq, payload_type=0, ssrc=1, payload=bytes(160)), (HOST, ports.softphone_rtp_port))
        await until(lambda: client.stats("early").unkeyed_drops == 3)
        assert client.stats("early").outbound_packets == 0
        # Keys arrive: from now on RTP goes out, protected.
        client.install_keys("early", call_keys(SrtpProfile.AES_CM_128_HMAC_SHA1_80), sniffer.getsockname()[1], 9)
        softphone.sendto(rtp_packet(4, payload_type=0, ssrc=1, payload=bytes(160)), (HOST, ports.softphone_rtp_port))
        received = []
        while not await nothing_arrives_into(sniffer, received, 0.2):
            assert len(received) < 10
        assert [len(p) for p in received if len(p) != 12 + 10] == [172 + 10]  # besides keep-alives
        assert [p for p in received if len(p) == 182][0][12:172] != bytes(160)
        # ...so the three early packets were dropped, not held back and sent late.
    finally:
        client.close()
        sniffer.close()
        softphone.close()


async def test_close_call_releases_ports_and_is_idempotent() -> None:
    async with rig() as r:
        await r.softphone_says(1)
        carried = r.relay.stats("c1")
        server_ports = [*r.pbx_ports, *r.wan_ports]
        client_ports = list(r.softphone_ports)
        r.relay.close_call("c1")
        r.relay.close_call("c1")
        r.client.close_call("c1")
        r.client.close_call("c1")
        with pytest.raises(UnknownCall, match="no open media call 'c1'"):
            r.relay.stats("c1")
        with pytest.raises(UnknownCall):
            r.relay.set_asterisk_media("c1", HOST, 4000, 4001)
        assert r.relay.stats() == carried and carried.inbound_packets >= 1  # totals keep closed calls
        for port in server_ports:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind((HOST, port))
            probe.close()

        async def client_ports_free() -> None:
            for port in client_ports:
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    probe.bind((HOST, port))
                finally:
                    probe.close()

        deadline = asyncio.get_running_loop().time() + WAIT
        while True:  # asyncio closes transports on its next iteration
            try:
                await client_ports_free()
                break
            except OSError:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.005)


async def test_open_call_twice_is_refused_and_many_calls_get_distinct_ports() -> None:
    relay = MediaRelay(wan_host=HOST)
    try:
        keys = call_keys(SrtpProfile.AEAD_AES_128_GCM)
        seen: set[int] = set()
        for n in range(20):
            ports = await relay.open_call(f"c{n}", keys)
            new = {ports.wan_rtp_port, ports.wan_rtcp_port, ports.pbx_rtp_port, ports.pbx_rtcp_port}
            assert len(new) == 4 and not new & seen
            seen |= new
        with pytest.raises(ValueError, match="already open"):
            await relay.open_call("c0", keys)
        assert relay.open_calls == 20
    finally:
        relay.close()
    assert relay.open_calls == 0


async def test_port_range_is_respected() -> None:
    relay = MediaRelay(wan_host=HOST, wan_ports=range(41000, 41100), pbx_ports=range(41101, 41200))
    try:
        ports = await relay.open_call("c", call_keys(SrtpProfile.AES_CM_128_HMAC_SHA1_80))
        assert 41000 <= ports.wan_rtp_port < 41100 and ports.wan_rtp_port % 2 == 0
        assert 41102 <= ports.pbx_rtp_port < 41200 and ports.pbx_rtp_port % 2 == 0
    finally:
        relay.close()


async def test_relay_without_epoll_falls_back_to_one_reader_per_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where select.epoll is missing (not Linux), every socket gets loop.add_reader."""
    import stc_wire.readiness as readiness

    monkeypatch.delattr(readiness.select, "epoll")
    async with rig() as r:
        _, got = await r.softphone_says(1, payload_type=8)
        assert got[1] == 8
        packet, got = await r.asterisk_says(1, payload_type=8)
        assert got[12:] == packet[12:]
        assert r.relay._readiness is not None and r.relay._readiness._epoll is None  # noqa: SLF001


@pytest.mark.parametrize("readiness", [True, False], ids=["epoll", "asyncio-endpoints"])
async def test_client_media_both_ways_in_either_socket_mode(readiness: bool) -> None:
    """The client's sockets in its own epoll set (Linux) or as asyncio datagram endpoints (the
    portable fallback, e.g. Windows' proactor loop): media both ways, RTCP too, nothing dropped."""
    async with rig(client_readiness=readiness) as r:
        assert r.client.watched is readiness
        sent_up, got_up, sent_down, got_down = [], [], [], []
        for seq in range(1, 4):
            sent, got = await r.softphone_says(seq)
            sent_up.append(sent)
            got_up.append(got)
            sent, got = await r.asterisk_says(seq)
            sent_down.append(sent)
            got_down.append(got)
        assert_translated(got_up, sent_up)
        assert_translated(got_down, sent_down)
        report = rtcp_receiver_report(0x11111111) + b"\x81\xca\x00\x02" + struct.pack("!I", 0x11111111) + b"\x01\x02ab"
        r.softphone_rtcp.sendto(report, (HOST, r.softphone_ports[1]))
        got_report = await recv_media(r.asterisk_rtcp)  # (empty reports are keep-alives: skipped)
        assert got_report[1] == 201 and len(got_report) == len(report)
        stats = r.client_stats()
        assert (stats.inbound_packets, stats.drops) == (3, 0)
    await asyncio.sleep(0)  # endpoints close on the next loop iteration


async def test_a_burst_on_one_socket_is_drained_in_one_wakeup() -> None:
    """Several datagrams queued on one socket are all read when it becomes readable once."""
    async with rig() as r:
        await r.softphone_says(1)
        readiness = r.relay._readiness  # noqa: SLF001
        assert readiness is not None and readiness._epoll is not None  # noqa: SLF001
        asyncio.get_running_loop().remove_reader(readiness._epoll.fileno())  # noqa: SLF001 - no loop wake-ups
        sent = [rtp_packet(seq, payload_type=0, ssrc=0x22222222, payload=os.urandom(160)) for seq in range(1, 9)]
        for packet in sent:
            r.asterisk_rtp.sendto(packet, (HOST, r.pbx_ports[0]))
        await asyncio.sleep(0.2)  # all eight queued in the kernel
        assert readiness._dispatch() >= 1  # noqa: SLF001 - one pass over the ready sockets
        got = [(await recv(r.softphone_rtp))[0] for _ in sent]
        assert_translated(got, sent)
        asyncio.get_running_loop().add_reader(readiness._epoll.fileno(), readiness._dispatch)  # noqa: SLF001


async def test_batched_relay_drains_every_socket_each_tick() -> None:
    """With batch_interval the relay reads on a timer: bursts on several sockets all get through."""
    async with rig(batch_interval=0.002) as r:
        await r.softphone_says(1)
        sent = [rtp_packet(seq, payload_type=0, ssrc=0x22222222, payload=os.urandom(160)) for seq in range(1, 6)]
        for packet in sent:  # five at once on one socket: one tick must not take only the first
            r.asterisk_rtp.sendto(packet, (HOST, r.pbx_ports[0]))
        got = [(await recv(r.softphone_rtp))[0] for _ in sent]
        assert_translated(got, sent)
        assert r.relay.wakeups >= 1


async def test_rtcp_mux_on_the_softphone_side() -> None:
    """RFC 5761 towards a phone that asked for it: its RTCP arrives on our RTP port and goes on
    as SRTCP; RTCP for it leaves our RTP port for its RTP port. RTP still flows beside it."""
    async with rig() as r:
        phone_port = r.softphone_rtp.getsockname()[1]
        r.client.set_rtcp_mux("c1")
        r.client.set_softphone_media("c1", HOST, phone_port, phone_port)
        report = rtcp_receiver_report(0x11111111)
        report += b"\x81\xca\x00\x02" + struct.pack("!I", 0x11111111) + b"\x01\x02ab"  # + SDES CNAME
        r.softphone_rtp.sendto(report, (HOST, r.softphone_ports[0]))  # RTCP to our RTP port
        got = await recv_media(r.asterisk_rtcp)  # (empty reports are keep-alives: skipped)
        assert got[1] == 201 and len(got) == len(report)
        _, rtp = await r.softphone_says(1)
        assert rtp[1] & 0x7F == 0
        r.asterisk_rtcp.sendto(rtcp_receiver_report(0x22222222), (HOST, r.pbx_ports[1]))
        while True:  # the phone's RTP port now gets RTCP (and nothing arrives on its RTCP port)
            data, source = await recv(r.softphone_rtp)
            if data[1] == 201:
                break
        assert source == (HOST, r.softphone_ports[0])
        assert await nothing_arrives(r.softphone_rtcp)
        assert r.client_stats().drops == 0
