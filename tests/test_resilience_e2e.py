"""Calls that survive a lost tunnel (issue 13 item 2), end to end against the real Asterisk 22.

A SIPp softphone talks through its stc-client; its tunnel is cut under the call. The softphone
must see nothing (no BYE), the client must rejoin the room with a fresh INVITE and fresh keys,
the talker's audio must reach a listener again within 3 s (the gap is measured and printed),
the window's light must go yellow ("reconnecting") and then green, and every roster must name
the participant again by certificate. A deliberate hang-up (the phone's BYE, a kick) stays one.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import pytest

import asterisk_lab as asterisk_lab_module
from asterisk_lab import AmiClient, event_is
from capture import Capture, Packet
from sipp import SCENARIO_DIR, UAC_WAIT_BYE, Codec, SippCaller
from stack import WAN_HOST, Stack, client_config, room_caller, stc_stack, wait_until
from stc_client.app import ClientApp
from test_operations_e2e import kill_asterisk
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
UAC_TALK_LONG = SCENARIO_DIR / "uac_talk_long.xml"  # 21 s of speech, then -d ms, then BYE


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def non_silent(payload: bytes) -> bool:
    """G.711 A-law silence hovers around 0xD5/0x55; speech spreads over many values."""
    return len(set(payload)) > 12


def byes_received(phone: SippCaller) -> int:
    """BYE requests the softphone received (its own BYE is a message sent, not counted)."""
    blocks = phone.messages().split("message received")[1:]
    return sum(1 for block in blocks if block.split("\n", 2)[-1].lstrip().startswith("BYE "))


@dataclass
class Lights:
    """Every colour a client's light showed, in order (sampled every 20 ms)."""

    client: ClientApp
    seen: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            light = self.client.state.light
            if not self.seen or self.seen[-1] != light:
                self.seen.append(light)
            await asyncio.sleep(0.02)


def audio_gap(heard: list[Packet], cut: float, back: float) -> tuple[float, float]:
    """(silence from the last speech before the cut to the first after the path returned, and how
    long after `back` that first speech came). Packets within 0.3 s of the cut were in flight."""
    times = sorted(p.time for p in heard)
    before = [t for t in times if t <= cut]
    after = [t for t in times if t > max(back, cut + 0.3)]
    assert before, "no speech reached the listener before the cut"
    assert after, "no speech reached the listener after the path returned"
    return after[0] - before[-1], after[0] - back


def authenticated_names(client: ClientApp) -> list[str]:
    roster = client.state.roster
    if roster is None:
        return []
    return sorted(str(e.identity["display_name"]) if e.identity else "UNAUTHENTICATED" for e in roster.entries)


async def talk_and_cut(stack: Stack, sipp_callers: Callable[..., SippCaller], ami: AmiClient,
                       cut: Callable[[], object], *, restore: Callable[[], object] | None = None,
                       outage: float = 0.0) -> tuple[SippCaller, SippCaller, float]:
    """Alice talks, Bob listens; Alice's tunnel is cut (and restored after `outage` s).
    Returns both phones (still in the call) and the measured audio gap at Bob's phone."""
    since = ami.mark()
    alice_client = stack.clients["alice"]
    talker = room_caller(sipp_callers, stack, "alice", scenario=UAC_TALK_LONG, codec=Codec.PCMA, play_audio=True,
                         hold_ms=1000)
    listener = room_caller(sipp_callers, stack, "bob", scenario=UAC_WAIT_BYE, codec=Codec.PCMA)
    listener.start()
    await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
    with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
        talker.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        await wait_until(lambda: all(c.state.light == "green" for c in stack.clients.values()), 10, "green lights")
        lights = Lights(alice_client)
        watching = asyncio.create_task(lights.run())
        await asyncio.sleep(3.0)  # speech flows
        mark = ami.mark()
        cut_at = time.time()
        cut()
        if restore is not None:
            await asyncio.sleep(outage)
            restore()
        back_at = time.time()
        # Alice's old channel leaves, her rejoined one enters: two in the room again, with identities.
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM), timeout=20, since=mark)
        await ami.wait_for(event_is("ConfbridgeJoin", Conference=ROOM), timeout=20, since=mark)
        await wait_until(lambda: lights.seen[-1] == "green" and "yellow" in lights.seen, 15, "yellow, then green")
        await wait_until(lambda: all(authenticated_names(c) == ["Alice", "Bob"] for c in stack.clients.values()),
                         10, "full rosters with identities")
        await asyncio.sleep(4.0)  # speech again
        watching.cancel()
        assert talker.running and listener.running, (talker.describe(), listener.describe())
    heard = [p for p in at_listener.packets() if len(p.payload) > 12 and non_silent(p.payload[12:])]
    at_listener.cleanup()
    gap, again = audio_gap(heard, cut_at, back_at)
    print(f"\naudio gap at the listener: {gap:.2f} s (speech again {again:.2f} s after the path returned)")
    assert again < 3.0, f"speech reached the listener only {again:.2f} s after the path returned"
    assert lights.seen == ["green", "yellow", "green"], lights.seen
    history = [h["kind"] for h in alice_client.state.history]
    assert "reconnecting" in history and "reconnected" in history, history
    assert byes_received(talker) == 0 and byes_received(listener) == 0
    return talker, listener, gap


async def test_server_closes_the_tunnel_mid_call_the_call_rejoins(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        alice = stack.clients["alice"]

        def close_alices_tunnel() -> None:
            assert alice.tunnel is not None and stack.server.tunnels is not None
            own = alice.tunnel.own_identity or {}
            [peer] = [p for p in stack.server.tunnels.peers.values()
                      if p.identity.fingerprint_sha256 == own.get("fingerprint_sha256")]
            peer.stream._writer.transport.abort()  # noqa: SLF001

        talker, listener, _ = await talk_and_cut(stack, sipp_callers, ami, close_alices_tunnel)
        [call] = alice.softphone.calls.values()
        assert call.leg is not None and call.leg.call_id != call.call_id  # a new dialog upstream
        assert call.dialog.rejoins == 1
        # The softphone hangs up at the end of its script: its BYE goes up the rejoined dialog.
        since = ami.mark()
        assert await talker.wait_async(40) == 0, talker.describe()
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM), timeout=10, since=since)
        await wait_until(lambda: not alice.softphone.calls, 5, "Alice's call released")
        assert listener.running


@contextmanager
def blackhole(tcp_port: int, udp_ports: tuple[int, ...]) -> Iterator[None]:
    """Drop (silently, on arrival) every packet to or from these ports of the server's address:
    one client's tunnel and call media, nothing else on the machine."""
    rules = [["-p", proto, direction, WAN_HOST, port_flag, str(port), "-j", "DROP"]
             for proto, ports in (("tcp", (tcp_port,)), ("udp", udp_ports)) for port in ports
             for direction, port_flag in (("-d", "--dport"), ("-s", "--sport"))]
    inserted = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-I", "INPUT", *rule], check=True, capture_output=True)
            inserted.append(rule)
        yield
    finally:
        for rule in inserted:
            subprocess.run(["iptables", "-D", "INPUT", *rule], check=False, capture_output=True)


async def test_the_network_path_dropped_for_3_s_the_call_rejoins(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    """Alice's tunnel and media are blackholed for 3 s (iptables DROP on arrival, her ports only).
    With a keepalive deadline of 1.5 s her client sees the path is dead, keeps the softphone's
    call, and rejoins once it is back."""
    async with stc_stack(pki, ("bob",)) as stack, AmiClient() as ami:
        base = client_config(pki, "alice", stack.server_port)
        alice = ClientApp(replace(base, server=replace(base.server, keepalive_interval=0.5, keepalive_timeout=1.5,
                                                       connect_timeout=1.0)))
        stack.clients["alice"] = alice
        await alice.start()
        await wait_until(alice.tunnel_up.is_set, 10, "alice's tunnel")
        holes: list[Callable[[], None]] = []

        def drop_alices_path() -> None:
            calls = [call for session in stack.server.sessions.values() if session.peer.identity.display_name == "Alice"
                     for call in session.calls.values()]
            [call] = calls
            hole = blackhole(stack.server_port, (call.ports.wan_rtp_port, call.ports.wan_rtcp_port))
            hole.__enter__()
            holes.append(lambda: hole.__exit__(None, None, None))

        try:
            await talk_and_cut(stack, sipp_callers, ami, drop_alices_path, restore=lambda: holes.pop()(), outage=3.0)
        finally:
            for restore in holes:
                restore()


def in_room(client: ClientApp) -> bool:
    """The client's one call is answered upstream (not reconnecting) and its light is green."""
    calls = list(client.softphone.calls.values())
    return len(calls) == 1 and not calls[0].dialog.gap and client.state.light == "green"


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_asterisk_restarted_mid_call_every_participant_comes_back(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], how: str) -> None:
    """The lab's Asterisk goes away under the call and is started again: stopped (`core stop now`:
    every channel gets its BYE first), or killed with SIGKILL (no word at all: AMI and ARI drop).
    The server tells each client the leg was lost (not a hang-up); every softphone stays in its
    call and is back in the room, green with a full roster, within 10 s of Asterisk being up."""
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        phones = [room_caller(sipp_callers, stack, user, scenario=UAC_WAIT_BYE, codec=Codec.PCMA, timeout_s=120)
                  for user in ("alice", "bob")]
        for phone in phones:
            phone.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        await wait_until(lambda: all(in_room(c) for c in stack.clients.values()), 10, "both green")
        if how == "killed":
            kill_asterisk()
        else:
            await asyncio.to_thread(asterisk_lab_module.lab_stop)
        try:
            await wait_until(lambda: all(c.softphone.calls and next(iter(c.softphone.calls.values())).dialog.gap
                                         for c in stack.clients.values()), 10, "both reconnecting")
            assert all(c.state.light == "yellow" for c in stack.clients.values())
        finally:
            if how == "killed":
                await asyncio.to_thread(asterisk_lab_module.lab_stop)  # the script's clean-up after a kill
            await asyncio.to_thread(asterisk_lab_module.lab_start)
        up_at = time.monotonic()
        await wait_until(lambda: all(in_room(c) and authenticated_names(c) == ["Alice", "Bob"]
                                     for c in stack.clients.values()), 10, "back in the room, green, full rosters")
        print(f"\nAsterisk {how}: back in the room {time.monotonic() - up_at:.1f} s after Asterisk was up")
        async with AmiClient() as fresh:  # the old AMI connection went with the old Asterisk
            assert len(await fresh.confbridge_list(ROOM)) == 2
        for phone in phones:
            assert phone.running and byes_received(phone) == 0, phone.describe()


async def test_a_kick_and_a_phones_bye_are_never_undone(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        kicked = room_caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE, codec=Codec.PCMA)
        leaver = room_caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=4000)
        kicked.start()
        [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        leaver.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        await ami.action({"Action": "ConfbridgeKick", "Conference": ROOM, "Channel": join["Channel"]})
        assert await kicked.wait_async(20) == 0, kicked.describe()
        assert byes_received(kicked) == 1  # the kick reached the phone as a BYE
        assert await leaver.wait_async(20) == 0, leaver.describe()  # Bob hung up himself
        await wait_until(lambda: not any(c.softphone.calls for c in stack.clients.values()), 5, "calls released")
        mark = ami.mark()
        await asyncio.sleep(4.0)  # a rejoin would come within this
        assert not [e for e in ami.events[mark:] if e.get("Event") == "ConfbridgeJoin"]
        assert await ami.confbridge_list(ROOM) == []
        assert all(c.state.light == "yellow" and c.softphone.calls == {} for c in stack.clients.values())
