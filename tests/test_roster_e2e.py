"""Admission and the authenticated roster against the real Asterisk 22: FastAGI, ARI, AMI, signed rosters."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from collections.abc import Callable

import pytest

from asterisk_lab import SIP_HOST, SIP_PORT, AmiClient, asterisk_rx, event_is, lab_start, lab_stop
from sipp import UAC_WAIT_BYE, Codec, SippCaller
from stack import Stack, stc_stack, wait_until
from stc_client.app import ClientApp
from stc_wire.roster import Roster
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def caller(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str, **kwargs: object) -> SippCaller:
    kwargs.setdefault("service", ROOM)
    kwargs.setdefault("timeout_s", 90)
    kwargs.setdefault("scenario", UAC_WAIT_BYE)
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), caller=user, **kwargs)


def crash_asterisk() -> None:
    root = Path(os.environ.get("STC_LAB_ROOT", "/var/lib/stc-lab/sid"))
    pid = int((root / "run/asterisk/asterisk.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)


def names(roster: Roster) -> list[str]:
    return sorted(e.identity["display_name"] if e.identity else "UNAUTHENTICATED" for e in roster.entries)


def latest(client: ClientApp) -> Roster | None:
    return client.rosters[-1] if client.rosters else None


async def test_every_participant_gets_the_signed_roster_of_certificates(asterisk_lab: str, pki: TestPki,
                                                                       sipp_callers: Callable[..., SippCaller]) -> None:
    users = ("alice", "bob", "zoe")
    expected = sorted(["Alice", "Bob", "Zoë Ålice-Øster"])
    async with stc_stack(pki, users) as stack, AmiClient() as ami:
        since = ami.mark()
        callers = {u: caller(sipp_callers, stack, u, codec=Codec.PCMA if u != "bob" else Codec.PCMU) for u in users}
        for c in callers.values():
            c.start()
        joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=30, since=since)
        clients = stack.clients
        await wait_until(lambda: all((r := latest(c)) is not None and names(r) == expected for c in clients.values()),
                         10, "three identities on every roster")
        rosters = {u: latest(c) for u, c in clients.items()}
        versions = {r.version for r in rosters.values() if r}
        assert len(versions) == 1, f"clients hold different versions: {versions}"
        for roster in rosters.values():
            assert roster is not None and roster.room == ROOM and roster.state == "ok" and not roster.unauthenticated
        # The certificate name is intact on the roster, and on the Asterisk channel (CALLERID(name)).
        zoe = next(e for e in rosters["alice"].entries if e.identity and e.identity["display_name"].startswith("Zo"))  # type: ignore[union-attr]
        assert zoe.identity["display_name"] == "Zoë Ålice-Øster"
        assert zoe.identity["organization"] == "Ørganisation"
        zoe_channel = next(j["Channel"] for j in joins if j["Uniqueid"] == zoe.channel_id)
        assert await ami.getvar(zoe_channel, "CALLERID(name)") == "Zoë Ålice-Øster"
        assert await ami.getvar(zoe_channel, "STC_FINGERPRINT") == zoe.identity["fingerprint_sha256"]
        # The client UI state shows it too (its snapshot is what the window renders).
        snap = clients["bob"].state.snapshot()
        assert sorted(p["display_name"] for p in snap["participants"]) == expected

        # One leaves: the other two get the new roster within one second.
        loop = asyncio.get_running_loop()
        before = {u: latest(c).version for u, c in clients.items()}  # type: ignore[union-attr]
        bob_channel = next(j["Channel"] for j in joins if j["CallerIDNum"] == "bob")
        started = loop.time()
        await ami.action({"Action": "Hangup", "Channel": bob_channel})
        await wait_until(lambda: all(names(latest(clients[u])) == sorted(["Alice", "Zoë Ålice-Øster"])  # type: ignore[arg-type]
                                     for u in ("alice", "zoe")), 1.0, "the new roster within 1 s")
        elapsed = loop.time() - started
        assert elapsed < 1.0
        for u in ("alice", "zoe"):
            assert latest(clients[u]).version > before[u]  # type: ignore[union-attr]


async def test_direct_caller_without_stc_is_refused_by_the_agi(asterisk_lab: str, pki: TestPki,
                                                               sipp_callers: Callable[..., SippCaller],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        member = caller(sipp_callers, stack, "alice", codec=Codec.PCMA)
        member.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=30, since=since)
        rogue = sipp_callers(target_host=SIP_HOST, target_port=SIP_PORT, scenario=UAC_WAIT_BYE, service=ROOM,
                             caller="mallory", codec=Codec.PCMA, timeout_s=30)
        rogue.start()
        await ami.wait_for(lambda e: e.get("Event") == "Hangup" and e.get("CallerIDNum") == "mallory",
                           timeout=20, since=since)
        assert await rogue.wait_async(20) == 0, rogue.describe()  # it was hung up (BYE), not let in
        joined = [e for e in ami.events[since:] if e.get("Event") == "ConfbridgeJoin" and e.get("CallerIDNum") == "mallory"]
        assert not joined
        assert [m["CallerIDNum"] for m in await ami.confbridge_list(ROOM)] == ["alice"]
        assert any("token-missing" in r.getMessage() for r in caplog.records)


async def test_channel_forced_into_the_conference_is_flagged_and_ejected(asterisk_lab: str, pki: TestPki,
                                                                        sipp_callers: Callable[..., SippCaller]) -> None:
    """An insider originates a Local channel straight into ConfBridge (no SIP, no AGI)."""
    asterisk_rx("dialplan add extension 9999,1,Answer() into stc-insider replace")
    asterisk_rx("dialplan add extension 9999,2,Wait(60) into stc-insider replace")
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        for u in ("alice", "bob"):
            caller(sipp_callers, stack, u, codec=Codec.PCMA).start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=30, since=since)
        await wait_until(lambda: all((r := latest(c)) is not None and len(r.entries) == 2 for c in stack.clients.values()),
                         10, "two on every roster")
        await ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ConfBridge",
                          "Data": f"{ROOM},stc_bridge,stc_user", "CallerID": "Spy <666>", "Async": "true"})
        # Every client is shown the UNAUTHENTICATED channel...
        await wait_until(lambda: all(any(r.unauthenticated for r in c.rosters) for c in stack.clients.values()),
                         10, "UNAUTHENTICATED on every roster")
        for client in stack.clients.values():
            flagged = next(r for r in client.rosters if r.unauthenticated)
            [spy] = flagged.unauthenticated
            assert spy.caller_id and "666" in spy.caller_id and spy.channel_name.startswith("Local/")
        # ...and, under the default policy, it is ejected: the next roster is back to the two of them.
        await ami.wait_for(lambda e: e.get("Event") == "ConfbridgeLeave" and e.get("Channel", "").startswith("Local/"),
                           timeout=10, since=since)
        await wait_until(lambda: all(names(latest(c)) == ["Alice", "Bob"] for c in stack.clients.values()),  # type: ignore[arg-type]
                         5, "the spy gone from every roster")
        assert sorted(m["CallerIDNum"] for m in await ami.confbridge_list(ROOM)) == ["alice", "bob"]


async def test_asterisk_restart_unknown_then_rebuilt(asterisk_lab: str, pki: TestPki,
                                                     sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob")) as stack:
        async with AmiClient() as ami:
            since = ami.mark()
            caller(sipp_callers, stack, "alice", codec=Codec.PCMA).start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=30, since=since)
        alice = stack.clients["alice"]
        await wait_until(lambda: (r := latest(alice)) is not None and names(r) == ["Alice"], 10, "alice's roster")
        rooms = stack.server.rooms
        assert rooms is not None
        crash_asterisk()  # no goodbye: no BYE, no ARI leave events, sockets just die
        try:
            # stc keeps the tunnels and says the conference state is unknown.
            await wait_until(lambda: latest(alice).state == "unknown", 10, "roster state unknown")  # type: ignore[union-attr]
            assert alice.tunnel is not None and stack.clients["bob"].tunnel is not None
        finally:
            lab_stop()  # clears the dead instance's leftovers
            lab_start()
        await wait_until(lambda: rooms.ari.connected and rooms.ami.up, 30, "ARI and AMI reconnected")
        # The rebuilt state works: a new participant joins and is on a fresh, valid roster.
        async with AmiClient() as ami:
            since = ami.mark()
            caller(sipp_callers, stack, "bob", codec=Codec.PCMU).start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=30, since=since)
        bob = stack.clients["bob"]
        # Alice's softphone did nothing: her client kept the call and rejoined once Asterisk was back.
        await wait_until(lambda: (r := latest(bob)) is not None and r.state == "ok" and names(r) == ["Alice", "Bob"], 10,
                         "bob's roster after the restart")
