"""DNS SRV for `_stc._tcp.<domain>`, in memory: the query, the answer parser (compression, bad
answers), and one lookup against a tiny DNS responder on a free loopback port."""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter

import pytest

from stc_client.config import ServerSettings
from stc_client.srv import SrvError, SrvRecord, build_query, lookup_srv, parse_answer, resolver_address, try_order

NAME = "_stc._tcp.example.org"


def answer(query_id: int, records: list[tuple[int, int, int, str]], *, rcode: int = 0, compress: bool = True) -> bytes:
    """A response to build_query(NAME) with SRV `records` (priority, weight, port, target)."""
    return answer_for(NAME, query_id, records, rcode=rcode, compress=compress)


def answer_for(name: str, query_id: int, records: list[tuple[int, int, int, str]], *, rcode: int = 0,
               compress: bool = True) -> bytes:
    """A response to build_query(name) with SRV `records` (priority, weight, port, target)."""
    question = build_query(name, query_id)[12:]
    out = bytearray(struct.pack(">HHHHHH", query_id, 0x8180 | rcode, 1, len(records), 0, 0)) + question
    for priority, weight, port, target in records:
        owner = b"\xc0\x0c" if compress else build_query(name, 0)[12:-4]
        name = b"\x00" if target == "." else build_query(target, 0)[12:-4]
        rdata = struct.pack(">HHH", priority, weight, port) + name
        out += owner + struct.pack(">HHIH", 33, 1, 300, len(rdata)) + rdata
    return bytes(out)


def test_query_asks_for_srv_in_class_in() -> None:
    query = build_query(NAME, 0x1234)
    assert query[:2] == b"\x12\x34"
    assert b"\x04_stc\x04_tcp\x07example\x03org\x00" in query
    assert query[-4:] == b"\x00\x21\x00\x01"


def test_answer_records_come_best_first() -> None:
    data = answer(7, [(20, 0, 5443, "b.example.org"), (10, 5, 5443, "a.example.org"), (10, 50, 6443, "c.example.org")])
    assert parse_answer(data, 7) == [SrvRecord(10, 50, 6443, "c.example.org"), SrvRecord(10, 5, 5443, "a.example.org"),
                                     SrvRecord(20, 0, 5443, "b.example.org")]


def test_uncompressed_names_parse_too() -> None:
    assert parse_answer(answer(1, [(0, 0, 5443, "s.example.org")], compress=False), 1) == [SrvRecord(0, 0, 5443, "s.example.org")]


def test_a_dot_target_means_no_service() -> None:
    assert parse_answer(answer(1, [(0, 0, 0, "."), (1, 0, 5443, "s.example.org")]), 1) == [SrvRecord(1, 0, 5443, "s.example.org")]


@pytest.mark.parametrize("mangle", [
    lambda d: d[:11],  # shorter than a header
    lambda d: d[:-3],  # truncated record
    lambda d: b"\x00\x08" + d[2:],  # another query's id
    lambda d: d[:2] + b"\x01\x00" + d[4:],  # not a response
])
def test_bad_answers_are_errors(mangle) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SrvError):
        parse_answer(mangle(answer(7, [(1, 1, 5443, "a.example.org")])), 7)


def test_an_nxdomain_is_an_error() -> None:
    with pytest.raises(SrvError, match="rcode 3"):
        parse_answer(answer(7, [], rcode=3), 7)


def test_a_pointer_loop_is_an_error_not_a_hang() -> None:
    data = bytearray(answer(7, [(1, 1, 5443, "a.example.org")]))
    loop_at = len(data) - len(build_query("a.example.org", 0)[12:-4])
    data[loop_at:loop_at + 2] = struct.pack(">H", 0xC000 | loop_at)
    with pytest.raises(SrvError):
        parse_answer(bytes(data), 7)


async def test_lookup_against_a_local_responder() -> None:
    class Responder(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            query_id = struct.unpack(">H", data[:2])[0]
            assert data[12:] == build_query(NAME, query_id)[12:]
            self.transport.sendto(answer(query_id, [(5, 1, 7443, "stc1.example.org")]), addr)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        assert await lookup_srv(NAME, resolver=("127.0.0.1", port)) == [SrvRecord(5, 1, 7443, "stc1.example.org")]
    finally:
        transport.close()


async def test_lookup_without_answer_times_out() -> None:
    silent = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        with pytest.raises(SrvError, match="no answer"):
            await lookup_srv(NAME, resolver=("127.0.0.1", silent[0].get_extra_info("sockname")[1]), timeout=0.3)
    finally:
        silent[0].close()


def test_try_order_takes_every_priority_in_turn_and_weights_within_one() -> None:
    """RFC 2782: all of priority 10 before any of 20; within 10, the first pick is weighted (90 vs 10),
    and a weight-0 server is first only rarely. Seeded, so the counts are the same every run."""
    heavy, light, zero = SrvRecord(10, 90, 1, "heavy"), SrvRecord(10, 10, 2, "light"), SrvRecord(10, 0, 3, "zero")
    backup = SrvRecord(20, 50, 4, "backup")
    rng = random.Random(2782)
    firsts: Counter[str] = Counter()
    for _ in range(2000):
        ordered = try_order([backup, zero, light, heavy], rng)
        assert sorted(ordered) == sorted([backup, zero, light, heavy])
        assert ordered[-1] == backup
        firsts[ordered[0].target] += 1
    assert 1650 < firsts["heavy"] < 1950  # about 90 / 101 of 2000
    assert 100 < firsts["light"] < 300  # about 10 / 101
    assert firsts["zero"] < 60  # only when the draw is 0: about 1 / 101


def test_try_order_with_only_zero_weights_keeps_every_record() -> None:
    records = [SrvRecord(0, 0, 1, "a"), SrvRecord(0, 0, 2, "b"), SrvRecord(5, 0, 3, "c")]
    ordered = try_order(records, random.Random(1))
    assert sorted(ordered[:2]) == records[:2] and ordered[2] == records[2]


@pytest.mark.parametrize(("entry", "address"), [("192.0.2.53", ("192.0.2.53", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
                                                ("[::1]:5353", ("::1", 5353)), ("::1", ("::1", 53)), ("[::1]", ("::1", 53))])
def test_a_resolver_is_host_or_host_and_port(entry: str, address: tuple[str, int]) -> None:
    assert resolver_address(entry) == address


@pytest.mark.parametrize("entry", ["", "host:0", "host:99999", "host:port", "[::1]:x"])
def test_a_bad_resolver_is_refused_with_the_settings_name(entry: str) -> None:
    with pytest.raises(ValueError, match="srv_resolver"):
        resolver_address(entry)
    if entry:
        with pytest.raises(ValueError, match="srv_resolver"):
            ServerSettings(srv_resolver=entry).validate()


async def test_a_resolver_that_cannot_be_asked_is_an_srv_error() -> None:
    with pytest.raises(SrvError, match="cannot ask"):
        await lookup_srv(NAME, resolver=("no-such-host.invalid", 53), timeout=0.3)
