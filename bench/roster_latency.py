"""Benchmark: from a participant's join to its signed roster at every client of the room.

    .venv/bin/python bench/roster_latency.py --participants 50 --rounds 3

What runs (all on this machine, loopback only):
- the lab's Asterisk 22 (scripts/asterisk-lab.sh), under the lab's exclusive lock
  (/run/lock/stc-asterisk-lab.lock, the one the tests take); started and stopped here unless it
  already ran;
- a real stc-server (`ServerApp`) in its own process, instrumented from outside (it records when
  each ARI ChannelEnteredBridge reached it and when each roster was built, signed and sent);
- N real stc-clients (`ClientApp`) in this process, each with its own certificate and tunnel;
  each notes the wall-clock moment a roster has passed its verification;
- N SIPp callers (tests/sipp/uac_wait_bye.xml), one per client, dialled one by one into one
  ConfBridge room; the next one dials once everyone has the previous one on their roster.

The measured latency of a join: from Asterisk's own `timestamp` of the ARI ChannelEnteredBridge
event of the new channel (Asterisk's CLOCK_REALTIME, millisecond resolution: up to 1 ms too high)
to the moment the first roster listing that channel has been verified by the last of the clients
in the room, the joiner included (time.time() in this process: the same kernel clock). A room of
k members gives one sample; a round fills the room from 1 to N; `--rounds` repeats it.

Printed with it: the server's part alone (ARI event to its write into the last tunnel), an
estimate per client as if each had a CPU of its own (its tunnel write plus its own handling time),
and the garbage collector's pauses in the clients' process (`--client-gc off` disables it there).
Printed first, in memory: what one N-entry roster costs to build, sign and verify per key type.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import hashlib
import ipaddress
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Self

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from stc_asterisk.app import ServerApp
from stc_asterisk.config import (
    AdminSettings,
    AsteriskSettings,
    MediaSettings,
    ServerConfig,
    TunnelSettings,
)
from stc_asterisk.tunnel_server import TunnelPeer
from stc_client.app import ClientApp
from stc_client.config import (
    ClientConfig,
    IdentitySettings,
    ServerSettings,
    SipSettings,
)
from stc_pki.files import write_public, write_secret
from tests.asterisk_lab import lab_secret  # the lab's ARI/AMI secrets, made when it started
from stc_pki.pki import (
    CertificateAuthority,
    Validity,
    cert_pem,
    crl_pem,
    generate_key,
    key_pem,
)
from stc_wire.identity import identity_of
from stc_wire.messages import Message, RosterUpdate
from stc_wire.roster import (
    PrivateKey,
    Roster,
    RosterEntry,
    RosterSigner,
    RosterVerifier,
    iso_utc,
    normalize_time,
    verify_signature,
)

log = logging.getLogger("roster_latency")

LAB_SCRIPT = REPO / "scripts" / "asterisk-lab.sh"
LAB_LOCK = Path("/run/lock/stc-asterisk-lab.lock")  # the tests' lock (tests/conftest.py)
SCENARIO = REPO / "tests" / "sipp" / "uac_wait_bye.xml"
WAN_HOST = "127.0.0.2"  # clients <-> stc-server, as in tests/stack.py
LOCAL = "127.0.0.1"  # Asterisk, the server's Asterisk side, softphones
ASTERISK_SIP = (LOCAL, 5080)
DOMAIN = "bench.stc.test"
BUCKETS = ((1, 10), (11, 30), (31, 50))


# ---------------------------------------------------------------- a PKI with N users

@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class BenchPki:
    ca: Path
    crl: Path
    server: CertFiles
    users: tuple[CertFiles, ...]


def display_name(index: int) -> str:
    return f"Bench User {index:02d}"


def make_pki(directory: Path, users: int, server_key: str) -> BenchPki:
    now = datetime.now(UTC)
    year = Validity.for_days(30, now=now)
    ca = CertificateAuthority.create(common_name="stc bench CA", organization="stc bench", validity=year)
    ca_path, crl_path = directory / "ca.pem", directory / "crl.pem"
    write_public(ca_path, cert_pem(ca.cert))
    write_public(crl_path, crl_pem(ca.issue_crl([], now=now - timedelta(minutes=1))))

    def save(name: str, cert: x509.Certificate, key: PrivateKey) -> CertFiles:
        files = CertFiles(directory / f"{name}.pem", directory / f"{name}.key")
        write_secret(files.key, key_pem(key))  # type: ignore[arg-type]
        write_public(files.cert, cert_pem(cert))
        return files

    key = generate_key(server_key)  # type: ignore[arg-type]
    server = save("server", ca.issue_server(key.public_key(), dns_names=["localhost"],  # type: ignore[arg-type]
                                            ip_addresses=[ipaddress.ip_address(LOCAL)], validity=year), key)
    made = []
    for i in range(1, users + 1):
        key = generate_key()
        cert = ca.issue_user(key.public_key(), display_name=display_name(i), sip_uris=[f"sip:user{i:02d}@{DOMAIN}"],  # type: ignore[arg-type]
                             emails=[f"user{i:02d}@{DOMAIN}"], organization="stc bench", validity=year)
        made.append(save(f"user{i:02d}", cert, key))
    return BenchPki(ca_path, crl_path, server, tuple(made))


def server_config(pki: BenchPki) -> ServerConfig:
    return ServerConfig(
        tunnel=TunnelSettings(listen_host=WAN_HOST, listen_port=0, cert=pki.server.cert, key=pki.server.key,
                              ca_bundle=pki.ca, crl=pki.crl),
        asterisk=AsteriskSettings(sip_host=ASTERISK_SIP[0], sip_port=ASTERISK_SIP[1],
                                  ari_password=lab_secret("ari-password"), ami_secret=lab_secret("ami-secret")),
        media=MediaSettings(wan_host=WAN_HOST, pbx_host=LOCAL),
        admin=AdminSettings(port=0),
    )


def client_config(pki: BenchPki, index: int, server_port: int) -> ClientConfig:
    user = pki.users[index - 1]
    return ClientConfig(
        server=ServerSettings(host=WAN_HOST, port=server_port, name="localhost", reconnect_max_delay=2),
        identity=IdentitySettings(cert=user.cert, key=user.key, ca_bundle=pki.ca),
        sip=SipSettings(listen_host=LOCAL, listen_port=0),
    )


# ---------------------------------------------------------------- the lab's Asterisk

def _lab(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LAB_SCRIPT), *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)


@contextmanager
def asterisk_lab() -> Iterator[None]:
    """The lab, held exclusively for the whole run; stopped at the end only if started here."""
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LAB_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the Asterisk lab ({LAB_LOCK} is held: tests or another benchmark)", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        started = _lab("status", timeout=30).returncode != 0
        if started:
            result = _lab("start", timeout=900)
            if result.returncode != 0:
                raise SystemExit(f"asterisk-lab.sh start failed:\n{result.stderr.strip()}")
            print(result.stdout.strip(), flush=True)
        else:
            print("using the lab's Asterisk that already runs (left running at the end)", flush=True)
        try:
            yield
        finally:
            if started:
                _lab("stop", timeout=60)


def asterisk_rx(command: str) -> str:
    result = _lab("rx", command, timeout=30)
    return result.stdout if result.returncode == 0 else result.stderr


# ---------------------------------------------------------------- SIPp callers

_handed_out: set[int] = set()


def free_udp_port(*, span: int = 1, even: bool = False) -> int:
    """`span` consecutive free UDP ports on loopback, never handed out twice in this run."""
    for _ in range(500):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((LOCAL, 0))
            port = probe.getsockname()[1]
        ports = range(port, port + span)
        if (even and port % 2) or port + span > 65535 or any(p in _handed_out for p in ports):
            continue
        free = True
        for p in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((LOCAL, p))
                except OSError:
                    free = False
                    break
        if free:
            _handed_out.update(ports)
            return port
    raise RuntimeError("no free UDP ports on loopback")


class Caller:
    """One sipp process: one call from `caller` to the room through a client's softphone port."""

    def __init__(self, workdir: Path, caller: str, room: str, target_port: int, round_no: int) -> None:
        self.caller = caller
        self.traces = workdir / f"round{round_no}-{caller}"  # -errors.log, -messages.log
        media = free_udp_port(span=4, even=True)  # sipp binds audio and audio+2; RTCP's odd ports kept free
        self.command = [
            "sipp", f"{LOCAL}:{target_port}", "-sf", str(SCENARIO), "-nostdin", "-m", "1",
            "-i", LOCAL, "-p", str(free_udp_port()), "-bind_local", "-mi", LOCAL, "-mp", str(media),
            "-ci", LOCAL, "-cp", str(free_udp_port()), "-s", room, "-timeout", "600s", "-timeout_error",
            "-trace_err", "-error_file", f"{self.traces}-errors.log",
            "-trace_msg", "-message_file", f"{self.traces}-messages.log",
            "-key", "caller", caller, "-key", "caller_name", caller, "-key", "codec_pt", "8", "-key", "codec_name", "PCMA",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, cwd=self.traces.parent, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def errors(self) -> str:
        try:
            return Path(f"{self.traces}-errors.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


# ---------------------------------------------------------------- the server process

@dataclass(frozen=True)
class EnterSeen:
    """An ARI ChannelEnteredBridge as it reached the server."""

    channel_id: str
    asterisk_at: float  # the event's own timestamp (Asterisk's clock), epoch seconds
    received_at: float  # time.time() in the server when its ARI handler got it


@dataclass(frozen=True)
class PushDone:
    """One roster push of the server: built, signed, written to every tunnel of the room."""

    version: int
    channel_ids: frozenset[str]
    started_at: float  # _push_room entered (after the push lock)
    sign_started_at: float
    signed_at: float
    sent_at: float  # written to the last tunnel
    sessions: int
    signed_bytes: int
    writes: tuple[tuple[str, float], ...]  # (certificate name, written to its tunnel at)


@dataclass
class ServerRecords:
    enters: list[EnterSeen] = field(default_factory=list)
    pushes: list[PushDone] = field(default_factory=list)


def epoch(text: str) -> float:
    return datetime.fromisoformat(normalize_time(text, "timestamp")).timestamp()


def instrument(app: ServerApp, room: str, records: ServerRecords) -> None:
    """Wrap the room service's ARI handler, signer and push from outside: its code is unchanged."""
    rooms = app.rooms
    assert rooms is not None
    writes: list[tuple[str, float]] = []
    peer_send = TunnelPeer.send

    async def timed_send(peer: TunnelPeer, message: Message) -> None:
        await peer_send(peer, message)
        if isinstance(message, RosterUpdate):
            writes.append((peer.identity.display_name, time.time()))

    TunnelPeer.send = timed_send  # type: ignore[method-assign]  # the server process only
    apply_ari = rooms.conference.apply_ari
    sign = rooms.signer.sign_data
    push_room = rooms._push_room
    signing: dict[str, Any] = {}

    def timed_apply_ari(event: Any, **kwargs: Any) -> set[str]:
        if isinstance(event, dict) and event.get("type") == "ChannelEnteredBridge":
            try:
                records.enters.append(EnterSeen(event["channel"]["id"], epoch(event["timestamp"]), time.time()))
            except (KeyError, TypeError, ValueError):
                pass
        return apply_ari(event, **kwargs)

    def timed_sign(data: bytes) -> tuple[int, bytes]:
        signing["started"] = time.time()
        signed = sign(data)
        signing.update(done=time.time(), size=len(data))  # the compact roster's signed bytes
        return signed

    async def timed_push_room(pushed_room: str) -> None:
        started = time.time()
        writes.clear()
        sessions = sum(1 for s in app.sessions.values()
                       if any(c.room == pushed_room and c.confirmed for c in s.calls.values()))
        await push_room(pushed_room)
        publication = rooms.publisher.last(pushed_room)
        if pushed_room == room and "done" in signing and publication is not None:
            records.pushes.append(PushDone(publication.version,
                                           frozenset(e.channel_id for e in publication.roster.entries),
                                           started, signing["started"],
                                           signing["done"], time.time(), sessions, signing["size"], tuple(writes)))
        signing.clear()

    rooms.conference.apply_ari = timed_apply_ari  # type: ignore[method-assign]
    rooms.signer.sign_data = timed_sign  # type: ignore[method-assign]
    rooms._push_room = timed_push_room  # type: ignore[method-assign]


def server_process(config: ServerConfig, room: str, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s", force=True)
    asyncio.run(_serve(config, room, conn))


async def _serve(config: ServerConfig, room: str, conn: Connection) -> None:
    app = ServerApp(config)
    records = ServerRecords()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), stop.set)  # the parent writes "stop" (or dies: EOF)
    try:
        await app.start()
        instrument(app, room, records)
        assert app.rooms is not None and app.tunnels is not None
        async with asyncio.timeout(20):
            while not (app.rooms.ari.connected and app.rooms.ami.up):
                await asyncio.sleep(0.05)
        conn.send(("ready", app.tunnels.port))
        await stop.wait()
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        loop.remove_reader(conn.fileno())
        await app.close()
    conn.send(("records", records))


# ---------------------------------------------------------------- the clients

@dataclass(frozen=True)
class Arrival:
    version: int
    channel_ids: frozenset[str]
    own_channel: str | None  # the channel under this client's certificate, if listed
    at: float  # time.time() right after verification
    handling_s: float  # ClientApp's whole handling of the frame: verify, parse, state, log line


class TimedClient(ClientApp):
    """ClientApp noting when each roster passed its verification."""

    def __init__(self, config: ClientConfig, index: int, progress: asyncio.Event) -> None:
        super().__init__(config)
        self.index = index
        self.arrivals: list[Arrival] = []
        self._progress = progress

    async def _roster(self, data: bytes) -> None:
        last = self.rosters[-1] if self.rosters else None
        started = time.perf_counter()
        await super()._roster(data)
        handling = time.perf_counter() - started
        if self.rosters and self.rosters[-1] is not last:
            roster = self.rosters[-1]
            own = next((e.channel_id for e in roster.entries
                        if e.identity is not None and e.identity.get("display_name") == display_name(self.index)), None)
            self.arrivals.append(Arrival(roster.version, frozenset(e.channel_id for e in roster.entries), own,
                                         time.time(), handling))
            self._progress.set()

    def new_channel(self, since: int) -> str | None:
        """This client's channel on a roster that arrived after `since` arrivals (i.e. after it dialled)."""
        return next((a.own_channel for a in self.arrivals[since:] if a.own_channel is not None), None)

    def first_with(self, channel_id: str) -> Arrival | None:
        return next((a for a in self.arrivals if channel_id in a.channel_ids), None)


async def wait_for(progress: asyncio.Event, condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{what}: not within {timeout} s")
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), min(remaining, 0.5))
        except TimeoutError:
            pass


@dataclass(frozen=True)
class Join:
    round: int
    size: int  # members in the room once this one is in (the joiner included)
    channel_id: str
    asterisk_at: float
    server_received_at: float
    push: PushDone
    arrivals: tuple[float, ...]  # per client in the room, the first verified roster listing the joiner
    # per client: written to its tunnel + its own handling time, as if it had a CPU to itself
    isolated: tuple[float, ...]

    @property
    def latency(self) -> float:
        return max(self.arrivals) - self.asterisk_at

    @property
    def isolated_latency(self) -> float:
        return max(self.isolated) - self.asterisk_at


async def run_rooms(pki: BenchPki, server_port: int, args: argparse.Namespace, workdir: Path) -> tuple[
        list[tuple[int, int, str]], list[TimedClient], list[Caller]]:
    """Connects the clients, fills the room `rounds` times; returns (round, size, channel) per join."""
    progress = asyncio.Event()
    clients: list[TimedClient] = []
    callers: list[Caller] = []
    joins: list[tuple[int, int, str]] = []
    try:
        for i in range(1, args.participants + 1):
            client = TimedClient(client_config(pki, i, server_port), i, progress)
            clients.append(client)
            await client.start()
            async with asyncio.timeout(20):
                await client.tunnel_up.wait()
        print(f"{len(clients)} clients connected", flush=True)
        for rnd in range(1, args.rounds + 1):
            round_started = time.monotonic()
            in_room: list[TimedClient] = []
            for client in clients:
                caller = Caller(workdir, f"user{client.index:02d}", args.room, client.softphone.port, rnd)
                callers.append(caller)
                since = len(client.arrivals)
                caller.start()
                in_room.append(client)
                await wait_for(progress, lambda c=client, n=since: c.new_channel(n) is not None, 15,
                               f"round {rnd}: client {client.index} on its own roster")
                channel = client.new_channel(since)
                assert channel is not None and channel not in {j[2] for j in joins}
                await wait_for(progress, lambda x=channel, room=tuple(in_room): all(c.first_with(x) for c in room), 15,
                               f"round {rnd}: client {client.index} on every roster")
                joins.append((rnd, len(in_room), channel))
                await asyncio.sleep(args.gap)  # let this join's trailing pushes pass: joins are measured apart
            print(f"round {rnd}: {len(in_room)} joins in {time.monotonic() - round_started:.1f} s", flush=True)
            await empty_room(args.room, callers[-len(in_room):])
        return joins, clients, callers
    except BaseException:
        for caller in callers:
            caller.kill()
        for client in clients:
            await client.close()
        raise


async def empty_room(room: str, callers: Sequence[Caller]) -> None:
    """Asterisk hangs everyone up: each sipp answers its BYE (through client and server) and exits."""
    await asyncio.to_thread(asterisk_rx, f"confbridge kick {room} all")
    deadline = time.monotonic() + 20
    while any(c.returncode is None for c in callers) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    running = [c.caller for c in callers if c.returncode is None]
    failed = [c for c in callers if c.returncode not in (0, None)]
    retransmitted = [c for c in failed if "unexpected BYE" in c.errors()]
    if running or len(failed) > len(retransmitted):
        print(f"warning: sipp callers still running: {running[:5]}; failed: {[c.caller for c in failed][:5]}",
              flush=True)
    if retransmitted:
        print(f"note: {len(retransmitted)} sipp caller(s) took a retransmitted BYE for an unexpected one", flush=True)
    for caller in callers:
        caller.kill()
    await asyncio.sleep(1.0)  # the server releases the calls on the BYEs


# ---------------------------------------------------------------- analysis

def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def analyse(raw: list[tuple[int, int, str]], clients: list[TimedClient], records: ServerRecords) -> list[Join]:
    enters = {e.channel_id: e for e in records.enters}
    by_version = {p.version: dict(p.writes) for p in records.pushes}
    joins = []
    for rnd, size, channel in raw:
        enter = enters[channel]
        push = next(p for p in sorted(records.pushes, key=lambda p: p.version) if channel in p.channel_ids)
        members = clients[:size]
        firsts = [c.first_with(channel) for c in members]
        assert all(firsts), f"join {size}: a client never verified a roster with {channel}"
        arrivals = tuple(a.at for a in firsts if a is not None)
        for a in firsts:
            assert a is not None and a.version >= push.version
        if push.sessions != size:
            print(f"warning: round {rnd} join {size}: its first roster went to {push.sessions} tunnel(s)")
        isolated = tuple(by_version[a.version][display_name(c.index)] + a.handling_s
                         for c, a in zip(members, firsts) if a is not None)
        joins.append(Join(rnd, size, channel, enter.asterisk_at, enter.received_at, push, arrivals, isolated))
    return joins


def median_of(joins: Sequence[Join], value: Callable[[Join], float]) -> float:
    return statistics.median(value(j) for j in joins)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f}"


def fine(seconds: float) -> str:
    return f"{seconds * 1000:7.3f}"


def print_latency(joins: list[Join]) -> None:
    print("\nJoin -> its roster verified at every client in the room (ms; Asterisk ARI timestamp -> last client)")
    print(f"{'room size':>10} {'n':>4} {'p50':>7} {'p99':>7} {'max':>7} {'first p50':>10} "
          f"{'server p50':>11} {'server p99':>11} {'own-CPU p50':>12} {'own-CPU p99':>12}")
    rows = [(f"{lo}-{hi}", [j for j in joins if lo <= j.size <= hi]) for lo, hi in BUCKETS]
    rows.append(("all", joins))
    for name, group in rows:
        if not group:
            continue
        lat = [j.latency for j in group]
        first = [min(j.arrivals) - j.asterisk_at for j in group]
        own = [j.isolated_latency for j in group]
        server = [j.push.sent_at - j.asterisk_at for j in group]
        print(f"{name:>10} {len(group):>4} {ms(percentile(lat, .5))} {ms(percentile(lat, .99))} {ms(max(lat))} "
              f"{ms(percentile(first, .5)):>10} {ms(percentile(server, .5)):>11} {ms(percentile(server, .99)):>11} "
              f"{ms(percentile(own, .5)):>12} {ms(percentile(own, .99)):>12}")
    print("  first: to the first client of the room; server: to the server's write of that roster into the last\n"
          "  tunnel; own-CPU: an estimate, not a measurement: per client, the server's write to its tunnel plus\n"
          "  that client's own handling time (as if each client had a CPU to itself), max over the room")

    print("\nWhere the time goes (median ms per join, by room size)")
    print(f"{'room size':>10} {'ARI->server':>12} {'wait':>7} {'build':>7} {'sign':>7} {'send':>7} "
          f"{'clients':>8} {'roster KB':>10}")
    for name, group in rows:
        if not group:
            continue
        print(f"{name:>10} {ms(median_of(group, lambda j: j.server_received_at - j.asterisk_at)):>12} "
              f"{ms(median_of(group, lambda j: j.push.started_at - j.server_received_at))} "
              f"{ms(median_of(group, lambda j: j.push.sign_started_at - j.push.started_at))} "
              f"{ms(median_of(group, lambda j: j.push.signed_at - j.push.sign_started_at))} "
              f"{ms(median_of(group, lambda j: j.push.sent_at - j.push.signed_at))} "
              f"{ms(median_of(group, lambda j: max(j.arrivals) - j.push.sent_at)):>8} "
              f"{median_of(group, lambda j: j.push.signed_bytes) / 1024:>10.1f}")


class GcPauses:
    """Garbage collector pauses of this process (the one holding every client); `enabled=False`
    switches the collector off meanwhile, to show what the pauses of this 50-client heap cost."""

    def __init__(self, *, enabled: bool) -> None:
        self.full: list[float] = []
        self._started = 0.0
        self._enabled = enabled

    def __enter__(self) -> Self:
        gc.callbacks.append(self._callback)
        if not self._enabled:
            gc.disable()
        return self

    def __exit__(self, *exc: object) -> None:
        gc.enable()
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.full.append(time.perf_counter() - self._started)


def print_pushes(records: ServerRecords, joins: int) -> None:
    written = sum(p.sessions * p.signed_bytes for p in records.pushes)
    print(f"\nThe server pushed {len(records.pushes)} rosters to the room for {joins} joins and as many leaves, "
          f"{written / 1e6:.1f} MB into the tunnels in all")


def print_client_cost(clients: list[TimedClient], participants: int, gc_pauses: GcPauses) -> None:
    big = [a.handling_s for c in clients for a in c.arrivals if len(a.channel_ids) > participants * 0.8]
    if big:
        print(f"\nClient handling of one roster of {int(participants * 0.8) + 1}-{participants} entries "
              f"(verify + parse + state + log line), per client: p50 {ms(percentile(big, .5)).strip()} ms, "
              f"p99 {ms(percentile(big, .99)).strip()} ms (n={len(big)})")
    if gc_pauses.full:
        print(f"Client process: {len(gc_pauses.full)} full garbage collections, longest {ms(max(gc_pauses.full)).strip()} ms, "
              f"{ms(sum(gc_pauses.full)).strip()} ms in all")


# ---------------------------------------------------------------- in memory: sign and verify

def sample_roster(pki: BenchPki, entries: int) -> Roster:
    now = datetime.now(UTC)
    rows = []
    for i, user in enumerate(pki.users[:entries], start=1):
        identity = identity_of(x509.load_pem_x509_certificate(user.cert.read_bytes()))
        rows.append(RosterEntry(channel_id=f"1714567890.{100 + i}", room="1049", identity=identity.to_json(),
                                channel_name=f"PJSIP/stc-server-{i:08x}", caller_id=None,
                                joined_at=iso_utc(now + timedelta(milliseconds=i))))
    server_id = hashlib.sha256(pki.server.cert.read_bytes()).hexdigest()
    return Roster(server_id, "1049", int(now.timestamp() * 1e6), iso_utc(now), "ok", tuple(rows))


def timed(action: Callable[[], object], iterations: int) -> float:
    runs = []
    for _ in range(iterations):
        started = time.perf_counter()
        action()
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def print_signing(pki: BenchPki, entries: int, iterations: int) -> None:
    roster = sample_roster(pki, entries)
    keys: list[tuple[str, PrivateKey]] = [(kind, generate_key(kind)) for kind in  # type: ignore[misc]
                                         ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")]
    keys.append(("ed25519", ed25519.Ed25519PrivateKey.generate()))
    print(f"\nIn memory: one roster of {len(roster.entries)} entries "
          f"({len(roster.canonical_bytes()) / 1024:.1f} KB JSON), median of {iterations} (ms)")
    print(f"{'server key':>10} {'build':>7} {'encode':>7} {'sign':>7} {'verify sig':>10} {'accept':>7} {'sig bytes':>9}")
    build = timed(lambda: Roster(roster.server_id, roster.room, roster.version, roster.issued_at, roster.state,
                                 tuple(RosterEntry.from_json(e.to_json()) for e in roster.entries)), iterations)
    encode = timed(roster.canonical_bytes, iterations)
    for kind, key in keys:
        signer = RosterSigner(key)
        signed = signer.sign(roster)
        data = signed.to_bytes()
        public = key.public_key()
        sign = timed(lambda: signer.sign(roster).to_bytes(), iterations)  # noqa: B023
        verify = timed(lambda: verify_signature(public, signed), iterations)  # noqa: B023
        accept = timed(lambda: RosterVerifier(public).accept(data), iterations)  # type: ignore[arg-type]  # noqa: B023
        print(f"{kind:>10} {fine(build)} {fine(encode)} {fine(sign)} {fine(verify):>10} {fine(accept)} "
              f"{len(signed.signature):>9}")
    print("  build: Roster() from entries with validation; encode: canonical JSON; sign: encode + sign + envelope;\n"
          "  verify sig: signature only; accept: the client's whole check (envelope, signature, parse, version)")


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3, help="fill the room this many times (samples: rounds x N)")
    parser.add_argument("--room", default="1049", help="a ConfBridge room of asterisk-conf (10XX)")
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between one join settling and the next dial")
    parser.add_argument("--server-key", default="ec-p256", choices=("ec-p256", "ec-p384", "rsa-2048", "rsa-3072"))
    parser.add_argument("--sign-iterations", type=int, default=200)
    parser.add_argument("--client-gc", choices=("on", "off"), default="on",
                        help="off: no garbage collection in the clients' process while it runs")
    parser.add_argument("--dump", type=Path, help="write every join's timings here (JSON lines)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (PKI, sipp error logs)")
    args = parser.parse_args()
    if not 1 <= args.participants <= 99:
        parser.error("--participants: 1 to 99")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if shutil.which("sipp") is None:
        raise SystemExit("sipp is not installed (scripts/asterisk-lab.sh setup installs sip-tester)")
    print(f"host: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    workdir = Path(tempfile.mkdtemp(prefix="stc-bench-roster-"))
    try:
        pki = make_pki(workdir, args.participants, args.server_key)
        print_signing(pki, args.participants, args.sign_iterations)
        with asterisk_lab():
            asterisk_rx(f"confbridge kick {args.room} all")  # leftovers of a crashed run
            with GcPauses(enabled=args.client_gc == "on") as gc_pauses:
                records, raw, clients = run_with_server(pki, args, workdir)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    joins = analyse(raw, clients, records)
    if args.dump:
        with open(args.dump, "w") as out:
            out.writelines(json.dumps({**asdict(j), "push": {**asdict(j.push), "channel_ids": len(j.push.channel_ids)},
                                      "arrival_versions": [c.first_with(j.channel_id).version for c in clients[:j.size]]})
                          + "\n" for j in joins)
    print(f"\nstc-server in its own process; {args.participants} stc-clients in one other process (their "
          f"verification is serialised there, garbage collector {args.client_gc}); server key {args.server_key}; "
          f"{len(joins)} joins")
    print_latency(joins)
    print_pushes(records, len(joins))
    print_client_cost(clients, args.participants, gc_pauses)


def run_with_server(pki: BenchPki, args: argparse.Namespace, workdir: Path) -> tuple[
        ServerRecords, list[tuple[int, int, str]], list[TimedClient]]:
    ctx = mp.get_context("fork")  # before any event loop exists in this process
    parent, child = ctx.Pipe()
    server = ctx.Process(target=server_process, args=(server_config(pki), args.room, child), daemon=True)
    server.start()
    child.close()
    callers: list[Caller] = []
    stopped = False
    try:
        if not parent.poll(30):
            raise SystemExit("stc-server did not come up within 30 s")
        kind, value = parent.recv()
        if kind != "ready":
            raise SystemExit(f"stc-server failed: {value}")

        async def clients_run() -> tuple[list[tuple[int, int, str]], list[TimedClient]]:
            raw, clients, made = await run_rooms(pki, value, args, workdir)
            callers.extend(made)
            for client in clients:
                await client.close()
            return raw, clients

        raw, clients = asyncio.run(clients_run())
        parent.send("stop")
        stopped = True
        records: ServerRecords | None = None
        while parent.poll(20):
            kind, value = parent.recv()
            if kind == "records":
                records = value
                break
        if records is None:
            raise SystemExit("stc-server sent no records")
        return records, raw, clients
    finally:
        for caller in callers:
            caller.kill()
        if not stopped:
            try:
                parent.send("stop")
            except OSError:
                pass
        server.join(10)
        if server.is_alive():
            server.terminate()
            server.join(5)


if __name__ == "__main__":
    main()
