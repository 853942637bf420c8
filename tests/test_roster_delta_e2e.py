"""Compact roster deltas and coalesced talking updates against the real Asterisk 22 (issue 14 item 5)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from asterisk_lab import AmiClient, event_is
from sipp import Codec, SippCaller
from stack import Stack, room_caller, stc_stack, wait_until
from stc_asterisk.talking import TALKING_INTERVAL
from stc_client.app import ClientApp
from stc_wire import messages as wire
from stc_wire.roster import Roster
from stc_wire.roster_sync import RosterPublisher, sign_talking
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def view(roster: Roster | None) -> Any:
    """Everything a client shows of a roster (its version too), comparable with the server's."""
    if roster is None:
        return None
    return (roster.server_id, roster.room, roster.version, roster.state,
            [(e.channel_id, e.identity, e.channel_name, e.caller_id, e.joined_at, e.talking) for e in roster.entries],
            roster.listeners)


def server_roster(stack: Stack) -> Roster:
    """The room's roster as the server last signed it, with who talks now."""
    rooms = stack.server.rooms
    assert rooms is not None
    publication = rooms.publisher.last(ROOM)
    assert publication is not None
    talking = rooms.conference.talking(ROOM)
    return dataclasses.replace(publication.roster, entries=tuple(
        dataclasses.replace(e, talking=e.channel_id in talking) for e in publication.roster.entries))


def server_count(stack: Stack) -> int | None:
    """How many are on the room's last signed roster; None before the server signed one."""
    rooms = stack.server.rooms
    assert rooms is not None
    publication = rooms.publisher.last(ROOM)
    return None if publication is None else len(publication.roster.entries)


def in_step(stack: Stack, clients: list[ClientApp]) -> bool:
    try:
        expected = view(server_roster(stack))
    except AssertionError:
        return False
    return all(view(c.state.roster) == expected for c in clients)


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_joins_leaves_and_talking_every_client_shows_the_servers_roster(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    users = ("alice", "bob", "carol", "zoe")
    async with stc_stack(pki, users) as stack, AmiClient() as ami:
        rooms = stack.server.rooms
        assert rooms is not None
        joins = []
        # alice, bob, then carol and zoe together, both speaking (SIPp plays 7 s of PCMA speech; ConfBridge's
        # talk detection makes it ConfbridgeTalking), so that their talking starts close together.
        for group in (("alice",), ("bob",), ("carol", "zoe")):
            since = ami.mark()
            for user in group:
                room_caller(sipp_callers, stack, user, codec=Codec.PCMA, play_audio=len(group) > 1, timeout_s=90).start()
            joins += await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), len(group), timeout=30,
                                              since=since)
            present = [stack.clients[u] for u in users[:len(joins)]]
            await wait_until(lambda p=present, n=len(joins): server_count(stack) == n and in_step(stack, p),
                             10, f"{len(joins)} participant(s) on every client's roster, as on the server's")
        # After the first one, joins went out as deltas; each newcomer got the room once, in full.
        assert rooms.rosters_sent["delta"] >= 1 + 2, rooms.rosters_sent
        clients = [stack.clients[u] for u in users]

        # carol and zoe talk: every client shows it, from small signed talking updates, not from new rosters.
        rosters_before = [len(c.rosters) for c in clients]
        speakers = {j["Uniqueid"] for j in joins if j["CallerIDNum"] in ("carol", "zoe")}
        await ami.wait_for_count(lambda e: e.get("Event") == "ConfbridgeTalking" and e.get("Uniqueid") in speakers
                                 and e.get("TalkingStatus") == "on", 2, timeout=20)
        await wait_until(lambda: all(any(speakers <= t.talking for t in c.talking) or
                                     speakers <= {e.channel_id for e in c.state.roster.entries if e.talking}  # type: ignore[union-attr]
                                     for c in clients), 5, "carol and zoe talking on every client")
        await wait_until(lambda: in_step(stack, clients), 5, "every client's roster, talking included, as the server's")
        assert [len(c.rosters) for c in clients] == rosters_before, "talking re-sent a roster"
        events = [e for e in ami.events if e.get("Event") == "ConfbridgeTalking"]
        for client in clients:
            updates = list(client.talking)  # their talking began after the last join's roster: updates told it
            assert updates and len(updates) <= len(events)
            # Coalesced: never two updates of the room within the interval.
            gaps = [epoch(b.issued_at) - epoch(a.issued_at) for a, b in zip(updates, updates[1:], strict=False)]
            assert all(gap >= TALKING_INTERVAL - 0.02 for gap in gaps), gaps
            assert all(u.version == client.rosters[-1].version for u in updates)

        # bob leaves: the other three show the server's roster without him.
        since = ami.mark()
        bob = next(j for j in joins if j["CallerIDNum"] == "bob")
        await ami.action({"Action": "Hangup", "Channel": bob["Channel"]})
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM), timeout=10, since=since)
        rest = [stack.clients[u] for u in ("alice", "carol", "zoe")]
        await wait_until(lambda: server_count(stack) == 3 and in_step(stack, rest), 10,
                         "bob gone from every roster")
        assert bob["Uniqueid"] not in {e.channel_id for e in server_roster(stack).entries}
        for client in clients:
            assert client.state.rejection is None, client.state.snapshot()["warnings"]


async def test_a_tampered_talking_update_or_delta_is_refused(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        for user in ("alice", "bob"):
            room_caller(sipp_callers, stack, user, codec=Codec.PCMA, timeout_s=60).start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=30, since=since)
        alice = stack.clients["alice"]
        await wait_until(lambda: server_count(stack) == 2 and in_step(stack, [alice]), 10, "both on alice's roster")
        rooms = stack.server.rooms
        assert rooms is not None
        held = server_roster(stack)
        session = next(s for s in stack.server.sessions.values() if s.peer.identity.display_name == "Alice")

        # A talking update signed by the server, one byte of its signature changed on the way.
        genuine = sign_talking(rooms.signer, server_id=rooms.server_id, room=ROOM, version=held.version,
                               seq=rooms.talk_seq.next(ROOM, 0), issued_at=held.issued_at,
                               talking=[held.entries[1].channel_id])
        await session.peer.send(wire.RosterUpdate(genuine[:-1] + bytes([genuine[-1] ^ 1])))
        await wait_until(lambda: alice.state.rejection is not None, 5, "the tampered talking update refused")
        assert alice.state.rejection is not None and alice.state.rejection.reason == "bad-signature"
        assert view(alice.state.roster) == view(held) and not any(e.talking for e in alice.state.roster.entries)  # type: ignore[union-attr]

        # A delta against the version alice holds, its new entry's channel renamed on the way: refused,
        # and alice asks the server for the full roster, which puts her back where she was.
        publisher = RosterPublisher(rooms.signer)
        publisher.publish(held)
        extra = dataclasses.replace(held.entries[0], channel_id="1.forged", channel_name="PJSIP/forged")
        delta = publisher.publish(dataclasses.replace(held, version=held.version + 1,
                                                      entries=(*held.entries, extra))).delta
        assert delta is not None and b"PJSIP/forged" in delta
        resyncs = rooms.rosters_sent["resync"]
        await session.peer.send(wire.RosterUpdate(delta.replace(b"PJSIP/forged", b"PJSIP/f0rged")))
        await wait_until(lambda: alice.state.rejection is not None and alice.state.rejection.count == 2, 5,
                         "the tampered delta refused")
        assert alice.state.rejection is not None and alice.state.rejection.reason == "bad-signature"
        await wait_until(lambda: rooms.rosters_sent["resync"] == resyncs + 1, 5, "alice's resync answered")
        assert alice.state.rejection.count == 2  # the full roster she was sent back was taken quietly
        assert view(alice.state.roster) == view(held)
