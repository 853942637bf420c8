"""Headless Chromium for browser tests: Debian's /usr/bin/chromium driven by Playwright (async).

    async with chromium_page() as browser:
        await browser.page.goto(url)
        await expect(browser.page.locator("#light")).to_have_attribute("data-light", "green")
        browser.screenshot("client-in-call")         # -> artifacts/client-in-call.png
        assert browser.errors == []                   # no JS errors, no failed console asserts

Never downloads a browser: the system one is used (apt-get install -y chromium), with a fresh
profile each time and the flags that keep it off the network. A missing browser fails the test
with the install command; it does not skip.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.async_api import Page, async_playwright

CHROMIUM = Path(os.environ.get("STC_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
# As root, in a sandboxed machine with no network but loopback.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
# Every wait in a test is bounded by this (ms).
DEFAULT_TIMEOUT_MS = 10_000


@dataclass
class BrowserPage:
    page: Page
    # Uncaught page errors and console.error messages, in order.
    errors: list[str] = field(default_factory=list)

    async def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        """Write artifacts/NAME.png and return its path."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path


@asynccontextmanager
async def chromium_page(*, width: int = 1280, height: int = 900) -> AsyncIterator[BrowserPage]:
    """A page in a fresh headless Chromium profile; the browser is closed on exit."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"no Chromium at {CHROMIUM}: install it with `apt-get install -y chromium chromium-driver`")
    with tempfile.TemporaryDirectory(prefix="stc-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=LAUNCH_ARGS,
                viewport={"width": width, "height": height},
                locale="en-GB",
                timezone_id="UTC",
            )
            try:
                context.set_default_timeout(DEFAULT_TIMEOUT_MS)
                page = context.pages[0] if context.pages else await context.new_page()
                browser = BrowserPage(page)
                page.on("pageerror", lambda exc: browser.errors.append(f"page error: {exc}"))
                page.on("console", lambda msg: browser.errors.append(f"console.{msg.type}: {msg.text}")
                        if msg.type == "error" else None)
                yield browser
            finally:
                await context.close()
