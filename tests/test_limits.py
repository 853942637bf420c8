"""What one client may hold on the server: the pure counters in memory, then a real tunnel that floods them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from stack import client_config, server_config
from stc_asterisk.app import ServerApp
from stc_asterisk.config import LimitSettings, MediaSettings
from stc_asterisk.limits import BoundedDict, OfferGate, OfferLimits, RefusalLog, SourceGate, Strikes, TokenBook
from stc_asterisk.rooms import RoomService
from stc_client.tunnel_client import ClientTunnel, open_tunnel
from stc_wire.media_keys import KeyAgreement, Side
from stc_wire.messages import MediaAnswer, MediaOffer, MediaReject, Message, SipMessage
from stc_wire.stream import CloseInfo
from stc_wire.tunnel import TunnelError
from tests.certs import TestPki, make_test_pki


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- pure ----------------------------------------------------------------------------------------

def test_refusals_are_all_counted_and_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    refusals = RefusalLog(logging.getLogger("t"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        logged = [refusals.refuse("bad", "bad thing %d", i) for i in range(1000)]
        clock.now += 11
        refusals.refuse("bad", "bad thing again")
        refusals.refuse("other", "another reason")
    assert refusals.counts == {"bad": 1001, "other": 1}
    assert logged.count(True) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad thing 0", "bad thing again (999 more bad not logged in the last 10 s)", "another reason"]


def test_bounded_dict_forgets_the_oldest() -> None:
    d: BoundedDict[str, int] = BoundedDict(3)
    for i in range(10_000):
        d[f"k{i}"] = i
    assert list(d) == ["k9997", "k9998", "k9999"]
    d["k9997"] = 0  # written again: now the newest
    d["new"] = 1
    assert list(d) == ["k9999", "k9997", "new"]
    assert d.pop("k9999") == 9999


def test_offer_gate_limits_calls_at_once_and_offers_per_call() -> None:
    gate = OfferGate(OfferLimits(calls_per_tunnel=4, offers_per_call=2, remembered_calls=8))
    assert [gate.check(f"c{i}", open_calls=i) for i in range(4)] == [None] * 4
    assert gate.check("c4", open_calls=4) == "at most 4 calls at once on one tunnel"
    assert gate.check("c0", open_calls=3) is None  # a second offer for c0 is allowed...
    assert gate.check("c0", open_calls=3) == "more than 2 media offers for this call"  # ...not a third


def test_tokens_expire_unless_used_and_a_retransmission_reuses_its_token() -> None:
    clock = FakeClock()
    book: TokenBook[str] = TokenBook(ttl=30, clock=clock)
    assert book.issue("t1/call-a", "tok-a", "grant-a") == "tok-a"
    assert book.issue("t1/call-a", "tok-a2", "grant-a") == "tok-a"  # retransmitted INVITE: same token
    assert book.issue("t1/call-b", "tok-b", "grant-b") == "tok-b"
    assert len(book) == 2
    clock.now += 10
    assert book.use("tok-b") == "grant-b"  # admitted: it no longer expires
    clock.now += 25
    assert book.use("tok-a") is None  # 35 s unused: gone
    assert book.use("tok-b") == "grant-b"
    assert len(book) == 1
    book.release("tok-b")
    assert book.use("tok-b") is None and len(book) == 0
    for i in range(10_000):  # tokens nobody uses do not pile up
        book.issue(f"t2/{i}", f"x{i}", "g")
        clock.now += 0.01
    assert len(book) <= 3001


def test_source_gate_counts_in_total_and_per_source() -> None:
    gate = SourceGate(total=5, per_source=2)
    assert gate.enter("10.0.0.1") is None and gate.enter("10.0.0.1") is None
    assert gate.enter("10.0.0.1") == "2 connections from 10.0.0.1 already in progress"
    assert all(gate.enter(f"10.0.0.{i}") is None for i in (2, 3, 4))
    assert gate.enter("10.0.0.9") == "5 connections already in progress"
    gate.leave("10.0.0.1")
    assert gate.total == 4 and gate.count("10.0.0.1") == 1
    assert gate.enter("10.0.0.9") is None
    gate.leave("10.0.0.77")  # never entered: ignored
    assert gate.total == 5


def test_strikes() -> None:
    strikes = Strikes(3)
    assert [strikes.hit() for _ in range(5)] == [False, False, False, True, True]


def test_port_ranges_and_limits_are_checked() -> None:
    media = MediaSettings(wan_ports="40000-40999", pbx_ports="")
    media.validate()
    assert media.wan_port_range() == range(40000, 41000) and media.pbx_port_range() is None
    for bad in ("40000", "40000-", "5-4", "0-10", "40000-70000", "a-b"):
        with pytest.raises(ValueError, match="wan_ports"):
            MediaSettings(wan_ports=bad).validate()
    with pytest.raises(ValueError, match="calls_per_tunnel"):
        LimitSettings(calls_per_tunnel=0).validate()


# -- a real tunnel, no Asterisk --------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[ServerApp]:
    config = server_config(pki)
    config.asterisk.watch_conferences = False
    app = ServerApp(config)
    await app.start()
    yield app
    await app.close()


class Replies:
    """Reads the client's end of the tunnel; keeps media answers, counts rejects (a flood is not kept)."""

    def __init__(self, tunnel: ClientTunnel) -> None:
        self.answers: list[MediaAnswer] = []
        self.rejects: Counter[str] = Counter()
        self.closed: CloseInfo | None = None
        self.task = asyncio.create_task(self._run(tunnel))

    async def _run(self, tunnel: ClientTunnel) -> None:
        async def on_message(message: Message) -> None:
            if isinstance(message, MediaAnswer):
                self.answers.append(message)
            elif isinstance(message, MediaReject):
                self.rejects[message.reason] += 1
        self.closed = await tunnel.run(on_message)

    async def wait_for(self, count: int) -> None:
        """Until `count` media answers and rejects arrived in all."""
        async with asyncio.timeout(30):
            while len(self.answers) + self.rejects.total() < count and self.closed is None:
                await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_flood_of_media_offers_is_refused_past_the_limit(pki: TestPki, server: ServerApp,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    limit = server.config.limits.calls_per_tunnel
    tunnel = await open_tunnel(client_config(pki, "alice", server.tunnels.port))  # type: ignore[union-attr]
    replies = Replies(tunnel)
    fds_before = open_fds()
    key = KeyAgreement(Side.CLIENT).public_bytes
    with caplog.at_level(logging.WARNING, "stc_asterisk.sip_relay"):
        for i in range(1000):
            await tunnel.send(MediaOffer(f"s{i}", f"call-{i}@flood", ("AES_CM_128_HMAC_SHA1_80",), key))
            if i % 50 == 49:
                await replies.wait_for(i + 1)
        await replies.wait_for(1000)
    assert len(replies.answers) == limit
    assert replies.rejects == {f"at most {limit} calls at once on one tunnel": 1000 - limit}
    fds_after = open_fds()
    print(f"descriptors: {fds_before} before, {fds_after} after 1000 offers (limit {limit} calls, 4 sockets each)")
    assert fds_after - fds_before <= limit * 4 + 4
    assert server.media.open_calls == limit
    offer_lines = [r for r in caplog.records if "media offer" in r.getMessage()]
    assert 1 <= len(offer_lines) <= 2, [r.getMessage() for r in offer_lines]  # counted, not one line each
    [session] = server.sessions.values()
    assert session.guard.refusals.counts["media-offer-limit"] == 1000 - limit
    # The calls that were keyed are still usable and the tunnel is up.
    assert replies.closed is None
    await tunnel.close()


async def test_ten_thousand_bad_offers_leave_memory_flat(pki: TestPki, server: ServerApp,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)  # DEBUG records kept by pytest would be counted as the server's
    tunnel = await open_tunnel(client_config(pki, "bob", server.tunnels.port))  # type: ignore[union-attr]
    replies = Replies(tunnel)
    key = KeyAgreement(Side.CLIENT).public_bytes

    async def bad_offers(first: int, count: int) -> None:
        for i in range(first, first + count):  # no profile the server supports: refused, remembered for the INVITE
            await tunnel.send(MediaOffer(f"s{i}", f"bad-{i}@flood", ("NO_SUCH_PROFILE",), key))
            if i % 100 == 99:
                await replies.wait_for(i + 1)
        await replies.wait_for(first + count)

    tracemalloc.start()
    try:
        await bad_offers(0, 1000)  # warm up: caches, the refusal memory at its bound
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        await bad_offers(1000, 9000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    [session] = server.sessions.values()
    print(f"memory traced: {before} bytes before, {after} after 9000 more bad offers; "
          f"{len(session.refused_media)} refusals remembered")
    assert replies.rejects.total() == 10_000 and not replies.answers
    assert len(session.refused_media) <= server.config.limits.remembered_calls
    assert after - before < 256 * 1024
    await tunnel.close()


async def test_malformed_sip_frames_close_the_tunnel_after_the_limit(pki: TestPki, server: ServerApp,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    limit = server.config.limits.malformed_sip_per_tunnel
    tunnel = await open_tunnel(client_config(pki, "alice", server.tunnels.port))  # type: ignore[union-attr]
    replies = Replies(tunnel)
    with caplog.at_level(logging.WARNING, "stc_asterisk.sip_relay"):
        sent = 0
        with contextlib.suppress(TunnelError):  # the server closed the tunnel: the client's sends fail
            for sent in range(1, limit + 20):
                await tunnel.send(SipMessage(b"\x00garbage" * 8192))
                await asyncio.sleep(0.01)
        async with asyncio.timeout(10):
            await replies.task
    assert replies.closed is not None and "malformed SIP" in replies.closed.reason and sent > limit
    lines = [r for r in caplog.records if "malformed SIP from client" in r.getMessage()]
    assert 1 <= len(lines) <= 2


async def test_media_ports_stay_in_the_configured_ranges(pki: TestPki) -> None:
    config = server_config(pki, wan_ports="41000-41099", pbx_ports="42000-42099")
    config.asterisk.watch_conferences = False
    app = ServerApp(config)
    await app.start()
    try:
        tunnel = await open_tunnel(client_config(pki, "alice", app.tunnels.port))  # type: ignore[union-attr]
        replies = Replies(tunnel)
        key = KeyAgreement(Side.CLIENT).public_bytes
        for i in range(4):
            await tunnel.send(MediaOffer(f"s{i}", f"ranged-{i}@test", ("AES_CM_128_HMAC_SHA1_80",), key))
        await replies.wait_for(4)
        assert len(replies.answers) == 4
        assert all(41000 <= a.rtp_port < a.rtcp_port <= 41099 for a in replies.answers)
        [session] = app.sessions.values()
        assert all(42000 <= c.ports.pbx_rtp_port < c.ports.pbx_rtcp_port <= 42099 for c in session.calls.values())
        await tunnel.close()
    finally:
        await app.close()


async def test_the_default_fastagi_caps_take_a_200_participant_join_burst_from_one_asterisk(pki: TestPki) -> None:
    """Every admission is a FastAGI session from the one Asterisk: 200 at once (a big room joining)
    are all served with the default settings, none refused for the source or the total."""
    config = server_config(pki)
    config.asterisk.fastagi_port = 0
    rooms = RoomService(ServerApp(config), config.asterisk)  # not started: only its FastAGI listens
    await rooms.fastagi.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(200):  # each waits for its header: a session held open, as a slow admission is
            _, writer = await asyncio.open_connection("127.0.0.1", rooms.fastagi.port)
            writers.append(writer)
        async with asyncio.timeout(4):  # the sessions wait 5 s for a header before they are dropped
            while rooms.fastagi.counters.active < 200 and not (rooms.fastagi.counters.refused
                                                               or rooms.fastagi.counters.refused_per_source):
                await asyncio.sleep(0.02)
        counters = rooms.fastagi.counters
        assert (counters.active, counters.refused, counters.refused_per_source) == (200, 0, 0)
    finally:
        for writer in writers:
            writer.close()
        await rooms.fastagi.close()
