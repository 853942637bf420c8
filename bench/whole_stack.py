"""Benchmark: one conference of N participants through stc, and straight into Asterisk with SDES-SRTP.

    .venv/bin/python bench/whole_stack.py                       # N = 50, 100, 200; 3 repeats
    .venv/bin/python bench/whole_stack.py --sizes 50 --repeats 1 --seconds 10   # a quick run
    .venv/bin/python bench/whole_stack.py --modes stc,stc+2ms,stc-1port,sdes,plain  # stc-server variants (see Mode)

Every participant sends 20 ms PCMA (50 packets a second); `--talkers` of them carry a tone, the
others silence (a room where everyone talks at once re-signs the roster on every talking change,
which is issue 14 item 5's business, not this benchmark's). Participant 0 is the listener: every
packet Asterisk's mix sends it is received with the kernel's arrival stamp and checked.

Three modes of the same conference, alternating within each repeat, on the lab's Asterisk 22
(scripts/asterisk-lab.sh, under the tests' lock /run/lock/stc-asterisk-lab.lock; booted for the
run with asterisk-conf/ plus two bench-only PJSIP endpoints, and stopped, or restored to the
shipped config if it ran before, at the end):
- `stc`: a real stc-server (`ServerApp`) in its own process. The participants are N real
  stc-client cores (`ClientApp`: certificate, TLS tunnel, SIP through the tunnel, the X25519 media
  offer) in this process, each with a small SIP phone in front; their media plane is replaced by
  this script's SRTP generator, which sends what a client sends (SRTP under the call's keys, from a
  socket of its own per call) straight to the server's wan ports. Roster signatures are not
  verified by these clients (the server still builds, signs and sends every roster).
- `sdes`: the same phones straight into Asterisk with `RTP/SAVP` and an `a=crypto` line (endpoint
  `bench-sdes`, `media_encryption=sdes`, identified by its source 127.0.0.3); SRTP on pylibsrtp.
- `plain`: the same with plain RTP (endpoint `bench-plain`, source 127.0.0.4): the baseline.

Measured over the window (after every participant is in the room and `--settle` seconds more):
CPU of the stc-server process and of Asterisk from /proc/PID/stat (all threads), RSS at the end of
the window, the load generator's own CPU, and at the listener the loss against 50 packets a second
and the p99 of |inter-arrival - 20 ms| ("jitter"). Per participant: CPU / N. The ratio the issue asks
for: stc-server CPU / (Asterisk SDES CPU - Asterisk plain CPU), all from the same repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import fcntl
import json
import logging
import math
import multiprocessing as mp
import os
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from roster_latency import BenchPki, client_config, make_pki, server_config  # noqa: E402

from stc_asterisk.app import ServerApp  # noqa: E402
from stc_client.app import ClientApp  # noqa: E402
from stc_client.media import ClientCallPorts  # noqa: E402
from stc_wire.media_keys import CallKeys  # noqa: E402
from stc_wire.rtp import RelayStats, bind_udp_pair  # noqa: E402
from stc_wire.sip import SipRequest, SipResponse, make_response, new_branch, new_tag, parse_message  # noqa: E402
from stc_wire.srtp import SrtpDropped, SrtpProfile, SrtpProtector, SrtpUnprotector  # noqa: E402

log = logging.getLogger("whole_stack")

LAB_SCRIPT = REPO / "scripts" / "asterisk-lab.sh"
LAB_LOCK = Path("/run/lock/stc-asterisk-lab.lock")  # the tests' lock (tests/conftest.py)
LAB_ROOT = Path(os.environ.get("STC_LAB_ROOT", "/var/lib/stc-lab/sid"))
ASTERISK_PID_FILE = LAB_ROOT / "run" / "asterisk" / "asterisk.pid"
LAB_CONF = LAB_ROOT / "etc" / "stc-asterisk"  # where scripts/asterisk-lab.sh installs the config
LOCAL = "127.0.0.1"
ASTERISK_SIP = (LOCAL, 5080)
ROOM = "1000"
SOURCE = {"sdes": "127.0.0.3", "plain": "127.0.0.4", "stc": LOCAL}  # the phones' SIP/media address
MODES = ("stc", "sdes", "plain")


@dataclass(frozen=True)
class Mode:
    """A mode as named on the command line: `stc`, `sdes`, `plain`, or a variant of the stc-server,
    `stc+2ms` (its relay drains its sockets on a 2 ms timer, `MediaRelay(batch_interval=...)`)
    and/or `stc-1port` (`[media] single_port`), e.g. `stc-1port+1ms`."""

    label: str
    base: str
    batch_ms: float = 0.0
    single_port: bool = False

    @classmethod
    def parse(cls, label: str) -> Mode:
        base, _, batch = label.partition("+")
        single = base.endswith("-1port")
        base = base.removesuffix("-1port")
        if base not in MODES or ((batch or single) and base != "stc") or (batch and not batch.endswith("ms")):
            raise ValueError(f"unknown mode {label!r} (stc, sdes, plain, stc+Nms, stc-1port, stc-1port+Nms)")
        return cls(label, base, float(batch[:-2]) if batch else 0.0, single)
PROFILE = SrtpProfile.AES_CM_128_HMAC_SHA1_80
PERIOD_S = 0.020
PCMA = 8
FRAME = 160  # 20 ms of 8 kHz A-law
SILENCE = bytes([0xD5]) * FRAME
JOIN_BATCH = 10  # calls set up at once (the server allows 16 TLS handshakes per source at a time)
_SO_TIMESTAMPNS = 35  # Linux; not exported by the socket module

# Added to a copy of asterisk-conf/ for this run only: two endpoints that are not the stc-server,
# told apart by their source address, into a context that goes straight to the same ConfBridge.
BENCH_PJSIP = """
; ---- bench/whole_stack.py only: phones straight into Asterisk, without stc ----
[bench-sdes]
type = endpoint
transport = transport-udp-loopback
context = stc-bench
disallow = all
allow = alaw
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
send_connected_line = no
media_encryption = sdes

[bench-sdes-identify]
type = identify
endpoint = bench-sdes
match = 127.0.0.3

[bench-plain]
type = endpoint
transport = transport-udp-loopback
context = stc-bench
disallow = all
allow = alaw
direct_media = no
rtp_symmetric = yes
force_rport = yes
rewrite_contact = yes
send_connected_line = no

[bench-plain-identify]
type = identify
endpoint = bench-plain
match = 127.0.0.4
"""
BENCH_DIALPLAN = """
; ---- bench/whole_stack.py only: no stc-admit, the same room and profiles ----
[stc-bench]
exten => _10XX,1,Answer()
 same => n,ConfBridge(${EXTEN},stc_bridge,stc_user,stc_menu)
 same => n,Hangup()
"""


# ---------------------------------------------------------------- the lab's Asterisk, bench config

def _lab(*args: str, timeout: float, conf_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if conf_dir is not None:
        env["STC_ASTERISK_CONF"] = str(conf_dir)
    return subprocess.run(["bash", str(LAB_SCRIPT), *args], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, check=False)


def bench_conf(directory: Path) -> Path:
    """asterisk-conf/ with the two bench endpoints and their context appended."""
    conf = directory / "asterisk-conf"
    shutil.copytree(REPO / "asterisk-conf", conf)
    with open(conf / "pjsip.conf", "a", encoding="utf-8") as pjsip:
        pjsip.write(BENCH_PJSIP)
    with open(conf / "extensions.conf", "a", encoding="utf-8") as dialplan:
        dialplan.write(BENCH_DIALPLAN)
    return conf


@contextmanager
def lab_lock(held: bool) -> Iterator[None]:
    """The tests' lock on the lab for the whole run (`held`: the caller, e.g. a test, holds it)."""
    if held:
        yield
        return
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LAB_LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the Asterisk lab ({LAB_LOCK} is held: tests or another benchmark)", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def bench_lab(conf: Path, lock_held: bool = False) -> Iterator[None]:
    """The lab, held exclusively, booted with `conf`; afterwards stopped, or booted again with the
    shipped config if it was running when we took it (never left running with the bench config)."""
    with lab_lock(lock_held):
        was_running = _lab("status", timeout=30).returncode == 0
        if was_running:
            _lab("stop", timeout=60)
        result = _lab("start", timeout=900, conf_dir=conf)
        if result.returncode != 0:
            raise SystemExit(f"asterisk-lab.sh start failed:\n{result.stderr.strip()}")
        print(result.stdout.strip(), "(with the bench endpoints)", flush=True)
        try:
            yield
        finally:
            _lab("stop", timeout=60)
            if was_running:
                _lab("start", timeout=300)
            else:  # every start installs the config again; meanwhile the root holds the shipped one
                for name in ("pjsip.conf", "extensions.conf"):
                    shutil.copy2(REPO / "asterisk-conf" / name, LAB_CONF / name)


def asterisk_pid() -> int:
    return int(ASTERISK_PID_FILE.read_text().strip())


def room_members() -> int:
    """Members of the room by `confbridge list ROOM` (its channel lines)."""
    result = _lab("rx", f"confbridge list {ROOM}", timeout=30)
    return sum(1 for line in result.stdout.splitlines() if "/" in line.split(" ", 1)[0])


# ---------------------------------------------------------------- /proc

def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- the stc-server process

def server_process(pki: BenchPki, single_port: bool, batch_ms: float, conn: Connection) -> None:
    logging.basicConfig(level=logging.WARNING, format="server %(levelname)s %(name)s: %(message)s")
    if batch_ms:  # an experiment: the relay drains its sockets on a timer (stc_wire.readiness)
        from functools import partialmethod

        from stc_asterisk import media

        media.MediaRelay.__init__ = partialmethod(  # type: ignore[method-assign]
            media.MediaRelay.__init__, batch_interval=batch_ms / 1000)
    asyncio.run(_serve(pki, single_port, conn))


async def _serve(pki: BenchPki, single_port: bool, conn: Connection) -> None:
    config = server_config(pki)
    # A 200-entry roster is about 120 kB; a few queued behind each other must not close a tunnel.
    config.tunnel.send_queue_bytes = 32 << 20
    # Every FastAGI session comes from the one Asterisk; on a busy machine 200 joins in batches of
    # JOIN_BATCH overran the old default of 50 at once (a refused admission hangs the call up). The
    # default is 400 now; the bench keeps its own margin for larger --sizes.
    config.asterisk.fastagi_sessions_per_source = 1000
    if single_port:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((config.media.wan_host, 0))
            config.media.single_port = probe.getsockname()[1]
    app = ServerApp(config)
    await app.start()
    assert app.tunnels is not None
    conn.send((app.tunnels.port, os.getpid()))
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "quit"
    await app.close()
    conn.send("closed")


# ---------------------------------------------------------------- the participants' media

def tone_frames(hz: float = 440.0, level: float = 8000.0) -> list[bytes]:
    """A few 20 ms A-law frames of a steady tone (the talkers' audio)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    samples = [int(level * math.sin(2 * math.pi * hz * n / 8000)) for n in range(8000 // 50 * 50)]
    pcm = struct.pack(f"<{len(samples)}h", *samples)
    alaw = audioop.lin2alaw(pcm, 2)
    return [alaw[i:i + FRAME] for i in range(0, len(alaw), FRAME)]


@dataclass
class Leg:
    """One participant's media: what it sends, where, under which keys."""

    index: int
    sock: socket.socket
    rtcp_sock: socket.socket
    frames: list[bytes]
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    destination: tuple[str, int] | None = None
    protect: Callable[[bytes], bytes] | None = None
    unprotect: Callable[[bytes], bytes] | None = None
    seq: int = field(default_factory=lambda: secrets.randbits(15))
    sent: int = 0

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()
        self.rtcp_sock.close()


def open_legs(n: int, host: str, talkers: int) -> list[Leg]:
    tone = tone_frames()
    legs = []
    for i in range(n):
        rtp, rtcp = bind_udp_pair(host)
        # Only the listener (0) reads what comes back; the others keep a small buffer the kernel fills and drops.
        rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, (4 << 20) if i == 0 else 4096)
        rtcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        legs.append(Leg(i, rtp, rtcp, tone if 1 <= i <= talkers else [SILENCE]))
    legs[0].sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    return legs


@dataclass
class Heard:
    """What the listener received inside the window."""

    arrivals_ns: list[int] = field(default_factory=list)
    bad: int = 0  # failed SRTP authentication or not RTP
    voiced: int = 0  # packets carrying sound (the talkers' tone through the mix), not silence


class MediaPump(threading.Thread):
    """Sends every leg's packets on its 20 ms grid (legs spread evenly over the period, as
    independently started calls would be) and receives the listener's; a thread of its own so the
    event loop of the signalling does not delay it."""

    def __init__(self, legs: list[Leg]) -> None:
        super().__init__(name="media-pump", daemon=True)
        self.legs = legs
        self.stopping = threading.Event()
        self.window: tuple[int, int] | None = None  # wall-clock ns, the clock of the kernel's stamps
        self.heard = Heard()

    def run(self) -> None:
        header = struct.Struct("!BBHII")
        legs, n = self.legs, len(self.legs)
        phases = [i * PERIOD_S / n for i in range(n)]
        t0 = time.monotonic()
        rnd, index = 0, 0
        while not self.stopping.is_set():
            now = time.monotonic()
            due = t0 + rnd * PERIOD_S + phases[index]
            while due <= now:
                leg = legs[index]
                destination, protect = leg.destination, leg.protect  # set and cleared by the loop's thread
                if destination is not None:
                    leg.seq = (leg.seq + 1) & 0xFFFF
                    packet = header.pack(0x80, PCMA, leg.seq, (leg.sent * FRAME) & 0xFFFFFFFF, leg.ssrc) \
                        + leg.frames[leg.sent % len(leg.frames)]
                    try:
                        leg.sock.sendto(packet if protect is None else protect(packet), destination)
                        leg.sent += 1
                    except (OSError, SrtpDropped):
                        pass
                index += 1
                if index == n:
                    index, rnd = 0, rnd + 1
                due = t0 + rnd * PERIOD_S + phases[index]
            self._listen()
            time.sleep(min(max(due - time.monotonic(), 0.0002), 0.002))

    def _listen(self) -> None:
        listener = self.legs[0]
        space = socket.CMSG_SPACE(16)
        while True:
            try:
                data, ancillary, _, _ = listener.sock.recvmsg(2048, space)
            except (BlockingIOError, OSError):
                return
            seconds, nanoseconds = struct.unpack_from("qq", ancillary[0][2]) if ancillary else divmod(time.time_ns(), 10**9)
            arrived = seconds * 1_000_000_000 + nanoseconds
            window = self.window
            if window is None or not window[0] <= arrived < window[1]:
                continue
            if len(data) < 12 or data[0] >> 6 != 2 or 192 <= data[1] <= 223:
                continue  # RTCP (muxed) or not RTP: not counted
            unprotect = listener.unprotect
            plain = data
            if unprotect is not None:
                try:
                    plain = unprotect(data)
                except SrtpDropped:
                    self.heard.bad += 1
                    continue
            if len(plain) != 12 + FRAME:
                self.heard.bad += 1
                continue
            if len(set(plain[12:])) > 12:
                self.heard.voiced += 1
            self.heard.arrivals_ns.append(arrived)


# ---------------------------------------------------------------- a small SIP phone

def sdp_offer(leg: Leg, host: str, crypto_key: bytes | None) -> bytes:
    lines = ["v=0", f"o=bench {leg.index + 1} 1 IN IP4 {host}", "s=bench", f"c=IN IP4 {host}", "t=0 0",
             f"m=audio {leg.port} {'RTP/SAVP' if crypto_key else 'RTP/AVP'} {PCMA}",
             f"a=rtpmap:{PCMA} PCMA/8000", "a=ptime:20", "a=sendrecv"]
    if crypto_key is not None:
        lines.append(f"a=crypto:1 {PROFILE.value} inline:{base64.b64encode(crypto_key).decode()}")
    return ("\r\n".join(lines) + "\r\n").encode()


def sdp_media(body: bytes) -> tuple[str, int, bytes | None]:
    """(address, RTP port, SDES master key and salt or None) of the answer's audio."""
    host, port, key = "", 0, None
    for line in body.decode("utf-8", "replace").splitlines():
        if line.startswith("c=IN IP4 "):
            host = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
        elif line.startswith("a=crypto:") and PROFILE.value in line and key is None:
            key = base64.b64decode(line.split("inline:", 1)[1].split("|")[0].split()[0])
    if not host or not port:
        raise ValueError(f"no audio address in the answer: {body!r}")
    return host, port, key


class Phone(asyncio.DatagramProtocol):
    """One participant's SIP: INVITE, ACK, BYE; answers whatever is asked of it in the dialog
    (the stc-client's liveness OPTIONS, Asterisk's BYE) with 200."""

    def __init__(self, index: int, host: str) -> None:
        self.index, self.host = index, host
        self.transport: asyncio.DatagramTransport | None = None
        self.waiting: dict[tuple[int, str], asyncio.Future[SipResponse]] = {}
        self.call_id = f"bench-{secrets.token_hex(8)}"
        self.tag = new_tag()
        self.remote_to = ""
        self.target: tuple[str, int] = ASTERISK_SIP
        self.offer = b""

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, 0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return
        try:
            message = parse_message(data)
        except Exception:  # noqa: BLE001 - a bench phone ignores what it cannot read
            return
        if isinstance(message, SipResponse):
            waiter = self.waiting.get(message.cseq)
            if waiter is not None and not waiter.done() and message.status >= 200:
                waiter.set_result(message)
            return
        assert self.transport is not None
        response = make_response(message, 200, to_tag=self.tag if message.to_tag is None else None)
        if message.method == "INVITE":  # a re-offer: the same media
            response.append("Contact", f"<sip:bench{self.index}@{self.host}:{self.port}>")
            response = response.with_body(self.offer, "application/sdp")
        if message.method != "ACK":
            self.transport.sendto(response.to_bytes(), addr)

    def _request(self, method: str, cseq: int, uri: str, to: str, body: bytes = b"") -> SipRequest:
        request = SipRequest(method, uri, [])
        request.append("Via", f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()};rport")
        request.append("Max-Forwards", "70")
        request.append("From", f'"Bench {self.index:03d}" <sip:bench{self.index}@{self.host}>;tag={self.tag}')
        request.append("To", to)
        request.append("Call-ID", self.call_id)
        request.append("CSeq", f"{cseq} {method}")
        request.append("Contact", f"<sip:bench{self.index}@{self.host}:{self.port}>")
        if body:
            return request.with_body(body, "application/sdp")
        request.append("Content-Length", "0")
        return request

    async def _transact(self, request: SipRequest, timeout: float) -> SipResponse:
        assert self.transport is not None
        key = request.cseq
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[key] = waiter
        data = request.to_bytes()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self.transport.sendto(data, self.target)
                    try:
                        return await asyncio.wait_for(asyncio.shield(waiter), 1.0)
                    except TimeoutError:
                        continue  # UDP: retransmit
        finally:
            del self.waiting[key]

    async def call(self, target: tuple[str, int], offer: bytes, timeout: float = 30.0) -> bytes:
        """Dial the room; the answer's SDP once the call is up (ACK sent)."""
        self.target, self.offer = target, offer
        uri = f"sip:{ROOM}@{target[0]}:{target[1]}"
        invite = self._request("INVITE", 1, uri, f"<sip:{ROOM}@{target[0]}>", offer)
        response = await self._transact(invite, timeout)
        to = response.get("To") or ""
        ack = self._request("ACK", 1, uri, to)
        assert self.transport is not None
        self.transport.sendto(ack.to_bytes(), target)
        if response.status >= 300:
            raise RuntimeError(f"participant {self.index}: INVITE answered {response.status} {response.reason}")
        self.remote_to = to
        return response.body

    async def hang_up(self) -> None:
        if self.remote_to:
            bye = self._request("BYE", 2, f"sip:{ROOM}@{self.target[0]}:{self.target[1]}", self.remote_to)
            self.remote_to = ""
            try:
                await self._transact(bye, 3.0)
            except TimeoutError:
                pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------- stc: the client's media plane, replaced

async def _take_roster(data: bytes) -> None:
    """ClientApp._roster for a stand-in client: takes a roster without verifying it here."""


class GeneratorMedia:
    """Stands in for one stc-client's `ClientMedia`: the keys and the server's ports the client
    agreed go to this participant's `Leg`, which the pump then sends from, as the client would."""

    watched = False

    def __init__(self, leg: Leg, server_host: str) -> None:
        self.leg, self.server_host = leg, server_host

    async def open_call(self, call_tag: str) -> ClientCallPorts:
        return ClientCallPorts(self.leg.port, self.leg.port + 1)

    def set_rtcp_mux(self, call_tag: str) -> None:
        pass

    def set_softphone_media(self, call_tag: str, host: str, rtp_port: int, rtcp_port: int) -> None:
        pass

    def install_keys(self, call_tag: str, keys: CallKeys, server_rtp_port: int, server_rtcp_port: int) -> None:
        protector = SrtpProtector(keys.profile, keys.client_to_server_srtp, keys.client_to_server_srtcp)
        unprotector = SrtpUnprotector(keys.profile, keys.server_to_client_srtp, keys.server_to_client_srtcp)
        self.leg.protect, self.leg.unprotect = protector.protect_rtp, unprotector.unprotect_rtp
        self.leg.destination = (self.server_host, server_rtp_port)

    def close_call(self, call_tag: str) -> None:
        self.leg.destination = None

    def stats(self, call_tag: str | None = None) -> RelayStats:
        return RelayStats(outbound_packets=self.leg.sent)

    def close(self) -> None:
        self.leg.destination = None


# ---------------------------------------------------------------- one run

@dataclass
class Run:
    mode: str
    n: int
    repeat: int
    seconds: float
    server_cpu: float = float("nan")  # fraction of one core
    asterisk_cpu: float = float("nan")
    server_rss_kb: int = 0
    asterisk_rss_kb: int = 0
    generator_cpu: float = float("nan")
    received: int = 0
    loss_pct: float = float("nan")
    jitter_p99_ms: float = float("nan")
    bad: int = 0
    voiced: int = 0
    load: float = float("nan")


async def _join_all(phones: list[Phone], legs: list[Leg], targets: list[tuple[str, int]], mode: str) -> None:
    async def join(i: int) -> None:
        host = SOURCE[mode]
        crypto = secrets.token_bytes(PROFILE.master_length) if mode == "sdes" else None
        answer = await phones[i].call(targets[i], sdp_offer(legs[i], host, crypto))
        if mode == "stc":
            return  # the client's media offer/answer keyed the leg (GeneratorMedia)
        address, port, their_key = sdp_media(answer)
        if mode == "sdes":
            if their_key is None:
                raise RuntimeError(f"participant {i}: Asterisk answered without a=crypto")
            assert crypto is not None
            legs[i].protect = SrtpProtector(PROFILE, crypto, crypto).protect_rtp
            legs[i].unprotect = SrtpUnprotector(PROFILE, their_key, their_key).unprotect_rtp
        legs[i].destination = (address, port)

    for start in range(0, len(phones), JOIN_BATCH):
        await asyncio.gather(*(join(i) for i in range(start, min(start + JOIN_BATCH, len(phones)))))


async def run_once(variant: Mode, n: int, repeat: int, args: argparse.Namespace, pki: BenchPki) -> Run:
    run = Run(variant.label, n, repeat, args.seconds)
    mode = variant.base
    host = SOURCE[mode]
    legs = open_legs(n, host, args.talkers)
    phones = [Phone(i, host) for i in range(n)]
    clients: list[ClientApp] = []
    server: mp.process.BaseProcess | None = None
    conn: Connection | None = None
    pump = MediaPump(legs)
    try:
        for phone in phones:
            await phone.open()
        if mode == "stc":
            context = mp.get_context("spawn")
            conn, child = context.Pipe()
            server = context.Process(target=server_process, args=(pki, variant.single_port, variant.batch_ms, child), daemon=True)
            server.start()
            if not conn.poll(60):
                raise RuntimeError("stc-server did not start")
            server_port, server_pid = conn.recv()
            log.warning("stc-server pid %d", server_pid)
            for start in range(0, n, JOIN_BATCH):
                batch = []
                for i in range(start, min(start + JOIN_BATCH, n)):
                    client = ClientApp(client_config(pki, i + 1, server_port))
                    media = GeneratorMedia(legs[i], client.config.server.host)
                    client.media = client.softphone.media = media  # type: ignore[assignment]
                    # These clients stand for N machines: they take every roster (the server's
                    # work is unchanged) but do not verify its signature on this one's CPU.
                    if hasattr(client, "_roster"):
                        client._roster = _take_roster  # type: ignore[method-assign]  # noqa: SLF001
                    clients.append(client)
                    batch.append(client)
                await asyncio.gather(*(c.start() for c in batch))
                async with asyncio.timeout(30):
                    await asyncio.gather(*(c.tunnel_up.wait() for c in batch))
            targets = [(LOCAL, c.softphone.port) for c in clients]
        else:
            server_pid = None
            targets = [ASTERISK_SIP] * n
        pump.start()
        await _join_all(phones, legs, targets, mode)
        deadline = time.monotonic() + 30
        while (members := await asyncio.to_thread(room_members)) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: {members} of {n} participants in room {ROOM} after 30 s")
            await asyncio.sleep(0.5)
        await asyncio.sleep(args.settle)

        ast_pid = asterisk_pid()
        run.load = os.getloadavg()[0]
        own0 = time.process_time()
        ast0 = cpu_seconds(ast_pid)
        srv0 = cpu_seconds(server_pid) if server_pid else 0.0
        t0 = time.monotonic()
        pump.window = (time.time_ns(), time.time_ns() + int(args.seconds * 1e9))
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        run.asterisk_cpu = (cpu_seconds(ast_pid) - ast0) / elapsed
        run.generator_cpu = (time.process_time() - own0) / elapsed
        run.asterisk_rss_kb = rss_kb(ast_pid)
        if server_pid:
            run.server_cpu = (cpu_seconds(server_pid) - srv0) / elapsed
            run.server_rss_kb = rss_kb(server_pid)
        await asyncio.sleep(0.2)  # the last packets of the window
        heard = pump.heard
        run.received, run.bad, run.voiced = len(heard.arrivals_ns), heard.bad, heard.voiced
        expected = args.seconds / PERIOD_S
        run.loss_pct = max(0.0, 100 * (1 - run.received / expected))
        gaps = [abs(b - a - PERIOD_S * 1e9) / 1e6 for a, b in zip(heard.arrivals_ns, heard.arrivals_ns[1:])]
        run.jitter_p99_ms = sorted(gaps)[min(len(gaps) - 1, int(0.99 * len(gaps)))] if gaps else float("nan")
        return run
    finally:
        await asyncio.gather(*(phone.hang_up() for phone in phones), return_exceptions=True)
        pump.stopping.set()
        if pump.is_alive():
            pump.join(5)
        for client in clients:
            await client.close()
        for phone in phones:
            phone.close()
        for leg in legs:
            leg.close()
        if server is not None and conn is not None:
            conn.send("quit")
            conn.poll(15)
            server.join(5)
            if server.is_alive():
                server.kill()
        # The next run starts from an empty room.
        deadline = time.monotonic() + 20
        while await asyncio.to_thread(room_members) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)


# ---------------------------------------------------------------- report

def _spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    values = [v * scale for v in values if not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def report(runs: list[Run]) -> None:
    print("\nevery run (CPU in % of one core; per participant = / N):")
    print(f"{'mode':12} {'N':>4} {'rep':>3} {'load':>5} {'server %':>8} {'srv/p %':>8} {'ast %':>7} {'ast/p %':>8} "
          f"{'srv RSS MB':>10} {'ast RSS MB':>10} {'gen %':>6} {'heard':>6} {'loss %':>7} {'jit p99 ms':>10} {'bad':>4}")
    for r in runs:
        print(f"{r.mode:12} {r.n:4d} {r.repeat:3d} {r.load:5.2f} {100 * r.server_cpu:8.2f} {100 * r.server_cpu / r.n:8.4f} "
              f"{100 * r.asterisk_cpu:7.2f} {100 * r.asterisk_cpu / r.n:8.4f} {r.server_rss_kb / 1024:10.1f} "
              f"{r.asterisk_rss_kb / 1024:10.1f} {100 * r.generator_cpu:6.1f} {r.received:6d} {r.loss_pct:7.2f} "
              f"{r.jitter_p99_ms:10.2f} {r.bad:4d}")
    print("\nper participant, % of a core: median (min-max) over repeats; ratio = stc-server / (Asterisk SDES - Asterisk plain), per repeat")
    labels = list(dict.fromkeys(r.mode for r in runs))
    stc_labels = [label for label in labels if label.startswith("stc")]
    print(f"{'N':>4} {'stc mode':12} | {'stc-server':>22} | {'Asterisk behind stc':>22} | {'Asterisk SDES':>22} | "
          f"{'Asterisk plain':>22} | {'SDES - plain':>22} | {'ratio':>18}")
    for n in sorted({r.n for r in runs}):
        by = {label: [r for r in runs if r.n == n and r.mode == label] for label in labels}
        added: list[float] = []
        ratios: dict[str, list[float]] = {label: [] for label in stc_labels}
        for repeat in sorted({r.repeat for r in runs if r.n == n}):
            one = {r.mode: r for r in runs if r.n == n and r.repeat == repeat}
            if {"sdes", "plain"} <= one.keys():
                extra = one["sdes"].asterisk_cpu - one["plain"].asterisk_cpu
                added.append(extra / n)
                for label in stc_labels:
                    if label in one and extra > 0:
                        ratios[label].append(one[label].server_cpu / extra)
        for label in stc_labels or ["stc"]:
            print(f"{n:4d} {label:12} | {_spread([r.server_cpu / n for r in by.get(label, [])], 100):>22} | "
                  f"{_spread([r.asterisk_cpu / n for r in by.get(label, [])], 100):>22} | "
                  f"{_spread([r.asterisk_cpu / n for r in by.get('sdes', [])], 100):>22} | "
                  f"{_spread([r.asterisk_cpu / n for r in by.get('plain', [])], 100):>22} | {_spread(added, 100):>22} | "
                  f"{_spread(ratios.get(label, []), 1, 2):>18}")
    print("\nat the listener: loss % / jitter p99 ms, median (min-max)")
    for n in sorted({r.n for r in runs}):
        parts = [f"{label} {_spread([r.loss_pct for r in runs if r.n == n and r.mode == label], 1, 2)} / "
                 f"{_spread([r.jitter_p99_ms for r in runs if r.n == n and r.mode == label], 1, 2)}" for label in labels]
        print(f"{n:4d}: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="50,100,200", help="comma-separated participant counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the last join before measuring")
    parser.add_argument("--talkers", type=int, default=2, help="participants sending a tone (the others silence)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated: stc, sdes, plain, and stc variants: stc+Nms (the relay drains on an "
                             "N ms timer), stc-1port ([media] single_port), stc-1port+Nms")
    parser.add_argument("--quiet", action="store_true", help="only warnings from the clients")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    parser.add_argument("--lab-held", action="store_true",
                        help="the caller already holds the lab's lock (a test); do not take it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    try:
        modes = [Mode.parse(m) for m in args.modes.split(",") if m]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if max(sizes) > 240:
        raise SystemExit("at most 240 participants: the lab's Asterisk has 500 RTP ports (asterisk-conf/rtp.conf)")
    print(f"whole stack: N = {sizes}, {args.repeats} repeat(s) of {args.seconds:g} s measured, {args.talkers} talker(s); "
          f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)

    runs: list[Run] = []
    failed = 0
    with tempfile.TemporaryDirectory(prefix="stc-whole-stack-") as tmp:
        workdir = Path(tmp)
        pki = make_pki(workdir, max(sizes), "ec-p256")
        with bench_lab(bench_conf(workdir), args.lab_held):
            for n in sizes:
                for repeat in range(1, args.repeats + 1):
                    # Alternate the order between repeats, so a drift in the machine's load spreads over the modes.
                    order = modes if repeat % 2 else modes[::-1]
                    for mode in order:
                        started = time.monotonic()
                        try:
                            run = asyncio.run(run_once(mode, n, repeat, args, pki))
                        except (RuntimeError, OSError, TimeoutError) as exc:  # one failed run, not the whole bench
                            print(f"  {mode.label:5} N={n:3d} repeat {repeat}: FAILED ({exc}); left out", flush=True)
                            failed += 1
                            continue
                        runs.append(run)
                        print(f"  {mode.label:5} N={n:3d} repeat {repeat}: server {100 * run.server_cpu:6.2f} %, "
                              f"Asterisk {100 * run.asterisk_cpu:6.2f} %, listener heard {run.received} "
                              f"(loss {run.loss_pct:.2f} %, jitter p99 {run.jitter_p99_ms:.2f} ms), load {run.load:.2f}, "
                              f"{time.monotonic() - started:.0f} s", flush=True)
    report(runs)
    if failed:
        print(f"\n{failed} run(s) FAILED and are left out of the figures above")
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(run) for run in runs], indent=1), encoding="utf-8")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (others share this machine)")


if __name__ == "__main__":
    main()
