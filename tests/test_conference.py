"""ConferenceState fed ARI and AMI events shaped as Asterisk 22 sends them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from panoramisk.message import Message

from stc_asterisk.conference import ConferenceState, UnboundChannel
from stc_wire.identity import PeerIdentity
from stc_wire.roster import RosterSigner, RosterVerifier

ZOE = "Zoë Ålice-Øster"
T0 = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)
BRIDGE = "6a1b0c5e-7f3d-4e1a-9d2b-3c4d5e6f7a80"
BRIDGE_2000 = "0b7c8d9e-1f2a-4b3c-8d4e-5f6a7b8c9d01"


def ts(seconds: float) -> str:
    """ARI's timestamp format: 2026-05-01T10:00:01.000+0000."""
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


def bridge(bridge_id: str = BRIDGE, name: str = "1000", channels: tuple[str, ...] = (), creator: str = "ConfBridge") -> dict[str, Any]:
    return {
        "id": bridge_id,
        "technology": "softmix",
        "bridge_type": "mixing",
        "bridge_class": "base",
        "creator": creator,
        "name": name,
        "channels": list(channels),
        "creationtime": ts(0),
        "video_mode": "none",
    }


def channel(uniqueid: str, name: str, caller_name: str = "", caller_number: str = "", created: float = 0) -> dict[str, Any]:
    return {
        "id": uniqueid,
        "name": name,
        "state": "Up",
        "protocol_id": f"{uniqueid}@127.0.0.1",
        "caller": {"name": caller_name, "number": caller_number},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "stc-conf", "exten": "1000", "priority": 3, "app_name": "ConfBridge", "app_data": "1000"},
        "creationtime": ts(created),
        "language": "en",
    }


def ari(kind: str, at: float, **body: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": ts(at), "asterisk_id": "02:42:ac:11:00:02", "application": "stc", **body}


def ami(kind: str, **fields: str) -> Message:
    return Message({"Event": kind, "Privilege": "call,all", **fields})


ALICE = channel("1714557600.1", "PJSIP/stc-00000001", "alice", "alice")
MALLORY = channel("1714557600.3", "PJSIP/mallory-00000003", ZOE, "666")
ANNOUNCER = channel("1714557600.2", "CBAnn/1000-00000001;1", "", "")
BOB_2000 = channel("1714557600.4", "PJSIP/stc-00000004", "bob", "bob")


def peer(name: str, fingerprint: str) -> PeerIdentity:
    return PeerIdentity(
        display_name=name,
        subject=f"CN={name},O=ACME",
        organization="ACME",
        org_unit=None,
        sip_uris=("sip:user@example.org",),
        emails=(),
        issuer="CN=stc test CA",
        serial=7,
        fingerprint_sha256=fingerprint,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=365),
    )


def summary(state: ConferenceState, room: str) -> list[tuple[str, str | None, bool]]:
    """(channel id, certificate name or 'caller id' marked with '?', talking)."""
    return [
        (e.channel_id, e.display_name if e.identity else f"?{e.caller_id}", e.talking) for e in state.entries(room)
    ]


A, M = ALICE["id"], MALLORY["id"]
CONF = bridge()

# (step, event, rooms changed, summary of room 1000 afterwards)
STEPS: list[tuple[str, Any, set[str], list[tuple[str, str | None, bool]]]] = [
    ("bridge created", ari("BridgeCreated", 1, bridge=CONF), {"1000"}, []),
    ("alice enters", ari("ChannelEnteredBridge", 2, bridge=bridge(channels=(A,)), channel=ALICE), {"1000"}, [(A, ZOE, False)]),
    ("alice again (duplicate)", ari("ChannelEnteredBridge", 9, bridge=CONF, channel=ALICE), set(), [(A, ZOE, False)]),
    ("announcer enters", ari("ChannelEnteredBridge", 3, bridge=CONF, channel=ANNOUNCER), set(), [(A, ZOE, False)]),
    (
        "mallory enters unbound",
        ari("ChannelEnteredBridge", 4, bridge=CONF, channel=MALLORY),
        {"1000"},
        [(A, ZOE, False), (M, f'?"{ZOE}" <666>', False)],
    ),
    (
        "alice talks",
        ami("ConfbridgeTalking", Conference="1000", BridgeUniqueid=BRIDGE, Channel=ALICE["name"], Uniqueid=A, TalkingStatus="on"),
        set(),  # talking is not a roster change: it goes out as a talking update (pop_talking_changes)
        [(A, ZOE, True), (M, f'?"{ZOE}" <666>', False)],
    ),
    (
        "alice talks (repeat)",
        ami("ConfbridgeTalking", Conference="1000", Uniqueid=A, TalkingStatus="on"),
        set(),
        [(A, ZOE, True), (M, f'?"{ZOE}" <666>', False)],
    ),
    (
        "talking in another conference name is not alice's",
        ami("ConfbridgeTalking", Conference="2000", Uniqueid=A, TalkingStatus="off"),
        set(),
        [(A, ZOE, True), (M, f'?"{ZOE}" <666>', False)],
    ),
    (
        "a non-ConfBridge bridge",
        ari("ChannelEnteredBridge", 5, bridge=bridge("other", "1000", creator="stc-app"), channel=channel("9.9", "PJSIP/x-9")),
        set(),
        [(A, ZOE, True), (M, f'?"{ZOE}" <666>', False)],
    ),
    (
        "AMI join changes nothing (membership is ARI's)",
        ami("ConfbridgeJoin", Conference="1000", Uniqueid="8.8", Channel="PJSIP/ghost-8", CallerIDName="ghost"),
        set(),
        [(A, ZOE, True), (M, f'?"{ZOE}" <666>', False)],
    ),
    ("mallory leaves", ari("ChannelLeftBridge", 6, bridge=CONF, channel=MALLORY), {"1000"}, [(A, ZOE, True)]),
    (
        "alice's AMI leave clears talking",
        ami("ConfbridgeLeave", Conference="1000", Uniqueid=A, Channel=ALICE["name"]),
        set(),
        [(A, ZOE, False)],
    ),
    ("alice destroyed", ari("ChannelDestroyed", 7, channel=ALICE, cause=16, cause_txt="Normal Clearing"), {"1000"}, []),
    ("bridge destroyed", ari("BridgeDestroyed", 8, bridge=CONF), {"1000"}, []),
]


def test_event_sequence_table() -> None:
    state = ConferenceState()
    state.rebuild([], [])
    state.bind(A, peer(ZOE, "ab" * 32))
    for step, event, rooms, expected in STEPS:
        talking_before = state.talking("1000")
        changed = state.apply_ami(event) if isinstance(event, Message) else state.apply_ari(event)
        assert changed == rooms, step
        assert summary(state, "1000") == expected, step
        talkers_changed = state.talking("1000") != talking_before
        assert state.pop_talking_changes() == ({"1000"} if talkers_changed else set()), step
        assert state.talking("1000") == {e[0] for e in expected if e[2]}, step
        if step == "mallory enters unbound":
            assert state.unauthenticated() == [UnboundChannel("1000", BRIDGE, M, MALLORY["name"])]
    assert state.rooms() == []
    assert state.binding(A) is None  # ChannelDestroyed drops the admission binding


def test_joined_at_comes_from_the_event_and_entries_are_ordered_by_it() -> None:
    state = ConferenceState()
    state.rebuild([], [])
    state.apply_ari(ari("ChannelEnteredBridge", 30, bridge=CONF, channel=MALLORY))
    state.apply_ari(ari("ChannelEnteredBridge", 20, bridge=CONF, channel=ALICE))
    entries = state.entries("1000")
    assert [e.channel_id for e in entries] == [A, M]
    assert entries[0].joined_at == "2026-05-01T10:00:20.000000Z"


@pytest.mark.parametrize(
    "event",
    [
        {"type": "ChannelEnteredBridge", "bridge": CONF},  # no channel
        {"type": "ChannelEnteredBridge", "bridge": "1000", "channel": ALICE},
        {"type": "ChannelEnteredBridge", "bridge": CONF, "channel": {"name": "PJSIP/x"}},
        {"type": "ChannelEnteredBridge", "bridge": bridge(name=""), "channel": ALICE},
        {"type": "BridgeCreated", "bridge": {"creator": "ConfBridge"}},
        {"type": "ChannelLeftBridge", "bridge": CONF, "channel": {"id": 5}},
        {"type": "StasisStart", "channel": ALICE},
        {"type": None},
        ["not", "an", "object"],
    ],
)
def test_malformed_and_unknown_ari_events_are_ignored(event: Any) -> None:
    state = ConferenceState()
    state.rebuild([bridge(channels=(A,))], [ALICE])
    before = summary(state, "1000")
    assert state.apply_ari(event) == set()
    assert summary(state, "1000") == before


@pytest.mark.parametrize(
    "event",
    [
        {"Event": "ConfbridgeTalking", "Conference": "1000", "TalkingStatus": "on"},  # no Uniqueid
        {"Event": "ConfbridgeTalking", "Conference": "1000", "Uniqueid": A, "TalkingStatus": "maybe"},
        {"Event": "ConfbridgeTalking", "Conference": "1000", "Uniqueid": "no.such", "TalkingStatus": "on"},
        {"Event": "ConfbridgeMute", "Conference": "1000", "Uniqueid": A},
        "garbage",
    ],
)
def test_malformed_and_unknown_ami_events_are_ignored(event: Any) -> None:
    state = ConferenceState()
    state.rebuild([bridge(channels=(A,))], [ALICE])
    assert state.apply_ami(event) == set()
    assert summary(state, "1000") == [(A, '?"alice" <alice>', False)]


def test_rebuild_from_snapshot() -> None:
    state = ConferenceState()
    assert state.status == "unknown"
    state.bind(A, peer(ZOE, "ab" * 32))
    holding = bridge("h-1", "", creator="Dial")
    bridges = [bridge(channels=(A, ANNOUNCER["id"], M)), bridge(BRIDGE_2000, "2000", (BOB_2000["id"],)), holding]
    late_mallory = channel(M, MALLORY["name"], ZOE, "666", created=2)
    channels = [channel(A, ALICE["name"], "alice", "alice", created=1), ANNOUNCER, late_mallory, BOB_2000]
    changed = state.rebuild(bridges, channels)
    assert changed == {"1000", "2000"}
    assert state.status == "ok"
    assert state.rooms() == ["1000", "2000"]
    assert summary(state, "1000") == [(A, ZOE, False), (M, f'?"{ZOE}" <666>', False)]
    assert state.entries("1000")[0].joined_at == "2026-05-01T10:00:01.000000Z"  # the channel's creation time
    assert [u.channel_id for u in state.unauthenticated()] == [M, BOB_2000["id"]]
    assert [u.channel_id for u in state.unauthenticated("2000")] == [BOB_2000["id"]]
    # The same snapshot again changes nothing; talking flags and join times survive.
    state.apply_ami({"Event": "ConfbridgeTalking", "Conference": "1000", "Uniqueid": A, "TalkingStatus": "on"})
    assert state.rebuild(bridges, channels) == set()
    assert summary(state, "1000")[0] == (A, ZOE, True)
    # A channel listed in a bridge but already gone from /channels is skipped.
    assert state.rebuild([bridge(channels=(A, "gone.1"))], channels) == {"1000", "2000"}
    assert [e.channel_id for e in state.entries("1000")] == [A]
    assert state.rooms() == ["1000"]


def test_unknown_state_then_reconnect() -> None:
    state = ConferenceState()
    state.rebuild([bridge(channels=(A,)), bridge(BRIDGE_2000, "2000", (BOB_2000["id"],))], [ALICE, BOB_2000])
    assert state.set_unknown() == {"1000", "2000"}
    assert state.set_unknown() == set()
    assert state.status == "unknown"
    assert state.rooms() == ["1000", "2000"]
    assert state.entries("1000") == () and state.unauthenticated() == []
    roster = state.roster("1000", server_id="srv", version=3, issued_at="2026-05-01T10:00:00Z")
    assert (roster.state, roster.entries) == ("unknown", ())
    # Events while unknown are applied but not shown; the rebuild decides.
    assert state.rebuild([bridge(channels=(A,))], [ALICE]) == {"1000", "2000"}
    assert state.rooms() == ["1000"]
    assert summary(state, "1000") == [(A, '?"alice" <alice>', False)]


def test_bind_after_join_changes_the_room_and_unbind_reverts() -> None:
    state = ConferenceState()
    state.rebuild([bridge(channels=(A,)), bridge(BRIDGE_2000, "2000", (BOB_2000["id"],))], [ALICE, BOB_2000])
    assert state.bind(A, peer(ZOE, "ab" * 32)) == {"1000"}
    assert state.bind("not.in.a.bridge", peer("x", "cd" * 32)) == set()
    assert state.bind(A, peer("Other", "ef" * 32)) == {"1000"}
    assert summary(state, "1000") == [(A, "Other", False)]
    assert state.unbind(A) == {"1000"}
    with pytest.raises(ValueError):
        state.bind(A, {"display_name": "incomplete"})


def test_rebuild_drops_bindings_of_vanished_channels_only_before_the_mark() -> None:
    state = ConferenceState()
    state.bind("old.1", peer("old", "ab" * 32))
    mark = state.binding_mark()
    state.bind("new.1", peer("new", "cd" * 32))  # admitted while the snapshot was fetched
    state.rebuild([], [])  # neither channel in the snapshot
    assert state.binding("old.1") is not None  # no mark: nothing dropped
    state.rebuild([], [], binding_mark=mark)
    assert state.binding("old.1") is None
    assert state.binding("new.1") is not None


def test_bindings_are_bounded() -> None:
    state = ConferenceState(max_bindings=2)
    for i in range(3):
        state.bind(f"c.{i}", peer("x", "ab" * 32))
    assert [state.binding(f"c.{i}") is not None for i in range(3)] == [False, True, True]


def test_rooms_are_independent() -> None:
    state = ConferenceState()
    state.rebuild([bridge(channels=(A,))], [ALICE])
    b2000 = bridge(BRIDGE_2000, "2000")
    assert state.apply_ari(ari("BridgeCreated", 1, bridge=b2000)) == {"2000"}
    assert state.apply_ari(ari("ChannelEnteredBridge", 2, bridge=b2000, channel=BOB_2000)) == {"2000"}
    assert summary(state, "1000") == [(A, '?"alice" <alice>', False)]
    assert [e.channel_id for e in state.entries("2000")] == [BOB_2000["id"]]


def test_roster_from_state_signs_and_verifies_with_unicode_intact() -> None:
    state = ConferenceState()
    state.rebuild([bridge(channels=(A, M))], [ALICE, MALLORY])
    state.bind(A, peer(ZOE, "ab" * 32))
    roster = state.roster("1000", server_id="srv", version=10, issued_at="2026-05-01T10:00:00+00:00")
    key = ec.generate_private_key(ec.SECP256R1())
    accepted = RosterVerifier(key.public_key(), room="1000").accept(RosterSigner(key).sign(roster).to_bytes())
    assert [e.display_name for e in accepted.authenticated] == [ZOE]
    assert [e.caller_id for e in accepted.unauthenticated] == [f'"{ZOE}" <666>']
    assert accepted.authenticated[0].peer_identity() == peer(ZOE, "ab" * 32)
