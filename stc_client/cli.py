"""`stc-client [--config PATH] [run|check]`: the tunnel end beside the softphone."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from stc_wire.cli_common import load_or_exit, run_fast, run_until_signal, setup_logging

from .app import DEFAULT_CONFIG, ClientApp
from .config import ClientConfig
from .desktop import open_in_browser
from .paths import user_settings_path
from .status_cli import status_main
from .tunnel_client import TunnelRefused, open_tunnel
from .window_secret import WindowSecretError


async def _check(config: ClientConfig) -> int:
    try:
        tunnel = await open_tunnel(config)
    except TunnelRefused as exc:
        print(f"stc-client: tunnel refused ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    server = tunnel.server_identity
    me = (tunnel.own_identity or {}).get("display_name", "?")
    print(f"tunnel up: server {server.subject} (SHA-256 {server.fingerprint_sha256}); the server knows us as {me}")
    await tunnel.close("check done")
    return 0


def settings_path(given: Path | None) -> Path:
    """--config; else ./stc-client.toml if it exists (as before); else the user's own settings file,
    which the window's first-start page writes if it does not exist yet."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else user_settings_path()


async def run_client(app: ClientApp, *, open_browser: bool) -> None:
    """Serve until a stop signal; with `open_browser`, show the window in the default browser once up."""
    async def start() -> None:
        await app.start()
        if open_browser and app.window is not None:
            await open_in_browser(app.window.url, app.config.ui.secret_path.parent)

    await run_until_signal(start, app.close)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stc-client", description="stc client: secure tunnel for a local softphone")
    parser.add_argument("--config", type=Path,
                        help=f"TOML settings file (default: ./stc-client.toml if it exists, else {user_settings_path()}, "
                             "which the window's first-start page makes)")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "check", "status"),
                        help="run: serve the softphone and the window (default); check: open the tunnel once "
                             "and report; status: ask the running client what it is doing")
    parser.add_argument("--json", action="store_true", help="with status: print the JSON snapshot")
    parser.add_argument("--no-browser", action="store_true",
                        help="with run: do not open the window in the default browser (also [ui] open_browser = false)")
    args = parser.parse_args(argv)
    path = settings_path(args.config)
    # An explicit --config must exist; the user's own settings file may not, yet (a first start).
    config = load_or_exit("stc-client", ClientConfig, path if args.config is not None or path.exists() else None)
    if args.command == "status":
        return status_main(config, args.json)
    setup_logging(config.log_level)
    if args.command == "check":
        return asyncio.run(_check(config))
    app = ClientApp(config, config_path=path, window=True)
    try:
        run_fast(run_client(app, open_browser=config.ui.open_browser and not args.no_browser))
    except WindowSecretError as exc:
        print(f"stc-client: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C before the stop signals were caught
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
