"""Compact rosters for big rooms, in memory: summaries once, deltas against a held version, one signature
over the whole roster; signed talking updates. Tampered, wrong base, replayed and reordered updates."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stc_wire.identity import PeerIdentity
from stc_wire.roster import (
    Roster,
    RosterEntry,
    RosterListener,
    RosterRejected,
    RosterSigner,
    RosterVerifier,
    canonical_json,
    identity_json,
    iso_utc,
)
from stc_wire.roster_sync import (
    CompactEntry,
    RosterOutOfStep,
    RosterPublisher,
    RosterReceiver,
    compact_roster_bytes,
    identity_ref,
    message_kind,
    parse_resync_request,
    resync_request,
    sign_talking,
)

T0 = datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)
KEY = ec.generate_private_key(ec.SECP256R1())
SERVER = "stc-server-1"
ROOM = "1000"


def peer(index: int) -> PeerIdentity:
    return PeerIdentity(display_name=f"User {index} Ø", subject=f"CN=User {index},O=ACME", organization="ACME",
                        org_unit="Ops", sip_uris=(f"sip:u{index}@example.org",), emails=(), issuer="CN=stc test CA",
                        serial=index, fingerprint_sha256=f"{index:02x}" * 32, not_before=T0 - timedelta(days=1),
                        not_after=T0 + timedelta(days=365))


def entry(index: int, *, talking: bool = False, authenticated: bool = True, name: str | None = None) -> RosterEntry:
    return RosterEntry(f"1714557600.{index}", ROOM, identity_json(peer(index)) if authenticated else None,
                       name or f"PJSIP/stc-{index:08x}", None if authenticated else f'"Mallory" <{index}>',
                       iso_utc(T0 + timedelta(seconds=index)), talking)


def roster(version: int, members: list[RosterEntry], *, seconds: float = 0,
           listeners: tuple[RosterListener, ...] = ()) -> Roster:
    return Roster(SERVER, ROOM, version, iso_utc(T0 + timedelta(seconds=seconds)), "ok", tuple(members), listeners)


def receiver(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = KEY) -> RosterReceiver:
    return RosterReceiver(RosterVerifier(key.public_key(), server_id=SERVER, max_age=60,
                                         clock=lambda: T0 + timedelta(seconds=30)))


def body_of(data: bytes) -> dict:
    (length,) = struct.unpack_from(">I", data, 6)
    return json.loads(data[10 : 10 + length])


def rewrap(data: bytes, body: dict) -> bytes:
    """The same envelope and signature around another body (what a tamperer can do)."""
    (length,) = struct.unpack_from(">I", data, 6)
    new = json.dumps(body, ensure_ascii=False).encode()
    return data[:6] + struct.pack(">I", len(new)) + new + data[10 + length :]


def history() -> tuple[RosterPublisher, list]:
    """v1: 1, 2; v2: 3 joins; v3: 1 leaves, 2 talks and its channel is renamed; v4: unauthenticated 9 joins."""
    publisher = RosterPublisher(RosterSigner(KEY))
    steps = [
        roster(1, [entry(1), entry(2)]),
        roster(2, [entry(1), entry(2), entry(3)], seconds=1),
        roster(3, [entry(2, talking=True, name="PJSIP/stc-renamed"), entry(3)], seconds=2),
        roster(4, [entry(2, talking=True, name="PJSIP/stc-renamed"), entry(3), entry(9, authenticated=False)],
               seconds=3),
    ]
    return publisher, [publisher.publish(r) for r in steps]


def test_the_signed_bytes_are_the_canonical_json_of_the_compact_roster() -> None:
    r = roster(7, [entry(2), entry(1, talking=True)],
               listeners=(RosterListener("chanspy", "room", "PJSIP/spy-1", iso_utc(T0), "stopping"),))
    compact = [CompactEntry.from_entry(e) for e in r.entries]
    header = {"server_id": SERVER, "room": ROOM, "version": 7, "issued_at": r.issued_at, "state": "ok",
              "talking": ["1714557600.1"], "listeners": [li.to_json() for li in r.listeners]}
    whole = {"format": 2, **header, "entries": [e.obj for e in sorted(compact, key=CompactEntry.sort_key)]}
    assert compact_roster_bytes(header, reversed(compact)) == canonical_json(whole)
    assert compact[0].obj["identity"] == identity_ref(r.entries[0].identity or {}) and len(compact[0].ref or "") == 64


def test_a_client_follows_full_then_deltas_and_shows_the_whole_roster() -> None:
    _, pubs = history()
    client = receiver()
    shown = client.accept(pubs[0].full, rooms={ROOM})
    assert shown == roster(1, [entry(1), entry(2)])
    for pub in pubs[1:]:
        assert pub.delta is not None and message_kind(pub.delta) == "roster"
        assert client.accept(pub.delta, rooms={ROOM}) == pub.roster
    assert client.held_version(ROOM) == 4
    assert [e.talking for e in client.roster(ROOM).entries] == [True, False, False]  # type: ignore[union-attr]


def test_certificate_summaries_go_once_then_only_references() -> None:
    _, pubs = history()
    full = body_of(pubs[1].full)
    assert len(full["identities"]) == 3 and len(full["added"]) == 3
    delta = body_of(pubs[1].delta or b"")
    assert list(delta["identities"]) == [identity_ref(identity_json(peer(3)))]  # only the newcomer's summary
    assert [e["channel_id"] for e in delta["added"]] == ["1714557600.3"] and delta["base"] == 1
    renamed = body_of(pubs[2].delta or b"")
    assert renamed["identities"] == {} and renamed["removed"] == ["1714557600.1"]
    assert [e["channel_name"] for e in renamed["changed"]] == ["PJSIP/stc-renamed"] and renamed["talking"] == ["1714557600.2"]
    # A big room: a join's delta stays small whatever the size of the room.
    publisher = RosterPublisher(RosterSigner(KEY))
    publisher.publish(roster(1, [entry(i) for i in range(1, 200)]))
    big = publisher.publish(roster(2, [entry(i) for i in range(1, 201)]))
    assert len(big.full) > 100_000 and len(big.delta or b"") < 2_000


def test_a_delta_against_a_version_the_client_does_not_hold_asks_for_the_full_roster() -> None:
    _, pubs = history()
    client = receiver()
    with pytest.raises(RosterOutOfStep) as gap:
        client.accept(pubs[1].delta or b"", rooms={ROOM})  # it never had v1
    assert (gap.value.room, gap.value.have) == (ROOM, None)
    client.accept(pubs[0].full)
    with pytest.raises(RosterOutOfStep) as gap:
        client.accept(pubs[2].delta or b"")  # against v2, it holds v1
    assert gap.value.have == 1
    assert parse_resync_request(resync_request(ROOM, gap.value.have)) == ROOM
    # The server's answer, the full roster, puts it back in step; the next delta applies again.
    assert client.accept(pubs[2].full) == pubs[2].roster
    assert client.accept(pubs[3].delta or b"") == pubs[3].roster


def test_reordered_updates_never_apply_out_of_order() -> None:
    _, pubs = history()
    client = receiver()
    client.accept(pubs[0].full)
    with pytest.raises(RosterOutOfStep):
        client.accept(pubs[2].delta or b"")  # v3 before v2
    assert client.accept(pubs[1].delta or b"") == pubs[1].roster
    assert client.accept(pubs[2].delta or b"") == pubs[2].roster
    assert client.held_version(ROOM) == 3


def test_replayed_old_versions_are_refused() -> None:
    _, pubs = history()
    client = receiver()
    client.accept(pubs[0].full)
    client.accept(pubs[1].delta or b"")
    for old in (pubs[1].delta, pubs[0].full, pubs[1].full):
        with pytest.raises(RosterRejected) as refused:
            client.accept(old or b"")
        assert refused.value.reason == "stale-version"
    assert client.held_version(ROOM) == 2 and client.roster(ROOM) == pubs[1].roster


@pytest.mark.parametrize("tamper", ["entry", "summary", "talking", "listener", "drop-added", "header"])
def test_a_tampered_delta_is_refused_and_changes_nothing(tamper: str) -> None:
    _, pubs = history()
    client = receiver()
    client.accept(pubs[0].full)
    body = body_of(pubs[1].delta or b"")
    if tamper == "entry":
        body["added"][0]["channel_name"] = "PJSIP/other"
    elif tamper == "summary":  # the summary of the newcomer swapped for someone else's, under its reference
        [ref] = body["identities"]
        body["identities"][ref] = identity_json(peer(42))
    elif tamper == "talking":
        body["talking"] = ["1714557600.1"]
    elif tamper == "listener":
        body["listeners"] = [{"kind": "chanspy", "hears": "room", "channel": "x", "since": iso_utc(T0), "action": "shown"}]
    elif tamper == "drop-added":  # pretend nobody new came: the roster would lack channel 3
        body["added"] = []
    else:
        body["issued_at"] = iso_utc(T0 + timedelta(seconds=20))
    with pytest.raises(RosterRejected) as refused:
        client.accept(rewrap(pubs[1].delta or b"", body))
    assert refused.value.reason == "bad-signature"
    assert client.held_version(ROOM) == 1 and client.roster(ROOM) == pubs[0].roster
    assert client.accept(pubs[1].delta or b"") == pubs[1].roster  # the genuine one still applies


def test_inconsistent_deltas_are_malformed() -> None:
    _, pubs = history()
    client = receiver()
    client.accept(pubs[0].full)
    for mutate in (lambda b: b["removed"].append("no.such"), lambda b: b["changed"].append(b["added"][0]),
                   lambda b: b.pop("base"), lambda b: b["added"].append({"channel_id": "x"})):
        body = body_of(pubs[1].delta or b"")
        mutate(body)
        with pytest.raises(RosterRejected) as refused:
            client.accept(rewrap(pubs[1].delta or b"", body))
        assert refused.value.reason == "malformed"
    with pytest.raises(RosterRejected, match="malformed"):
        client.accept(b"STCD\x02\x01")


def test_every_existing_check_still_holds() -> None:
    """server_id, room (and the rooms the client is in), age, listeners and the signing key."""
    client = receiver()
    publisher = RosterPublisher(RosterSigner(KEY))
    other = Roster("another-server", ROOM, 5, iso_utc(T0), "ok", (entry(1),))
    with pytest.raises(RosterRejected, match="wrong-server"):
        client.accept(publisher.publish(other).full)
    with pytest.raises(RosterRejected, match="wrong-room"):
        client.accept(publisher.publish(roster(6, [entry(1)])).full, rooms={"2000"})
    old = Roster(SERVER, ROOM, 7, iso_utc(T0 - timedelta(minutes=5)), "ok", (entry(1),))
    with pytest.raises(RosterRejected, match="too-old"):
        client.accept(publisher.publish(old).full)
    with pytest.raises(RosterRejected, match="bad-signature"):
        client.accept(RosterPublisher(RosterSigner(ec.generate_private_key(ec.SECP256R1()))).publish(roster(8, [entry(1)])).full)
    spied = roster(9, [entry(1)], listeners=(RosterListener("snoop", "1714557600.1", "Snoop/x", iso_utc(T0), "stopped"),))
    shown = client.accept(publisher.publish(spied).full, rooms={ROOM})
    assert shown.listeners == spied.listeners and shown.version == 9
    unknown = Roster(SERVER, ROOM, 10, iso_utc(T0), "unknown")
    assert client.accept(publisher.publish(unknown).delta or b"").state == "unknown"


def test_talking_updates_are_signed_refer_to_the_held_version_and_only_grow() -> None:
    publisher, pubs = history()
    signer = RosterSigner(KEY)
    client = receiver()
    client.accept(pubs[0].full)

    def talking(version: int, seq: int, who: list[str], **kw: str) -> bytes:
        fields = {"server_id": SERVER, "room": ROOM, "issued_at": iso_utc(T0 + timedelta(seconds=5))} | kw
        return sign_talking(signer, version=version, seq=seq, talking=who, **fields)  # type: ignore[arg-type]

    update, shown = client.accept_talking(talking(1, 10, ["1714557600.2"]), rooms={ROOM})
    assert update.talking == {"1714557600.2"} and message_kind(talking(1, 10, [])) == "talking"
    assert [e.talking for e in shown.entries] == [False, True] and shown.version == 1
    assert client.roster(ROOM) == shown
    with pytest.raises(RosterRejected, match="replayed"):
        client.accept_talking(talking(1, 10, []))
    with pytest.raises(RosterOutOfStep):
        client.accept_talking(talking(2, 11, []))  # a roster it has not got yet
    client.accept(pubs[1].delta or b"")
    with pytest.raises(RosterRejected, match="stale-version"):
        client.accept_talking(talking(1, 12, []))
    with pytest.raises(RosterRejected, match="malformed"):
        client.accept_talking(talking(2, 13, ["not.on.the.roster"]))
    with pytest.raises(RosterRejected, match="wrong-server"):
        client.accept_talking(talking(2, 14, [], server_id="another"))
    with pytest.raises(RosterRejected, match="wrong-room"):
        client.accept_talking(talking(2, 15, []), rooms={"2000"})
    with pytest.raises(RosterRejected, match="too-old"):
        client.accept_talking(talking(2, 16, [], issued_at=iso_utc(T0 - timedelta(minutes=5))))
    genuine = talking(2, 17, ["1714557600.3"])
    forged = genuine.replace(b"1714557600.3", b"1714557600.1")
    with pytest.raises(RosterRejected, match="bad-signature"):
        client.accept_talking(forged)
    _, shown = client.accept_talking(genuine)
    assert [e.channel_id for e in shown.entries if e.talking] == ["1714557600.3"]
    # The next roster brings its own talking state; the next delta applies on top of the held one.
    assert client.accept(pubs[2].delta or b"").entries[0].talking is True


def test_with_an_ed25519_key_too() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    publisher = RosterPublisher(RosterSigner(key))
    first = publisher.publish(roster(1, [entry(1)]))
    second = publisher.publish(roster(2, [entry(1), entry(2)]))
    client = receiver(key)
    client.accept(first.full)
    assert client.accept(second.delta or b"") == second.roster
    assert replace(second.roster, version=2) == client.roster(ROOM)


def test_the_client_asks_for_the_full_roster_when_out_of_step_and_at_most_once_a_second() -> None:
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    from stc_client.roster_view import ClientRosters

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stc test server")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(KEY.public_key())
            .serial_number(1).not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=9))
            .sign(KEY, hashes.SHA256()))
    server_id = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    now = [0.0]
    view = ClientRosters(cert, max_age=None, clock=lambda: now[0])
    publisher = RosterPublisher(RosterSigner(KEY))
    pubs = [publisher.publish(replace(roster(v, [entry(i) for i in range(1, v + 1)]), server_id=server_id))
            for v in (1, 2, 3)]
    gap = view.receive(pubs[1].delta or b"", rooms={ROOM})  # holds nothing yet
    assert gap.roster is None and gap.rejected is None and parse_resync_request(gap.resync or b"") == ROOM
    assert view.receive(pubs[2].delta or b"", rooms={ROOM}).resync is None  # asked less than a second ago
    assert view.receive(pubs[1].full, rooms={ROOM}).roster == pubs[1].roster  # the server's answer
    body = body_of(pubs[2].delta or b"")
    body["added"][0]["channel_name"] = "PJSIP/forged"
    now[0] = 5.0
    forged = view.receive(rewrap(pubs[2].delta or b"", body), rooms={ROOM})
    assert forged.rejected is not None and forged.rejected.reason == "bad-signature" and forged.resync is not None
    # The full roster it asked for, of a version it already holds, is nothing to warn about.
    assert view.receive(pubs[1].full, rooms={ROOM}) == type(forged)()
    assert view.receive(pubs[2].delta or b"", rooms={ROOM}).roster == pubs[2].roster
    assert view.out_of_step == 2
    # Another room's update is refused without asking for anything.
    later = publisher.publish(replace(roster(4, [entry(1)]), server_id=server_id))
    other = view.receive(later.full, rooms={"2000"})
    assert other.rejected is not None and other.rejected.reason == "wrong-room" and other.resync is None
