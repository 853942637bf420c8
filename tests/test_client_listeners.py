"""The client tells the truth about privacy: amber with words for every listener and UNAUTHENTICATED
channel, and a call history that keeps what was only there for milliseconds."""

from __future__ import annotations

from datetime import timedelta

from stc_client.state import ClientState
from stc_client.status_cli import render_status
from stc_wire.roster import Roster, RosterEntry, RosterListener, iso_utc
from tests.test_client_state import ALICE, BOB, SERVER, T0, Clock, entry, in_call


def at(ms: float) -> str:
    return iso_utc(T0 + timedelta(milliseconds=ms))


def roster(version: int, ms: float, *entries: RosterEntry, listeners: tuple[RosterListener, ...] = ()) -> Roster:
    return Roster("stc-server.test", "1000", version, at(ms), "ok", entries, listeners)


def listener(kind: str, hears: str, action: str = "stopping", channel: str = "X/1") -> RosterListener:
    return RosterListener(kind=kind, hears=hears, channel=channel, since=at(0), action=action)


A, B = entry("c1", ALICE, 0), entry("c2", BOB, 1)


def test_green_only_when_everyone_is_authenticated_and_nobody_listens() -> None:
    state = in_call()
    state.set_roster(roster(1, 0, A, B))
    assert state.snapshot()["light"] == "green" and state.snapshot()["listeners"] == []

    state.set_roster(roster(2, 10, A, B, listeners=(listener("mixmonitor", "c2"),)))
    snap = state.snapshot()
    assert (snap["light"], snap["label"]) == ("amber", "In a call that is NOT private")
    assert snap["reason"] == "NOT private: Bob's line is being recorded (MixMonitor): stc is stopping it."
    [row] = snap["listeners"]
    assert (row["kind"], row["hears_name"], row["action"]) == ("mixmonitor", "Bob", "stopping")
    assert [w["kind"] for w in snap["warnings"]] == ["listener"]

    state.set_roster(roster(3, 20, A, B))
    assert state.snapshot()["light"] == "green"

    state.set_roster(roster(4, 30, A, B, entry("x", None, 2, caller='"Spy" <666>')))
    snap = state.snapshot()
    assert snap["light"] == "amber"
    assert 'UNAUTHENTICATED channel PJSIP/x (claims to be "Spy" <666>) is in the conference' in snap["reason"]


def test_listeners_in_words() -> None:
    state = in_call()  # the client is Alice
    cases = [
        (listener("mixmonitor", "c1"), "Your line is being recorded (MixMonitor): stc is stopping it"),
        (listener("chanspy", "c2", "stopped"), "Bob is being listened to from another line (ChanSpy): stopped by stc"),
        (listener("chanspy", "c1", "shown"),
         "You are being listened to from another line (ChanSpy): allowed by the server's policy, it goes on"),
        (listener("confbridge-record", "room", "shown"),
         "The whole conference is being recorded (ConfBridge recording): allowed by the server's policy, it goes on"),
        (listener("snoop", "c2", "failed: HTTP 500"),
         "Bob is being listened to through the PBX's programming interface (ARI snoop): stc could not stop it (HTTP 500)"),
        (listener("recording", "c2"),
         "Bob's line is being recorded through the PBX's programming interface (ARI recording): stc is stopping it"),
        (listener("teleporter", "c2"), "Bob can be heard by something outside the conference (teleporter): stc is stopping it"),
    ]
    for version, (li, words) in enumerate(cases, start=1):
        state.set_roster(roster(version, version, A, B, listeners=(li,)))
        assert state.snapshot()["listeners"][0]["message"] == words


def test_call_history_keeps_a_millisecond_ejection_and_every_listener() -> None:
    clock = Clock()
    state = ClientState(clock=clock)
    state.tunnel_up(SERVER, ALICE.to_json())
    state.call_started("1000", "AES_CM_128_HMAC_SHA1_80")
    spy = entry("local-1", None, 2, caller='"Spy" <666>')
    mm = listener("mixmonitor", "c2", channel="PJSIP/c2")
    state.set_roster(roster(1, 0, A))
    state.set_roster(roster(2, 1000, A, B))
    state.set_roster(roster(3, 2000, A, B, spy))
    state.set_roster(roster(4, 2005, A, B))  # ejected 5 ms later
    state.set_roster(roster(5, 3000, A, B, listeners=(mm,)))
    state.set_roster(roster(6, 3004, A, B, listeners=(listener("mixmonitor", "c2", "stopped", "PJSIP/c2"),)))
    state.set_roster(roster(7, 3010, A, B))
    state.set_roster(roster(8, 4000, A))
    snap = state.snapshot()
    assert snap["light"] == "green"  # nothing now...
    history = [(h["at"], h["kind"], h["message"]) for h in snap["history"]]
    assert history == [  # ...but everything that was
        (at(0), "joined", "Alice (you) joined"),
        (at(1000), "joined", "Bob joined"),
        (at(2000), "unauthenticated", 'UNAUTHENTICATED channel PJSIP/local-1 (claims to be "Spy" <666>) entered the conference'),
        (at(2005), "unauthenticated-gone", 'UNAUTHENTICATED channel PJSIP/local-1 (claims to be "Spy" <666>) is gone'),
        (at(3000), "listener", "Bob's line is being recorded (MixMonitor): stc is stopping it"),
        (at(3004), "listener-changed", "Bob's line is being recorded (MixMonitor): stopped by stc"),
        (at(3010), "listener-gone", "Bob's line is being recorded (MixMonitor): no longer after 3010 ms"),
        (at(4000), "left", "Bob left"),
    ]
    assert "is gone" in render_status(snap) and "History of this call:" in render_status(snap)
    # The history outlives the call (to be read after hanging up) and is cleared by the next one.
    state.call_ended()
    assert len(state.snapshot()["history"]) == 8
    state.call_started("1001", "AES_CM_128_HMAC_SHA1_80")
    assert state.snapshot()["history"] == []


def test_the_time_an_unauthenticated_channel_stayed_comes_from_its_join_time() -> None:
    state = in_call()
    spy = RosterEntry(channel_id="l1", room="1000", identity=None, channel_name="Local/9999@x-1;1", caller_id=None,
                      joined_at=at(2000))
    state.set_roster(roster(1, 2001, A, spy))
    state.set_roster(roster(2, 2006, A))
    assert state.snapshot()["history"][-1]["message"] == \
        "UNAUTHENTICATED channel Local/9999@x-1;1 (no caller id) is gone after 6 ms"


def test_the_client_log_names_every_listener() -> None:
    from stc_client.app import describe_roster

    text = describe_roster(roster(1, 0, A, B, listeners=(listener("snoop", "c2", "stopped", "Snoop/c2-00000001"),)))
    assert ("!! NOT PRIVATE: Bob is being listened to through the PBX's programming interface (ARI snoop): "
            "stopped by stc [Snoop/c2-00000001]") in text
