"""The docker compose stack, for real: engine, images from a local base, `up --wait`, checks, `down -v`.

What it proves about docker-compose.yml:
- every service comes up healthy (Asterisk booted, stc-server listening, tunnels up, calls green);
- the tunnels are up by the programs' own logs, and each participant's window (through its
  published port on 127.0.0.1) lists exactly Alice, Bob and Carol from their certificates;
- a SIP caller on the pbx side that skips stc is refused by the admission AGI;
- each window answers only with its secret (from the address its client printed);
- a participant's container holds its own key only (never ca.key or another user's key);
- ARI and AMI refuse a pbx-side neighbour (they listen on pbx-control only; AMI permits only
  the stc-server's address there, even with the right secret);
- no secret of the running stack (ARI/AMI secrets, window secrets, private keys) is in the
  repository or in an image;
- a capture of the `wan` bridge holds only TLS (port 5443) and SRTP/SRTCP: no SIP text, no
  plaintext RTP or RTCP, no participant name. The same checks run on a capture of the `pbx`
  bridge must find SIP text and plaintext RTP there, so they are known to see what they look for;
- `docker compose down -v` leaves no container, network or volume of the stack.

It starts a Docker engine with scripts/docker-engine.sh if none answers (and stops only the one
it started), and makes the base image with scripts/docker-base.sh (debootstrap, no registry).
Needs root (engine, debootstrap, tcpdump on the bridges). Never skipped: without them it fails
saying what is missing. The build and `up` times go to artifacts/compose-timing.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from stc_wire.srtp import SrtpProfile, SrtpProtector

logger = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[1]
ENGINE_SCRIPT = REPO_DIR / "scripts" / "docker-engine.sh"
BASE_SCRIPT = REPO_DIR / "scripts" / "docker-base.sh"
COMPOSE_FILE = REPO_DIR / "docker-compose.yml"
TIMING_FILE = REPO_DIR / "artifacts" / "compose-timing.json"

# Its own project name: the test never touches a demo started with the file's own name ("stc").
PROJECT = "stc-test"
BASE_IMAGE = os.environ.get("STC_BASE_IMAGE", "stc-base:sid")
PARTICIPANTS = {"alice": ("Alice Adams", 8081), "bob": ("Bob Brown", 8082), "carol": ("Carol Chen", 8083)}
NAMES = sorted(name for name, _ in PARTICIPANTS.values())
ONE_SHOT = {"pki"}
TUNNEL_PORT = 5443

BASE_TIMEOUT_S = 900.0
BUILD_TIMEOUT_S = 1500.0
UP_WAIT_S = 180
GREEN_WAIT_S = 60.0
ASTERISK_PBX_IP, ASTERISK_CONTROL_IP, SERVER_CONTROL_IP = "10.213.10.10", "10.213.30.10", "10.213.30.20"
ARI_PORT, AMI_PORT = 8088, 5038
WINDOW_SECRET_FILE = "/var/lib/stc/.config/stc-client/window-secret"
# Audio the capture must span once every call is green: the demo pcap lasts 7 s.
CAPTURE_AUDIO_S = 8.0

pytestmark = pytest.mark.compose


# ================================================================ what crosses a wire (pure)


@dataclass(frozen=True)
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


@dataclass(frozen=True)
class Segment:
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    syn: bool
    payload: bytes


@dataclass
class Capture:
    """A pcap file's IPv4 traffic: UDP datagrams, TCP segments, and every raw frame."""

    frames: list[bytes] = field(default_factory=list)
    datagrams: list[Datagram] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    not_ipv4: int = 0


def read_pcap(data: bytes) -> Capture:
    """Parse a classic pcap (what `tcpdump -w` writes) of Ethernet frames."""
    if len(data) < 24:
        raise ValueError("not a pcap file: shorter than its global header")
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"not a pcap file (magic {magic.hex()})")
    (linktype,) = struct.unpack_from(endian + "I", data, 20)
    if linktype != 1:
        raise ValueError(f"link type {linktype}, expected 1 (Ethernet)")
    capture = Capture()
    offset = 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        capture.frames.append(frame)
        _add_frame(capture, frame)
    return capture


def _add_frame(capture: Capture, frame: bytes) -> None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        capture.not_ipv4 += 1
        return
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    total = struct.unpack_from("!H", ip, 2)[0]
    proto = ip[9]
    src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
    body = ip[ihl:total]
    if proto == 17 and len(body) >= 8:
        sport, dport = struct.unpack_from("!HH", body)
        capture.datagrams.append(Datagram(src, sport, dst, dport, body[8:]))
    elif proto == 6 and len(body) >= 20:
        sport, dport, seq = struct.unpack_from("!HHI", body)
        data_offset = (body[12] >> 4) * 4
        syn = bool(body[13] & 0x02)
        capture.segments.append(Segment(src, sport, dst, dport, seq, syn, body[data_offset:]))


Flow = tuple[str, int, str, int]


def tcp_streams(segments: list[Segment]) -> dict[Flow, tuple[bytes, bool]]:
    """Each direction's byte stream from its SYN on, and whether it has no gap (seen from the SYN)."""
    by_flow: dict[Flow, list[Segment]] = {}
    for seg in segments:
        by_flow.setdefault((seg.src, seg.sport, seg.dst, seg.dport), []).append(seg)
    streams: dict[Flow, tuple[bytes, bool]] = {}
    for flow, segs in by_flow.items():
        syn = next((s for s in segs if s.syn), None)
        if syn is None:
            streams[flow] = (b"", False)
            continue
        start = (syn.seq + 1) & 0xFFFFFFFF
        pieces = sorted({((s.seq - start) & 0xFFFFFFFF, s.payload) for s in segs if s.payload})
        stream = bytearray()
        complete = True
        for rel, payload in pieces:
            if rel > len(stream):
                complete = False
                break
            stream += payload[len(stream) - rel :]
        streams[flow] = (bytes(stream), complete)
    return streams


TLS_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


def tls_record_types(stream: bytes) -> list[int]:
    """The content type of every whole TLS record in `stream`; ValueError if it is not TLS."""
    types: list[int] = []
    pos = 0
    while pos + 5 <= len(stream):
        ctype, major, minor, length = stream[pos], stream[pos + 1], stream[pos + 2], struct.unpack_from("!H", stream, pos + 3)[0]
        if ctype not in TLS_CONTENT_TYPES or major != 3 or minor not in (1, 3) or length > (1 << 14) + 256:
            raise ValueError(f"not a TLS record at byte {pos}: {stream[pos:pos + 5].hex()}")
        types.append(ctype)
        pos += 5 + length
    return types


SIP_TEXT = re.compile(rb"SIP/2\.0|\b(?:INVITE|REGISTER|OPTIONS|BYE|ACK|CANCEL) sips?:")


def has_sip_text(data: bytes) -> bool:
    return SIP_TEXT.search(data) is not None


def _alaw_to_linear(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t += 8 if seg == 0 else 0x108
    if seg > 1:
        t <<= seg - 1
    return t if a & 0x80 else -t


def _ulaw_to_linear(u: int) -> int:
    u = ~u & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return (0x84 - t) if u & 0x80 else (t - 0x84)


G711_DECODE = {8: [_alaw_to_linear(b) for b in range(256)], 0: [_ulaw_to_linear(b) for b in range(256)]}


def rtp_payload(packet: bytes) -> tuple[int, bytes] | None:
    """(payload type, payload) of an RTP-shaped packet (version 2, not RTCP), else None."""
    if len(packet) < 12 or packet[0] >> 6 != 2 or 192 <= packet[1] <= 223:
        return None
    start = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= start + 4:
        start += 4 + 4 * struct.unpack_from("!H", packet, start + 2)[0]
    return packet[1] & 0x7F, packet[start:]


def looks_like_plain_g711(payload_type: int, payload: bytes) -> bool:
    """G.711 audio in clear: near-constant bytes (silence) or a signal that is smooth from one
    sample to the next (lag-1 autocorrelation above 0.5). Ciphertext decodes to white noise,
    whose autocorrelation stays within a few hundredths of 0 for 80+ samples."""
    table = G711_DECODE.get(payload_type)
    if table is None or len(payload) < 80:
        return False
    if len(set(payload)) <= 4:
        return True
    samples = [table[b] for b in payload]
    mean = sum(samples) / len(samples)
    centred = [s - mean for s in samples]
    energy = sum(c * c for c in centred)
    if energy == 0:
        return True
    lag1 = sum(a * b for a, b in zip(centred, centred[1:]))
    return lag1 / energy > 0.5


def looks_like_plain_rtcp(packet: bytes) -> bool:
    """A compound RTCP packet whose length fields chain exactly to its end: nothing encrypted
    after the first header and no SRTCP index and tag at the end."""
    pos = 0
    while pos + 4 <= len(packet):
        if packet[pos] >> 6 != 2 or not 192 <= packet[pos + 1] <= 223:
            return False
        pos += 4 * (struct.unpack_from("!H", packet, pos + 2)[0] + 1)
    return pos == len(packet) and len(packet) >= 8


@dataclass
class WireReport:
    """What one capture holds, in the terms of the issue's "only TLS and SRTP" check."""

    frames: int
    sip_text_frames: int
    names_in_clear: dict[str, int]
    tcp_flows_not_tunnel: list[Flow]
    tls_streams: dict[Flow, list[int]]
    tls_problems: list[str]
    udp_not_rtp: int
    plain_rtcp: int
    # per UDP flow carrying RTP: (packets that look like plaintext G.711, RTP packets)
    rtp_flows: dict[Flow, tuple[int, int]]

    def plain_rtp_flows(self, fraction: float) -> dict[Flow, tuple[int, int]]:
        return {f: (p, n) for f, (p, n) in self.rtp_flows.items() if n and p / n > fraction}

    def srtp_flows(self) -> dict[Flow, tuple[int, int]]:
        return {f: (p, n) for f, (p, n) in self.rtp_flows.items() if n >= 50 and p / n < 0.02}


def analyse(capture: Capture, *, names: list[str], tunnel_port: int = TUNNEL_PORT) -> WireReport:
    sip_frames = sum(1 for frame in capture.frames if has_sip_text(frame))
    names_in_clear = {n: c for n in names if (c := sum(1 for fr in capture.frames if n.encode() in fr))}
    tcp_flows = {(s.src, s.sport, s.dst, s.dport) for s in capture.segments}
    not_tunnel = sorted(f for f in tcp_flows if tunnel_port not in (f[1], f[3]))
    tls_streams: dict[Flow, list[int]] = {}
    problems: list[str] = []
    for flow, (stream, complete) in tcp_streams([s for s in capture.segments if tunnel_port in (s.sport, s.dport)]).items():
        if not complete:
            problems.append(f"{flow}: stream not captured from its SYN without gaps")
            continue
        try:
            tls_streams[flow] = tls_record_types(stream)
        except ValueError as exc:
            problems.append(f"{flow}: {exc}")
    udp_not_rtp = plain_rtcp = 0
    rtp_flows: dict[Flow, tuple[int, int]] = {}
    for d in capture.datagrams:
        if len(d.payload) < 8 or d.payload[0] >> 6 != 2:
            udp_not_rtp += 1
            continue
        if 192 <= d.payload[1] <= 223:
            plain_rtcp += looks_like_plain_rtcp(d.payload)
            continue
        parsed = rtp_payload(d.payload)
        if parsed is None:
            udp_not_rtp += 1
            continue
        flow = (d.src, d.sport, d.dst, d.dport)
        plain, total = rtp_flows.get(flow, (0, 0))
        rtp_flows[flow] = (plain + looks_like_plain_g711(*parsed), total + 1)
    return WireReport(
        frames=len(capture.frames),
        sip_text_frames=sip_frames,
        names_in_clear=names_in_clear,
        tcp_flows_not_tunnel=not_tunnel,
        tls_streams=tls_streams,
        tls_problems=problems,
        udp_not_rtp=udp_not_rtp,
        plain_rtcp=plain_rtcp,
        rtp_flows=rtp_flows,
    )


# ---------------------------------------------------------------- the detectors, in memory


def _linear_to_alaw(pcm: int) -> int:
    """G.711 A-law encoder (the classic Sun reference), for test signals."""
    seg_end = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
    pcm >>= 3
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = next((i for i, end in enumerate(seg_end) if pcm <= end), 8)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1) & 0x0F if seg < 2 else (pcm >> seg) & 0x0F
    return aval ^ mask


def _plain_rtp(seq: int, payload: bytes, payload_type: int = 8, ssrc: int = 0x1234ABCD) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq & 0xFFFF, seq * 160, ssrc) + payload


def _voice_like_packets(count: int) -> list[bytes]:
    """20 ms PCMA packets of a gliding two-tone signal under a syllable-like envelope, and silence."""
    packets = []
    for n in range(count):
        samples = []
        for i in range(160):
            t = (n * 160 + i) / 8000
            envelope = 0.2 + 0.8 * abs(math.sin(2 * math.pi * 3 * t))
            tone = math.sin(2 * math.pi * (220 + 40 * math.sin(t)) * t) + 0.5 * math.sin(2 * math.pi * 680 * t)
            samples.append(int(9000 * envelope * tone))
        packets.append(_plain_rtp(n, bytes(_linear_to_alaw(s) for s in samples)))
    packets += [_plain_rtp(count + k, b"\xd5" * 160) for k in range(5)]
    return packets


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_wire_detectors_tell_plaintext_from_srtp(profile: SrtpProfile) -> None:
    """The capture checks below rest on these detectors: every plain G.711 packet and plain RTCP
    packet is flagged, and none of the same packets once protected with SRTP/SRTCP is."""
    plain = _voice_like_packets(100)
    protector = SrtpProtector(profile, os.urandom(profile.master_length), os.urandom(profile.master_length))
    protected = [protector.protect_rtp(p) for p in plain]
    assert all(looks_like_plain_g711(*rtp_payload(p)) for p in plain)  # type: ignore[misc]
    flagged = [p for p in protected if looks_like_plain_g711(*rtp_payload(p))]  # type: ignore[misc]
    assert flagged == []
    receiver_report = struct.pack("!BBHI", 0x80, 201, 1, 0x1234ABCD)
    assert looks_like_plain_rtcp(receiver_report)
    assert not looks_like_plain_rtcp(protector.protect_rtcp(receiver_report))
    assert has_sip_text(b"INVITE sip:1000@10.0.0.1 SIP/2.0\r\n") and not has_sip_text(os.urandom(4000).replace(b"SIP", b"sip"))


def test_tls_record_walk_accepts_records_and_refuses_other_bytes() -> None:
    records = b"\x16\x03\x01\x00\x02ab" + b"\x14\x03\x03\x00\x01\x01" + b"\x17\x03\x03\x00\x03xyz"
    assert tls_record_types(records) == [22, 20, 23]
    with pytest.raises(ValueError, match="not a TLS record at byte 0"):
        tls_record_types(b"INVITE sip:1000@x SIP/2.0\r\n")


# ================================================================ the real stack


def _require_root_and_tools() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (Docker engine, debootstrap, tcpdump on the bridges)")
    for tool in ("docker", "tcpdump"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed")
    if problems:
        pytest.fail("the compose test cannot run: " + "; ".join(problems) + " (scripts/test.sh sets this up)")


def _run(
    cmd: list[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s", " ".join(cmd))
    try:
        result = subprocess.run(
            cmd, cwd=REPO_DIR, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout} s\n{exc.stderr or ''}") from None
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@dataclass
class Engine:
    env: dict[str, str]
    started_by_us: bool


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """A Docker engine with compose v2; stopped at the end if this test started it."""
    _require_root_and_tools()
    status = _run(["bash", str(ENGINE_SCRIPT), "status"], timeout=60, check=False)
    was_running = status.returncode == 0
    _run(["bash", str(ENGINE_SCRIPT), "start"], timeout=600)
    config = _run(["bash", str(ENGINE_SCRIPT), "env"], timeout=10).stdout
    match = re.search(r"DOCKER_CONFIG=(\S+)", config)
    assert match, f"docker-engine.sh env printed no DOCKER_CONFIG: {config!r}"
    env = dict(os.environ, DOCKER_CONFIG=match.group(1).strip("'\""), STC_BASE_IMAGE=BASE_IMAGE)
    try:
        yield Engine(env=env, started_by_us=not was_running)
    finally:
        if not was_running:
            _run(["bash", str(ENGINE_SCRIPT), "stop"], timeout=120)


class BridgeCapture:
    """tcpdump on a compose network's host-side bridge, into a pcap file."""

    def __init__(self, network: str, path: Path, env: dict[str, str]) -> None:
        net_id = _run(["docker", "network", "inspect", "--format", "{{.Id}}", network], timeout=30, env=env).stdout.strip()
        self.interface = f"br-{net_id[:12]}"
        self.path = path
        self.process = subprocess.Popen(
            ["tcpdump", "-i", self.interface, "-n", "-U", "-s", "0", "-w", str(path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # "listening on br-...": the capture is armed
        if "listening on" not in line:
            self.process.kill()
            raise AssertionError(f"tcpdump on {self.interface} ({network}) did not start: {line}{self.process.stderr.read()}")
        self.stats = ""

    def stop(self) -> Capture:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                _, self.stats = self.process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.communicate(timeout=5)
        return read_pcap(self.path.read_bytes())


@dataclass
class Stack:
    env: dict[str, str]
    up: subprocess.CompletedProcess[str]
    green_at: float | None
    wan: BridgeCapture
    pbx: BridgeCapture
    timing: dict[str, float]
    # participant -> the window's secret, from the address its client printed
    window_secrets: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(_compose_cmd(*args), timeout=timeout, env=self.env, check=check)


def _compose_cmd(*args: str) -> list[str]:
    return ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]


def _leftovers(env: dict[str, str]) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={PROJECT}"
    found = {}
    for kind, cmd in (
        ("containers", ["docker", "ps", "-a", "--filter", label, "--format", "{{.Names}}"]),
        ("networks", ["docker", "network", "ls", "--filter", label, "--format", "{{.Name}}"]),
        ("volumes", ["docker", "volume", "ls", "--filter", label, "--format", "{{.Name}}"]),
    ):
        found[kind] = _run(cmd, timeout=30, env=env).stdout.split()
    return found


def _window_status(port: int, secret: str | None) -> dict[str, object]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"token {secret}"} if secret is not None else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers=headers)
    with opener.open(request, timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _window_secrets(env: dict[str, str]) -> dict[str, str]:
    """Each window's secret, as its user finds it: in the address the client printed."""
    found = {}
    for participant, (_, port) in PARTICIPANTS.items():
        log = _run(_compose_cmd("logs", "--no-color", f"{participant}-client"), timeout=60, env=env).stdout
        tokens = re.findall(rf"client window at http://127\.0\.0\.1:{port}/\?token=([A-Za-z0-9_-]+)", log)
        if tokens:
            found[participant] = tokens[-1]
    return found


def _all_green(secrets: dict[str, str]) -> bool:
    try:
        return all(_window_status(port, secrets.get(p)).get("light") == "green" for p, (_, port) in PARTICIPANTS.items())
    except OSError:
        return False


def _wait_all_green(env: dict[str, str]) -> tuple[float | None, dict[str, str]]:
    """When every window shows green (the phones' health checks only know their call is answered)."""
    deadline = time.monotonic() + GREEN_WAIT_S
    while time.monotonic() < deadline:
        secrets = _window_secrets(env)
        if len(secrets) == len(PARTICIPANTS) and _all_green(secrets):
            return time.monotonic(), secrets
        time.sleep(1)
    return None, _window_secrets(env)


@pytest.fixture(scope="module")
def stack(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Base image, build, networks created, captures armed on wan and pbx, then `up -d --wait`."""
    env = engine.env
    timing: dict[str, float] = {}
    t0 = time.monotonic()
    _run(["bash", str(BASE_SCRIPT)], timeout=BASE_TIMEOUT_S, env=env)
    timing["base_image_s"] = time.monotonic() - t0
    # Whatever an interrupted earlier run left behind.
    _run(_compose_cmd("--profile", "checks", "down", "-v", "--remove-orphans"), timeout=120, env=env)
    t0 = time.monotonic()
    _run(_compose_cmd("build"), timeout=BUILD_TIMEOUT_S, env=env)
    timing["build_s"] = time.monotonic() - t0
    _run(_compose_cmd("up", "--no-start"), timeout=120, env=env)
    tmp = tmp_path_factory.mktemp("compose-captures")
    wan = BridgeCapture(f"{PROJECT}_wan", tmp / "wan.pcap", env)
    pbx = BridgeCapture(f"{PROJECT}_pbx", tmp / "pbx.pcap", env)
    t0 = time.monotonic()
    up = _run(_compose_cmd("up", "-d", "--wait", "--wait-timeout", str(UP_WAIT_S)), timeout=UP_WAIT_S + 60, env=env, check=False)
    timing["up_wait_s"] = time.monotonic() - t0
    green_at, secrets = _wait_all_green(env) if up.returncode == 0 else (None, {})
    timing["build_and_up_s"] = timing["build_s"] + timing["up_wait_s"]
    logger.info("compose timing: %s", {k: round(v, 1) for k, v in timing.items()})
    stack = Stack(env=env, up=up, green_at=green_at, wan=wan, pbx=pbx, timing=timing, window_secrets=secrets)
    try:
        yield stack
    finally:
        for capture in (wan, pbx):
            if capture.process.poll() is None:
                capture.process.kill()
                capture.process.communicate(timeout=5)
        if up.returncode != 0 or green_at is None:
            logs = _run(_compose_cmd("logs", "--no-color", "--tail", "40"), timeout=60, env=env, check=False)
            logger.error("compose logs after a failed start:\n%s", logs.stdout[-20000:])
        _run(_compose_cmd("--profile", "checks", "down", "-v", "--remove-orphans"), timeout=180, env=env, check=False)
        # Builds that the one just made superseded (the Dockerfiles label their images).
        _run(["docker", "image", "prune", "-f", "--filter", "label=io.stc.image"], timeout=120, env=env, check=False)
        TIMING_FILE.parent.mkdir(parents=True, exist_ok=True)
        TIMING_FILE.write_text(json.dumps({k: round(v, 1) for k, v in timing.items()}, indent=2) + "\n")


def test_every_service_comes_up_healthy(stack: Stack) -> None:
    assert stack.up.returncode == 0, f"docker compose up --wait failed:\n{stack.up.stdout[-3000:]}\n{stack.up.stderr[-3000:]}"
    rows = [json.loads(line) for line in stack.compose("ps", "-a", "--format", "json").stdout.splitlines() if line.strip()]
    services = {row["Service"]: row for row in rows}
    expected = {"asterisk", "pki", "stc-server"} | {f"{p}-{role}" for p in PARTICIPANTS for role in ("client", "phone", "window")}
    assert set(services) == expected
    for name, row in services.items():
        if name in ONE_SHOT:
            assert (row["State"], row["ExitCode"]) == ("exited", 0), f"{name}: {row['Status']}"
        else:
            assert (row["State"], row["Health"]) == ("running", "healthy"), f"{name}: {row['Status']}"


def test_tunnels_are_up_by_the_programs_logs(stack: Stack) -> None:
    server_log = stack.compose("logs", "--no-color", "stc-server").stdout
    connected = set(re.findall(r"client connected from \S+: CN=([^,]+),", server_log))
    assert connected == set(NAMES), server_log[-3000:]
    for participant in PARTICIPANTS:
        client_log = stack.compose("logs", "--no-color", f"{participant}-client").stdout
        assert f"tunnel up to stc-server:{TUNNEL_PORT}" in client_log, client_log[-3000:]
        assert "tunnel refused" not in client_log and "tunnel closed" not in client_log, \
            client_log[-3000:] + "\n--- stc-server ---\n" + server_log[-6000:]


def test_every_window_lists_exactly_alice_bob_and_carol(stack: Stack) -> None:
    """Each participant's window, reached through its port published on the host's 127.0.0.1."""
    for participant, (own_name, port) in PARTICIPANTS.items():
        status = _window_status(port, stack.window_secrets[participant])
        assert status["light"] == "green", (participant, status["reason"])
        assert isinstance(status["call"], dict) and status["call"]["room"] == "1000", status["call"]
        rows = status["participants"]
        assert isinstance(rows, list)
        assert sorted(row["display_name"] for row in rows) == NAMES, (participant, rows)
        assert all(row["authenticated"] for row in rows), (participant, rows)
        assert [row["display_name"] for row in rows if row["is_me"]] == [own_name]
        assert status["warnings"] == [], (participant, status["warnings"])


def test_a_caller_skipping_stc_on_the_pbx_side_is_refused_by_the_agi(stack: Stack) -> None:
    t0 = time.monotonic()
    intruder = stack.compose("--profile", "checks", "run", "--rm", "pbx-intruder", timeout=90, check=False)
    elapsed = time.monotonic() - t0
    # uac_wait_bye.xml ends well only when Asterisk hangs up on it; its -timeout is 20 s.
    assert intruder.returncode == 0, f"the intruder was not hung up on (exit {intruder.returncode}):\n{intruder.stdout[-3000:]}"
    assert elapsed < 20, f"hung up only after {elapsed:.1f} s"
    server_log = stack.compose("logs", "--no-color", "stc-server").stdout
    assert re.search(r"fastagi.*refused \(token-missing\)", server_log), server_log[-3000:]
    bridge = stack.compose(
        "exec", "-T", "asterisk", "asterisk", "-C", "/etc/stc-asterisk/asterisk.conf", "-rx", "confbridge list 1000"
    ).stdout
    callers = sorted(re.findall(r"^PJSIP/\S+\s+.*\s(\S+)\s*$", bridge, re.MULTILINE))
    assert callers == sorted(PARTICIPANTS), bridge
    for participant, (_, port) in PARTICIPANTS.items():
        rows = _window_status(port, stack.window_secrets[participant])["participants"]
        names = sorted(row["display_name"] for row in rows)  # type: ignore[union-attr]
        assert names == NAMES, (participant, names)


def test_a_window_answers_only_with_its_secret(stack: Stack) -> None:
    assert sorted(stack.window_secrets) == sorted(PARTICIPANTS), "a client printed no window address"
    assert len(set(stack.window_secrets.values())) == len(PARTICIPANTS)  # one per installation
    for participant, (_, port) in PARTICIPANTS.items():
        for secret in (None, stack.window_secrets[_other(participant)]):
            with pytest.raises(urllib.error.HTTPError) as err:
                _window_status(port, secret)
            assert err.value.code == 403, (participant, err.value.code)


def _other(participant: str) -> str:
    names = sorted(PARTICIPANTS)
    return names[(names.index(participant) + 1) % len(names)]


# Run in a participant's container as its user: every readable file holding a line of a given
# private key, and every readable file called *.key or holding a PEM private key, outside /proc,
# /sys and /dev.
_SCAN = r"""
import json, os, re, sys
needles = [n.encode() for n in json.loads(sys.argv[1])]
pem_key = re.compile(rb"^-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=]{40,}", re.MULTILINE)
hits, named = [], []
for top in ("/",):
    for root, dirs, files in os.walk(top):
        if root == "/":
            dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
        for name in files:
            path = os.path.join(root, name)
            try:
                if not os.path.isfile(path) or os.path.getsize(path) > 4_000_000:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if name.endswith(".key") or pem_key.search(data):
                named.append(path)
            hits.extend(f"{path}: key {i}" for i, n in enumerate(needles) if n in data)
print(json.dumps({"hits": hits, "named": sorted(named), "uid": os.getuid()}))
"""


def _pki_keys(stack: Stack) -> dict[str, str]:
    """Every private key of the demo PKI (path in the pki volume -> PEM), read through the one-shot's image."""
    script = "import glob, json; print(json.dumps({p: open(p).read() for p in glob.glob('/pki/**/*.key', recursive=True)}))"
    out = stack.compose("run", "--rm", "--no-deps", "-T", "--entrypoint", "python3", "pki", "-c", script).stdout
    keys: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return keys


def _key_line(pem: str) -> str:
    """A line of a PEM key's body: enough to recognise the key anywhere, nothing on its own."""
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    return lines[len(lines) // 2]


def test_a_participant_container_holds_its_own_key_only(stack: Stack) -> None:
    keys = _pki_keys(stack)
    assert {"/pki/ca.key", "/pki/server.key", "/pki/users/alice.key", "/pki/users/bob.key"} <= set(keys), sorted(keys)
    for participant in PARTICIPANTS:
        own = f"/pki/users/{participant}.key"
        others = {path: pem for path, pem in keys.items() if path != own}
        needles = [_key_line(pem) for pem in others.values()]
        result = stack.compose("exec", "-T", f"{participant}-client", "python3", "-c", _SCAN, json.dumps(needles),
                               timeout=180).stdout
        found = json.loads(result.strip().splitlines()[-1])
        assert found["uid"] == 10001  # the client's own user, as a compromised client would be
        assert found["hits"] == [], (participant, found["hits"], sorted(others))
        assert found["named"] == [f"/pki/{participant}.key"], (participant, found["named"])
        # And its own key is there and is the one the PKI issued.
        own_pem = stack.compose("exec", "-T", f"{participant}-client", "cat", f"/pki/{participant}.key").stdout
        assert own_pem == keys[own]


# From a pbx-side container: try ARI and AMI on both of Asterisk's addresses; with a secret,
# also log in to AMI. Prints what happened per address.
_PROBE = r"""
import json, socket, sys
secret = sys.argv[2] if len(sys.argv) > 2 else ""
result = {}
for host, port in json.loads(sys.argv[1]):
    key = f"{host}:{port}"
    try:
        s = socket.create_connection((host, port), timeout=4)
    except OSError as exc:
        result[key] = f"no connection: {exc}"
        continue
    s.settimeout(4)
    try:
        if port == 5038:
            banner = s.recv(200).decode(errors="replace")
            s.sendall(f"Action: Login\r\nUsername: stc\r\nSecret: {secret}\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(400)
                if not chunk:
                    break
                answer += chunk
            result[key] = "connected: " + banner.strip() + " | " + answer.decode(errors="replace").strip()
        else:
            s.sendall(b"GET /ari/asterisk/info HTTP/1.0\r\n\r\n")
            result[key] = "connected: " + s.recv(200).decode(errors="replace").splitlines()[0]
    except OSError as exc:
        result[key] = f"connected, then {exc}"
    finally:
        s.close()
print(json.dumps(result))
"""


def _probe(stack: Stack, service: str, targets: list[tuple[str, int]], secret: str = "") -> dict[str, str]:
    out = stack.compose("--profile", "checks", "run", "--rm", "--no-deps", "-T", service, _PROBE,
                        json.dumps(targets), secret, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_ari_and_ami_refuse_a_pbx_neighbour(stack: Stack) -> None:
    targets = [(ip, port) for ip in (ASTERISK_PBX_IP, ASTERISK_CONTROL_IP) for port in (ARI_PORT, AMI_PORT)]
    seen = _probe(stack, "pbx-probe", targets)
    assert all(v.startswith("no connection") for v in seen.values()), seen
    # Even on pbx-control and with the right secret, AMI lets in only the stc-server's address.
    ami_secret = stack.compose("exec", "-T", "stc-server", "cat", "/pbx-secrets/ami-secret").stdout.strip()
    seen = _probe(stack, "pbx-control-probe", [(ASTERISK_CONTROL_IP, AMI_PORT)], ami_secret)
    answer = seen[f"{ASTERISK_CONTROL_IP}:{AMI_PORT}"]
    assert "Response: Error" in answer and "Authentication failed" in answer, answer
    # The stc-server itself is let in with the same secret: the address is what AMI refused above.
    server_log = stack.compose("logs", "--no-color", "stc-server").stdout
    assert f"AMI logged in to {ASTERISK_CONTROL_IP}:{AMI_PORT}" in server_log, server_log[-3000:]
    assert f"ARI events connected (http://{ASTERISK_CONTROL_IP}:{ARI_PORT}" in server_log, server_log[-3000:]


def _stack_secrets(stack: Stack) -> dict[str, str]:
    secrets = {f"{p} window secret": s for p, s in stack.window_secrets.items()}
    for name in ("ari-password", "ami-secret"):
        secrets[name] = stack.compose("exec", "-T", "stc-server", "cat", f"/pbx-secrets/{name}").stdout.strip()
    for path, pem in _pki_keys(stack).items():
        secrets[f"private key {path}"] = _key_line(pem)
    assert all(len(v) >= 20 for v in secrets.values()), {k: len(v) for k, v in secrets.items()}
    return secrets


def test_no_secret_of_the_stack_is_in_the_repository_or_an_image(stack: Stack) -> None:
    secrets = _stack_secrets(stack)
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], timeout=60).stdout.split("\0")
    assert len(files) > 50
    for name in files:
        path = REPO_DIR / name
        if not name or not path.is_file():
            continue
        data = path.read_bytes()
        leaked = [what for what, value in secrets.items() if value.encode() in data]
        assert leaked == [], (name, leaked)
    # The images: nothing secret baked in (their secrets arrive in volumes at run time).
    search = ('dirs=""; for d in /etc /usr/local /usr/share/stc /opt /var/lib /root /home /pki; do '
              '[ -d "$d" ] && dirs="$dirs $d"; done; exec grep -rlF "$@" $dirs')
    args = [arg for value in secrets.values() for arg in ("-e", value)]
    for image in ("stc:local", "stc-asterisk:local"):
        found = _run(["docker", "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "sh", image,
                      "-c", search, "sh", *args], timeout=300, env=stack.env, check=False)
        assert found.returncode == 1 and found.stdout == "", (image, found.returncode, found.stdout[-2000:], found.stderr[-2000:])


def test_the_wan_carries_only_tls_and_srtp(stack: Stack) -> None:
    assert stack.green_at is not None, "the conference never came up green: nothing to capture"
    time.sleep(max(0.0, stack.green_at + CAPTURE_AUDIO_S - time.monotonic()))
    wan = analyse(stack.wan.stop(), names=NAMES)
    pbx = analyse(stack.pbx.stop(), names=NAMES)
    logger.info("wan: %d frames, TLS streams %s, RTP flows %s (tcpdump: %s)", wan.frames,
                {f: len(t) for f, t in wan.tls_streams.items()}, wan.rtp_flows, stack.wan.stats.strip())
    logger.info("pbx: %d frames, %d with SIP text, RTP flows %s", pbx.frames, pbx.sip_text_frames, pbx.rtp_flows)

    # The detectors see plaintext where it is: SIP and RTP in clear on the pbx side.
    assert pbx.sip_text_frames > 0
    assert len(pbx.plain_rtp_flows(0.5)) >= 3, pbx.rtp_flows

    # The wan: nothing readable.
    assert wan.sip_text_frames == 0
    assert wan.names_in_clear == {}
    assert wan.plain_rtcp == 0
    assert wan.plain_rtp_flows(0.02) == {}, wan.rtp_flows
    assert wan.udp_not_rtp == 0
    # TCP only for the tunnels, and each tunnel is TLS from its first byte to its last.
    assert wan.tcp_flows_not_tunnel == []
    assert wan.tls_problems == []
    client_to_server = [types for (_, _, _, dport), types in wan.tls_streams.items() if dport == TUNNEL_PORT]
    assert len(client_to_server) == len(PARTICIPANTS), wan.tls_streams.keys()
    for types in wan.tls_streams.values():
        assert types and types[0] == 22 and 23 in types, types
    # And SRTP flows both ways for every participant (a silent relay would pass the checks above).
    srtp = wan.srtp_flows()
    assert len({f[2] for f in srtp if f[0] == "10.213.20.20"}) == len(PARTICIPANTS), srtp
    assert len({f[0] for f in srtp if f[2] == "10.213.20.20"}) == len(PARTICIPANTS), srtp


def test_down_leaves_no_container_network_or_volume(stack: Stack) -> None:
    stack.compose("--profile", "checks", "down", "-v", "--remove-orphans", timeout=180)
    assert _leftovers(stack.env) == {"containers": [], "networks": [], "volumes": []}
