"""Floods from the network do not stop a good client (real Asterisk 22): half-open TLS and idle FastAGI."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Iterator

import pytest

from asterisk_lab import AmiClient
from sipp import Codec, SippCaller
from stack import WAN_HOST, stc_stack
from test_roster_e2e import ROOM, caller
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@contextlib.contextmanager
def idle_connections(source: str, target: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """`count` TCP connections from `source` to `target` that never send a byte."""
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            made.append(sock)
            sock.setblocking(False)
            sock.bind((source, 0))
            code = sock.connect_ex(target)
            assert code in (0, errno.EINPROGRESS), errno.errorcode.get(code, code)
        yield made
    finally:
        for sock in made:
            sock.close()


async def test_half_open_tls_and_idle_fastagi_do_not_stop_a_good_client(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki) as stack, AmiClient() as ami:
        rooms, tunnels = stack.server.rooms, stack.server.tunnels
        assert rooms is not None and tunnels is not None
        fastagi = (stack.server.config.asterisk.fastagi_host, rooms.fastagi.port)
        # 300 connections to the tunnel port that never start TLS, 150 idle ones to FastAGI, each from one address.
        with idle_connections("127.0.0.3", (WAN_HOST, stack.server_port), 300), \
                idle_connections("127.0.0.5", fastagi, 150):
            await asyncio.sleep(1.0)  # the server has accepted (and refused) them
            loop = asyncio.get_running_loop()
            started = loop.time()
            await stack.add_client("alice")
            connected = loop.time() - started
            since = ami.mark()
            call = caller(sipp_callers, stack, "alice", codec=Codec.PCMA)
            started = loop.time()
            call.start()
            await ami.wait_for(lambda e: e.get("Event") == "ConfbridgeJoin" and e.get("Conference") == ROOM
                               and e.get("CallerIDNum") == "alice", timeout=10, since=since)
            admitted = loop.time() - started
            print(f"tunnel up in {connected:.2f} s, admitted {admitted:.2f} s after dialling; "
                  f"tunnel refusals {dict(tunnels.refused)}, FastAGI {rooms.fastagi.counters}")
            assert connected < 2.0 and admitted < 2.0
            assert rooms.fastagi.counters.refused_sources == 150
            # Past the per-source cap they were closed at once (the rest still wait in the listen backlog).
            assert tunnels.refused["too-many-handshakes"] >= 150
