"""A participant whose client stops reading its tunnel must not hold up anyone else (real Asterisk 22)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

import pytest

from asterisk_lab import AmiClient, asterisk_rx, event_is
from sipp import Codec, SippCaller
from stack import client_config, stc_stack, wait_until
from stc_client.app import ClientApp
from stc_wire.messages import SipMessage
from test_roster_e2e import ROOM, caller, latest, names
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def unkeyed_invite(n: int) -> bytes:
    """An INVITE with no media agreed, which the server refuses itself (488, every Via copied): about 40 KiB each way."""
    vias = "".join(f"Via: SIP/2.0/UDP 192.0.2.{i}:5060;branch=z9hG4bK{n}x{i}{'p' * 7000}\r\n" for i in range(1, 7))
    return (f"INVITE sip:{ROOM}@127.0.0.1 SIP/2.0\r\n{vias}Max-Forwards: 70\r\n"
            f"From: <sip:zoe@127.0.0.1>;tag=slow{n}\r\nTo: <sip:{ROOM}@127.0.0.1>\r\n"
            f"Call-ID: slow-{n}@test\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()


async def test_a_client_that_stops_reading_is_closed_and_the_others_carry_on(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    asterisk_rx("dialplan add extension 9999,1,Answer() into stc-insider replace")
    asterisk_rx("dialplan add extension 9999,2,Wait(60) into stc-insider replace")
    users = ("alice", "bob", "zoe")
    async with stc_stack(pki, users[:2]) as stack, AmiClient() as ami:
        # Zoe's client would give up on a silent tunnel after 6 s itself: here it waits longer than the server.
        config = client_config(pki, "zoe", stack.server_port)
        config.server.keepalive_timeout = 60
        stack.clients["zoe"] = ClientApp(config)
        await stack.clients["zoe"].start()
        async with asyncio.timeout(10):
            await stack.clients["zoe"].tunnel_up.wait()
        since = ami.mark()
        for u in users:
            caller(sipp_callers, stack, u, codec=Codec.PCMA).start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=30, since=since)
        await wait_until(lambda: all((r := latest(c)) is not None and len(r.entries) == 3 for c in stack.clients.values()),
                         10, "three on every roster")
        others = [stack.clients["alice"], stack.clients["bob"]]
        tunnel = stack.clients["zoe"].tunnel
        assert tunnel is not None
        # Zoe's client stops reading its tunnel (a small receive buffer, so the server's writes back up
        # soon) and keeps sending INVITEs that the server refuses through that tunnel.
        transport = tunnel.stream._writer.transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport._ssl_protocol._transport.pause_reading()  # type: ignore[attr-defined]  # below TLS: nothing is read at all
        stalled_at = time.time()
        for n in range(30):
            await tunnel.send(SipMessage(unkeyed_invite(n)))
            await asyncio.sleep(0.01)  # zoe's own writer sends them on

        # Meanwhile an insider forces a Local channel into the room: the two others are shown it and
        # it is ejected, whatever happens to zoe's tunnel.
        await ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ConfBridge",
                          "Data": f"{ROOM},stc_bridge,stc_user", "CallerID": "Spy <666>", "Async": "true"})
        await wait_until(lambda: all(any(r.unauthenticated for r in c.rosters) for c in others), 10,
                         "UNAUTHENTICATED on alice's and bob's rosters")
        await ami.wait_for(lambda e: e.get("Event") == "ConfbridgeLeave" and e.get("Channel", "").startswith("Local/"),
                           timeout=10, since=since)

        # Zoe's tunnel is closed as too slow within 6 s of it stalling...
        def closed_as_too_slow() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "too-slow" in r.getMessage() and "disconnected" in r.getMessage()]

        relayed = {s.peer.identity.display_name: s.counters.relayed_to_client for s in stack.server.sessions.values()}
        await wait_until(closed_as_too_slow, 15, f"zoe's tunnel closed as too slow (relayed to clients: {relayed})")
        [closed] = closed_as_too_slow()
        print(f"closed as too slow {closed.created - stalled_at:.2f} s after it stopped reading")
        assert "Zo" in closed.getMessage() and closed.created - stalled_at < 6.0
        # ...her call is hung up with it, and the two others keep getting rosters: the spy and zoe gone.
        await wait_until(lambda: all(names(latest(c)) == ["Alice", "Bob"] for c in others),  # type: ignore[arg-type]
                         10, "alice and bob alone on their rosters")
        assert sorted(m["CallerIDNum"] for m in await ami.confbridge_list(ROOM)) == ["alice", "bob"]
