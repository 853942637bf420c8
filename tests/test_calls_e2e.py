"""Calls through stc, end to end: SIPp softphones -> stc-client -> tunnel -> stc-server -> real Asterisk 22."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable

import pytest

from asterisk_lab import AmiClient, event_is
from capture import Capture, g711a_payloads
from sipp import G711A_PCAP, SCENARIO_DIR, UAC_WAIT_BYE, Codec, SippCaller
from stack import WAN_HOST, room_caller, stc_stack, wait_until
from stc_wire.srtp import SrtpDropped, SrtpUnprotector
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
UAC_IN_DIALOG = SCENARIO_DIR / "uac_in_dialog.xml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


caller = room_caller


def non_silent(payload: bytes) -> bool:
    """G.711 A-law silence hovers around 0xD5/0x55; speech spreads over many values."""
    return len(set(payload)) > 12


async def test_three_callers_through_stc_hear_each_other(asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob", "carol")) as stack, AmiClient() as ami:
        since = ami.mark()
        talker = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=9000)
        listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=9000)
        third = caller(sipp_callers, stack, "carol", codec=Codec.PCMU, hold_ms=9000)
        for c in (listener, third):
            c.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=20, since=since)
            members = await ami.confbridge_list(ROOM)
            assert len(members) == 3
            # green light on every client while in the call
            await wait_until(lambda: all(c.state.light == "green" for c in stack.clients.values()), 10, "green lights")
            for c in (talker, listener, third):
                assert await c.wait_async(30) == 0, c.describe()
        heard = [p for p in at_listener.packets() if len(p.payload) > 12 and non_silent(p.payload[12:])]
        at_listener.cleanup()
        assert len(heard) > 50, f"the silent listener received only {len(heard)} non-silent RTP packets"
        await ami.wait_for(event_is("ConfbridgeEnd", Conference=ROOM), timeout=20, since=since)
        # everything released
        await wait_until(lambda: stack.server.media.open_calls == 0, 5, "server media released")
        for client in stack.clients.values():
            await wait_until(lambda: not client.softphone.calls, 5, "client calls released")
            assert client.state.light == "yellow"
        stats = stack.server.media.stats()
        assert stats.inbound_packets > 100 and stats.outbound_packets > 100
        assert stats.auth_drops == stats.replay_drops == 0


async def test_hangup_from_asterisk_reaches_softphone_as_bye(asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE, codec=Codec.PCMU)
        alice.start()
        [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await ami.action({"Action": "ConfbridgeKick", "Conference": ROOM, "Channel": join["Channel"]})
        assert await alice.wait_async(20) == 0, alice.describe()
        assert "BYE sip:" in alice.messages()
        await wait_until(lambda: stack.server.media.open_calls == 0, 5, "server media released")
        await wait_until(lambda: not stack.clients["alice"].softphone.calls, 5, "client call released")


async def test_tunnel_loss_mid_call_keeps_the_softphones_call_and_rejoins(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE, codec=Codec.PCMA)
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await wait_until(lambda: stack.clients["alice"].state.light == "green", 10, "green")
        # The tunnel dies under the call (server side closes it, as a network cut would): the server
        # ends its Asterisk leg; the client keeps the softphone's call and rejoins with a new one.
        mark = ami.mark()
        [peer] = stack.server.tunnels.peers.values()  # type: ignore[union-attr]
        peer.stream._writer.transport.abort()  # noqa: SLF001
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM), timeout=20, since=mark)
        await ami.wait_for(event_is("ConfbridgeJoin", Conference=ROOM), timeout=20, since=mark)
        await wait_until(lambda: stack.clients["alice"].state.light == "green", 10, "green again")
        assert alice.running, alice.describe()  # no BYE: the softphone's call goes on
        assert len(await ami.confbridge_list(ROOM)) == 1  # the old channel left, no ghost
        # Closing the client is a hang-up: the softphone gets its BYE then.
        await stack.clients["alice"].close()
        assert await alice.wait_async(20) == 0, alice.describe()
        await wait_until(lambda: stack.server.media.open_calls == 0, 5, "server media released")


async def test_eavesdropper_on_the_wan_hop_learns_nothing(asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Everything between clients and server (127.0.0.2) is captured: no SIP text, no RTP, no audio bytes;
    every datagram is SRTP/SRTCP that authenticates with its own call's keys and no other's.
    And no log line, even at DEBUG, carries any of those keys."""
    caplog.set_level(logging.DEBUG)
    audio = g711a_payloads(G711A_PCAP)
    with Capture(f"host {WAN_HOST}") as wire:
        async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
            since = ami.mark()
            talker = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=8000)
            listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=8000)
            listener.start()
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            await wait_until(lambda: sum(len(s.calls) for s in stack.server.sessions.values()) == 2, 10, "two keyed calls")
            calls = [call for session in stack.server.sessions.values() for call in session.calls.values()]
            for c in (talker, listener):
                assert await c.wait_async(30) == 0, c.describe()
    packets = wire.packets()
    wire.cleanup()
    blob = b"".join(p.payload for p in packets)
    assert len([p for p in packets if p.proto == "tcp" and p.payload]) > 5
    for needle in (b"SIP/2.0", b"INVITE", b"sip:", b"m=audio", b"Alice"):
        assert needle not in blob, f"plaintext {needle!r} on the wire"
    leaked = [chunk for payload in audio for chunk in (payload[i:i + 16] for i in range(0, 240, 16)) if chunk in blob]
    assert not leaked, f"{len(leaked)} chunks of the played audio appear on the wire"

    udp = [p for p in packets if p.proto == "udp"]
    assert len(udp) > 300, f"only {len(udp)} media datagrams captured"
    by_port = {}
    for call in calls:
        k = call.keys
        by_port[call.ports.wan_rtp_port] = (call, "rtp", SrtpUnprotector(k.profile, k.client_to_server_srtp, k.client_to_server_srtcp),
                                            SrtpUnprotector(k.profile, k.server_to_client_srtp, k.server_to_client_srtcp))
        by_port[call.ports.wan_rtcp_port] = (call, "rtcp", *by_port[call.ports.wan_rtp_port][2:])
    authenticated = 0
    for p in udp:
        to_server = p.dst[1] in by_port
        call, kind, c2s, s2c = by_port[p.dst[1] if to_server else p.src[1]]
        unprotector = c2s if to_server else s2c
        plain = unprotector.unprotect_rtp(p.payload) if kind == "rtp" else unprotector.unprotect_rtcp(p.payload)
        assert plain != p.payload
        authenticated += 1
        # ...and with the other call's keys it does not authenticate.
        other = next(c for c in calls if c is not call).keys
        wrong = SrtpUnprotector(other.profile, other.client_to_server_srtp if to_server else other.server_to_client_srtp,
                                other.client_to_server_srtcp if to_server else other.server_to_client_srtcp)
        with pytest.raises(SrtpDropped):
            wrong.unprotect_rtp(p.payload) if kind == "rtp" else wrong.unprotect_rtcp(p.payload)
    assert authenticated == len(udp)
    logged = caplog.text
    for call in calls:
        k = call.keys
        for secret in (k.client_to_server_srtp, k.client_to_server_srtcp, k.server_to_client_srtp, k.server_to_client_srtcp):
            for form in (secret.hex(), secret[:16].hex(), base64.b64encode(secret).decode(), repr(secret)):
                assert form not in logged, "key material in the logs"


class TamperingForwarder(asyncio.DatagramProtocol):
    """Sits on the client->server media hop: flips a byte in every 10th packet and replays old ones."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.seen = 0
        self.history: list[bytes] = []
        self.tampered = 0
        self.replayed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if addr == self.server:
            if self.client is not None:
                self.transport.sendto(data, self.client)
            return
        self.client = addr
        self.seen += 1
        self.history.append(data)
        if self.seen % 10 == 0 and len(data) > 20:
            forged = bytearray(data)
            forged[15] ^= 0x01
            self.transport.sendto(bytes(forged), self.server)
            self.tampered += 1
            return
        self.transport.sendto(data, self.server)
        if self.seen % 15 == 0 and len(self.history) > 4:
            # An old packet that did get through (not one of the tampered ones, which never did).
            self.transport.sendto(self.history[-4], self.server)
            self.replayed += 1


async def test_tampered_and_replayed_srtp_is_dropped_and_counted(asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from stc_asterisk.tunnel_server import TunnelPeer
    from stc_wire import messages as wire

    loop = asyncio.get_running_loop()
    forwarders: list[TamperingForwarder] = []
    real_send = TunnelPeer.send

    async def send_via_forwarder(self: TunnelPeer, message: wire.Message) -> None:
        if isinstance(message, wire.MediaAnswer) and self.identity.display_name == "Alice":
            ports = []
            for real in (message.rtp_port, message.rtcp_port):
                forwarder = TamperingForwarder((WAN_HOST, real))
                transport, _ = await loop.create_datagram_endpoint(lambda f=forwarder: f, local_addr=(WAN_HOST, 0))
                forwarders.append(forwarder)
                ports.append(transport.get_extra_info("sockname")[1])
            message = wire.MediaAnswer(message.stream_id, message.profile, message.public_key, ports[0], ports[1])
        await real_send(self, message)

    monkeypatch.setattr(TunnelPeer, "send", send_via_forwarder)
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=9000)
        talker = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=8000)
        listener.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            await wait_until(lambda: sum(f.seen for f in forwarders) > 150, 20, "media through the forwarder")
            alice_call = next(c for s in stack.server.sessions.values() if s.peer.identity.display_name == "Alice" for c in s.calls.values())
            stats = stack.server.media.stats(alice_call.media_tag)
            for c in (talker, listener):
                assert await c.wait_async(30) == 0, c.describe()  # the call went on
        heard = [p for p in at_listener.packets() if len(p.payload) > 12 and non_silent(p.payload[12:])]
        at_listener.cleanup()
    assert sum(f.tampered for f in forwarders) > 5 and sum(f.replayed for f in forwarders) > 3
    assert stats.auth_drops >= 5, stats
    assert stats.replay_drops >= 3, stats
    assert stats.inbound_packets > 100, stats
    assert len(heard) > 50, f"listener heard only {len(heard)} non-silent packets"


async def test_gcm_profile_is_selectable(asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki) as stack, AmiClient() as ami:
        await stack.add_client("alice", profiles=("AEAD_AES_128_GCM",))
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=3000)
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await wait_until(lambda: stack.clients["alice"].state.light == "green", 10, "green")
        assert stack.clients["alice"].state.call is not None and stack.clients["alice"].state.call.srtp_profile == "AEAD_AES_128_GCM"
        assert await alice.wait_async(30) == 0, alice.describe()
        assert stack.server.media.stats().inbound_packets > 50


async def test_profile_mismatch_fails_the_call_with_a_reason(pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    # No Asterisk needed: the server refuses before anything reaches it.
    async with stc_stack(pki, srtp_profiles=("AES_CM_128_HMAC_SHA1_80",)) as stack:
        await stack.add_client("alice", profiles=("AEAD_AES_128_GCM",))
        alice = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, hold_ms=1000, timeout_s=10)
        alice.start()
        assert await alice.wait_async(15) != 0
        messages = alice.messages()
        assert "SIP/2.0 488" in messages and "no common SRTP profile" in messages, messages[-2000:]
        assert stack.server.media.open_calls == 0
        assert not stack.clients["alice"].softphone.calls


async def test_in_dialog_options_hold_and_resume_through_stc(asterisk_lab: str, pki: TestPki,
                                                             sipp_callers: Callable[..., SippCaller]) -> None:
    """Re-INVITEs (hold with a=sendonly, resume with a=sendrecv), an in-dialog OPTIONS and the
    caller's BYE all cross the tunnel both ways; Asterisk really holds and unholds the channel."""
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_IN_DIALOG, codec=Codec.PCMA)
        alice.start()
        [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await ami.wait_for(lambda e: e.get("Event") == "Hold" and e.get("Channel") == join["Channel"], timeout=20, since=since)
        await ami.wait_for(lambda e: e.get("Event") == "Unhold" and e.get("Channel") == join["Channel"], timeout=20, since=since)
        assert await alice.wait_async(20) == 0, alice.describe()
        messages = alice.messages()
        assert messages.count("SIP/2.0 200 OK") >= 5  # INVITE, OPTIONS, two re-INVITEs, BYE
        # The answers the softphone saw point its media at its own stc-client, never elsewhere.
        ports = {line.split()[1] for line in messages.splitlines() if line.startswith("m=audio")}
        assert str(alice.media_port) in ports and len(ports) == 2, ports
        await wait_until(lambda: stack.server.media.open_calls == 0, 5, "server media released")
        await wait_until(lambda: not stack.clients["alice"].softphone.calls, 5, "client call released")
