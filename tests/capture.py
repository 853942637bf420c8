"""Wire captures for tests: tcpdump on loopback, parsed in Python (no dissector needed)."""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Packet:
    proto: str  # 'udp' or 'tcp'
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    time: float = 0.0  # capture time, seconds since the epoch


class Capture:
    """`with Capture('host 127.0.0.2') as cap: ...` then `cap.packets()`."""

    def __init__(self, bpf: str, interface: str = "lo") -> None:
        if shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump is not installed (scripts/asterisk-lab.sh setup installs it)")
        self._dir = Path(tempfile.mkdtemp(prefix="stc-capture-"))
        self.path = self._dir / "wire.pcap"
        self._cmd = ["tcpdump", "-i", interface, "-U", "-n", "-s", "0", "-w", str(self.path), bpf]
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Capture":
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump says "listening on" once the capture is really running.
        assert self._proc.stderr is not None
        deadline = time.monotonic() + 10
        line = b""
        while time.monotonic() < deadline and b"listening on" not in line:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                raise RuntimeError(f"tcpdump failed to start: {' '.join(self._cmd)}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            time.sleep(0.2)  # let the last packets be written
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(10)

    def packets(self) -> list[Packet]:
        return parse_pcap(self.path.read_bytes())

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def parse_pcap(data: bytes) -> list[Packet]:
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    offset = 24
    packets: list[Packet] = []
    while offset + 16 <= len(data):
        ts_sec, ts_usec, incl_len, _ = struct.unpack(endian + "IIII", data[offset:offset + 16])
        when = ts_sec + ts_usec / 1e6
        frame = data[offset + 16: offset + 16 + incl_len]
        offset += 16 + incl_len
        if linktype == 1:  # Ethernet (Linux lo)
            if frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
        elif linktype == 113:  # Linux cooked
            ip = frame[16:]
        elif linktype in (101, 228):  # raw IPv4
            ip = frame
        else:
            raise ValueError(f"unsupported pcap link type {linktype}")
        if not ip or ip[0] >> 4 != 4:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        proto = ip[9]
        src_ip = ".".join(map(str, ip[12:16]))
        dst_ip = ".".join(map(str, ip[16:20]))
        body = ip[ihl:total]
        if proto == 17:
            sport, dport = struct.unpack("!HH", body[:4])
            packets.append(Packet("udp", (src_ip, sport), (dst_ip, dport), body[8:], when))
        elif proto == 6:
            sport, dport = struct.unpack("!HH", body[:4])
            data_offset = (body[12] >> 4) * 4
            packets.append(Packet("tcp", (src_ip, sport), (dst_ip, dport), body[data_offset:], when))
    return packets


def g711a_payloads(pcap: Path) -> list[bytes]:
    """The RTP payloads of SIPp's shipped audio file (what a caller 'says')."""
    return [p.payload[12:] for p in parse_pcap(pcap.read_bytes()) if p.proto == "udp" and len(p.payload) > 12]
