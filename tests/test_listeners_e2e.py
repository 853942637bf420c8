"""No silent listeners, against the real Asterisk 22: ChanSpy, MixMonitor, `confbridge record`
and an ARI snoop on a conference of stc participants show on every client's roster, and are
stopped (policy "stop") or left running and shown (policy "show"). A listener started while
no stc-server runs is found by the scan when it comes up. The window (headless Chromium) goes
amber with words, and its call history keeps stopped listeners and channels ejected in ms.

An insider's tools: AMI (Originate, Command) and ARI with an application of its own.
app_chanspy and app_mixmonitor are not in asterisk-conf/modules.conf: the insider loads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from asterisk_lab import ARI_URL, ARI_USER, AmiClient, asterisk_rx, event_is, lab_secret
from browser import BrowserPage, chromium_page
from playwright.async_api import Page, expect
from sipp import UAC_WAIT_BYE, Codec, SippCaller
from stack import Stack, stc_stack, wait_until

from stc_client.app import ClientApp
from stc_wire.roster import Roster, RosterEntry, RosterListener
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
INSIDER_APP = "stc-test-insider"
LAB_ROOT = Path(os.environ.get("STC_LAB_ROOT", "/var/lib/stc-lab/sid"))
SPY_MODULES = ("app_chanspy.so", "app_mixmonitor.so")
RECORDINGS = LAB_ROOT / "var/spool/asterisk/recording"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def spy_modules(asterisk_lab: str) -> Iterator[None]:
    """The insider loads what the shipped modules.conf leaves out; unloaded again afterwards."""
    for module in SPY_MODULES:
        asterisk_rx(f"module load {module}")
    RECORDINGS.mkdir(parents=True, exist_ok=True)  # where ARI records (the lab does not make it)
    asterisk_rx("dialplan add extension 9999,1,Answer() into stc-insider replace")
    asterisk_rx("dialplan add extension 9999,2,Wait(120) into stc-insider replace")
    yield
    asterisk_rx("channel request hangup all")
    for module in SPY_MODULES:
        asterisk_rx(f"module unload {module}")
    for leftover in [*(LAB_ROOT / "tmp").glob("stc-listeners-*"), *RECORDINGS.glob("stc-listeners-*")]:
        leftover.unlink()


class Insider:
    """Someone with AMI and ARI access to the PBX, listening in the ways Asterisk allows."""

    def __init__(self, ami: AmiClient, http: aiohttp.ClientSession) -> None:
        self.ami = ami
        self.http = http
        self.in_stasis: set[str] = set()  # channels that reached the insider's ARI application

    async def follow(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            event = json.loads(message.data)
            if event.get("type") == "StasisStart":
                self.in_stasis.add(event["channel"]["id"])

    async def cli(self, command: str) -> str:
        [reply] = await self.ami.action({"Action": "Command", "Command": command})
        return reply.get("Output", "")

    async def mixmonitor(self, channel_name: str, path: Path) -> None:
        await self.cli(f"mixmonitor start {channel_name} {path}")

    async def record_room(self, path: Path) -> None:
        assert "Recording started" in await self.cli(f"confbridge record start {ROOM} {path}")

    async def snoop(self, channel_id: str) -> dict[str, Any]:
        url = f"{ARI_URL}/channels/{channel_id}/snoop"
        async with self.http.post(url, params={"spy": "both", "app": INSIDER_APP}) as response:
            assert response.status == 200, await response.text()
            snoop: dict[str, Any] = await response.json()
        return snoop

    async def snoop_in_stasis(self, channel_id: str) -> dict[str, Any]:
        """A snoop that ARI can record: in the insider's application (StasisStart seen)."""
        snoop = await self.snoop(channel_id)
        await wait_until(lambda: snoop["id"] in self.in_stasis, 5, "the snoop in the insider's application")
        return snoop

    async def record(self, channel_id: str) -> tuple[str, Path]:
        """An ARI live recording of a channel in the insider's Stasis app (a snoop): its name and file."""
        name = f"stc-listeners-{uuid.uuid4().hex[:8]}"
        url = f"{ARI_URL}/channels/{channel_id}/record"
        async with self.http.post(url, params={"name": name, "format": "wav"}) as response:
            assert response.status == 201, await response.text()
        return name, RECORDINGS / f"{name}.wav"

    async def chanspy(self, channel_name: str, channel_id: str) -> dict[str, str]:
        """ChanSpy(channel_name) on a Local channel; its ChanSpyStart (a snoop raises one too: not that one)."""
        since = self.ami.mark()
        await self.ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ChanSpy",
                               "Data": f"{channel_name},q", "CallerID": "Spy <666>", "Async": "true"})
        started = event_is("ChanSpyStart", SpyeeUniqueid=channel_id)
        return await self.ami.wait_for(lambda e: started(e) and e["SpyerChannel"].startswith("Local/"), timeout=10,
                                       since=since)

    async def channels(self) -> list[dict[str, Any]]:
        async with self.http.get(f"{ARI_URL}/channels") as response:
            found: list[dict[str, Any]] = await response.json()
        return found

    async def hangup(self, channel_id: str) -> None:
        async with self.http.delete(f"{ARI_URL}/channels/{channel_id}") as response:
            assert response.status == 204, f"hang-up of {channel_id}: HTTP {response.status} {await response.text()}"


@asynccontextmanager
async def insider() -> AsyncIterator[Insider]:
    auth = aiohttp.encode_basic_auth(ARI_USER, lab_secret("ari-password"))
    async with AmiClient() as ami, aiohttp.ClientSession(headers={"Authorization": auth}) as http:
        # The insider's own ARI application, so its snoop channels have a Stasis app to land in.
        ws = await http.ws_connect(f"{ARI_URL}/events", params={"app": INSIDER_APP})
        pbx = Insider(ami, http)
        follow = asyncio.create_task(pbx.follow(ws))
        try:
            yield pbx
        finally:
            follow.cancel()
            await ws.close()


def recording_path(tag: str) -> tuple[Path, Path]:
    """(path as Asterisk in the lab root sees it, the same file on the host)."""
    inside = Path(f"/tmp/stc-listeners-{tag}-{uuid.uuid4().hex[:8]}.wav")
    return inside, LAB_ROOT / inside.relative_to("/")


def size(path: Path) -> int:
    """Bytes written so far (ConfBridge inserts a timestamp before the extension: `name-<epoch>.wav`)."""
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.stem}*{path.suffix}"))


async def grows(path: Path, within: float = 3.0) -> bool:
    """True once the file has grown during `within` seconds."""
    first = size(path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        await asyncio.sleep(0.2)
        if size(path) > first:
            return True
    return False


def dial(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str) -> SippCaller:
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), service=ROOM, caller=user,
                        scenario=UAC_WAIT_BYE, codec=Codec.PCMA, play_audio=True, timeout_s=90).start()


def latest(client: ClientApp) -> Roster | None:
    return client.rosters[-1] if client.rosters else None


def person(stack: Stack, name: str) -> RosterEntry:
    roster = latest(next(iter(stack.clients.values())))
    assert roster is not None
    return next(e for e in roster.entries if e.identity and e.identity["display_name"] == name)


async def join_all(stack: Stack, sipp_callers: Callable[..., SippCaller], ami: AmiClient) -> None:
    since = ami.mark()
    for user in stack.clients:
        dial(sipp_callers, stack, user)
    await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), len(stack.clients), timeout=30, since=since)
    await wait_until(lambda: all((r := latest(c)) is not None and len(r.authenticated) == len(stack.clients)
                                 for c in stack.clients.values()), 10, "everyone on every roster")


def matching(roster: Roster | None, kind: str, hears: str) -> list[RosterListener]:
    return [] if roster is None else [li for li in roster.listeners if li.kind == kind and li.hears == hears]


async def shown_everywhere(stack: Stack, kind: str, hears: str, *, after: int, timeout: float) -> None:
    """Every client has received, since roster index `after`, a roster listing that listener."""
    await wait_until(lambda: all(any(matching(r, kind, hears) for r in list(c.rosters)[after:])
                                 for c in stack.clients.values()), timeout, f"{kind} hearing {hears} on every roster")


def roster_counts(stack: Stack) -> int:
    return min(len(c.rosters) for c in stack.clients.values())


async def gone_everywhere(stack: Stack, timeout: float) -> None:
    try:
        await wait_until(lambda: all((r := latest(c)) is not None and not r.listeners for c in stack.clients.values()),
                         timeout, "no listener left on any roster")
    except TimeoutError:
        left = {u: [li.to_json() for li in r.listeners] for u, c in stack.clients.items() if (r := latest(c))}
        raise AssertionError(f"listeners still on the rosters after {timeout} s: {left}") from None


async def test_every_kind_of_listener_is_shown_then_stopped(asterisk_lab: str, pki: TestPki, spy_modules: None,
                                                            sipp_callers: Callable[..., SippCaller]) -> None:
    loop = asyncio.get_running_loop()
    async with stc_stack(pki, ("alice", "bob")) as stack, insider() as pbx:
        await join_all(stack, sipp_callers, pbx.ami)
        alice, bob = person(stack, "Alice"), person(stack, "Bob")

        # MixMonitor on Alice's channel.
        inside, on_host = recording_path("mixmonitor")
        mark, started = roster_counts(stack), loop.time()
        await pbx.mixmonitor(alice.channel_name, inside)
        await shown_everywhere(stack, "mixmonitor", alice.channel_id, after=mark, timeout=1.0)
        assert loop.time() - started < 1.0
        await gone_everywhere(stack, timeout=1.0)
        assert loop.time() - started < 2.0
        await pbx.ami.wait_for(event_is("MixMonitorStop", Uniqueid=alice.channel_id), timeout=5)
        assert size(on_host) > 0, "MixMonitor never wrote its file"
        assert not await grows(on_host, within=1.5), "the stopped recording still grows"
        stopped = [li for r in stack.clients["bob"].rosters for li in matching(r, "mixmonitor", alice.channel_id)]
        assert {li.action for li in stopped} <= {"stopping", "stopped"} and stopped[0].action == "stopping"
        assert stopped[0].channel == alice.channel_name

        # `confbridge record start`: the whole room.
        inside, on_host = recording_path("confbridge")
        mark, started = roster_counts(stack), loop.time()
        await pbx.record_room(inside)
        await shown_everywhere(stack, "confbridge-record", "room", after=mark, timeout=1.0)
        await gone_everywhere(stack, timeout=1.0)
        assert loop.time() - started < 2.0
        assert not await grows(on_host, within=1.5), "the stopped room recording still grows"
        assert "CBRec/" not in await pbx.cli("core show channels concise")

        # An ARI snoop on Bob: the Snoop channel is hung up.
        mark, started = roster_counts(stack), loop.time()
        snoop = await pbx.snoop(bob.channel_id)
        await shown_everywhere(stack, "snoop", bob.channel_id, after=mark, timeout=1.0)
        await gone_everywhere(stack, timeout=1.0)
        assert loop.time() - started < 2.0
        assert snoop["id"] not in {c["id"] for c in await pbx.channels()}
        seen = [li for r in stack.clients["alice"].rosters for li in matching(r, "snoop", bob.channel_id)]
        assert seen[0].channel == snoop["name"]

        # (An ARI recording of Bob has to go through such a snoop, as ARI records only channels in
        # Stasis: with "stop", the snoop is hung up before it can be recorded. With "show", below.)

        # ChanSpy on Alice: the spying channel is hung up.
        mark, started = roster_counts(stack), loop.time()
        spy = await pbx.chanspy(alice.channel_name, alice.channel_id)
        await shown_everywhere(stack, "chanspy", alice.channel_id, after=mark, timeout=1.0)
        await gone_everywhere(stack, timeout=1.0)
        assert spy["SpyerUniqueid"] not in {c["id"] for c in await pbx.channels()}

        # The participants are still there, and were never the ones stopped.
        roster = latest(stack.clients["alice"])
        assert roster is not None and sorted(e.display_name for e in roster.entries) == ["Alice", "Bob"]


async def test_with_show_the_listeners_go_on_and_stay_on_every_roster(asterisk_lab: str, pki: TestPki, spy_modules: None,
                                                                     sipp_callers: Callable[..., SippCaller]) -> None:
    async with stc_stack(pki, ("alice", "bob"), hidden_listeners="show") as stack, insider() as pbx:
        await join_all(stack, sipp_callers, pbx.ami)
        alice, bob = person(stack, "Alice"), person(stack, "Bob")
        mixmonitor_file = recording_path("show-mixmonitor")
        room_file = recording_path("show-confbridge")
        await pbx.mixmonitor(alice.channel_name, mixmonitor_file[0])
        await pbx.record_room(room_file[0])
        snoop = await pbx.snoop_in_stasis(bob.channel_id)
        recording, recording_file = await pbx.record(snoop["id"])
        spy = await pbx.chanspy(bob.channel_name, bob.channel_id)
        expected = {("mixmonitor", alice.channel_id), ("confbridge-record", "room"), ("snoop", bob.channel_id),
                    ("chanspy", bob.channel_id), ("recording", bob.channel_id)}

        def listed(client: ClientApp) -> set[tuple[str, str]]:
            roster = latest(client)
            return set() if roster is None else {(li.kind, li.hears) for li in roster.listeners}

        await wait_until(lambda: all(listed(c) == expected for c in stack.clients.values()), 2.0, "all five shown")
        await asyncio.sleep(1.5)  # nothing stops them
        for client in stack.clients.values():
            roster = latest(client)
            assert roster is not None and listed(client) == expected
            assert {li.action for li in roster.listeners} == {"shown"}
        assert await grows(mixmonitor_file[1]) and await grows(room_file[1]) and await grows(recording_file)
        assert {snoop["id"], spy["SpyerUniqueid"]} <= {c["id"] for c in await pbx.channels()}

        # Each ends on its own: gone from every roster.
        async with pbx.http.post(f"{ARI_URL}/recordings/live/{recording}/stop") as response:
            assert response.status == 204
        await pbx.hangup(snoop["id"])
        await pbx.hangup(spy["SpyerUniqueid"])
        await pbx.ami.action({"Action": "StopMixMonitor", "Channel": alice.channel_name})
        await pbx.ami.action({"Action": "ConfbridgeStopRecord", "Conference": ROOM})
        await gone_everywhere(stack, timeout=2.0)


async def test_listeners_started_while_the_server_is_down_are_found_when_it_comes_up(
        asterisk_lab: str, pki: TestPki, spy_modules: None, sipp_callers: Callable[..., SippCaller]) -> None:
    async with insider() as pbx:
        # No stc-server: two channels put straight into the room, then listened to in every way.
        since = pbx.ami.mark()
        for number in ("111", "222"):
            await pbx.ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ConfBridge",
                                  "Data": f"{ROOM},stc_bridge,stc_user", "CallerID": f"Insider <{number}>",
                                  "Async": "true"})
        joins = await pbx.ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
        first, second = joins
        mixmonitor_file, room_file = recording_path("down-mixmonitor"), recording_path("down-confbridge")
        await pbx.mixmonitor(first["Channel"], mixmonitor_file[0])
        await pbx.record_room(room_file[0])
        snoop = await pbx.snoop(second["Uniqueid"])
        spy = await pbx.chanspy(first["Channel"], first["Uniqueid"])

        # The server comes up (the insiders' channels are only flagged, so they stay).
        async with stc_stack(pki, ("alice",), unauthenticated="flag", hidden_listeners="show") as stack:
            rooms = stack.server.rooms
            assert rooms is not None
            expected = {("mixmonitor", first["Uniqueid"]), ("confbridge-record", "room"), ("snoop", second["Uniqueid"]),
                        ("chanspy", "room")}  # the scan knows ChanSpy's channel prefix, not its current target
            await wait_until(lambda: {(li.kind, li.hears) for li in rooms.conference.hidden_listeners(ROOM)} == expected,
                             10, "the scan finds all four")
            # Alice joins and her first roster lists them.
            since = pbx.ami.mark()
            dial(sipp_callers, stack, "alice")
            await pbx.ami.wait_for(event_is("ConfbridgeJoin", Conference=ROOM, CallerIDNum="alice"), timeout=30, since=since)
            client = stack.clients["alice"]
            await wait_until(lambda: (r := latest(client)) is not None and len(r.entries) == 3, 10, "alice's roster")
            roster = latest(client)
            assert roster is not None
            assert {(li.kind, li.hears) for li in roster.listeners} == expected
            channels = {li.kind: li.channel for li in roster.listeners}
            assert channels["snoop"] == snoop["name"] and channels["mixmonitor"] == first["Channel"]
            assert channels["confbridge-record"].startswith(f"CBRec/{ROOM}-")

        # A server with the default policy comes up: what its scan finds, it stops.
        since = pbx.ami.mark()
        async with stc_stack(pki, unauthenticated="flag") as stack:
            rooms = stack.server.rooms
            assert rooms is not None
            await pbx.ami.wait_for(event_is("MixMonitorStop", Uniqueid=first["Uniqueid"]), timeout=10, since=since)
            await pbx.ami.wait_for(event_is("ConfbridgeStopRecord", Conference=ROOM), timeout=10, since=since)
            await wait_until(lambda: rooms.ari.connected and not rooms.conference.hidden_listeners(ROOM), 10,
                             "every listener stopped")
            assert {snoop["id"], spy["SpyerUniqueid"]}.isdisjoint(c["id"] for c in await pbx.channels())
            assert not await grows(mixmonitor_file[1], within=1.0) and not await grows(room_file[1], within=1.0)


# -- the window ----------------------------------------------------------------------------


async def open_window(browser: BrowserPage, client: ClientApp) -> Page:
    assert client.window is not None, "the client was started without its window"
    await browser.page.goto(client.window.url)
    await expect(browser.page.locator("#link-status")).to_have_attribute("data-link", "live")
    return browser.page


async def join_with_window(stack: Stack, sipp_callers: Callable[..., SippCaller], ami: AmiClient,
                           tmp_path: Path) -> ClientApp:
    """Alice with her window, Bob without, both in the room; the window is green."""
    alice = await stack.add_client("alice", config_dir=tmp_path)
    await stack.add_client("bob")
    await join_all(stack, sipp_callers, ami)
    return alice


async def test_window_goes_amber_with_who_is_heard_and_green_when_it_ends(
        asterisk_lab: str, pki: TestPki, spy_modules: None, sipp_callers: Callable[..., SippCaller],
        tmp_path: Path) -> None:
    async with stc_stack(pki, hidden_listeners="show") as stack, insider() as pbx, chromium_page() as browser:
        alice = await join_with_window(stack, sipp_callers, pbx.ami, tmp_path)
        page = await open_window(browser, alice)
        light = page.locator("#light")
        await expect(light).to_have_attribute("data-light", "green")
        bob = person(stack, "Bob")

        await pbx.mixmonitor(bob.channel_name, recording_path("window")[0])
        await expect(light).to_have_attribute("data-light", "amber")
        await expect(page.locator("#light-word")).to_have_text("AMBER")
        await expect(page.locator("#light-label")).to_have_text("In a call that is NOT private")
        words = "Bob's line is being recorded (MixMonitor): allowed by the server's policy, it goes on"
        await expect(page.locator("#light-reason")).to_have_text(f"NOT private: {words}.")
        banner = page.locator('#warnings [role=alert][data-kind="listener"]')
        await expect(banner).to_contain_text("NOT PRIVATE: someone outside the conference can hear it")
        await expect(banner).to_contain_text(words)
        await expect(page.locator("#history li[data-kind=listener]")).to_contain_text(words)
        png = await browser.screenshot("window-e2e-not-private")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        await pbx.ami.action({"Action": "StopMixMonitor", "Channel": bob.channel_name})
        await expect(light).to_have_attribute("data-light", "green")
        await expect(banner).to_have_count(0)
        await expect(page.locator("#history li[data-kind=listener-gone]")).to_contain_text(
            "Bob's line is being recorded (MixMonitor): no longer after")
        assert browser.errors == []


async def test_stopped_listeners_and_ejected_channels_stay_in_every_call_history(
        asterisk_lab: str, pki: TestPki, spy_modules: None, sipp_callers: Callable[..., SippCaller],
        tmp_path: Path) -> None:
    async with stc_stack(pki) as stack, insider() as pbx, chromium_page() as browser:
        alice = await join_with_window(stack, sipp_callers, pbx.ami, tmp_path)
        page = await open_window(browser, alice)
        bob = person(stack, "Bob")

        # A ChanSpy on Bob, stopped at once: the light may never even turn amber, the history keeps it.
        await pbx.chanspy(bob.channel_name, bob.channel_id)
        spied = "Bob is being listened to from another line (ChanSpy)"
        history = page.locator("#history li")
        await expect(page.locator("#history li[data-kind=listener]")).to_contain_text(f"{spied}: stc is stopping it")
        await expect(page.locator("#history li[data-kind=listener-gone]")).to_contain_text(f"{spied}: no longer after")
        await expect(page.locator("#light")).to_have_attribute("data-light", "green")

        # A Local channel forced into the room and ejected within milliseconds.
        since = pbx.ami.mark()
        await pbx.ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ConfBridge",
                              "Data": f"{ROOM},stc_bridge,stc_user", "CallerID": "Spy <666>", "Async": "true"})
        forced = await pbx.ami.wait_for(lambda e: e.get("Event") == "ConfbridgeLeave"
                                        and e.get("Channel", "").startswith("Local/"), timeout=10, since=since)
        entered = f"UNAUTHENTICATED channel {forced['Channel']} (claims to be \"Spy\" <666>) entered the conference"
        await expect(page.locator("#history li[data-kind=unauthenticated]")).to_have_text(re.compile(re.escape(entered)))
        await expect(page.locator("#history li[data-kind=unauthenticated-gone]")).to_contain_text(
            f"UNAUTHENTICATED channel {forced['Channel']}")
        await expect(page.locator("#light")).to_have_attribute("data-light", "green")
        await history.last.scroll_into_view_if_needed()
        png = await browser.screenshot("window-e2e-call-history")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # Every client's history has both, not only the one with a window.
        for client in stack.clients.values():
            kinds = [h["kind"] for h in client.state.snapshot()["history"]]
            assert {"listener", "listener-gone", "unauthenticated", "unauthenticated-gone"} <= set(kinds), kinds
        assert browser.errors == []
