"""`stc-client status [--json]`: ask the running client's window for its state and print it."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any, TextIO

from .config import ClientConfig
from .window_secret import WindowSecretError, read_secret

TIMEOUT = 3.0


class ClientNotRunning(Exception):
    """Nothing answered as stc-client at the configured window address."""


def status_url(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/api/status"


def fetch_status(host: str, port: int, secret: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The window's snapshot, asked with the window's secret (an Authorization header, never in the URL)."""
    url = status_url(host, port)
    request = urllib.request.Request(url, headers={"Authorization": f"token {secret}"})
    try:
        # No proxy: the client's window is on loopback, whatever http_proxy says.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=timeout) as response:
            body = response.read(4 * 1024 * 1024)
    except urllib.error.HTTPError as exc:
        if exc.code == 403:
            raise ClientNotRunning(f"{url} refused the window secret (HTTP 403): is that stc-client started "
                                   "by this user with these settings?") from None
        raise ClientNotRunning(f"{url} answered HTTP {exc.code}: is that stc-client?") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientNotRunning(f"stc-client is not running (nothing answers at {url}: {reason})") from None
    try:
        snapshot = json.loads(body)
    except ValueError:
        raise ClientNotRunning(f"{url} did not answer with JSON: is that stc-client?") from None
    if not isinstance(snapshot, dict) or "light" not in snapshot:
        raise ClientNotRunning(f"{url} did not answer with an stc-client status")
    return snapshot


def _clock(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso


def _who(ident: dict[str, Any] | None) -> str:
    if not ident:
        return "-"
    org = f" ({ident['organization']})" if ident.get("organization") else ""
    fp = str(ident.get("fingerprint_sha256", ""))[:16]
    grouped = " ".join(fp[i : i + 4] for i in range(0, len(fp), 4))
    return f"{ident.get('display_name', '?')}{org}, SHA-256 {grouped}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def render_status(s: dict[str, Any]) -> str:
    """The human table printed by `stc-client status`."""
    light = str(s.get("light", "?")).upper()
    lines = [f"Status:   {light} - {s.get('label', '')}"]
    if s.get("reason_label"):
        lines.append(f"Why:      {s['reason_label']}: {s.get('reason', '')}")
    else:
        lines.append(f"          {s.get('reason', '')}")
    lines.append(f"Since:    {_clock(s.get('since'))}")
    lines.append(f"Server:   {_who(s.get('server'))}")
    lines.append(f"You:      {_who(s.get('me'))}")
    call = s.get("call")
    if call:
        lines.append(f"Call:     room {call['room']}, SRTP {call['srtp_profile']}, since {_clock(call.get('since'))}")
    else:
        lines.append("Call:     none")
    for w in s.get("warnings") or []:
        lines.append(f"!! WARNING ({w.get('kind')}): {w.get('message')}")
    roster = s.get("roster")
    rows = s.get("participants") or []
    if roster:
        lines.append(f"Roster:   room {roster['room']}, {len(rows)} participant{'s' if len(rows) != 1 else ''}, "
                     f"version {roster['version']}")
    if rows:
        table = [["NAME", "ORGANISATION", "ADDRESS", "ISSUER", "FINGERPRINT", "SPEAKING", "JOINED"]]
        for r in rows:
            if r.get("authenticated"):
                name = r["display_name"] + (" (you)" if r.get("is_me") else "")
                table.append([name, r.get("organization") or "-", r.get("address") or "-", r.get("issuer") or "-",
                              r.get("short_fingerprint") or "-", "yes" if r.get("talking") else "no",
                              _clock(r.get("joined_at"))])
            else:
                claim = f"claims {r['caller_id']!r}" if r.get("caller_id") else "no caller id"
                table.append([f"UNAUTHENTICATED {r.get('channel_name', '')}", claim, "-", "-", "-",
                              "yes" if r.get("talking") else "no", _clock(r.get("joined_at"))])
        lines.extend(_table(table))
    history = s.get("history") or []
    if history:
        lines.append("History of this call:")
        lines.extend(f"  {_clock(h.get('at'))}  {h.get('message', '')}" for h in history)
    return "\n".join(lines) + "\n"


def status_main(config: ClientConfig, as_json: bool, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the running client's status (from its window at config.ui); 1 if it is not running."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        snapshot = fetch_status(config.ui.host, config.ui.port, read_secret(config.ui.secret_path))
    except (ClientNotRunning, WindowSecretError) as exc:
        print(f"stc-client: {exc}", file=err)
        return 1
    if as_json:
        out.write(json.dumps(snapshot, indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(render_status(snapshot))
    return 0
