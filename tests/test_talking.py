"""Talking updates in memory: the coalescer's spacing, and RoomService's pushes (deltas, talking) as clients verify them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509

from stc_asterisk.app import ServerApp
from stc_asterisk.config import AdminSettings, AsteriskSettings, MediaSettings, ServerConfig, TunnelSettings
from stc_asterisk.rooms import RoomService
from stc_asterisk.talking import TalkingCoalescer
from stc_client.roster_view import ClientRosters
from stc_wire.identity import identity_of
from stc_wire.messages import Message
from stc_wire.roster_sync import message_kind
from tests.certs import TestPki, make_test_pki

ROOM = "1000"
BRIDGE = {"id": "6a1b0c5e-7f3d-4e1a-9d2b-3c4d5e6f7a80", "creator": "ConfBridge", "name": ROOM, "channels": []}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def test_the_coalescer_sends_the_first_change_at_once_then_at_most_one_per_interval() -> None:
    sent: list[float] = []
    coalescer = TalkingCoalescer(lambda room: sent.append(time.monotonic()), interval=0.1)
    started = time.monotonic()
    coalescer.changed(ROOM)
    assert len(sent) == 1  # at once
    while time.monotonic() - started < 0.5:
        coalescer.changed(ROOM)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)
    assert 4 <= len(sent) <= 7, sent  # ~40 changes in 0.5 s
    assert all(b - a >= 0.1 - 0.005 for a, b in zip(sent, sent[1:], strict=False)), sent
    coalescer.close()


class MemoryPeer:
    def __init__(self, peer_id: str) -> None:
        self.id = peer_id
        self.received: list[bytes] = []

    def push(self, message: Message) -> None:
        self.received.append(message.payload())


def rooms_service(pki: TestPki) -> RoomService:
    config = ServerConfig(
        tunnel=TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                              ca_bundle=pki.ca, crl=pki.crl),
        asterisk=AsteriskSettings(ari_password="unused", ami_secret="unused", fastagi_port=0),
        media=MediaSettings(wan_host="127.0.0.1", pbx_host="127.0.0.1"),
        admin=AdminSettings(port=0),
    )
    app = ServerApp(config)
    rooms = RoomService(app)
    app.rooms = rooms
    rooms.conference.rebuild([], [])
    return rooms


def channel(index: int) -> dict[str, Any]:
    return {"id": f"1714567890.{index}", "name": f"PJSIP/stc-{index:08x}", "caller": {"name": "", "number": ""},
            "creationtime": "2026-05-01T10:00:00.000+0000"}


async def test_a_burst_of_talking_is_two_signed_updates_and_every_client_shows_the_servers_roster(pki: TestPki) -> None:
    rooms = rooms_service(pki)
    users = [identity_of(x509.load_pem_x509_certificate(Path(pki.users[u].cert).read_bytes()))
             for u in ("alice", "bob", "carol", "zoe")]
    peers = []
    for i in range(1, 21):
        peer = MemoryPeer(f"peer-{i}")
        peers.append(peer)
        rooms.app.sessions[peer.id] = SimpleNamespace(  # type: ignore[assignment]
            peer=peer, calls={"call": SimpleNamespace(room=ROOM, confirmed=True)})
        rooms.conference.bind(f"1714567890.{i}", users[i % 4])
        changed = rooms.conference.apply_ari({"type": "ChannelEnteredBridge", "bridge": BRIDGE, "channel": channel(i),
                                              "timestamp": f"2026-05-01T10:00:{i:02d}.000+0000"})
        await rooms._push(changed, time.monotonic())
    # Each joined with the room's roster in full, then took one delta per later join.
    assert [message_kind(p.received[0]) for p in peers] == ["roster"] * 20
    assert rooms.rosters_sent == {"delta": sum(range(20)), "full": 20, "resync": 0, "talking": 0}
    server_cert = x509.load_pem_x509_certificate(Path(pki.server.cert).read_bytes())
    views = [ClientRosters(server_cert, max_age=60) for _ in peers]

    def deliver() -> None:
        for peer, view in zip(peers, views, strict=True):
            for data in peer.received:
                received = view.receive(data, rooms={ROOM})
                assert received.rejected is None and received.resync is None, received
            peer.received.clear()

    deliver()
    # 35 talking changes in one go: 1..10 start, 1..5 stop, 11..15 start and stop, 16..20 start and stop.
    frames_before = rooms.rosters_sent["delta"] + rooms.rosters_sent["full"]
    changes = [(range(1, 11), "on"), (range(1, 6), "off"), (range(11, 16), "on"), (range(11, 16), "off"),
               (range(16, 21), "on"), (range(16, 21), "off")]
    for people, status in changes:
        for i in people:
            rooms._ami_event({"Event": "ConfbridgeTalking", "Conference": ROOM, "Uniqueid": f"1714567890.{i}",
                              "TalkingStatus": status})
    await asyncio.sleep(rooms.talking.interval * 2)
    expected = {f"1714567890.{i}" for i in range(6, 11)}
    assert rooms.conference.talking(ROOM) == expected
    assert rooms.rosters_sent["delta"] + rooms.rosters_sent["full"] == frames_before  # no roster re-signed
    assert all([message_kind(d) for d in p.received] == ["talking", "talking"] for p in peers)  # first, then the rest
    assert rooms.rosters_sent["talking"] == 40
    deliver()
    server = rooms.publisher.last(ROOM)
    assert server is not None
    for view in views:
        shown = view.receiver.roster(ROOM)
        assert shown is not None and shown.version == server.version
        assert {e.channel_id for e in shown.entries if e.talking} == expected  # the last state won
        assert [(e.channel_id, e.identity) for e in shown.entries] == [(e.channel_id, e.identity) for e in server.roster.entries]
    # Changes that cancel out within an interval send nothing: 20 starts (sent at once), stops and starts again.
    for status in ("on", "off", "on"):
        rooms._ami_event({"Event": "ConfbridgeTalking", "Conference": ROOM, "Uniqueid": "1714567890.20",
                          "TalkingStatus": status})
    await asyncio.sleep(rooms.talking.interval * 2)
    assert rooms.rosters_sent["talking"] == 40 + 20
    deliver()
    assert all({e.channel_id for e in v.receiver.roster(ROOM).entries if e.talking} == expected | {"1714567890.20"}  # type: ignore[union-attr]
               for v in views)
    await rooms.close()
