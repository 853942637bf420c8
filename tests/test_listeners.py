"""Hidden listeners in memory: events and scan output as the lab's Asterisk 22 sent them, the roster's
`listeners` section (signed, verified, refused when malformed), and the rooms' policy setting."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stc_asterisk.conference import ConferenceState
from stc_asterisk.config import ServerConfig
from stc_asterisk.listeners import concise_channels, mixmonitor_list_count
from stc_wire.config import ConfigError, load_config
from stc_wire.roster import Roster, RosterEntry, RosterError, RosterListener, RosterSigner, RosterVerifier, SignedRoster
from tests.test_conference import BRIDGE, T0, ami, ari, bridge, channel, peer, ts

ALICE = channel("1796179098.0", "PJSIP/stc-server-00000001", "Alice", "alice")
BOB = channel("1796179098.4", "PJSIP/stc-server-00000002", "Bob", "bob")
LOCAL_1 = channel("1796179098.8", "Local/9999@stc-insider-00000000;1", "P", "111")
A, B = ALICE["id"], BOB["id"]
NOW = T0 + timedelta(seconds=30)


def snapshot_channel(uniqueid: str, name: str, app: str, data: str) -> dict[str, Any]:
    made = channel(uniqueid, name)
    made["dialplan"] = {"context": "default", "exten": "s", "priority": 1, "app_name": app, "app_data": data}
    return made


def spy_fields(prefix: str, ch: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}Channel": ch["name"], f"{prefix}Uniqueid": ch["id"], f"{prefix}ChannelState": "6",
            f"{prefix}CallerIDNum": ch["caller"]["number"], f"{prefix}Context": "stc-insider"}


SPY = snapshot_channel("1796179100.8", "Local/9999@stc-insider-00000003;1", "ChanSpy", "PJSIP/stc-server,q")
SNOOP = snapshot_channel("1796179100.7", f"Snoop/{B}-00000000", "Stasis", "probe")


def room_with(*members: dict[str, Any]) -> ConferenceState:
    state = ConferenceState()
    state.rebuild([bridge(channels=tuple(m["id"] for m in members))], list(members))
    state.bind(A, peer("Alice", "aa" * 32))
    return state


def listed(state: ConferenceState, room: str = "1000") -> list[tuple[str, str, str, str | None]]:
    return [(li.kind, li.hears, li.channel_name, li.action) for li in state.hidden_listeners(room)]


def test_chanspy_on_a_participant_from_start_to_stop() -> None:
    state = room_with(ALICE, BOB)
    assert state.apply_ami(ami("ChanSpyStart", **spy_fields("Spyer", SPY), **spy_fields("Spyee", ALICE)), now=NOW) == {"1000"}
    assert listed(state) == [("chanspy", A, SPY["name"], None)]
    # It moves on to Bob: still one listener, now hearing Bob.
    state.apply_ami(ami("ChanSpyStop", **spy_fields("Spyer", SPY), **spy_fields("Spyee", ALICE)))
    state.apply_ami(ami("ChanSpyStart", **spy_fields("Spyer", SPY), **spy_fields("Spyee", BOB)))
    assert listed(state) == [("chanspy", B, SPY["name"], None)]
    assert state.apply_ami(ami("ChanSpyStop", **spy_fields("Spyer", SPY), **spy_fields("Spyee", BOB))) == {"1000"}
    assert listed(state) == []


def test_snoop_channel_is_one_listener_until_destroyed() -> None:
    state = room_with(ALICE, BOB)
    assert state.apply_ari(ari("ChannelCreated", 10, channel=SNOOP)) == {"1000"}
    # Snoop also raises ChanSpyStart with itself as the spyer: the same listener, not a second one.
    assert state.apply_ami(ami("ChanSpyStart", **spy_fields("Spyer", SNOOP), **spy_fields("Spyee", BOB))) == set()
    [snoop] = state.hidden_listeners("1000")
    assert (snoop.kind, snoop.hears, snoop.channel_id, snoop.since) == ("snoop", B, SNOOP["id"], "2026-05-01T10:00:10.000000Z")
    state.apply_ami(ami("ChanSpyStop", **spy_fields("Spyer", SNOOP), **spy_fields("Spyee", BOB)))
    assert len(state.hidden_listeners("1000")) == 1
    assert state.apply_ari(ari("ChannelDestroyed", 11, channel=SNOOP, cause=16)) == {"1000"}
    assert listed(state) == []


def test_mixmonitor_counts_instances_and_ends_with_the_channel() -> None:
    state = room_with(ALICE, BOB)
    start = ami("MixMonitorStart", Channel=BOB["name"], Uniqueid=B, CallerIDNum="bob")
    stop = ami("MixMonitorStop", Channel=BOB["name"], Uniqueid=B, CallerIDNum="bob")
    assert state.apply_ami(start, now=NOW) == {"1000"}
    [first] = state.hidden_listeners()
    state.set_listener_action(first.key, "stopped")
    state.apply_ami(start, now=NOW)  # a second one: the policy must decide about it again
    [mm] = state.hidden_listeners()
    assert mm.action is None
    assert (mm.kind, mm.hears, mm.channel_name, mm.count, mm.since) == ("mixmonitor", B, BOB["name"], 2, "2026-05-01T10:00:30.000000Z")
    state.apply_ami(stop)
    assert [li.count for li in state.hidden_listeners()] == [1]
    state.apply_ami(start)
    state.apply_ari(ari("ChannelDestroyed", 12, channel=BOB, cause=16))
    assert listed(state) == []


def test_confbridge_recording_hears_the_room_and_its_mixmonitor_is_not_a_second_listener() -> None:
    state = room_with(ALICE)
    assert state.apply_ami(ami("ConfbridgeRecord", Conference="1000", BridgeUniqueid=BRIDGE, BridgeName="1000")) == {"1000"}
    state.apply_ami(ami("MixMonitorStart", Channel="CBRec/1000-00000000", Uniqueid="1796179136.4"))
    assert listed(state) == [("confbridge-record", "room", "CBRec/1000", None)]
    assert listed(state, "2000") == []
    assert state.apply_ami(ami("ConfbridgeStopRecord", Conference="1000", BridgeUniqueid=BRIDGE)) == {"1000"}
    assert listed(state) == []


def test_a_spy_on_the_other_half_of_a_local_channel_hears_that_participant() -> None:
    state = room_with(ALICE, LOCAL_1)
    half_2 = {"SpyeeChannel": "Local/9999@stc-insider-00000000;2", "SpyeeUniqueid": "1796179098.9"}
    state.apply_ami(ami("ChanSpyStart", **spy_fields("Spyer", SPY), **half_2))
    assert listed(state) == [("chanspy", LOCAL_1["id"], SPY["name"], None)]


def test_an_ari_recording_of_a_snoop_hears_the_snooped_participant() -> None:
    state = room_with(ALICE, BOB)
    state.apply_ari(ari("ChannelCreated", 10, channel=SNOOP))
    recording = {"name": "rec-1", "format": "wav", "state": "recording", "target_uri": f"channel:{SNOOP['id']}"}
    assert state.apply_ari(ari("RecordingStarted", 11, recording=recording)) == {"1000"}
    assert sorted(listed(state)) == [("recording", B, "rec-1", None), ("snoop", B, SNOOP["name"], None)]
    assert state.apply_ari(ari("RecordingFinished", 12, recording=recording)) == {"1000"}
    assert listed(state) == [("snoop", B, SNOOP["name"], None)]


# `core show channels concise` and `mixmonitor list` as the lab printed them.
CONCISE = f"""CBRec/1000-00000000!default!s!1!Up!(None)!!!!!3!0!{BRIDGE}!1796179136.4
Local/9999@stc-insider-00000000;1!stc-insider!9999!1!Up!ConfBridge!1000,stc_bridge,stc_user!1!!!3!1!{BRIDGE}!1796179135.0
CBAnn/1000-00000001;1!default!s!1!Up!(None)!!!!!3!1!!1796179135.2
"""
MIXMONITOR_LIST = ("MixMonitor ID\tFile\tReceive File\tTransmit File\n"
                   "=========================================================================\n"
                   "0x7fc3e4004820\t/tmp/probe-mm2\t\t\n0x7fc3dc005060\t/tmp/probe-mm")


def test_scan_output_parsers() -> None:
    channels = concise_channels(CONCISE + "garbage line\n\n")
    assert [c.name for c in channels] == ["CBRec/1000-00000000", "Local/9999@stc-insider-00000000;1", "CBAnn/1000-00000001;1"]
    assert channels[1].application == "ConfBridge" and channels[1].uniqueid == "1796179135.0"
    assert channels[0].bridge_id == BRIDGE
    assert mixmonitor_list_count(MIXMONITOR_LIST) == 2
    assert mixmonitor_list_count(MIXMONITOR_LIST.split("0x7fc3e")[0]) == 0
    assert mixmonitor_list_count("No such command 'mixmonitor list' (type 'core show help mixmonitor' for other possible commands)") == 0


def test_listeners_started_while_the_server_was_away_are_found_by_the_reconnect_scan() -> None:
    state = ConferenceState()
    # ARI snapshot: a snoop on Bob and a ChanSpy channel whose target is only known by its prefix.
    state.rebuild([bridge(channels=(A, B))], [ALICE, BOB, SNOOP, SPY])
    assert sorted(listed(state)) == [("chanspy", "room", SPY["name"], None), ("snoop", B, SNOOP["name"], None)]
    # AMI scan: the ConfBridge recorder (internal, not in ARI) and two MixMonitors on Alice.
    changed = state.apply_scan(concise_channels(CONCISE), {A: (ALICE["name"], 2), B: (BOB["name"], 0)}, now=NOW)
    assert changed == {"1000"}
    kinds = sorted((li.kind, li.hears, li.count) for li in state.hidden_listeners("1000"))
    assert kinds == [("chanspy", "room", 1), ("confbridge-record", "room", 1), ("mixmonitor", A, 2), ("snoop", B, 1)]
    # A later scan without them forgets them; a rebuild without the snoop forgets it.
    state.apply_scan([], {A: (ALICE["name"], 0)}, now=NOW)
    state.rebuild([bridge(channels=(A, B))], [ALICE, BOB, SPY])
    assert listed(state) == [("chanspy", "room", SPY["name"], None)]
    # A spy whose prefix matches nobody in the room hears nothing of it.
    other = snapshot_channel("5.5", "PJSIP/other-1", "ChanSpy", "PJSIP/somebody-else")
    state.rebuild([bridge(channels=(A, B))], [ALICE, BOB, other])
    assert listed(state) == []


def test_unknown_state_forgets_listeners_and_listeners_of_absent_participants_wait() -> None:
    state = room_with(ALICE)
    # MixMonitor on a channel that is not (yet) in a room: not on any roster...
    state.apply_ami(ami("MixMonitorStart", Channel=BOB["name"], Uniqueid=B))
    assert state.hidden_listeners() == []
    # ...until it joins.
    assert state.apply_ari(ari("ChannelEnteredBridge", 13, bridge=bridge(channels=(A, B)), channel=BOB)) == {"1000"}
    assert listed(state) == [("mixmonitor", B, BOB["name"], None)]
    state.set_unknown()
    assert state.hidden_listeners() == []
    state.rebuild([bridge(channels=(A, B))], [ALICE, BOB])
    assert state.hidden_listeners() == []  # the AMI scan, not memory, brings it back


def test_listener_actions_are_on_the_signed_roster() -> None:
    state = room_with(ALICE, BOB)
    state.apply_ami(ami("MixMonitorStart", Channel=BOB["name"], Uniqueid=B), now=NOW)
    [mm] = state.hidden_listeners()
    assert state.set_listener_action(mm.key, "stopping", quiet=True) == set()
    assert state.set_listener_action(mm.key, "stopped") == {"1000"}
    assert state.set_listener_action(mm.key, "stopped") == set()
    key = ec.generate_private_key(ec.SECP256R1())
    roster = state.roster("1000", server_id="s" * 64, version=1, issued_at=ts(31))
    signed = RosterSigner(key).sign(roster)
    accepted = RosterVerifier(key.public_key()).accept(signed.to_bytes())
    assert [li.to_json() for li in accepted.listeners] == [
        {"kind": "mixmonitor", "hears": B, "channel": BOB["name"], "since": "2026-05-01T10:00:30.000000Z", "action": "stopped"}]
    assert json.loads(signed.payload)["listeners"][0]["kind"] == "mixmonitor"


def entry(channel_id: str) -> RosterEntry:
    return RosterEntry(channel_id=channel_id, room="1000", identity=None, channel_name=f"PJSIP/x-{channel_id}",
                       caller_id="x", joined_at=ts(1))


def listener(**changes: Any) -> RosterListener:
    values: dict[str, Any] = {"kind": "snoop", "hears": "1.1", "channel": "Snoop/1.1-00000000", "since": ts(2),
                              "action": "stopping"} | changes
    return RosterListener(**values)


def test_a_roster_without_listeners_is_the_format_older_clients_accept() -> None:
    roster = Roster("s" * 64, "1000", 1, ts(3), "ok", (entry("1.1"),))
    assert "listeners" not in roster.to_json()
    with_listener = Roster("s" * 64, "1000", 2, ts(3), "ok", (entry("1.1"),), (listener(), listener(hears="room")))
    again = Roster.from_bytes(with_listener.canonical_bytes())
    assert again == with_listener and [li.hears for li in again.listeners] == ["1.1", "room"]


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda obj: obj.update(listeners=[]), "non-empty list"),
        (lambda obj: obj.update(listeners={}), "non-empty list"),
        (lambda obj: obj["listeners"][0].update(hears="9.9"), "not a channel of this roster"),
        (lambda obj: obj["listeners"][0].update(action="ignored"), "action"),
        (lambda obj: obj["listeners"][0].update(kind=""), "kind"),
        (lambda obj: obj["listeners"][0].update(extra=1), "listener keys"),
        (lambda obj: obj["listeners"][0].update(since="yesterday"), "since"),
        (lambda obj: obj["listeners"].append(dict(obj["listeners"][0])), "twice"),
        (lambda obj: obj.update(spies=[]), "roster keys"),
    ],
)
def test_malformed_listeners_are_refused(mutate: Any, needle: str) -> None:
    obj = Roster("s" * 64, "1000", 2, ts(3), "ok", (entry("1.1"),), (listener(),)).to_json()
    mutate(obj)
    with pytest.raises(RosterError, match=needle):
        Roster.from_json(obj)


def test_a_tampered_listener_is_a_bad_signature() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = RosterSigner(key).sign(Roster("s" * 64, "1000", 2, ts(3), "ok", (entry("1.1"),), (listener(),)))
    payload = signed.payload.replace(b'"stopping"', b'"stopped" ')
    with pytest.raises(Exception, match="bad-signature"):
        RosterVerifier(key.public_key()).accept(SignedRoster(signed.algorithm, payload, signed.signature))


def test_failed_action_carries_the_reason() -> None:
    assert listener(action="failed: HTTP 500").action == "failed: HTTP 500"
    with pytest.raises(RosterError):
        listener(action="failed: " + "x" * 300)


def test_hidden_listener_policy_setting(tmp_path: Path) -> None:
    path = tmp_path / "stc.toml"
    secrets = '[asterisk]\nari_password = "a"\nami_secret = "b"\n'  # stc-server has no built-in ones
    path.write_text(secrets + '[rooms]\nhidden_listeners = "show"\n[rooms.hidden_listeners_per_room]\n"1001" = "stop"\n')
    config = load_config(ServerConfig, path)
    assert config.rooms.hidden_listener_policy("1000") == "show"
    assert config.rooms.hidden_listener_policy("1001") == "stop"
    path.write_text(secrets)
    assert load_config(ServerConfig, path).rooms.hidden_listener_policy("1000") == "stop"
    path.write_text(secrets + '[rooms]\nhidden_listeners = "ignore"\n')
    with pytest.raises(ConfigError, match="hidden_listeners"):
        load_config(ServerConfig, path)
