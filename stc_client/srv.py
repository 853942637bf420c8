"""DNS SRV records (RFC 2782) for `_stc._tcp.<domain>`: a tiny query builder and answer parser,
the order to try them in, and one UDP query to a resolver (the system's first unless one is given).
Pure functions plus a thin asyncio shell."""

from __future__ import annotations

import asyncio
import random
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

TYPE_SRV = 33
CLASS_IN = 1
MAX_POINTERS = 32  # name compression jumps followed at most (a loop is an error, not a hang)


class SrvError(Exception):
    """No usable SRV answer: a malformed or failed response, or no resolver."""


@dataclass(frozen=True, order=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


def build_query(name: str, query_id: int) -> bytes:
    """A standard recursive query for `name` IN SRV."""
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack(">HH", TYPE_SRV, CLASS_IN)


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not raw or len(raw) > 63:
            raise SrvError(f"bad DNS name {name!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out + b"\0")


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at `offset`, and the offset after it in the record."""
    labels: list[str] = []
    end: int | None = None
    for _ in range(MAX_POINTERS):
        if offset >= len(packet):
            raise SrvError("name runs past the end of the answer")
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(packet):
                raise SrvError("truncated name pointer")
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | packet[offset + 1]
            continue
        if length == 0:
            return ".".join(labels), end if end is not None else offset + 1
        label = packet[offset + 1:offset + 1 + length]
        if len(label) != length:
            raise SrvError("truncated label")
        labels.append(label.decode("ascii", "replace"))
        offset += 1 + length
    raise SrvError("too many name pointers (a loop?)")


def parse_answer(packet: bytes, query_id: int) -> list[SrvRecord]:
    """The SRV records of an answer, sorted by priority, then highest weight (a stable listing;
    try_order() gives the order to connect in)."""
    if len(packet) < 12:
        raise SrvError("answer shorter than a DNS header")
    rid, flags, qdcount, ancount = struct.unpack(">HHHH", packet[:8])
    if rid != query_id:
        raise SrvError("answer to another query")
    if not flags & 0x8000:
        raise SrvError("not a response")
    if flags & 0x000F:
        raise SrvError(f"DNS error (rcode {flags & 0x000F})")
    offset = 12
    for _ in range(qdcount):
        _, offset = _read_name(packet, offset)
        offset += 4
    records: list[SrvRecord] = []
    for _ in range(ancount):
        _, offset = _read_name(packet, offset)
        if offset + 10 > len(packet):
            raise SrvError("truncated resource record")
        rtype, _rclass, _ttl, rdlength = struct.unpack(">HHIH", packet[offset:offset + 10])
        offset += 10
        if offset + rdlength > len(packet):
            raise SrvError("truncated record data")
        if rtype == TYPE_SRV:
            if rdlength < 7:
                raise SrvError("SRV record too short")
            priority, weight, port = struct.unpack(">HHH", packet[offset:offset + 6])
            target, _ = _read_name(packet, offset + 6)
            if target and port:  # "." means: no service here
                records.append(SrvRecord(priority, weight, port, target))
        offset += rdlength
    return sorted(records, key=lambda r: (r.priority, -r.weight, r.target))


def try_order(records: list[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """The order RFC 2782 says to try `records` in: lowest priority first; within one priority a
    weighted random pick, repeated over those left (weight 0: picked first only by chance, rarely)."""
    pick = rng or random.SystemRandom()
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in records}):
        # Weight-0 records first in the running sums, as RFC 2782 lays out, so they keep a small chance.
        left = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while left:
            chosen = pick.randint(0, sum(r.weight for r in left))
            running = 0
            for index, record in enumerate(left):
                running += record.weight
                if running >= chosen:
                    ordered.append(left.pop(index))
                    break
    return ordered


def resolver_address(entry: str) -> tuple[str, int]:
    """ "192.0.2.53" -> ("192.0.2.53", 53); "127.0.0.1:5353" -> (..., 5353); "[::1]:53" -> ("::1", 53)."""
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else "53"
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:  # a bare IPv4 address, name, or IPv6 address
        host, port_text = text, "53"
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"srv_resolver: {entry!r} is not host or host:port")
    return host, int(port_text)


def system_resolver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str:
    try:
        for line in resolv_conf.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    except OSError:
        pass
    raise SrvError(f"no nameserver in {resolv_conf}")


class _OneAnswer(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[bytes]) -> None:
        self.answer = answer

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(SrvError(f"DNS query failed: {exc}"))


async def lookup_srv(name: str, *, resolver: tuple[str, int] | None = None, timeout: float = 3.0) -> list[SrvRecord]:
    """The SRV records of `name` as parse_answer() lists them; SrvError when there are none or no answer came."""
    host, port = resolver or (system_resolver(), 53)
    loop = asyncio.get_running_loop()
    query_id = secrets.randbelow(65536)
    answer: asyncio.Future[bytes] = loop.create_future()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _OneAnswer(answer), remote_addr=(host, port),
                                                           family=family)
    except OSError as exc:  # a resolver name that does not resolve, no route to it
        raise SrvError(f"cannot ask {host}:{port}: {exc.strerror or exc}") from None
    try:
        transport.sendto(build_query(name, query_id))
        async with asyncio.timeout(timeout):
            data = await answer
    except TimeoutError:
        raise SrvError(f"no answer from {host}:{port} within {timeout:g} s") from None
    finally:
        transport.close()
    records = parse_answer(data, query_id)
    if not records:
        raise SrvError(f"no SRV records for {name}")
    return records
