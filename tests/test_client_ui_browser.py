"""The stc-client window in headless Chromium: a real UiServer showing a real ClientState.

The test changes the state the way the client app does and watches the page follow it over
the websocket, without a reload. End-to-end tests against the real client, server and
Asterisk reuse tests/browser.py. Screenshots go to artifacts/.
"""

from __future__ import annotations

import io
import json
import socket
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from playwright.async_api import Page, expect

from browser import BrowserPage, chromium_page
from certs import ZOE_DISPLAY_NAME, TestPki, make_test_pki
from stc_client.config import ClientConfig
from stc_client.state import ClientState
from stc_client.status_cli import ClientNotRunning, fetch_status, render_status
from stc_client.ui import UiServer
from stc_client.window_secret import load_or_create_secret
from stc_wire.identity import PeerIdentity, identity_of
from stc_wire.roster import Roster, RosterEntry, iso_utc

CONFIG_TOML = """\
log_level = "INFO"

[server]
host = "127.0.0.1"
port = 5443
name = "stc-server.test"
connect_timeout = 4.0

[identity]
cert = "pki/user-alice.pem"
key = "pki/user-alice.key"
ca_bundle = "pki/ca.pem"

[sip]
listen_port = 5060
"""
NO_RELOAD = "window.__stcNoReload"
SECRET = "test-window-secret-0123456789abcdefghijklmnopqrstuvwxyz"
AUTH = {"Authorization": f"token {SECRET}"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("ui") / "pki")


def ident(pki: TestPki, name: str) -> PeerIdentity:
    path = pki.server.cert if name == "server" else pki.users[name].cert
    return identity_of(x509.load_pem_x509_certificate(path.read_bytes()))


@dataclass
class Window:
    state: ClientState
    ui: UiServer
    config_path: Path
    pki: TestPki
    applied: list[ClientConfig] = field(default_factory=list)


@pytest.fixture
async def window(pki: TestPki, tmp_path: Path) -> AsyncIterator[Window]:
    (tmp_path / "pki").symlink_to(pki.dir)
    config_path = tmp_path / "client.toml"
    config_path.write_text(CONFIG_TOML, encoding="utf-8")
    state = ClientState()
    applied: list[ClientConfig] = []

    async def apply(config: ClientConfig) -> None:
        applied.append(config)

    ui = UiServer(state, config_path, port=0, apply_settings=apply, secret=SECRET)
    await ui.start()
    try:
        yield Window(state, ui, config_path, pki, applied)
    finally:
        await ui.close()


@pytest.fixture
async def browser(window: Window) -> AsyncIterator[BrowserPage]:
    async with chromium_page() as b:
        await b.page.goto(window.ui.url)
        await expect(b.page.locator("#link-status")).to_have_attribute("data-link", "live")
        await b.page.evaluate(f"{NO_RELOAD} = 42")
        yield b


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate(NO_RELOAD) == 42


def entry(pki: TestPki, name: str | None, channel: str, minutes_ago: int, *, talking: bool = False,
          caller: str | None = None) -> RosterEntry:
    return RosterEntry(
        channel_id=channel, room="1000", identity=ident(pki, name).to_json() if name else None,
        channel_name=f"PJSIP/{channel}", caller_id=caller,
        joined_at=iso_utc(datetime.now(timezone.utc) - timedelta(minutes=minutes_ago)), talking=talking,
    )


def roster(version: int, *entries: RosterEntry) -> Roster:
    return Roster("stc-server.test", "1000", version, iso_utc(datetime.now(timezone.utc)), "ok", entries)


def in_call(window: Window) -> None:
    window.state.tunnel_up(ident(window.pki, "server"), ident(window.pki, "alice").to_json())
    window.state.call_started("1000", "AEAD_AES_128_GCM")


# -- the light --------------------------------------------------------------------------


async def test_light_goes_red_yellow_green_without_reload(window: Window, browser: BrowserPage) -> None:
    page, light = browser.page, browser.page.locator("#light")
    await expect(light).to_have_attribute("data-light", "red")
    await expect(light).to_contain_text("RED")
    await expect(light).to_contain_text("Not connected")

    for code, words in [("server-unreachable", "server unreachable"),
                        ("server-certificate-rejected", "server certificate wrong"),
                        ("refused-by-server", "refused certificate")]:
        window.state.tunnel_down(code, f"because {code}")
        await expect(page.locator("#light-label")).to_have_text(f"Not connected: {words}")
        await expect(page.locator("#light-reason")).to_have_text(f"because {code}")

    window.state.tunnel_up(ident(window.pki, "server"), ident(window.pki, "alice").to_json())
    await expect(light).to_have_attribute("data-light", "yellow")
    await expect(page.locator("#light-word")).to_have_text("YELLOW")
    await expect(page.locator("#light-label")).to_have_text("Connected, no call")
    await expect(page.locator("#server")).to_contain_text("localhost")
    await expect(page.locator("#me")).to_have_text("Alice (stc test)")
    await expect(page.locator("#call-room-row")).to_be_hidden()

    window.state.call_started("1000", "AEAD_AES_128_GCM")
    await expect(light).to_have_attribute("data-light", "green")
    await expect(page.locator("#light-word")).to_have_text("GREEN")
    await expect(page.locator("#light-label")).to_have_text("In a secure call")
    await expect(page.locator("#call-room")).to_have_text("1000")
    await expect(page.locator("#call-srtp")).to_have_text("AEAD_AES_128_GCM")
    await expect(page).to_have_title("stc-client: GREEN, In a secure call")

    window.state.tunnel_down("tunnel-closed", "tunnel closed: server going away")
    await expect(light).to_have_attribute("data-light", "red")
    await expect(page.locator("#call-room-row")).to_be_hidden()
    await assert_not_reloaded(page)
    assert browser.errors == []


# -- the roster -------------------------------------------------------------------------


async def test_roster_rows_appear_and_leave_live(window: Window, browser: BrowserPage) -> None:
    page, pki = browser.page, window.pki
    in_call(window)
    await expect(page.locator("#roster-summary")).to_contain_text("Waiting for the conference roster")
    alice, bob, zoe = entry(pki, "alice", "c1", 9), entry(pki, "bob", "c2", 5, talking=True), entry(pki, "zoe", "c3", 1)
    window.state.set_roster(roster(1, alice, bob, zoe))

    rows = page.locator("#roster-body tr")
    await expect(rows).to_have_count(3)
    await expect(page.locator("#roster-body th")).to_have_text(["Alice you", "Bob", ZOE_DISPLAY_NAME])
    bob_row = page.locator('#roster-body tr[data-channel="c2"]')
    bob_id = ident(pki, "bob")
    await expect(bob_row.locator("td").nth(0)).to_have_text("stc test")
    await expect(bob_row.locator("td").nth(1)).to_have_text("sip:bob@stc.test")
    await expect(bob_row.locator("td").nth(2)).to_have_text(bob_id.issuer)
    await expect(bob_row.locator(".fingerprint summary code")).to_have_text(bob_id.short_fingerprint())
    await expect(bob_row.locator(".talk")).to_have_text("speaking")
    await expect(page.locator('#roster-body tr[data-channel="c3"] td').nth(0)).to_have_text("Ørganisation / Tëst")
    await expect(page.locator('#roster-body tr[data-channel="c1"] .talk')).to_have_text("silent")
    await expect(page.locator("#roster-summary")).to_have_text("Room 1000: 3 participants, all authenticated by certificate.")

    # The full fingerprint on demand, by keyboard.
    full = bob_row.locator(".fingerprint .full")
    await expect(full).to_be_hidden()
    await bob_row.locator(".fingerprint summary").focus()
    await page.keyboard.press("Enter")
    await expect(full).to_be_visible()
    assert (await full.inner_text()).replace(" ", "") == bob_id.fingerprint_sha256

    # Bob leaves; Alice starts talking. The open fingerprint of a remaining row stays open.
    await page.locator('#roster-body tr[data-channel="c3"] .fingerprint summary').click()
    window.state.set_roster(roster(2, entry(pki, "alice", "c1", 9, talking=True), zoe))
    await expect(rows).to_have_count(2)
    await expect(page.locator('#roster-body tr[data-channel="c2"]')).to_have_count(0)
    await expect(page.locator('#roster-body tr[data-channel="c1"] .talk')).to_have_text("speaking")
    await expect(page.locator('#roster-body tr[data-channel="c3"] .fingerprint .full')).to_be_visible()

    window.state.call_ended()
    await expect(rows).to_have_count(0)
    await expect(page.locator("#roster")).to_be_hidden()
    await expect(page.locator("#roster-summary")).to_have_text("Not in a call: no conference roster.")
    await assert_not_reloaded(page)
    assert browser.errors == []


async def test_unauthenticated_channel_and_bad_roster_raise_alarms(window: Window, browser: BrowserPage) -> None:
    page, pki = browser.page, window.pki
    in_call(window)
    window.state.set_roster(roster(1, entry(pki, "alice", "c1", 3)))
    await expect(page.locator("#roster-body tr")).to_have_count(1)
    await expect(page.locator("#warnings [role=alert]")).to_have_count(0)

    window.state.set_roster(roster(2, entry(pki, "alice", "c1", 3), entry(pki, None, "rogue-1", 0, caller="Alice")))
    banner = page.locator('#warnings [role=alert][data-kind="unauthenticated"]')
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("WARNING: UNAUTHENTICATED participant in this conference")
    await expect(banner).to_contain_text("Alice on PJSIP/rogue-1")
    rogue = page.locator('#roster-body tr[data-channel="rogue-1"]')
    await expect(rogue).to_have_class("unauth")
    await expect(rogue.locator("th")).to_contain_text("UNAUTHENTICATED")
    await expect(rogue.locator("th")).to_contain_text("claims to be “Alice”")
    await expect(page.locator("#roster-summary")).to_contain_text("1 UNAUTHENTICATED")
    await expect(page.locator("#light-caveat")).to_contain_text("not everyone listed can be trusted")

    window.state.roster_rejected("bad-signature", "the signature does not verify with the server key")
    rejected = page.locator('#warnings [role=alert][data-kind="roster-rejected"]')
    await expect(rejected).to_contain_text("failed its security check")
    await expect(rejected).to_contain_text("bad-signature")
    await expect(page.locator("#warnings [role=alert]")).to_have_count(2)

    # The rogue leaves: its alarm goes; the refused roster's stays for the rest of the call.
    window.state.set_roster(roster(3, entry(pki, "alice", "c1", 3)))
    await expect(banner).to_have_count(0)
    await expect(rejected).to_be_visible()
    window.state.call_ended()
    await expect(page.locator("#warnings [role=alert]")).to_have_count(0)
    await expect(page.locator("#light-caveat")).to_be_hidden()
    await assert_not_reloaded(page)
    assert browser.errors == []


# -- settings ---------------------------------------------------------------------------


async def open_settings(page: Page) -> None:
    await page.locator("#settings-panel > summary").click()
    await expect(page.locator("#server-host")).to_have_value("127.0.0.1")


async def test_wrong_certificate_path_shows_an_error_and_changes_nothing(window: Window, browser: BrowserPage) -> None:
    page = browser.page
    before = window.config_path.read_bytes()
    await open_settings(page)
    await expect(page.locator("#identity-cert")).to_have_value(str(window.config_path.parent / "pki/user-alice.pem"))
    await page.locator("#identity-cert").fill(str(window.pki.dir / "no-such-cert.pem"))
    await page.locator("#server-port").fill("6000")
    await page.locator("#settings-save").click()

    error = page.locator("#identity-cert-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("certificate not found")
    await expect(page.locator("#identity-cert")).to_have_attribute("aria-invalid", "true")
    await expect(page.locator("#identity-cert")).to_be_focused()
    await expect(page.locator("#settings-errors")).to_contain_text("Nothing was saved: 1 problem.")
    assert window.config_path.read_bytes() == before
    assert window.applied == []

    # A key that is not the certificate's is refused the same way.
    await page.locator("#identity-cert").fill(str(window.pki.users["alice"].cert))
    await page.locator("#identity-key").fill(str(window.pki.users["bob"].key))
    await page.locator("#settings-save").click()
    await expect(page.locator("#identity-key-error")).to_contain_text("does not belong to the certificate")
    await expect(page.locator("#identity-cert-error")).to_be_hidden()
    assert window.config_path.read_bytes() == before
    assert window.applied == []
    # The browser logs the 400 answers as failed resources; nothing else may fail.
    assert [e for e in browser.errors if "status of 400" not in e] == []


async def test_good_settings_are_saved_and_applied(window: Window, browser: BrowserPage) -> None:
    page = browser.page
    await open_settings(page)
    await page.locator("#server-port").fill("6443")
    await page.locator("#identity-cert").fill("pki/user-carol.pem")
    await page.locator("#identity-key").fill("pki/user-carol.key")
    await page.locator("#sip-listen_port").fill("5070")
    await page.locator("#settings-save").click()
    await expect(page.locator("#settings-result")).to_have_text("Saved. stc-client is reconnecting with the new settings.")
    await expect(page.locator("#settings-errors")).to_be_empty()

    doc = tomllib.loads(window.config_path.read_text(encoding="utf-8"))
    assert doc["server"] == {"host": "127.0.0.1", "port": 6443, "name": "stc-server.test", "connect_timeout": 4.0}
    assert doc["identity"]["cert"] == "pki/user-carol.pem" and doc["sip"]["listen_port"] == 5070
    assert doc["log_level"] == "INFO"
    (applied,) = window.applied
    assert applied.server.port == 6443 and applied.sip.listen_port == 5070
    assert applied.identity.cert == window.config_path.parent / "pki/user-carol.pem"
    # The form now shows what was saved (the path as the client resolves it).
    await expect(page.locator("#identity-cert")).to_have_value(str(window.config_path.parent / "pki/user-carol.pem"))
    assert browser.errors == []


async def test_keyboard_reaches_and_opens_the_settings(window: Window, browser: BrowserPage) -> None:
    page = browser.page
    for _ in range(40):  # bounded: the page has far fewer stops than this
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.matches('#settings-panel > summary')"):
            break
    else:
        pytest.fail("Tab never reached the settings")
    await page.keyboard.press("Enter")
    await expect(page.locator("#settings-panel")).to_have_attribute("open", "")
    await page.keyboard.press("Tab")
    await expect(page.locator("#server-host")).to_be_focused()
    # Labels name every input (what a screen reader announces).
    for input_id in ("server-host", "server-port", "identity-cert", "identity-key", "identity-ca_bundle", "sip-listen_port"):
        assert await page.locator(f'label[for="{input_id}"]').count() == 1, input_id
    # PKCS#12 mode shows its own fields, chosen with the arrow keys like any radio group.
    await page.locator("#kind-pem").focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#kind-pkcs12")).to_be_checked()
    await expect(page.locator("#identity-pkcs12")).to_be_visible()
    await expect(page.locator("#identity-pkcs12_passphrase")).to_have_attribute("type", "password")
    await expect(page.locator("#identity-cert")).to_be_hidden()


# -- the page comes back after the window server restarts ----------------------------------


async def test_page_reconnects_and_catches_up(window: Window, browser: BrowserPage) -> None:
    page = browser.page
    port = window.ui.port
    await window.ui.close()
    await expect(page.locator("#link-status")).to_have_attribute("data-link", "lost")
    await expect(page.locator("#link-status")).to_contain_text("Lost contact with stc-client")
    in_call(window)  # the state moves on while the page cannot hear

    async def apply(config: ClientConfig) -> None:
        pass

    again = UiServer(window.state, window.config_path, port=port, apply_settings=apply, secret=SECRET)
    await again.start()
    try:
        await expect(page.locator("#link-status")).to_have_attribute("data-link", "live", timeout=15_000)
        await expect(page.locator("#light")).to_have_attribute("data-light", "green")
        await assert_not_reloaded(page)
    finally:
        await again.close()


# -- screenshots --------------------------------------------------------------------------


async def test_screenshots_of_the_window(window: Window, browser: BrowserPage) -> None:
    page, pki = browser.page, window.pki
    in_call(window)
    window.state.set_roster(roster(1, entry(pki, "alice", "c1", 12), entry(pki, "bob", "c2", 7, talking=True),
                                   entry(pki, "zoe", "c3", 2)))
    await expect(page.locator("#roster-body tr")).to_have_count(3)
    await page.locator('#roster-body tr[data-channel="c2"] .fingerprint summary').click()
    in_call_png = await browser.screenshot("client-window-in-call")

    window.state.set_roster(roster(2, entry(pki, "alice", "c1", 12), entry(pki, "bob", "c2", 7),
                                   entry(pki, None, "rogue-9", 0, caller="Bob")))
    await expect(page.locator("#warnings [role=alert]")).to_have_count(1)
    alarm_png = await browser.screenshot("client-window-unauthenticated")

    window.state.tunnel_down("refused-by-server", "the server refused this client's certificate "
                             "(connection closed during the handshake); the server's log says why")
    await expect(page.locator("#light")).to_have_attribute("data-light", "red")
    await open_settings(page)
    await page.locator("#identity-cert").fill("/nowhere/alice.pem")
    await page.locator("#settings-save").click()
    await expect(page.locator("#identity-cert-error")).to_be_visible()
    red_png = await browser.screenshot("client-window-refused-settings-error")

    for png in (in_call_png, alarm_png, red_png):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png


# -- the same server without a browser: API, guards, `stc-client status` ------------------------


def test_only_loopback_is_served(tmp_path: Path) -> None:
    async def apply(config: ClientConfig) -> None:
        pass

    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(ValueError, match="loopback only"):
            UiServer(ClientState(), tmp_path / "c.toml", host=host, port=0, apply_settings=apply, secret=SECRET)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        UiServer(ClientState(), tmp_path / "c.toml", host=host, port=0, apply_settings=apply, secret=SECRET)


async def test_status_api_and_cross_site_guards(window: Window) -> None:
    base = f"http://127.0.0.1:{window.ui.port}"
    in_call(window)
    before = window.config_path.read_bytes()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.get(f"{base}/api/status") as r:
            assert r.status == 200 and r.headers["X-Frame-Options"] == "DENY"
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert await r.json() == window.state.snapshot()
        async with http.get(f"http://localhost:{window.ui.port}/static/app.css") as r:
            assert r.status == 200 and "text/css" in r.headers["Content-Type"]
        # DNS rebinding: a foreign host name pointing at 127.0.0.1.
        async with http.get(f"{base}/api/status", headers={"Host": f"evil.example:{window.ui.port}"}) as r:
            assert r.status == 421
        good = {"server": {"host": "127.0.0.1", "port": 1, "name": ""}, "sip": {"listen_port": 5060},
                "identity": {"kind": "pem", "cert": "pki/user-bob.pem", "key": "pki/user-bob.key", "ca_bundle": "pki/ca.pem"}}
        async with http.post(f"{base}/api/settings", json=good, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        async with http.post(f"{base}/api/settings", data=json.dumps(good), headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with http.post(f"{base}/api/settings", data=b"{not json", headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400 and (await r.json())["saved"] is False
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(f"{base}/api/ws", headers={"Origin": "http://evil.example"})
        assert err.value.status == 403
        assert window.config_path.read_bytes() == before and window.applied == []

        # The same request from the page's own origin goes through.
        async with http.post(f"{base}/api/settings", json=good, headers={"Origin": base}) as r:
            body = await r.json()
            assert r.status == 200 and body["ok"] is True, body
        assert window.applied[0].server.port == 1

        async with http.ws_connect(f"{base}/api/ws", headers={"Origin": base}) as ws:
            first = await ws.receive_json(timeout=5)
            assert first["light"] == "green"
            window.state.tunnel_down("server-unreachable", "gone")
            assert (await ws.receive_json(timeout=5))["reason_label"] == "server unreachable"


async def test_nothing_is_served_without_the_window_secret(window: Window) -> None:
    """Another local user (or a page in the user's browser) does not have the secret: 403 everywhere,
    the settings file stays byte-identical and nothing is applied."""
    base = f"http://127.0.0.1:{window.ui.port}"
    in_call(window)
    before = window.config_path.read_bytes()
    evil = {"server": {"host": "203.0.113.9", "port": 443, "name": ""}, "sip": {"listen_port": 5060},
            "identity": {"kind": "pem", "cert": "pki/user-bob.pem", "key": "pki/user-bob.key", "ca_bundle": "pki/ca.pem"}}
    wrong = {"Authorization": "token " + "x" * len(SECRET)}
    for headers in ({}, wrong, {"Cookie": f"{window.ui.cookie_name}={'y' * len(SECRET)}"}):
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{base}/api/settings", json=evil, headers={"Origin": base}) as r:
                assert r.status == 403, headers
            async with http.post(f"{base}/api/settings?token=nope", json=evil) as r:
                assert r.status == 403
            for path in ("/api/status", "/api/settings", "/", "/static/app.js"):
                async with http.get(f"{base}{path}") as r:
                    assert r.status == 403, (path, headers)
                    assert "open the address stc-client printed" in await r.text()
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(f"{base}/api/ws", headers={"Origin": base})
            assert err.value.status == 403
    assert window.config_path.read_bytes() == before and window.applied == []
    assert window.ui.refused_without_secret == 3 * 7

    # The printed address lets the page in and hands it the cookie; the cookie alone then works.
    assert window.ui.url == f"{base}/?token={SECRET}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: keeps IP hosts' cookies
        async with http.get(window.ui.url) as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
            cookie = r.cookies[window.ui.cookie_name]
            assert cookie.value == SECRET and cookie["httponly"] is True and cookie["samesite"] == "Strict"
            assert cookie["path"] == "/"
        async with http.get(f"{base}/api/status") as r:  # the session sends the cookie now
            assert r.status == 200 and (await r.json())["light"] == "green"
        async with http.ws_connect(f"{base}/api/ws", headers={"Origin": base}) as ws:
            assert (await ws.receive_json(timeout=5))["light"] == "green"
        async with http.post(f"{base}/api/settings", json=evil, headers={"Origin": base}) as r:
            assert r.status == 200, await r.text()
    assert window.applied[0].server.host == "203.0.113.9"


async def test_page_holds_the_secret_in_a_cookie_not_in_its_address(window: Window, browser: BrowserPage) -> None:
    page = browser.page
    assert "token" not in page.url and page.url == window.ui.base_url
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: out of reach of scripts
    cookies = await page.context.cookies(window.ui.base_url)
    assert [(c["name"], c["value"], c["httpOnly"], c["sameSite"]) for c in cookies] == \
        [(window.ui.cookie_name, SECRET, True, "Strict")]
    window.state.tunnel_down("server-unreachable", "gone")  # the websocket still carries updates
    await expect(page.locator("#light")).to_have_attribute("data-light", "red")
    await page.reload()  # and the page opens again from the cookie alone
    await expect(page.locator("#link-status")).to_have_attribute("data-link", "live")
    assert browser.errors == []


async def test_a_push_that_fails_closes_the_websocket_and_says_why(
        window: Window, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from stc_client.state import StateSubscription

    async def broken(self: StateSubscription) -> dict[str, object]:
        raise RuntimeError("forced fault in the state push")

    monkeypatch.setattr(StateSubscription, "next", broken)
    base = f"http://127.0.0.1:{window.ui.port}"
    async with aiohttp.ClientSession(headers=AUTH) as http, http.ws_connect(f"{base}/api/ws") as ws:
        message = await ws.receive(timeout=5)
        assert message.type == aiohttp.WSMsgType.CLOSE and message.data == aiohttp.WSCloseCode.INTERNAL_ERROR
    record = next(r for r in caplog.records if "pushing the state to the window failed" in r.getMessage())
    assert record.exc_info is not None and "forced fault in the state push" in str(record.exc_info[1])


async def test_failed_apply_is_reported_after_saving(pki: TestPki, tmp_path: Path) -> None:
    (tmp_path / "pki").symlink_to(pki.dir)
    config_path = tmp_path / "client.toml"
    config_path.write_text(CONFIG_TOML)

    async def apply(config: ClientConfig) -> None:
        raise RuntimeError("the tunnel could not restart")

    ui = UiServer(ClientState(), config_path, port=0, apply_settings=apply, secret=SECRET)
    await ui.start()
    try:
        form = {"server": {"host": "127.0.0.1", "port": 7443}, "sip": {"listen_port": 5060},
                "identity": {"kind": "pem", "cert": "pki/user-bob.pem", "key": "pki/user-bob.key", "ca_bundle": "pki/ca.pem"}}
        async with aiohttp.ClientSession(headers=AUTH) as http, http.post(f"{ui.base_url}api/settings", json=form) as r:
            body = await r.json()
        assert r.status == 500 and body["saved"] is True
        assert "saved, but applying failed: the tunnel could not restart" in body["errors"][0]["message"]
        assert tomllib.loads(config_path.read_text())["server"]["port"] == 7443
    finally:
        await ui.close()


async def test_status_command_reads_the_running_window(window: Window, tmp_path: Path) -> None:
    import asyncio

    from stc_client.config import UiSettings  # type: ignore[attr-defined]  # the [ui] section
    from stc_client.status_cli import status_main

    in_call(window)
    window.state.set_roster(roster(1, entry(window.pki, "alice", "c1", 2), entry(window.pki, None, "x", 1, caller="Eve")))
    secret_file = tmp_path / "window-secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(SECRET + "\n")
    config = ClientConfig(ui=UiSettings(host="127.0.0.1", port=window.ui.port, secret_file=secret_file))  # type: ignore[call-arg]
    out, err = io.StringIO(), io.StringIO()
    # status_main blocks (urllib): run it off the loop that serves the window.
    code = await asyncio.to_thread(status_main, config, False, out=out, err=err)
    assert code == 0 and err.getvalue() == ""
    assert out.getvalue() == render_status(window.state.snapshot())
    assert "AMBER - In a call that is NOT private" in out.getvalue() and "UNAUTHENTICATED PJSIP/x" in out.getvalue()

    out = io.StringIO()
    assert await asyncio.to_thread(status_main, config, True, out=out, err=err) == 0
    assert json.loads(out.getvalue()) == window.state.snapshot()

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    out, err = io.StringIO(), io.StringIO()
    config = ClientConfig(ui=UiSettings(host="127.0.0.1", port=free, secret_file=secret_file))  # type: ignore[call-arg]
    assert await asyncio.to_thread(status_main, config, False, out=out, err=err) == 1
    assert out.getvalue() == ""
    assert f"stc-client is not running (nothing answers at http://127.0.0.1:{free}/api/status" in err.getvalue()

    # Another install's secret is refused, and a missing secret file is named.
    other = tmp_path / "other-secret"
    load_or_create_secret(other)
    out, err = io.StringIO(), io.StringIO()
    config = ClientConfig(ui=UiSettings(host="127.0.0.1", port=window.ui.port, secret_file=other))  # type: ignore[call-arg]
    assert await asyncio.to_thread(status_main, config, False, out=out, err=err) == 1
    assert "refused the window secret (HTTP 403)" in err.getvalue() and out.getvalue() == ""
    out, err = io.StringIO(), io.StringIO()
    config = ClientConfig(ui=UiSettings(host="127.0.0.1", port=window.ui.port, secret_file=tmp_path / "none"))  # type: ignore[call-arg]
    assert await asyncio.to_thread(status_main, config, False, out=out, err=err) == 1
    assert f"no window secret at {tmp_path / 'none'}" in err.getvalue()


def test_fetch_status_refuses_something_else() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    with pytest.raises(ClientNotRunning, match="not running"):
        fetch_status("127.0.0.1", free, SECRET, timeout=1)


def test_static_files_are_complete() -> None:
    static = Path(__file__).resolve().parent.parent / "stc_client" / "ui" / "static"
    html = (static / "index.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # no CDN: works offline
    for name in ("app.css", "app.js"):
        assert f"/static/{name}" in html and (static / name).is_file()
