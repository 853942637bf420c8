"""Opening the client's window in the user's default browser when `stc-client` starts.

The window's address carries its secret (`?token=`, stc_client/window_secret.py). Handed to a
browser on its command line, it would show in the process list to every local user; so, as
Jupyter does, the browser is given a small page in the user's private folder (0600, beside the
secret) that forwards to the address instead.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import sys
import tempfile
import webbrowser
from pathlib import Path

log = logging.getLogger(__name__)
OPENER_NAME = "open-window.html"


def has_desktop() -> bool:
    """Windows and macOS always have one; elsewhere only a graphical session (or $BROWSER) does,
    and a server's console must not get a text browser."""
    if sys.platform in ("win32", "darwin"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"))


def write_opener(url: str, folder: Path) -> Path:
    """A page only its user can read that forwards to `url`; replaced in one rename."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = html.escape(url, quote=True)
    page = (f'<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
            f'<meta http-equiv="refresh" content="0;url={target}"><title>stc-client</title>'
            f'<p>Opening the stc-client window: <a href="{target}">continue</a>.</p>\n')
    fd, tmp = tempfile.mkstemp(prefix=".open-window-", suffix=".html", dir=folder)  # 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        path = folder / OPENER_NAME
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


async def open_in_browser(url: str, folder: Path) -> bool:
    """Open the window at `url` in the default browser; False (and a log line saying what to do) if not."""
    if not has_desktop():
        log.info("no desktop session: open the window's address above in a browser")
        return False
    try:
        opener = write_opener(url, folder)
    except OSError as exc:
        log.warning("cannot write %s (%s): open the window's address above in a browser", folder / OPENER_NAME, exc.strerror)
        return False
    try:
        opened = await asyncio.get_running_loop().run_in_executor(None, webbrowser.open, opener.as_uri())
    except webbrowser.Error as exc:
        opened, why = False, str(exc)
    else:
        why = "no browser found"
    if not opened:
        log.warning("could not open a browser (%s): open the window's address above in one", why)
    return bool(opened)


__all__ = ["OPENER_NAME", "has_desktop", "open_in_browser", "write_opener"]
