"""stc's two core promises under attack, end to end against real Asterisk 22 and SIPp.

"Nothing readable on the wire": no (SSRC, index) is ever protected twice, whatever the softphone
sends; SDP that stc did not rewrite never reaches a softphone. "The roster tells the truth": a
phone that dies without a BYE leaves the room; a phone that restarts with its old Call-ID makes
no ghost; in-dialog requests go to the call's own phone; rosters for another room, server or time
are refused. docs/security.md maps each promise to its test here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from asterisk_lab import AmiClient, event_is
from capture import Capture
from sipp import SCENARIO_DIR, UAC_WAIT_BYE, Codec, SippCaller
from stack import Stack, WAN_HOST, room_caller, stc_stack, wait_until
from stc_wire import messages as wire
from stc_wire.roster import Roster, iso_utc
from stc_wire.roster_sync import RosterPublisher
from stc_wire.sip import SipRequest, new_branch, new_tag
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
PER_ROUND = 50  # packets before the looping softphone starts its sequence again (1 s)
ROUNDS = 6


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


caller = partial(room_caller, timeout_s=90)  # the liveness test waits up to 35 s for a dead phone


# -- a softphone that repeats its sequence numbers ---------------------------------------------

def looping_pcap(path: Path, rounds: int = ROUNDS) -> list[bytes]:
    """A pcap for SIPp's play_pcap_audio: PCMA every 20 ms whose sequence number starts again
    every PER_ROUND packets, with other (loud) audio each round. Returns the RTP payloads."""
    payloads: list[bytes] = []
    records = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]  # Ethernet link type
    for n in range(rounds * PER_ROUND):
        r, i = divmod(n, PER_ROUND)
        payload = os.urandom(160)  # A-law noise: loud, and different every round
        payloads.append(payload)
        rtp = struct.pack("!BBHII", 0x80, 8, 4000 + i, 160 * i, 0x5EED) + payload
        udp = struct.pack("!HHHH", 6000, 6002, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = bytes(12) + b"\x08\x00" + ip
        micros = n * 20_000
        records.append(struct.pack("<IIII", micros // 1_000_000, micros % 1_000_000, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(records))
    return payloads


def scenario_playing(pcap: Path, into: Path) -> Path:
    text = (SCENARIO_DIR / "uac_conf.xml").read_text().replace("/usr/share/sip-tester/g711a.pcap", str(pcap))
    into.write_text(text)
    return into


def alaw_to_linear(byte: int) -> int:
    a = byte ^ 0x55
    mantissa = a & 0x0F
    exponent = (a & 0x70) >> 4
    value = (mantissa << 4) + 8 if exponent == 0 else ((mantissa << 4) + 0x108) << (exponent - 1)
    return value if a & 0x80 else -value


def energy(payload: bytes) -> float:
    return sum(alaw_to_linear(b) ** 2 for b in payload) / max(1, len(payload))


def srtp_indexes_repeated(packets: list) -> dict[tuple[object, ...], int]:  # type: ignore[type-arg]
    """(direction, SSRC, extended index) seen more than once among SRTP datagrams on the hop."""
    streams: dict[tuple[object, ...], list[int]] = defaultdict(list)
    for p in packets:
        data = p.payload
        if p.proto != "udp" or len(data) < 12 or data[0] & 0xC0 != 0x80 or 72 <= (data[1] & 0x7F) <= 76:
            continue  # not SRTP (SRTCP has packet types 200-204, i.e. 72-76 after the marker bit)
        seq = struct.unpack("!H", data[2:4])[0]
        ssrc = struct.unpack("!I", data[8:12])[0]
        streams[(p.src, p.dst, ssrc)].append(seq)
    repeated: dict[tuple[object, ...], int] = {}
    for stream, seqs in streams.items():
        roc, last, seen = 0, None, set()
        for seq in seqs:
            if last is not None and seq < last and last - seq > 0x8000:
                roc += 1
            index = (roc << 16) | seq
            if index in seen:
                repeated[(*stream, index)] = repeated.get((*stream, index), 1) + 1
            seen.add(index)
            last = seq
    return repeated


@pytest.mark.parametrize("profile", ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"])
async def test_a_softphone_repeating_its_sequence_never_reuses_keystream_and_is_heard_throughout(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path, profile: str) -> None:
    looping_pcap(tmp_path / "looping.pcap")
    scenario = scenario_playing(tmp_path / "looping.pcap", tmp_path / "uac_looping.xml")
    async with stc_stack(pki) as stack, AmiClient() as ami:
        for user in ("alice", "bob"):
            await stack.add_client(user, (profile,))
        since = ami.mark()
        listener = caller(sipp_callers, stack, "bob", hold_ms=14000)
        listener.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        talker = caller(sipp_callers, stack, "alice", scenario=scenario, play_audio=True, hold_ms=9000)
        with Capture(f"host {WAN_HOST}") as hop, \
                Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
            talker.start()
            for c in (talker, listener):
                assert await c.wait_async(40) == 0, c.describe()
        hop_packets, heard = hop.packets(), at_listener.packets()
        hop.cleanup()
        at_listener.cleanup()
        server, clients = stack.server.media.stats(), [c.media.stats() for c in stack.clients.values()]
    repeated = srtp_indexes_repeated(hop_packets)
    assert not repeated, f"{len(repeated)} (SSRC, index) pairs protected twice on the wire: {list(repeated)[:5]}"
    assert len([p for p in hop_packets if p.proto == "udp"]) > 2 * ROUNDS * PER_ROUND * 0.8
    # Heard throughout: loud audio at the listener for (nearly) every round, not only the first
    # (before the translator, every round after the first died at the server as a replay).
    loud = [p for p in heard if len(p.payload) > 12 and energy(p.payload[12:]) > 1e6]
    assert len(loud) > ROUNDS * PER_ROUND * 0.8, f"only {len(loud)} loud packets reached the listener"
    for stats in (server, *clients):
        assert stats.replay_drops == 0 and stats.repeats_refused == 0 and stats.auth_drops == 0, stats
    assert server.inbound_packets >= ROUNDS * PER_ROUND * 0.95


DEMO_PHONE = Path(__file__).resolve().parent.parent / "demo" / "sipp-phone.xml"


async def test_the_demo_talker_is_heard_through_a_whole_minute(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    """The demo's phone replays its 7 s capture every 8 s with the same sequence numbers: every
    replay must reach the listener (before the translator, only the first one did)."""
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        listener = caller(sipp_callers, stack, "bob", scenario=DEMO_PHONE)
        listener.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        talker = caller(sipp_callers, stack, "alice", scenario=DEMO_PHONE, codec=Codec.PCMA, play_audio=True)
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            started = time.time()
            await asyncio.sleep(60)
            # The windows show that audio flows: the talker's client sends, the listener's receives.
            talking, hearing = (stack.clients[u].state.snapshot()["media"] for u in ("alice", "bob"))
        heard = at_listener.packets()
        at_listener.cleanup()
        talker.kill()
        listener.kill()
        stats = stack.server.media.stats()
    loud = [p.time - started for p in heard if len(p.payload) > 12 and len(set(p.payload[12:])) > 12]
    per_window = [sum(1 for t in loud if w <= t < w + 10) for w in range(0, 60, 10)]
    assert all(n > 50 for n in per_window), f"speech packets at the listener per 10 s: {per_window}"
    assert talking is not None and talking["sent"] > 1000 and talking["last_packet_at"] is not None, talking
    assert hearing is not None and hearing["received"] > 2500 and hearing["dropped"] == 0, hearing
    assert stats.replay_drops == 0, stats


# -- SDP that stc did not rewrite ------------------------------------------------------------------

async def test_sdp_from_asterisk_for_an_unknown_call_never_reaches_a_softphone(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    """Asterisk INVITEs the tunnel's SIP socket (an insider's Originate): refused 488 by the server;
    the same offer fed to a client for a dialog it holds no keys for is refused there too."""
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE, timeout_s=40)
        since = ami.mark()
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        [session] = stack.server.sessions.values()
        host, port = session._local  # noqa: SLF001 - the tunnel's own socket towards Asterisk
        with Capture(f"udp and host 127.0.0.1 and port {alice.sip_port}") as at_phone:
            await ami.action({"Action": "Originate", "Channel": f"PJSIP/stc-server/sip:9999@{host}:{port}",
                              "Application": "Wait", "Data": "5", "Async": "true"})
            await wait_until(lambda: session.counters.refused["sdp-without-keys"] >= 1, 10, "the server refused it")
            # The client side: an offer for a dialog the client holds no keys for.
            client = stack.clients["alice"]
            sent: list[bytes] = []

            async def to_server(message: wire.Message) -> None:
                if isinstance(message, wire.SipMessage):
                    sent.append(message.data)

            client.softphone.tunnel_up(to_server)
            offer = unknown_offer(client.softphone.port)
            await client.softphone.on_server_message(wire.SipMessage(offer))
            await asyncio.sleep(0.5)
        leaked = [p for p in at_phone.packets() if b"m=audio" in p.payload]
        at_phone.cleanup()
        assert not leaked, "SDP reached the softphone's socket"
        assert client.softphone.drops["sdp-without-keys"] == 1
        assert sent and sent[0].startswith(b"SIP/2.0 488 ")
        alice.kill()


def unknown_offer(port: int) -> bytes:
    sdp = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           b"m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")
    invite = SipRequest("INVITE", f"sip:alice@127.0.0.1:{port}", [])
    invite.append("Via", f"SIP/2.0/UDP 127.0.0.1:5080;branch={new_branch()}")
    invite.append("From", f"<sip:9999@127.0.0.1>;tag={new_tag()}")
    invite.append("To", "<sip:alice@127.0.0.1>")
    invite.append("Call-ID", f"{new_tag()}@asterisk")
    invite.append("CSeq", "1 INVITE")
    invite.append("Contact", "<sip:9999@127.0.0.1:5080>")
    invite.set_body(sdp, "application/sdp")
    return invite.to_bytes()


# -- ghosts -----------------------------------------------------------------------------------------

def kill_9(phone: SippCaller) -> None:
    """SIGKILL: the phone vanishes mid-call, no BYE, no goodbye of any kind."""
    assert phone.pid is not None
    os.kill(phone.pid, signal.SIGKILL)
    phone.wait(5)


def roster_names(stack: Stack, user: str) -> list[str]:
    roster = stack.clients[user].state.roster
    return [] if roster is None else sorted(e.display_name for e in roster.entries)


async def test_a_killed_softphone_leaves_the_room_and_a_restarted_one_makes_no_ghost(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path) -> None:
    fixed = (SCENARIO_DIR / "uac_conf.xml").read_text().replace("[call_id]", "[reused_call_id]")
    scenario = tmp_path / "uac_fixed_call_id.xml"
    scenario.write_text(fixed)
    call_id = f"{new_tag()}@restarting-phone"
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        bob = caller(sipp_callers, stack, "bob")
        bob.start()
        first = caller(sipp_callers, stack, "alice", scenario=scenario, extra_keys={"reused_call_id": call_id})
        first.start()
        joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        await wait_until(lambda: roster_names(stack, "bob") == ["Alice", "Bob"], 10, "both on bob's roster")

        # The phone dies (kill -9) and, restarted, dials again with its old Call-ID: one Alice, never two.
        kill_9(first)
        second = caller(sipp_callers, stack, "alice", scenario=scenario, extra_keys={"reused_call_id": call_id})
        second.start()
        alice_first = next(j for j in joins if "Alice" in j.get("CallerIDName", ""))
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM, Channel=alice_first["Channel"]),
                           timeout=10, since=since)
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=20, since=since)
        await asyncio.sleep(1)
        assert len(await ami.confbridge_list(ROOM)) == 2
        for user in ("alice", "bob"):
            await wait_until(lambda u=user: roster_names(stack, u) == ["Alice", "Bob"], 10, f"{user}'s roster")

        # Then the phone dies without a BYE: its channel leaves within the liveness timeout.
        killed_at = time.monotonic()
        kill_9(second)
        await ami.wait_for_count(event_is("ConfbridgeLeave", Conference=ROOM), 2, timeout=40, since=since)
        gone_after = time.monotonic() - killed_at
        assert gone_after <= 35, f"the dead phone stayed {gone_after:.1f} s"
        await wait_until(lambda: roster_names(stack, "bob") == ["Bob"], 10, "alice gone from bob's roster")
        assert len(await ami.confbridge_list(ROOM)) == 1
        assert "stopped answering" in stack.clients["alice"].state.snapshot()["reason"]
        assert not stack.clients["alice"].softphone.calls
        await wait_until(lambda: stack.server.media.open_calls == 1, 5, "only bob's media open")
        bob.kill()


# -- in-dialog routing -----------------------------------------------------------------------------

async def test_another_local_program_can_neither_end_the_call_nor_receive_its_bye(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE, codec=Codec.PCMA)
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.1", 0))
        other.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            invite = SipRequest("INVITE", f"sip:{ROOM}@127.0.0.1", [])
            invite.append("Via", f"SIP/2.0/UDP 127.0.0.1:{other.getsockname()[1]};branch={new_branch()}")
            invite.append("Max-Forwards", "70")
            invite.append("From", f"<sip:other@127.0.0.1>;tag={new_tag()}")
            invite.append("To", f"<sip:{ROOM}@127.0.0.1>")
            invite.append("Call-ID", f"{new_tag()}@other")
            invite.append("CSeq", "1 INVITE")
            invite.append("Content-Length", "0")
            other.sendto(invite.to_bytes(), ("127.0.0.1", stack.sip_port("alice")))
            answer = await asyncio.wait_for(loop.sock_recv(other, 4096), 3)
            assert answer.startswith(b"SIP/2.0 4")  # refused (by stc or Asterisk): it spoke, that is all
            # The other program tries to hang up alice's call with her dialog's identifiers: 403.
            [call] = stack.clients["alice"].softphone.calls.values()
            assert call.invite is not None
            bye = SipRequest("BYE", f"sip:{ROOM}@127.0.0.1", [])
            bye.append("Via", f"SIP/2.0/UDP 127.0.0.1:{other.getsockname()[1]};branch={new_branch()}")
            bye.append("Max-Forwards", "70")
            bye.append("From", call.invite.get("From") or "")
            bye.append("To", call.to_header)
            bye.append("Call-ID", call.call_id)
            bye.append("CSeq", "99 BYE")
            bye.append("Content-Length", "0")
            other.sendto(bye.to_bytes(), ("127.0.0.1", stack.sip_port("alice")))
            answer = await asyncio.wait_for(loop.sock_recv(other, 4096), 3)
            assert answer.startswith(b"SIP/2.0 403 ")
            assert stack.clients["alice"].softphone.calls and len(await ami.confbridge_list(ROOM)) == 1  # no SDP: refused, and nothing more
            # The tunnel dies and the call rejoins (a new dialog upstream); then a kick ends it:
            # its BYE, put back into the phone's dialog, reaches alice's phone and no other program.
            mark = ami.mark()
            [peer] = stack.server.tunnels.peers.values()  # type: ignore[union-attr]
            peer.stream._writer.transport.abort()  # noqa: SLF001 - the tunnel dies
            [rejoined] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=mark)
            await ami.action({"Action": "ConfbridgeKick", "Conference": ROOM, "Channel": rejoined["Channel"]})
            assert await alice.wait_async(20) == 0, alice.describe()  # the BYE reached alice's phone
            received = []
            try:
                while True:
                    received.append(await asyncio.wait_for(loop.sock_recv(other, 4096), 0.5))
            except asyncio.TimeoutError:
                pass
            assert not [m for m in received if m.startswith(b"BYE ")], "the BYE went to the other program"
        finally:
            other.close()


# -- rosters that do not belong here -----------------------------------------------------------------

async def test_rosters_for_another_room_another_server_or_too_old_are_refused_and_shown(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice")
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        client = stack.clients["alice"]
        await wait_until(lambda: client.state.roster is not None, 10, "alice's roster")
        good = client.state.roster
        assert good is not None
        rooms = stack.server.rooms
        assert rooms is not None
        [peer] = stack.server.tunnels.peers.values()  # type: ignore[union-attr]
        now = datetime.now(timezone.utc)
        forged = {
            "wrong-room": Roster(rooms.server_id, "2000", good.version + 10, iso_utc(now)),
            "wrong-server": Roster("f" * 64, ROOM, good.version + 20, iso_utc(now)),
            "too-old": Roster(rooms.server_id, ROOM, good.version + 30, iso_utc(now - timedelta(minutes=5))),
        }
        for reason, roster in forged.items():
            # Signed with the real server key and sent through the real tunnel: only its content is wrong.
            await peer.send(wire.RosterUpdate(RosterPublisher(rooms.signer).publish(roster).full))
            await wait_until(lambda r=reason: (client.state.rejection is not None
                                              and client.state.rejection.reason == r), 5, f"{reason} refused")
            shown = client.state.roster  # still a good one: the forged roster was not believed
            assert shown is not None and shown.version != roster.version
            assert (shown.room, shown.server_id) == (ROOM, rooms.server_id)
            warnings = client.state.snapshot()["warnings"]
            assert any(w["kind"] == "roster-rejected" and reason in w["message"] for w in warnings), warnings
        alice.kill()


async def test_the_server_hangs_up_a_call_whose_media_path_died(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    """The client's tunnel stays up but its call's SRTP and keep-alives stop (a client bug, a
    blocked media path): the server ends that call on both sides after media.call_timeout."""
    async with stc_stack(pki, ("alice",), call_timeout=3.0) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE)
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        client = stack.clients["alice"]
        await wait_until(lambda: client.state.light == "green", 10, "green")
        [call] = client.softphone.calls.values()
        client.media.close_call(call.stream_id)  # no more SRTP or keep-alive from this call
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM), timeout=15, since=since)
        assert await alice.wait_async(10) == 0, alice.describe()  # the softphone got its BYE
        await wait_until(lambda: not client.softphone.calls, 5, "client call ended")
        assert "no media" in client.state.snapshot()["reason"]
        assert stack.server.media.open_calls == 0
        assert client.tunnel is not None  # the tunnel itself stayed up
