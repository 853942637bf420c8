"""Calls through stc, end to end: SIPp softphones -> stc-client -> tunnel -> stc-server -> real Asterisk 22."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from asterisk_lab import AmiClient, event_is
from capture import Capture, g711a_payloads
from sipp import G711A_PCAP, UAC_CONF, UAC_WAIT_BYE, Codec, SippCaller
from stack import WAN_HOST, Stack, stc_stack, wait_until
from stc_wire.srtp import SrtpDropped, SrtpUnprotector
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def caller(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str, **kwargs: object) -> SippCaller:
    kwargs.setdefault("service", ROOM)
    kwargs.setdefault("timeout_s", 60)
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), caller=user,
                        caller_name=user.title(), **kwargs)


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
        joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
            talker.start()
            joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=20, since=since)
            members = await ami.confbridge_list(ROOM)
            assert len(members) == 3
            # green light on every client while in the call
            await wait_until(lambda: all(c.status.light == "green" for c in stack.clients.values()), 10, "green lights")
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
            assert client.status.light == "yellow"
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


async def test_tunnel_loss_mid_call_hangs_up_both_sides(asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        alice = caller(sipp_callers, stack, "alice", scenario=UAC_WAIT_BYE, codec=Codec.PCMA)
        alice.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await wait_until(lambda: stack.clients["alice"].status.light == "green", 10, "green")
        # The tunnel dies under the call (server side closes it, as a network cut would).
        [peer] = stack.server.tunnels.peers.values()  # type: ignore[union-attr]
        peer.stream._writer.transport.abort()  # noqa: SLF001
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM), timeout=20, since=since)
        assert await alice.wait_async(20) == 0, alice.describe()  # the softphone got a BYE
        await wait_until(lambda: stack.server.media.open_calls == 0, 5, "server media released")
        await wait_until(lambda: not stack.clients["alice"].softphone.calls, 5, "client call released")
