"""Single-port media end to end: SIPp softphones -> stc-client -> stc-server (`[media] single_port`) -> real Asterisk 22.

Every client's SRTP and SRTCP arrives on one wan port of the server, told apart by source address.
One client's media runs through a forwarder on the wan hop that plays a NAT: mid-call it moves to
a new source port (a rebinding, which must be re-latched), and a stranger replays and forges
packets at the single port from an address of its own (refused and counted, the call unmoved).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import pytest

from asterisk_lab import AmiClient, event_is
from capture import Capture
from sipp import Codec, SippCaller, free_udp_port
from stack import WAN_HOST, room_caller, stc_stack, wait_until
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


caller = room_caller


def non_silent(payload: bytes) -> bool:
    return len(set(payload)) > 12


class NatForwarder(asyncio.DatagramProtocol):
    """The client's side of a NAT on the wan hop: the server sees the forwarder's outside port,
    which `rebind()` replaces by a new one mid-call, as a NAT that lost its mapping would."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.inside: asyncio.DatagramTransport | None = None
        self.outside: asyncio.DatagramTransport | None = None
        self.outsides: list[asyncio.DatagramTransport] = []
        self.to_server: list[bytes] = []
        self.from_server = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inside = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.client = addr
        self.to_server.append(data)
        if self.outside is not None:
            self.outside.sendto(data, self.server)

    async def rebind(self) -> tuple[str, int]:
        forwarder = self

        class Outside(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                forwarder.from_server += 1
                if forwarder.client is not None and forwarder.inside is not None:
                    forwarder.inside.sendto(data, forwarder.client)

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Outside, local_addr=(WAN_HOST, 0))
        self.outside = transport  # type: ignore[assignment]
        self.outsides.append(transport)  # type: ignore[arg-type]
        return transport.get_extra_info("sockname")  # type: ignore[no-any-return]

    def close(self) -> None:
        for transport in [self.inside, *self.outsides]:
            if transport is not None:
                transport.close()


async def test_single_port_three_participants_spoofing_refused_rebinding_relatched(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], monkeypatch: pytest.MonkeyPatch) -> None:
    from stc_asterisk.tunnel_server import TunnelPeer
    from stc_wire import messages as wire

    loop = asyncio.get_running_loop()
    single_port = free_udp_port(WAN_HOST)
    forwarders: list[NatForwarder] = []
    answers: list[tuple[int, int]] = []
    real_send = TunnelPeer.send

    async def send_via_nat(self: TunnelPeer, message: wire.Message) -> None:
        if isinstance(message, wire.MediaAnswer):
            answers.append((message.rtp_port, message.rtcp_port))
            if self.identity.display_name == "Alice":  # Alice's RTP goes through the "NAT"
                forwarder = NatForwarder((WAN_HOST, message.rtp_port))
                await loop.create_datagram_endpoint(lambda: forwarder, local_addr=(WAN_HOST, 0))
                await forwarder.rebind()
                forwarders.append(forwarder)
                assert forwarder.inside is not None
                inside_port = forwarder.inside.get_extra_info("sockname")[1]
                message = wire.MediaAnswer(message.stream_id, message.profile, message.public_key, inside_port, message.rtcp_port)
        await real_send(self, message)

    monkeypatch.setattr(TunnelPeer, "send", send_via_nat)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind((WAN_HOST, 0))
    try:
        async with stc_stack(pki, ("alice", "bob", "carol"), single_port=single_port) as stack, AmiClient() as ami:
            since = ami.mark()
            talker = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=12000)
            listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=12000)
            third = caller(sipp_callers, stack, "carol", codec=Codec.PCMU, hold_ms=12000)
            for c in (listener, third):
                c.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
                talker.start()
                await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=20, since=since)
                assert len(await ami.confbridge_list(ROOM)) == 3
                assert stack.server.media.single_port == single_port
                assert len(answers) == 3 and set(answers) == {(single_port, single_port)}  # one port, every call
                nat = forwarders[0]
                await wait_until(lambda: len([p for p in nat.to_server if len(p) > 100]) > 50, 20, "Alice's media")
                alice = next(c for s in stack.server.sessions.values() if s.peer.identity.display_name == "Alice"
                             for c in s.calls.values())
                first_address = stack.server.media._calls[alice.media_tag].client_rtp.address  # noqa: SLF001
                assert first_address == nat.outside.get_extra_info("sockname")  # type: ignore[union-attr]

                # A stranger replays Alice's packets and forges others, from an address of its own.
                refused_before = stack.server.media.stats().unknown_source_drops
                for packet in [p for p in nat.to_server if len(p) > 100][-5:]:
                    stranger.sendto(packet, (WAN_HOST, single_port))
                    stranger.sendto(packet[:12] + os.urandom(len(packet) - 12), (WAN_HOST, single_port))
                await wait_until(lambda: stack.server.media.stats().unknown_source_drops >= refused_before + 10, 10,
                                 "the stranger's packets refused")
                assert stack.server.media._calls[alice.media_tag].client_rtp.address == first_address  # noqa: SLF001

                # The NAT moves Alice to a new port: her next authentic packet re-latches the call.
                new_address = await nat.rebind()
                await wait_until(lambda: stack.server.media._calls[alice.media_tag].client_rtp.address == new_address,  # noqa: SLF001
                                 10, "Alice re-latched at her new address")
                heard_by_alice = nat.from_server
                await wait_until(lambda: nat.from_server > heard_by_alice + 20, 10, "media to Alice's new address")
                for c in (talker, listener, third):
                    assert await c.wait_async(40) == 0, c.describe()
            heard = [p for p in at_listener.packets() if len(p.payload) > 12 and non_silent(p.payload[12:])]
            at_listener.cleanup()
            assert len(heard) > 50, f"the silent listener received only {len(heard)} non-silent RTP packets"
            await wait_until(lambda: stack.server.media.open_calls == 0, 20, "server media released")
            stats = stack.server.media.stats()
            assert stats.inbound_packets > 150 and stats.outbound_packets > 300, stats  # only Alice speaks
            assert stats.unknown_source_drops >= 10, stats
    finally:
        stranger.close()
        for forwarder in forwarders:
            forwarder.close()


async def test_default_is_a_port_pair_per_call(pki: TestPki) -> None:
    """Without single_port nothing changes: no shared socket, each call its own even/odd wan pair."""
    async with stc_stack(pki) as stack:
        relay = stack.server.media
        first, second = await relay.open_call("a"), await relay.open_call("b")
        assert relay.single_port is None and relay.demux is None
        assert first.wan_rtcp_port == first.wan_rtp_port + 1 and first.wan_rtp_port % 2 == 0
        assert {first.wan_rtp_port, first.wan_rtcp_port}.isdisjoint({second.wan_rtp_port, second.wan_rtcp_port})
        relay.close_call("a")
        relay.close_call("b")
