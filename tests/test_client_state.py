"""ClientState: the light, the call, the roster and its warnings, snapshots and subscribers; the status table."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stc_client.state import REASON_LABELS, ClientState
from stc_client.status_cli import render_status
from stc_wire.identity import PeerIdentity
from stc_wire.roster import Roster, RosterEntry, RosterRejected, RosterSigner, RosterVerifier, iso_utc

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)
ZOE = "Zoë Ålice-Øster"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


def person(name: str, fp_digit: str, *, org: str | None = "stc test", sip: bool = True) -> PeerIdentity:
    return PeerIdentity(
        display_name=name,
        subject=f"CN={name},O={org}",
        organization=org,
        org_unit=None,
        sip_uris=(f"sip:{name.lower()}@stc.test",) if sip else (),
        emails=(f"{name.lower()}@stc.test",),
        issuer="CN=stc test CA,O=stc test",
        serial=0x1234,
        fingerprint_sha256=fp_digit * 64,
        not_before=T0 - timedelta(days=1),
        not_after=T0 + timedelta(days=365),
    )


ALICE, BOB, ZOE_ID = person("Alice", "a"), person("Bob", "b"), person(ZOE, "c", org="Ørganisation", sip=False)
SERVER = person("stc-server.test", "f", org=None)


def entry(
    channel: str, who: PeerIdentity | None, minute: int, *, talking: bool = False, caller: str | None = None
) -> RosterEntry:
    return RosterEntry(
        channel_id=channel, room="1000", identity=who.to_json() if who else None,
        channel_name=f"PJSIP/{channel}", caller_id=caller, joined_at=iso_utc(T0 + timedelta(minutes=minute)),
        talking=talking,
    )


def roster(*entries: RosterEntry, version: int = 1, state: str = "ok") -> Roster:
    return Roster("stc-server.test", "1000", version, iso_utc(T0), state, tuple(entries))  # type: ignore[arg-type]


def in_call(clock: Clock | None = None) -> ClientState:
    state = ClientState(clock=clock or Clock())
    state.tunnel_up(SERVER, ALICE.to_json())
    state.call_started("1000", "AEAD_AES_128_GCM")
    return state


def test_starts_red_not_connected() -> None:
    snap = ClientState(clock=Clock()).snapshot()
    assert (snap["light"], snap["label"], snap["reason_code"], snap["reason_label"]) == (
        "red", "Not connected", "not-connected", "not connected yet")
    assert snap["since"] == "2026-05-01T10:00:00.000000Z"
    assert snap["server"] is None and snap["call"] is None and snap["roster"] is None
    assert snap["participants"] == [] and snap["warnings"] == []


@pytest.mark.parametrize(
    ("code", "label"),
    [
        ("refused-by-server", "refused certificate"),
        ("server-unreachable", "server unreachable"),
        ("server-certificate-rejected", "server certificate wrong"),
        ("tls-failed", "TLS failed"),
        ("protocol-error", "protocol error"),
        ("bad-local-settings", "bad local settings"),
        ("tunnel-closed", "tunnel closed"),
    ],
)
def test_red_reasons_have_words(code: str, label: str) -> None:
    state = in_call()
    state.tunnel_down(code, f"detail for {code}")
    snap = state.snapshot()
    assert snap["light"] == "red"
    assert snap["reason_code"] == code and snap["reason_label"] == label == REASON_LABELS[code]
    assert snap["reason"] == f"detail for {code}"
    # The call and its roster end with the tunnel.
    assert snap["call"] is None and snap["server"] is None and snap["participants"] == []


def test_unknown_reason_code_is_shown_as_is() -> None:
    state = ClientState()
    state.tunnel_down("something-new", "a new way to fail")
    assert state.snapshot()["reason_label"] == "something-new"


def test_red_yellow_green_and_back() -> None:
    clock = Clock()
    state = ClientState(clock=clock)
    clock.tick(5)
    state.tunnel_up(SERVER, ALICE.to_json())
    snap = state.snapshot()
    assert (snap["light"], snap["label"], snap["reason_code"], snap["reason_label"]) == (
        "yellow", "Connected, no call", None, None)
    assert snap["server"]["fingerprint_sha256"] == "f" * 64
    assert snap["me"]["display_name"] == "Alice"
    assert snap["since"] == iso_utc(T0 + timedelta(seconds=5))

    clock.tick(5)
    state.call_started("1000", "AES_CM_128_HMAC_SHA1_80")
    snap = state.snapshot()
    assert (snap["light"], snap["label"]) == ("green", "In a secure call")
    assert snap["call"] == {"room": "1000", "srtp_profile": "AES_CM_128_HMAC_SHA1_80",
                            "since": iso_utc(T0 + timedelta(seconds=10))}
    assert "1000" in snap["reason"] and "AES_CM_128_HMAC_SHA1_80" in snap["reason"]

    state.set_roster(roster(entry("c1", ALICE, 0)))
    state.call_ended()
    snap = state.snapshot()
    assert snap["light"] == "yellow" and snap["call"] is None and snap["roster"] is None


def test_a_call_needs_a_tunnel() -> None:
    with pytest.raises(RuntimeError, match="without a tunnel"):
        ClientState().call_started("1000", "AEAD_AES_128_GCM")


def test_roster_rows_from_certificates() -> None:
    state = in_call()
    state.set_roster(roster(entry("c1", ALICE, 0), entry("c2", BOB, 1, talking=True), entry("c3", ZOE_ID, 2)))
    snap = state.snapshot()
    assert snap["roster"]["room"] == "1000" and snap["roster"]["state"] == "ok"
    rows = {r["channel_id"]: r for r in snap["participants"]}
    assert [r["display_name"] for r in snap["participants"]] == ["Alice", "Bob", ZOE]  # join order
    assert rows["c1"]["is_me"] is True and rows["c2"]["is_me"] is False
    assert rows["c2"]["talking"] is True and rows["c1"]["talking"] is False
    assert rows["c1"]["address"] == "sip:alice@stc.test"
    assert rows["c3"]["address"] == f"{ZOE.lower()}@stc.test"  # no SIP URI: the e-mail
    assert rows["c3"]["organization"] == "Ørganisation"
    assert rows["c2"]["fingerprint"] == "b" * 64 and rows["c2"]["short_fingerprint"] == "bbbb bbbb bbbb bbbb"
    assert rows["c1"]["issuer"] == "CN=stc test CA,O=stc test"
    assert snap["warnings"] == []


def test_roster_json_is_accepted_too() -> None:
    state = in_call()
    state.set_roster(roster(entry("c1", ALICE, 0), entry("c2", BOB, 1)).to_json())
    assert [r["display_name"] for r in state.snapshot()["participants"]] == ["Alice", "Bob"]
    state.set_roster(None)
    assert state.snapshot()["roster"] is None and state.snapshot()["participants"] == []


def test_unauthenticated_channel_is_a_warning_and_a_row() -> None:
    state = in_call()
    state.set_roster(roster(entry("c1", ALICE, 0), entry("rogue", None, 3, caller="Mallory")))
    snap = state.snapshot()
    (warning,) = snap["warnings"]
    assert warning["kind"] == "unauthenticated"
    assert "UNAUTHENTICATED" in warning["message"] and "Mallory" in warning["message"]
    rogue = snap["participants"][1]
    assert rogue["authenticated"] is False and rogue["fingerprint"] is None and rogue["issuer"] is None
    assert rogue["caller_id"] == "Mallory" and rogue["channel_name"] == "PJSIP/rogue"
    # Once the channel leaves, so does the warning.
    state.set_roster(roster(entry("c1", ALICE, 0), version=2))
    assert state.snapshot()["warnings"] == []


def test_rejected_roster_warning_stays_until_the_call_ends() -> None:
    server_key = ec.generate_private_key(ec.SECP256R1())
    forger_key = ec.generate_private_key(ec.SECP256R1())
    verifier = RosterVerifier(server_key.public_key(), room="1000")
    state = in_call()
    good = RosterSigner(server_key).sign(roster(entry("c1", ALICE, 0), version=5))
    state.set_roster(verifier.accept(good))
    for forged in (RosterSigner(forger_key).sign(roster(entry("c1", ALICE, 0), version=6)), good):
        try:
            verifier.accept(forged)
        except RosterRejected as exc:
            state.roster_rejected(exc)
    snap = state.snapshot()
    (warning,) = snap["warnings"]
    assert warning["kind"] == "roster-rejected"
    assert "replayed: room 1000 version 5" in warning["message"]  # the latest refusal
    assert "2 refused in this call" in warning["message"]  # the forged one counts too
    assert state.rejection is not None and state.rejection.count == 2
    assert [r["display_name"] for r in snap["participants"]] == ["Alice"]  # the last good roster stays

    state.set_roster(verifier.accept(RosterSigner(server_key).sign(roster(entry("c1", ALICE, 0), version=7))))
    assert [w["kind"] for w in state.snapshot()["warnings"]] == ["roster-rejected"]
    state.call_ended()
    assert state.snapshot()["warnings"] == []


def test_rejection_from_reason_and_message() -> None:
    state = in_call()
    state.roster_rejected("stale-version", "version 3 is not newer than 4")
    (warning,) = state.snapshot()["warnings"]
    assert "stale-version: version 3 is not newer than 4" in warning["message"]


def test_unknown_roster_state_is_a_caution() -> None:
    state = in_call()
    state.set_roster(roster(state="unknown"))
    assert [w["kind"] for w in state.snapshot()["warnings"]] == ["roster-unknown"]


def test_snapshot_is_json_and_seq_grows() -> None:
    state = in_call()
    before = state.seq
    state.set_roster(roster(entry("c1", ZOE_ID, 0), entry("x", None, 1)))
    assert state.seq == before + 1
    snap = state.snapshot()
    assert json.loads(json.dumps(snap, ensure_ascii=False)) == snap
    assert snap["schema"] == 1 and snap["seq"] == state.seq


async def test_subscriber_gets_current_then_each_change() -> None:
    state = ClientState()
    async with state.subscribe() as sub:
        first = await asyncio.wait_for(sub.next(), 1)
        assert first["light"] == "red"
        state.tunnel_up(SERVER)
        assert (await asyncio.wait_for(sub.next(), 1))["light"] == "yellow"
        state.call_started("1000", "AEAD_AES_256_GCM")
        assert (await asyncio.wait_for(sub.next(), 1))["light"] == "green"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sub.next(), 0.05)  # nothing changed


async def test_slow_subscriber_keeps_only_the_newest() -> None:
    state = ClientState()
    sub = state.subscribe()
    await sub.next()
    state.tunnel_up(SERVER)
    for minute in range(50):  # the app goes on; the subscriber reads nothing meanwhile
        state.set_roster(roster(entry("c1", ALICE, minute), version=minute + 1))
    snap = await asyncio.wait_for(sub.next(), 1)
    assert snap["seq"] == state.seq and snap["roster"]["version"] == 50
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sub.next(), 0.05)
    sub.close()


async def test_closing_a_subscription_ends_its_iteration() -> None:
    state = ClientState()
    sub = state.subscribe()
    seen: list[str] = []

    async def read() -> None:
        async for snap in sub:
            seen.append(snap["light"])

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    state.tunnel_up(SERVER)
    await asyncio.sleep(0.01)
    sub.close()
    await asyncio.wait_for(reader, 1)
    assert seen == ["red", "yellow"]
    state.tunnel_down("tunnel-closed", "gone")  # no subscriber left: nothing to wake
    assert seen == ["red", "yellow"]


# -- the `stc-client status` table -------------------------------------------------------


def test_status_table_in_a_call() -> None:
    state = in_call()
    state.set_roster(roster(entry("c1", ALICE, 0), entry("c2", ZOE_ID, 1, talking=True), entry("x", None, 2, caller="Mallory")))
    text = render_status(state.snapshot())
    # An UNAUTHENTICATED channel in the room: the call is not private.
    assert "Status:   AMBER - In a call that is NOT private" in text
    assert "Call:     room 1000, SRTP AEAD_AES_128_GCM" in text
    assert "!! WARNING (unauthenticated)" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.strip().startswith("NAME"))
    alice, zoe, rogue = lines[header + 1 : header + 4]
    assert alice.split()[:2] == ["Alice", "(you)"] and "aaaa aaaa aaaa aaaa" in alice
    assert zoe.startswith(f"  {ZOE}") and " yes " in zoe and "Ørganisation" in zoe
    assert rogue.strip().startswith("UNAUTHENTICATED PJSIP/x") and "claims 'Mallory'" in rogue
    # Columns line up: the fingerprint column starts at the same place in every row.
    col = lines[header].index("FINGERPRINT")
    assert alice[col:col + 19] == "aaaa aaaa aaaa aaaa"


def test_status_table_when_red() -> None:
    state = ClientState()
    state.tunnel_down("refused-by-server", "the server refused this client's certificate")
    text = render_status(state.snapshot())
    assert "Status:   RED - Not connected" in text
    assert "Why:      refused certificate: the server refused this client's certificate" in text
    assert "Call:     none" in text and "NAME" not in text


def test_media_counters_show_only_during_a_call() -> None:
    from stc_client.state import MediaCounters

    state = ClientState(clock=Clock())
    state.set_media(MediaCounters(1, 2, 0, None))  # no call: nothing to show it in
    assert state.snapshot()["media"] is None
    state = in_call()
    at = datetime(2026, 5, 1, 10, 0, 1, tzinfo=timezone.utc)
    seq = state.snapshot()["seq"]
    state.set_media(MediaCounters(50, 48, 1, at))
    assert state.snapshot()["media"] == {"sent": 50, "received": 48, "dropped": 1,
                                         "last_packet_at": "2026-05-01T10:00:01.000000Z"}
    state.set_media(MediaCounters(50, 48, 1, at))  # unchanged: no push
    assert state.snapshot()["seq"] == seq + 1
    state.call_ended("you hung up")
    assert state.snapshot()["media"] is None
