"""Benchmark: big rooms. What a join and a talking change cost the server, and a roster costs a client.

    .venv/bin/python bench/big_room.py                  # rooms of 50 and 200
    .venv/bin/python bench/big_room.py --sizes 50 100 200 --talking 200

What runs, all in this process and in memory (no Asterisk, no sockets): the server's real code
path, `RoomService` (its `ConferenceState`, its signer, its push code) of a `ServerApp` built from
a real configuration and certificate, fed the ARI events Asterisk sends for a join; every
participant is a tunnel session whose peer records what the server pushes to it. A room fills
from 1 to N; each join is the admission binding, ARI's ChannelEnteredBridge and the roster push to
everyone in the room (as `RoomService._push` does it). Then `--talking` talking changes (AMI
ConfbridgeTalking on/off, one every 20 ms of simulated time) in the full room.

Measured:
- server CPU per join (process CPU time, median of the joins that bring the room to its last 10 %),
  and the bytes pushed to all participants for that join;
- a client's time to verify and apply the roster of that join (the client's roster check and its
  state update, as `ClientApp` does on a ROSTER frame; median over the last joins), and the
  joiner's time for its first roster (the whole room);
- per talking change: server CPU and bytes pushed (after the run: the pushes actually sent).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402

from stc_asterisk.app import ServerApp  # noqa: E402
from stc_asterisk.config import AdminSettings, AsteriskSettings, MediaSettings, ServerConfig, TunnelSettings  # noqa: E402
from stc_asterisk.rooms import RoomService  # noqa: E402
from stc_client.roster_view import ClientRosters  # noqa: E402
from stc_client.state import ClientState  # noqa: E402
from stc_pki.files import write_public, write_secret  # noqa: E402
from stc_pki.pki import CertificateAuthority, Validity, cert_pem, crl_pem, generate_key, key_pem  # noqa: E402
from stc_wire.identity import PeerIdentity, identity_of  # noqa: E402
from stc_wire.messages import Message  # noqa: E402

ROOM = "1000"
BRIDGE = "6a1b0c5e-7f3d-4e1a-9d2b-3c4d5e6f7a80"
DOMAIN = "bench.stc.test"


def make_identities(directory: Path, users: int) -> tuple[ServerConfig, x509.Certificate, list[PeerIdentity]]:
    now = datetime.now(UTC)
    year = Validity.for_days(30, now=now)
    ca = CertificateAuthority.create(common_name="stc bench CA", organization="stc bench", validity=year)
    write_public(directory / "ca.pem", cert_pem(ca.cert))
    write_public(directory / "crl.pem", crl_pem(ca.issue_crl([], now=now - timedelta(minutes=1))))
    key = generate_key("ec-p256")
    server_cert = ca.issue_server(key.public_key(), dns_names=["localhost"], validity=year)  # type: ignore[arg-type]
    write_secret(directory / "server.key", key_pem(key))
    write_public(directory / "server.pem", cert_pem(server_cert))
    identities = []
    for i in range(1, users + 1):
        cert = ca.issue_user(generate_key().public_key(), display_name=f"Bench User {i:03d}",  # type: ignore[arg-type]
                             sip_uris=[f"sip:user{i:03d}@{DOMAIN}"], emails=[f"user{i:03d}@{DOMAIN}"],
                             organization="stc bench", validity=year)
        identities.append(identity_of(cert))
    config = ServerConfig(
        tunnel=TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=directory / "server.pem",
                              key=directory / "server.key", ca_bundle=directory / "ca.pem", crl=directory / "crl.pem"),
        asterisk=AsteriskSettings(ari_password="unused", ami_secret="unused"),
        media=MediaSettings(wan_host="127.0.0.1", pbx_host="127.0.0.1"),
        admin=AdminSettings(port=0),
    )
    return config, server_cert, identities


class MemoryPeer:
    """A tunnel peer that keeps what the server pushes (as the bytes of each frame's payload)."""

    def __init__(self, peer_id: str) -> None:
        self.id = peer_id
        self.received: list[tuple[str, bytes]] = []

    def push(self, message: Message) -> None:
        self.received.append((type(message).__name__, message.payload()))

    async def send(self, message: Message) -> None:
        self.push(message)


def ari_event(kind: str, at: datetime, **body: Any) -> dict[str, Any]:
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"
    return {"type": kind, "timestamp": stamp, "application": "stc", **body}


def channel(index: int, at: datetime) -> dict[str, Any]:
    return {"id": f"1714567890.{index}", "name": f"PJSIP/stc-{index:08x}", "state": "Up",
            "caller": {"name": f"Bench User {index:03d}", "number": f"user{index:03d}"},
            "creationtime": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"}


@dataclass
class Sample:
    size: int
    server_cpu: float
    pushed_bytes: int
    client_apply: float = 0.0


@dataclass
class RoomRun:
    size: int
    joins: list[Sample] = field(default_factory=list)
    talking_cpu: list[float] = field(default_factory=list)
    talking_bytes: int = 0
    talking_changes: int = 0
    talking_frames: int = 0
    joiner_apply: float = 0.0  # the last joiner's first roster (the whole room, in full)


class Bench:
    def __init__(self, config: ServerConfig, server_cert: x509.Certificate, identities: list[PeerIdentity]) -> None:
        self.app = ServerApp(config)
        self.rooms = RoomService(self.app)
        self.app.rooms = self.rooms
        self.server_cert = server_cert
        self.identities = identities
        self.peers: list[MemoryPeer] = []
        self.t0 = datetime.now(UTC)
        self.bridge = {"id": BRIDGE, "technology": "softmix", "bridge_type": "mixing", "creator": "ConfBridge",
                       "name": ROOM, "channels": []}
        self.rooms.conference.rebuild([], [])  # Asterisk "connected", no rooms yet

    def add_session(self, index: int) -> MemoryPeer:
        peer = MemoryPeer(f"peer-{index}")
        call = SimpleNamespace(room=ROOM, confirmed=True)
        self.app.sessions[peer.id] = SimpleNamespace(peer=peer, calls={"call": call})  # type: ignore[assignment]
        self.peers.append(peer)
        return peer

    async def join(self, index: int) -> tuple[float, int]:
        """One participant's join as the server sees it; (server CPU seconds, bytes pushed)."""
        at = self.t0 + timedelta(milliseconds=index)
        self.add_session(index)
        before = sum(len(p) for peer in self.peers for _, p in peer.received)
        started = time.process_time()
        rooms = self.rooms
        rooms.conference.bind(f"1714567890.{index}", self.identities[index - 1])
        changed = rooms.conference.apply_ari(ari_event("ChannelEnteredBridge", at, bridge=self.bridge,
                                                       channel=channel(index, at)))
        await rooms._push(changed, time.monotonic())
        await self.settle()
        cpu = time.process_time() - started
        return cpu, sum(len(p) for peer in self.peers for _, p in peer.received) - before

    async def settle(self) -> None:
        """Let tasks the push started (none before; coalesced talking after) run."""
        for _ in range(3):
            await asyncio.sleep(0)

    async def talk(self, index: int, on: bool) -> float:
        started = time.process_time()
        event = {"Event": "ConfbridgeTalking", "Conference": ROOM, "Uniqueid": f"1714567890.{index}",
                 "TalkingStatus": "on" if on else "off", "Channel": f"PJSIP/stc-{index:08x}"}
        self.rooms._ami_event(event)
        await self.settle()
        return time.process_time() - started


def apply(view: ClientRosters, state: ClientState, data: bytes) -> None:
    """What ClientApp does with a ROSTER frame: check it, show the roster (no logging)."""
    received = view.receive(data, rooms={ROOM})
    if received.rejected is not None or received.resync is not None or received.roster is None:
        raise SystemExit(f"the client did not take a roster: {received}")
    state.set_roster(received.roster)


def client_apply_time(bench: Bench, frames: list[tuple[str, bytes]], repeat: int) -> float:
    """Median seconds for one fresh client to verify and apply the frames one joiner-to-be received last."""
    runs = []
    for _ in range(repeat):
        state = ClientState()
        state.tunnel_up(bench.identities[0], bench.identities[0].to_json())
        state.call_started(ROOM, "AEAD_AES_128_GCM")
        view = ClientRosters(bench.server_cert, max_age=60)
        for _, data in frames[:-1]:
            apply(view, state, data)
        started = time.perf_counter()
        apply(view, state, frames[-1][1])
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


async def run_room(bench: Bench, size: int, talking: int, repeat: int) -> RoomRun:
    run = RoomRun(size)
    for index in range(1, size + 1):
        cpu, sent = await bench.join(index)
        run.joins.append(Sample(index, cpu, sent))
    # A client that was in the room since the start: what its last join costs it to verify and apply.
    first = bench.peers[0]
    last_join = len(first.received)
    run.joins[-1].client_apply = client_apply_time(bench, first.received[:last_join], repeat)
    for tail in range(1, min(size, 10)):
        frames = first.received[: last_join - tail]
        if frames:
            run.joins[-1 - tail].client_apply = client_apply_time(bench, frames, repeat)
    run.joiner_apply = client_apply_time(bench, bench.peers[-1].received[:1], repeat)
    before = sum(len(p) for peer in bench.peers for _, p in peer.received)
    frames_before = sum(len(peer.received) for peer in bench.peers)
    for change in range(talking):
        speaker = 1 + (change // 2) % size
        run.talking_cpu.append(await bench.talk(speaker, on=change % 2 == 0))
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)  # anything coalesced goes out
    run.talking_changes = talking
    run.talking_bytes = sum(len(p) for peer in bench.peers for _, p in peer.received) - before
    run.talking_frames = sum(len(peer.received) for peer in bench.peers) - frames_before
    return run


def tls_seconds_per_byte(directory: Path) -> float:
    """What TLS 1.3 costs the server per byte it sends (record encryption, in memory): the in-memory
    peers above do not encrypt, a real tunnel does."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(directory / "server.pem", directory / "server.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    s_side = server.wrap_bio(pipes[0], pipes[1], server_side=True)
    c_side = client.wrap_bio(pipes[2], pipes[3])
    for _ in range(10):  # the handshake, by hand
        for side in (c_side, s_side):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        pipes[0].write(pipes[3].read())
        pipes[2].write(pipes[1].read())
    chunk = bytes(16 * 1024)
    total = 16 * 1024 * 2000
    started = time.process_time()
    for _ in range(total // len(chunk)):
        s_side.write(chunk)
        pipes[1].read()
    return (time.process_time() - started) / total


def report(runs: list[RoomRun], tls: float) -> None:
    print(f"\nTLS record encryption on this machine: {tls * 1e9:.2f} ns per byte sent (not in the server CPU "
          "column: the peers here do not encrypt; add bytes x that)")
    print("\n| room size | server CPU per join, ms (median of last 10 %) | with TLS, ms (estimate) | bytes pushed per join | "
          "client verify+apply per roster, ms | joiner's first (full) roster, ms | talking changes | talking: server CPU per change, ms | "
          "talking: bytes pushed per s | talking: frames per s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        last = [s for s in run.joins if s.size > run.size * 0.9]
        cpu = statistics.median(s.server_cpu for s in last) * 1000
        sent = statistics.median(s.pushed_bytes for s in last)
        applied = [s.client_apply for s in last if s.client_apply]
        apply_ms = statistics.median(applied) * 1000 if applied else float("nan")
        seconds = run.talking_changes * 0.02 + 1.0 if run.talking_changes else 1.0
        t_cpu = statistics.median(run.talking_cpu) * 1000 if run.talking_cpu else float("nan")
        print(f"| {run.size} | {cpu:.2f} | {cpu + sent * tls * 1000:.2f} | {sent:,.0f} | {apply_ms:.2f} | {run.joiner_apply * 1000:.2f} | "
              f"{run.talking_changes} | {t_cpu:.2f} | "
              f"{run.talking_bytes / seconds:,.0f} | {run.talking_frames / seconds:,.0f} |")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="stc-big-room-") as tmp:
        config, server_cert, identities = make_identities(Path(tmp), max(args.sizes))
        tls = tls_seconds_per_byte(Path(tmp))
        runs = []
        for size in args.sizes:
            gc.collect()
            bench = Bench(config, server_cert, identities)
            run = await run_room(bench, size, args.talking if size == max(args.sizes) else 0, args.repeat)
            runs.append(run)
            await bench.rooms.close()
        report(runs, tls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--talking", type=int, default=100, help="talking changes in the largest room (0: none)")
    parser.add_argument("--repeat", type=int, default=20, help="client verifications per measured roster")
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
