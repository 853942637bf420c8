"""The client window in headless Chromium, end to end: a real stc-client (window on), a real
stc-server, the lab's Asterisk 22 and SIPp softphones. The page is opened once per test and
never reloaded: everything it shows arrives over its websocket. Screenshots go to artifacts/.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asterisk_lab import AmiClient, asterisk_rx, event_is
from browser import BrowserPage, chromium_page
from cryptography import x509
from playwright.async_api import Page, expect
from sipp import UAC_WAIT_BYE, Codec, SippCaller
from stack import (
    WAN_HOST,
    Stack,
    free_tcp_port,
    start_window_client,
    stc_stack,
    wait_until,
    write_client_config,
)

from stc_client.app import ClientApp
from stc_wire import messages as wire
from stc_wire.identity import identity_of
from stc_wire.roster import iso_utc
from stc_wire.roster_sync import RosterPublisher
from tests.certs import ZOE_DISPLAY_NAME, TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
NO_RELOAD = "window.__stcNoReload"
NAMES = {"alice": "Alice", "bob": "Bob", "zoe": ZOE_DISPLAY_NAME}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def dial(sipp_callers: Callable[..., SippCaller], client: ClientApp, user: str, **kwargs: object) -> SippCaller:
    """A SIPp softphone of `user` calling room 1000 through `client`; it stays until hung up."""
    kwargs.setdefault("codec", Codec.PCMA)
    return sipp_callers(target_host="127.0.0.1", target_port=client.softphone.port, service=ROOM, caller=user,
                        scenario=UAC_WAIT_BYE, timeout_s=60, **kwargs).start()


async def open_window(browser: BrowserPage, client: ClientApp) -> Page:
    assert client.window is not None, "the client was started without its window"
    page = browser.page
    await page.goto(client.window.url)  # the address the client printed: it carries the window's secret
    await expect(page.locator("#link-status")).to_have_attribute("data-link", "live")
    assert "token" not in page.url  # the page keeps the secret in its cookie, not in the address bar
    await page.evaluate(f"{NO_RELOAD} = 42")  # gone if the page ever reloads
    return page


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate(NO_RELOAD) == 42


def short_fingerprint(pki: TestPki, user: str) -> str:
    return identity_of(x509.load_pem_x509_certificate(pki.users[user].cert.read_bytes())).short_fingerprint()


async def push_signed_roster(stack: Stack, room: str) -> int:
    """The server signs the room's roster now and sends it down every tunnel, as its push does; the version."""
    rooms = stack.server.rooms
    assert rooms is not None
    version = rooms.versions.next(room, time.time_ns() // 1000)
    roster = rooms.conference.roster(room, server_id=rooms.server_id, version=version,
                                     issued_at=iso_utc(datetime.now(UTC)))
    signed = RosterPublisher(rooms.signer).publish(roster).full
    for session in stack.server.sessions.values():
        await session.peer.send(wire.RosterUpdate(signed))
    return version


async def test_light_goes_red_yellow_green_as_the_tunnel_and_the_call_come_up(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path) -> None:
    port = free_tcp_port(WAN_HOST)  # the server will listen here, later
    alice = await start_window_client(write_client_config(pki, "alice", port, tmp_path, ("AEAD_AES_128_GCM",)))
    try:
        async with chromium_page() as browser:
            page = await open_window(browser, alice)
            light, label = page.locator("#light"), page.locator("#light-label")
            await expect(light).to_have_attribute("data-light", "red")
            await expect(label).to_have_text("Not connected: server unreachable")
            await expect(page.locator("#light-reason")).to_contain_text(f"cannot connect to {WAN_HOST}:{port}")
            await expect(page.locator("#light-word")).to_have_text("RED")
            assert alice.tunnel is None

            async with stc_stack(pki, listen_port=port) as stack, AmiClient() as ami:
                # The client's next retry finds the server: yellow, with both identities.
                await expect(light).to_have_attribute("data-light", "yellow")
                await expect(label).to_have_text("Connected, no call")
                await expect(page.locator("#light-word")).to_have_text("YELLOW")
                await expect(page.locator("#me")).to_have_text("Alice (stc test)")
                await expect(page.locator("#server")).to_contain_text("localhost")
                await expect(page.locator("#call-room-row")).to_be_hidden()
                assert alice.tunnel is not None

                since = ami.mark()
                dial(sipp_callers, alice, "alice")
                [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
                await expect(light).to_have_attribute("data-light", "green")
                await expect(page.locator("#light-word")).to_have_text("GREEN")
                await expect(label).to_have_text("In a secure call")
                await expect(page.locator("#call-room")).to_have_text(ROOM)
                await expect(page.locator("#call-srtp")).to_have_text("AEAD_AES_128_GCM")
                await expect(page).to_have_title("stc-client: GREEN, In a secure call")
                # The profile shown is the one the server keyed the call with.
                [call] = [c for s in stack.server.sessions.values() for c in s.calls.values()]
                assert call.keys.profile.value == "AEAD_AES_128_GCM"
                me = page.locator(f'#roster-body tr[data-channel="{join["Uniqueid"]}"] th')
                await expect(me).to_have_text("Alice you")

                # Asterisk ends the call: back to yellow.
                await ami.action({"Action": "Hangup", "Channel": join["Channel"]})
                await expect(light).to_have_attribute("data-light", "yellow")
                await expect(page.locator("#call-room-row")).to_be_hidden()
                await expect(page.locator("#roster-body tr")).to_have_count(0)
                await expect(page.locator("#roster-summary")).to_have_text("Not in a call: no conference roster.")
                # A roster push that crosses the hang-up (the server still counted the call, the client had
                # already ended it) is neither shown nor refused: the window lists only the current call's room.
                await wait_until(lambda: stack.server.media.open_calls == 0, 5, "the server released the call")
                late = await push_signed_roster(stack, ROOM)
                await asyncio.sleep(0.5)
                assert not alice.rosters or alice.rosters[-1].version != late
                assert alice.state.roster is None and alice.state.rejection is None, alice.state.snapshot()
                await expect(page.locator("#roster-summary")).to_have_text("Not in a call: no conference roster.")

            # The server goes away: red again, with why.
            await expect(light).to_have_attribute("data-light", "red")
            await expect(label).to_contain_text("Not connected: ")
            await assert_not_reloaded(page)
            assert browser.errors == []
    finally:
        await alice.close()


async def test_roster_shows_certificate_names_and_a_leaver_disappears(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path) -> None:
    async with stc_stack(pki) as stack, AmiClient() as ami, chromium_page() as browser:
        alice = await stack.add_client("alice", config_dir=tmp_path)
        for user in ("bob", "zoe"):
            await stack.add_client(user)
        page = await open_window(browser, alice)
        since = ami.mark()
        dial(sipp_callers, alice, "alice")
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        # The others call under made-up caller ids: the names shown must come from the certificates.
        dial(sipp_callers, stack.clients["bob"], "bob", caller_name="Not Bob")
        dial(sipp_callers, stack.clients["zoe"], "zoe", caller_name="Not Zoe", play_audio=True)
        joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=20, since=since)
        channel = {j["CallerIDNum"]: j["Uniqueid"] for j in joins}

        rows = page.locator("#roster-body tr")
        await expect(rows).to_have_count(3)
        await expect(page.locator("#roster-summary")).to_have_text(
            f"Room {ROOM}: 3 participants, all authenticated by certificate.")
        for user, name in NAMES.items():
            row = page.locator(f'#roster-body tr[data-channel="{channel[user]}"]')
            await expect(row.locator("th")).to_have_text(f"{name} you" if user == "alice" else name)
            await expect(row.locator(".fingerprint summary code")).to_have_text(short_fingerprint(pki, user))
        bob = page.locator(f'#roster-body tr[data-channel="{channel["bob"]}"] td')
        await expect(bob.nth(0)).to_have_text("stc test")
        await expect(bob.nth(1)).to_have_text("sip:bob@stc.test")
        zoe = page.locator(f'#roster-body tr[data-channel="{channel["zoe"]}"]')
        await expect(zoe.locator("td").nth(0)).to_have_text("Ørganisation / Tëst")
        await expect(page.locator("#warnings [role=alert]")).to_have_count(0)
        # Zoë's softphone plays speech: Asterisk's talk detection lights her row, and only hers.
        await ami.wait_for(event_is("ConfbridgeTalking", Conference=ROOM, Uniqueid=channel["zoe"], TalkingStatus="on"),
                           timeout=10, since=since)
        await expect(zoe.locator(".talk")).to_have_text("speaking")
        await expect(page.locator(f'#roster-body tr[data-channel="{channel["bob"]}"] .talk')).to_have_text("silent")
        await zoe.locator(".fingerprint summary").click()  # the full fingerprint, in the screenshot
        await expect(zoe.locator(".fingerprint .full")).to_be_visible()
        png = await browser.screenshot("window-e2e-in-call")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # Bob is hung up: his row goes, the others stay (and Zoë's open fingerprint stays open).
        bob_channel = next(j["Channel"] for j in joins if j["CallerIDNum"] == "bob")
        await ami.action({"Action": "Hangup", "Channel": bob_channel})
        await expect(page.locator(f'#roster-body tr[data-channel="{channel["bob"]}"]')).to_have_count(0)
        await expect(rows).to_have_count(2)
        await expect(page.locator("#roster-body th")).to_have_text(["Alice you", ZOE_DISPLAY_NAME])  # join order
        await expect(zoe.locator(".fingerprint .full")).to_be_visible()
        await expect(page.locator("#light")).to_have_attribute("data-light", "green")
        await assert_not_reloaded(page)
        assert browser.errors == []


async def test_unauthenticated_warning_when_a_channel_is_forced_into_the_room(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path) -> None:
    """An insider originates a Local channel straight into ConfBridge (no SIP, no AGI). The server
    flags it rather than ejecting it, so the warning stays until the channel goes."""
    asterisk_rx("dialplan add extension 9999,1,Answer() into stc-insider replace")
    asterisk_rx("dialplan add extension 9999,2,Wait(60) into stc-insider replace")
    async with stc_stack(pki, unauthenticated="flag") as stack, AmiClient() as ami, chromium_page() as browser:
        alice = await stack.add_client("alice", config_dir=tmp_path)
        page = await open_window(browser, alice)
        since = ami.mark()
        dial(sipp_callers, alice, "alice")
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await expect(page.locator("#roster-body tr")).to_have_count(1)
        alerts = page.locator("#warnings [role=alert]")
        await expect(alerts).to_have_count(0)
        await expect(page.locator("#light-caveat")).to_be_hidden()

        await ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ConfBridge",
                          "Data": f"{ROOM},stc_bridge,stc_user", "CallerID": "Spy <666>", "Async": "true"})
        spy = await ami.wait_for(lambda e: e.get("Event") == "ConfbridgeJoin" and e.get("Channel", "").startswith("Local/"),
                                 timeout=10, since=since)
        banner = page.locator('#warnings [role=alert][data-kind="unauthenticated"]')
        await expect(banner).to_be_visible()
        await expect(banner).to_contain_text("WARNING: UNAUTHENTICATED participant in this conference")
        await expect(banner).to_contain_text(f"on {spy['Channel']}")
        rogue = page.locator(f'#roster-body tr[data-channel="{spy["Uniqueid"]}"]')
        await expect(rogue).to_have_class("unauth")
        await expect(rogue.locator("th")).to_contain_text("UNAUTHENTICATED")
        await expect(rogue.locator("th")).to_contain_text("claims to be “Spy” <666>")
        await expect(page.locator("#roster-summary")).to_have_text(f"Room {ROOM}: 2 participants, 1 UNAUTHENTICATED.")
        await expect(page.locator("#light-caveat")).to_contain_text("not everyone listed can be trusted")
        png = await browser.screenshot("window-e2e-unauthenticated")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        # The spy goes: so does the alarm, without a reload.
        await ami.action({"Action": "Hangup", "Channel": spy["Channel"]})
        await expect(banner).to_have_count(0)
        await expect(page.locator("#roster-body tr")).to_have_count(1)
        await expect(page.locator("#light-caveat")).to_be_hidden()
        await assert_not_reloaded(page)
        assert browser.errors == []


async def test_wrong_certificate_path_in_settings_changes_nothing(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path) -> None:
    async with stc_stack(pki) as stack, AmiClient() as ami, chromium_page() as browser:
        alice = await stack.add_client("alice", config_dir=tmp_path)
        assert alice.config_path is not None
        before = alice.config_path.read_bytes()
        page = await open_window(browser, alice)
        since = ami.mark()
        caller = dial(sipp_callers, alice, "alice")
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        await expect(page.locator("#light")).to_have_attribute("data-light", "green")
        tunnel, config = alice.tunnel, alice.config

        await page.locator("#settings-panel > summary").click()
        await expect(page.locator("#identity-cert")).to_have_value(str(pki.users["alice"].cert))
        missing = tmp_path / "no-such-dir" / "alice.pem"
        await page.locator("#identity-cert").fill(str(missing))
        await page.locator("#server-port").fill("6000")  # a valid change alongside: not saved either
        await page.locator("#settings-save").click()

        error = page.locator("#identity-cert-error")
        await expect(error).to_be_visible()
        await expect(error).to_have_text(f"certificate not found: {missing}")
        await expect(page.locator("#identity-cert")).to_have_attribute("aria-invalid", "true")
        await expect(page.locator("#settings-errors")).to_contain_text("Nothing was saved: 1 problem.")
        await expect(page.locator("#settings-result")).to_have_text("")

        assert alice.config_path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["alice-window-secret", "alice.toml"]  # no temporary file left
        # Nothing was applied either: same tunnel, same settings, the call goes on.
        assert alice.tunnel is tunnel and alice.config is config
        await expect(page.locator("#light")).to_have_attribute("data-light", "green")
        assert caller.running
        await assert_not_reloaded(page)
        # The refused POST is logged by Chromium as a failed resource (400); nothing else went wrong.
        assert [e for e in browser.errors if "status of 400" not in e] == []
