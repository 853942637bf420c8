"""`stc-client [--config PATH] [run|check]`: the tunnel end beside the softphone."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from stc_wire.cli_common import load_or_exit, run_fast, run_until_signal, setup_logging

from .app import DEFAULT_CONFIG, ClientApp
from .config import ClientConfig
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stc-client", description="stc client: secure tunnel for a local softphone")
    parser.add_argument("--config", type=Path,
                        help="TOML settings file (default: ./stc-client.toml if it exists, else built-in demo settings)")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "check", "status"),
                        help="run: serve the softphone and the window (default); check: open the tunnel once "
                             "and report; status: ask the running client what it is doing")
    parser.add_argument("--json", action="store_true", help="with status: print the JSON snapshot")
    args = parser.parse_args(argv)
    if args.config is None and DEFAULT_CONFIG.exists():
        args.config = DEFAULT_CONFIG  # where the window saved settings last time
    config = load_or_exit("stc-client", ClientConfig, args.config)
    if args.command == "status":
        return status_main(config, args.json)
    setup_logging(config.log_level)
    if args.command == "check":
        return asyncio.run(_check(config))
    app = ClientApp(config, config_path=args.config, window=True)
    try:
        run_fast(run_until_signal(app.start, app.close))
    except WindowSecretError as exc:
        print(f"stc-client: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
