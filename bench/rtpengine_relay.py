"""The same load as bench/media_relay.py, relayed by rtpengine (userspace) instead of stc's MediaRelay.

    apt-get install --no-install-recommends rtpengine-daemon     # Debian 12: rtpengine 10.5
    .venv/bin/python bench/rtpengine_relay.py --calls 100,500,1000 --seconds 10

For the rtpengine decision of issue 14 (docs/benchmarks.md). rtpengine runs in its own process in
the foreground, userspace forwarding only (`--table=-1`: no kernel module, which would need DKMS
and a compiler on the operator's machine), driven over its ng control protocol (bencode over UDP)
the way a SIP proxy drives it: per call an `offer` from the client side (RTP/SAVP with an SDES
`a=crypto`, translated to plain RTP/AVP towards Asterisk) and an `answer` from the Asterisk side,
which gives back rtpengine's own `a=crypto` for what it sends the client. The driver is
bench/media_relay.py's, unchanged: per call 50 packets a second each way, 172 bytes, SRTP
(AES_CM_128_HMAC_SHA1_80) on the client side, send times spread over the 20 ms period; it checks
one in eight SRTP packets from the relay by unprotecting it. CPU is rtpengine's whole process
(every thread) from /proc/PID/stat over the measured window.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from media_relay import (  # noqa: E402
    HOST,
    TO_PLAIN_SSRC_BASE,
    TO_SECURE_SSRC_BASE,
    Flow,
    Receiver,
    Row,
    _percentile,
    _print,
    _udp,
    drive,
)

from stc_wire.srtp import SrtpProfile, SrtpProtector, SrtpUnprotector  # noqa: E402

PROFILE = SrtpProfile.AES_CM_128_HMAC_SHA1_80
PORT_MIN, PORT_MAX = 20000, 25999  # rtpengine's media ports (4 per call); Asterisk's lab uses 10000-10999


# ---------------------------------------------------------------- bencode and the ng protocol

Value = int | bytes | str | list["Value"] | dict[str, "Value"]


def bencode(value: Value) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    return b"d" + b"".join(bencode(k) + bencode(v) for k, v in sorted(value.items())) + b"e"


def bdecode(data: bytes, at: int = 0) -> tuple[object, int]:
    kind = data[at:at + 1]
    if kind == b"i":
        end = data.index(b"e", at)
        return int(data[at + 1:end]), end + 1
    if kind in (b"l", b"d"):
        at += 1
        items = []
        while data[at:at + 1] != b"e":
            item, at = bdecode(data, at)
            items.append(item)
        if kind == b"l":
            return items, at + 1
        return {k.decode(): v for k, v in zip(items[::2], items[1::2])}, at + 1  # type: ignore[union-attr]
    colon = data.index(b":", at)
    length = int(data[at:colon])
    return data[colon + 1:colon + 1 + length], colon + 1 + length


class NgClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)
        self.address = (HOST, port)

    def command(self, **message: Value) -> dict[str, object]:
        reply = self.send(**message)
        if reply.get("result") != b"ok":
            raise RuntimeError(f"rtpengine refused {message.get('command')}: {reply}")
        return reply

    def send(self, **message: Value) -> dict[str, object]:
        cookie = secrets.token_hex(6).encode()
        self.sock.sendto(cookie + b" " + bencode(message), self.address)  # type: ignore[arg-type]
        while True:
            data, _ = self.sock.recvfrom(65536)
            got, _, body = data.partition(b" ")
            if got == cookie:
                reply, _ = bdecode(body)
                assert isinstance(reply, dict)
                return reply

    def ping(self) -> bool:
        try:
            return self.send(command="ping").get("result") == b"pong"
        except OSError:
            return False


def sdp(port: int, protocol: str, key: bytes | None = None) -> str:
    lines = ["v=0", f"o=- 1 1 IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0",
             f"m=audio {port} {protocol} 8", "a=rtpmap:8 PCMA/8000", "a=sendrecv"]
    if key is not None:
        lines.append(f"a=crypto:1 {PROFILE.value} inline:{base64.b64encode(key).decode()}")
    return "\r\n".join(lines) + "\r\n"


def media_of(text: bytes) -> tuple[int, bytes | None]:
    port, key = 0, None
    for line in text.decode().splitlines():
        if line.startswith("m=audio "):
            port = int(line.split()[1])
        elif line.startswith("a=crypto:") and PROFILE.value in line and key is None:
            key = base64.b64decode(line.split("inline:", 1)[1].split("|")[0].split()[0])
    return port, key


# ---------------------------------------------------------------- the run

def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the whole process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_rtpengine(workdir: Path, threads: int) -> tuple[subprocess.Popen[bytes], NgClient]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, 0))
        ng_port = probe.getsockname()[1]
    binary = shutil.which("rtpengine")
    if binary is None:
        raise SystemExit("rtpengine is not installed (Debian 12: apt-get install --no-install-recommends rtpengine-daemon)")
    command = [binary, "--config-file=none", "--foreground", "--log-stderr", "--log-level=3", "--table=-1",
               f"--interface={HOST}", f"--listen-ng={HOST}:{ng_port}", f"--port-min={PORT_MIN}", f"--port-max={PORT_MAX}",
               "--timeout=600", f"--pidfile={workdir / 'rtpengine.pid'}"]
    if threads:
        command.append(f"--num-threads={threads}")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "rtpengine.log", "wb"))
    ng = NgClient(ng_port)
    deadline = time.monotonic() + 10
    while not ng.ping():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()  # never leave one behind
            process.wait(5)
            raise SystemExit(f"rtpengine did not start: {(workdir / 'rtpengine.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return process, ng


def bench_rtpengine(calls: int, seconds: float, threads: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="stc-rtpengine-") as tmp:
        process, ng = start_rtpengine(Path(tmp), threads)
        try:
            client_sock, asterisk_sock = _udp(), _udp()
            rss_before = rss_kb(process.pid)
            flows, unprotectors = [], {}
            for n in range(calls):
                ours = secrets.token_bytes(PROFILE.master_length)
                call_id = f"bench-{n}-{secrets.token_hex(4)}"
                offer = ng.command(command="offer", **{"call-id": call_id, "from-tag": "client"},
                                   sdp=sdp(client_sock.getsockname()[1], "RTP/SAVP", ours),
                                   **{"transport-protocol": "RTP/AVP", "ICE": "remove"})
                pbx_port, _ = media_of(offer["sdp"])  # type: ignore[arg-type]
                answer = ng.command(command="answer", **{"call-id": call_id, "from-tag": "client", "to-tag": "asterisk"},
                                    sdp=sdp(asterisk_sock.getsockname()[1], "RTP/AVP"), ICE="remove")
                wan_port, theirs = media_of(answer["sdp"])  # type: ignore[arg-type]
                if not pbx_port or not wan_port or theirs is None:
                    raise RuntimeError(f"rtpengine's SDP lacks a port or a=crypto: {offer} {answer}")
                flows.append(Flow(TO_PLAIN_SSRC_BASE + n, client_sock, (HOST, wan_port), SrtpProtector(PROFILE, ours, ours)))
                flows.append(Flow(TO_SECURE_SSRC_BASE + n, asterisk_sock, (HOST, pbx_port), None))
                unprotectors[TO_SECURE_SSRC_BASE + n] = SrtpUnprotector(PROFILE, theirs, theirs)
            rss_after = rss_kb(process.pid)
            by_ssrc = {flow.ssrc: flow for flow in flows}
            receivers = [Receiver(asterisk_sock, by_ssrc), Receiver(client_sock, by_ssrc, unprotectors)]
            cpu: list[tuple[float, float]] = []

            def on_window() -> None:
                cpu.append(cpu_seconds(process.pid))
                timer = threading.Timer(seconds, lambda: cpu.append(cpu_seconds(process.pid)))
                timer.daemon = True
                timer.start()

            window, driver_core = drive(flows, receivers, seconds, on_window)
            client_sock.close()
            asterisk_sock.close()
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
            errors = [line for line in (Path(tmp) / "rtpengine.log").read_text(errors="replace").splitlines()
                      if "ERR" in line or "WARN" in line or "CRIT" in line]
            if errors:
                print(f"rtpengine logged {len(errors)} warnings or errors, the last: {errors[-3:]}")
    sent = sum(f.sent for f in flows)
    received = sum(r.received for r in receivers)
    latencies = [lat for r in receivers for lat in r.latencies_ns]
    spent = sum(cpu[1]) - sum(cpu[0]) if len(cpu) == 2 else float("nan")
    kernel = cpu[1][1] - cpu[0][1] if len(cpu) == 2 else float("nan")
    return Row(
        loop="rtpengine", calls=calls, pps=received / seconds, cpu_core=spent / seconds,
        us_per_packet=spent / received * 1e6 if received else float("nan"),
        loss_pct=100 * (sent - received) / sent if sent else float("nan"),
        p50_us=_percentile(latencies, 0.5), p99_us=_percentile(latencies, 0.99),
        rss_kb_per_call=(rss_after - rss_before) / calls, relay_drops=sum(r.bad for r in receivers),
        driver_core=driver_core, kernel_share=kernel / spent if spent else float("nan"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", default="100,500,1000", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--threads", type=int, default=0, help="rtpengine --num-threads (0: its default)")
    args = parser.parse_args()
    version: Any = subprocess.run(["rtpengine", "--version"], capture_output=True, text=True, check=False)
    version = (version.stdout + version.stderr).strip()
    print(f"rtpengine userspace ({version}); {args.seconds:g} s measured per run; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    rows = []
    for calls in (int(c) for c in args.calls.split(",") if c):
        row = bench_rtpengine(calls, args.seconds, args.threads)
        rows.append(row)
        _print([row], f"rtpengine, {calls} calls")
    _print(rows, "rtpengine (CPU: its whole process; us/pkt over packets that reached the driver; RSS kB/call after setup)")
    print(f"load average {os.getloadavg()[0]:.2f} at the end (others share this machine)")


if __name__ == "__main__":
    main()
