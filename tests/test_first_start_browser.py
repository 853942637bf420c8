"""A desktop user's first start, in headless Chromium, on the Windows/macOS code paths (no memfd,
no add_signal_handler): `stc-client` with a fresh profile (no settings file) opens its window
through the default browser, the window offers to import a
PKCS#12 file and the server's address, and once imported the client connects (red to yellow)
without a restart. The server end is the real stc-server tunnel (TunnelServer); screenshots go to
artifacts/.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import tomllib
import webbrowser
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from playwright.async_api import expect

from browser import chromium_page
from sipp import free_udp_port
from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelServer
from stc_client import cli
from stc_client.app import ClientApp
from stc_client.config import ClientConfig, UiSettings
from stc_client.desktop import OPENER_NAME
from stc_client.first_start import CA_NAME, PKCS12_NAME
from stc_client.paths import user_settings_path
from stc_pki.pki import user_p12
from tests.certs import TestPki, make_test_pki
from tests.test_portable import windows_like_loop

PASSPHRASE = "correct horse battery"
NO_RELOAD = "window.__stcNoReload"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[TunnelServer]:
    srv = TunnelServer(TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                                      ca_bundle=pki.ca, crl=pki.crl, handshake_timeout=2.0, hello_timeout=2.0))
    await srv.start()
    yield srv
    await srv.close()


def p12_from_the_admin(pki: TestPki, folder: Path) -> Path:
    """What stc-pki hands a user: key, certificate and the CA in one passphrase-protected file."""
    files = pki.users["carol"]
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "carol.p12"
    path.write_bytes(user_p12("carol", key, cert, ca, PASSPHRASE.encode()))  # type: ignore[arg-type]
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_first_start_imports_a_pkcs12_file_and_connects_without_a_restart(
        pki: TestPki, server: TunnelServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fresh profile: no settings anywhere, a desktop with a default browser.
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("BROWSER", "stc-test-browser")
    monkeypatch.chdir(tmp_path)
    opened: list[str] = []

    def default_browser(url: str) -> bool:  # stands in for the desktop's browser: the test's Chromium opens it
        opened.append(url)
        return True

    monkeypatch.setattr(webbrowser, "open", default_browser)
    # As on Windows and macOS: no memfd for the PKCS#12 key, no add_signal_handler on the loop.
    monkeypatch.delattr(os, "memfd_create")
    windows_like_loop(monkeypatch)
    settings = cli.settings_path(None)
    assert settings == user_settings_path() == home / ".config" / "stc-client" / "stc-client.toml"
    assert not settings.exists()
    p12 = p12_from_the_admin(pki, home / "Downloads")
    sip_port = free_udp_port()

    # As `stc-client` runs it (its window on a free port instead of 8765).
    app = ClientApp(ClientConfig(ui=UiSettings(port=0)), config_path=settings, window=True)
    running = asyncio.create_task(cli.run_client(app, open_browser=True))
    try:
        async with asyncio.timeout(10):
            while not opened:
                await asyncio.sleep(0.05)
        # The browser was handed a private page that forwards to the window, not the secret itself.
        [uri] = opened
        opener = settings.parent / OPENER_NAME
        assert uri == opener.as_uri() and "token" not in uri
        assert mode(opener) == 0o600 and mode(settings.parent) == 0o700
        assert app.window is not None and app.window.url in opener.read_text(encoding="utf-8").replace("&amp;", "&")
        assert app.needs_setup and app.tunnel is None

        async with chromium_page() as browser:
            page = browser.page
            await page.goto(uri)
            await expect(page).to_have_url(re.compile(rf"^{re.escape(app.window.base_url)}$"))
            await expect(page.locator("#link-status")).to_have_attribute("data-link", "live")
            await page.evaluate(f"{NO_RELOAD} = 42")
            light = page.locator("#light")
            await expect(light).to_have_attribute("data-light", "red")
            await expect(page.locator("#light-label")).to_have_text("Not connected: not set up yet")
            setup = page.locator("#first-start")
            await expect(setup).to_be_visible()
            await expect(page.locator("#setup-folder")).to_contain_text(str(settings.parent))
            await expect(page.locator("#setup-sip-listen_port")).to_have_value("5060")

            # A wrong passphrase: refused as the settings form refuses it, nothing kept.
            await page.locator("#setup-identity-pkcs12").set_input_files(str(p12))
            await page.locator("#setup-identity-pkcs12_passphrase").fill("wrong horse")
            await page.locator("#setup-server-host").fill("127.0.0.1")
            await page.locator("#setup-server-port").fill(str(server.port))
            await page.locator("#setup-server-name").fill("localhost")
            await page.locator("#setup-sip-listen_port").fill(str(sip_port))
            await page.locator("#setup-save").click()
            error = page.locator("#setup-identity-pkcs12_passphrase-error")
            await expect(error).to_be_visible()
            await expect(error).to_contain_text("'carol.p12' does not open: wrong passphrase")
            await expect(page.locator("#setup-identity-pkcs12_passphrase")).to_have_attribute("aria-invalid", "true")
            assert not settings.exists()
            assert sorted(p.name for p in settings.parent.iterdir()) == [OPENER_NAME, "window-secret"]
            await expect(light).to_have_attribute("data-light", "red")
            await browser.screenshot("first-start-red")

            await page.locator("#setup-identity-pkcs12_passphrase").fill(PASSPHRASE)
            await page.locator("#setup-save").click()
            # Connected with the imported identity, same page, same client process.
            await expect(light).to_have_attribute("data-light", "yellow")
            await expect(page.locator("#light-label")).to_have_text("Connected, no call")
            await expect(page.locator("#me")).to_have_text("Carol (stc test)")
            await expect(setup).to_be_hidden()
            await browser.screenshot("first-start-yellow")
            assert await page.evaluate(NO_RELOAD) == 42
            # Only the refused import's 400, which Chromium logs as a console error.
            assert [e for e in browser.errors if "status of 400" not in e] == []

        [peer] = server.peers.values()
        assert peer.identity.display_name == "Carol"
        assert app.softphone.port == sip_port  # the softphone side is up where the page said
        # Saved for the next start: the settings and the identity, private to the user.
        assert mode(settings) == 0o600 and mode(settings.parent / PKCS12_NAME) == 0o600
        assert (settings.parent / PKCS12_NAME).read_bytes() == p12.read_bytes()
        assert x509.load_pem_x509_certificate((settings.parent / CA_NAME).read_bytes()) == \
            x509.load_pem_x509_certificate(pki.ca.read_bytes())
        doc = tomllib.loads(settings.read_text(encoding="utf-8"))
        assert doc["identity"] == {"pkcs12": PKCS12_NAME, "pkcs12_passphrase": PASSPHRASE, "ca_bundle": CA_NAME}
        assert doc["server"] == {"host": "127.0.0.1", "port": server.port, "name": "localhost"}
        assert not app.needs_setup
    finally:
        if not running.done():
            signal.raise_signal(signal.SIGINT)  # as Ctrl+C: run_client stops the client cleanly
        async with asyncio.timeout(10):
            await running
    async with asyncio.timeout(10):  # the client says goodbye on its way out
        while server.peers:
            await asyncio.sleep(0.05)
