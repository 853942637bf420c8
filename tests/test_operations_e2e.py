"""The operator's view against the real Asterisk 22: /metrics during a three-party call, /readyz
following Asterisk down and up again."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from asterisk_lab import AmiClient, event_is, lab_start, lab_stop
from sipp import Codec, SippCaller
from stack import WAN_HOST, Stack, stc_stack, wait_until
from stc_wire.tls import client_context
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def caller(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str, **kwargs: object) -> SippCaller:
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), caller=user, service=ROOM,
                        timeout_s=60, **kwargs)


def admin_url(stack: Stack) -> str:
    assert stack.server.admin is not None
    return stack.server.admin.url


async def scrape(stack: Stack) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, sorted labels), and every family's type; fails if the text does not parse."""
    async with aiohttp.ClientSession() as http, http.get(admin_url(stack) + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = await response.text()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


async def readyz(stack: Stack) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(admin_url(stack) + "/readyz") as response:
        return response.status, await response.text()


async def bad_certificate_attempt(pki: TestPki, stack: Stack, user: str) -> None:
    """A TLS client with `user`'s certificate; the server refuses it (handshake error or EOF)."""
    context = client_context(pki.users[user].cert, pki.users[user].key, pki.ca)
    try:
        reader, writer = await asyncio.open_connection(WAN_HOST, stack.server_port, ssl=context, server_hostname="localhost")
        async with asyncio.timeout(10):
            await reader.read()
        writer.close()
    except (ssl.SSLError, ConnectionError):
        pass


async def test_a_scrape_during_a_three_party_call_shows_it(asterisk_lab: str, pki: TestPki,
                                                          sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob", "carol")) as stack, AmiClient() as ami:
        since = ami.mark()
        callers = [caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=9000),
                   caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=9000),
                   caller(sipp_callers, stack, "carol", codec=Codec.PCMU, hold_ms=9000)]
        for c in callers:
            c.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=30, since=since)
        samples: Samples = {}
        types: dict[str, str] = {}

        async def media_flows() -> None:
            nonlocal samples, types
            while True:
                samples, types = await scrape(stack)
                if (samples.get(("stc_room_participants", (("room", ROOM),))) == 3
                        and samples[("stc_media_packets_total", (("direction", "inbound"),))] > 50
                        and samples[("stc_media_packets_total", (("direction", "outbound"),))] > 50):
                    return
                await asyncio.sleep(0.2)

        async with asyncio.timeout(15):
            await media_flows()
        assert samples[("stc_tunnels_up", ())] == 3
        assert samples[("stc_tunnels_accepted_total", ())] == 3
        assert samples[("stc_rooms", ())] == 1
        assert samples[("stc_room_unauthenticated", (("room", ROOM),))] == 0
        assert samples[("stc_calls", (("state", "confirmed"),))] == 3
        assert samples[("stc_media_calls_open", ())] == 3
        assert samples[("stc_admissions_total", ())] == 3
        assert samples[("stc_asterisk_ari_up", ())] == samples[("stc_asterisk_ami_up", ())] == 1
        assert samples[("stc_roster_pushes_total", ())] >= 3
        assert samples[("stc_roster_push_seconds_count", ())] == samples[("stc_roster_pushes_total", ())]
        assert samples[("stc_media_dropped_total", (("reason", "auth"),))] == 0
        assert samples[("stc_crl_next_update_timestamp_seconds", ())] > 0
        assert samples[("stc_certificate_expiry_timestamp_seconds", ())] > 0
        assert types["stc_tunnels_refused"] == "counter" and types["stc_tunnels_up"] == "gauge"
        assert types["stc_roster_push_seconds"] == "histogram" and types["stc_media_packets"] == "counter"
        refused_before = sum(v for (name, _), v in samples.items() if name == "stc_tunnels_refused_total")

        # A certificate from another CA is refused, and counted by reason.
        await bad_certificate_attempt(pki, stack, "other_ca")
        await wait_until(lambda: sum(stack.server.tunnels.refused.values()) > refused_before, 10,  # type: ignore[union-attr]
                         "the refusal counted")
        after, _ = await scrape(stack)
        refusals = {dict(labels)["reason"]: v for (name, labels), v in after.items() if name == "stc_tunnels_refused_total"}
        assert sum(refusals.values()) == refused_before + 1, refusals
        assert after[("stc_tunnels_up", ())] == 3
        for c in callers:
            assert await c.wait_async(30) == 0, c.describe()


def kill_asterisk() -> None:
    root = Path(os.environ.get("STC_LAB_ROOT", "/var/lib/stc-lab/sid"))
    os.kill(int((root / "run/asterisk/asterisk.pid").read_text().strip()), signal.SIGKILL)


async def test_readyz_follows_asterisk_down_and_up(asterisk_lab: str, pki: TestPki) -> None:
    async with stc_stack(pki) as stack:
        rooms = stack.server.rooms
        assert rooms is not None
        await wait_until(lambda: rooms.ari.connected and rooms.ami.up, 30, "ARI and AMI connected")
        status, text = await readyz(stack)
        assert status == 200, text
        async with aiohttp.ClientSession() as http, http.get(admin_url(stack) + "/healthz") as response:
            assert response.status == 200
        loop = asyncio.get_running_loop()
        kill_asterisk()
        stopped = loop.time()
        try:
            while (status := (await readyz(stack))[0]) == 200 and loop.time() - stopped < 2.0:
                await asyncio.sleep(0.05)
            assert status == 503, "still ready 2 s after Asterisk was killed"
            status, text = await readyz(stack)
            assert "FAIL ARI connected" in text and "FAIL AMI connected" in text and "ok   tunnel listening" in text
        finally:
            lab_stop()
            lab_start()
        async with asyncio.timeout(60):
            while (await readyz(stack))[0] != 200:
                await asyncio.sleep(0.2)
