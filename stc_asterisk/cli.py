"""`stc-server --config PATH`: the tunnel end beside Asterisk."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from stc_wire.cli_common import load_or_exit, run_until_signal, setup_logging
from stc_wire.config import ConfigError, load_config
from stc_wire.tls import TlsSetupError

from .app import ServerApp
from .config import ServerConfig
from .crl import CrlFetchError
from .supervise import log_failure

log = logging.getLogger("stc_asterisk")
TOOLS = ("audit", "check")


def tools(argv: list[str]) -> int:
    """The operator's commands beside the server: `audit ...` (and `check`)."""
    from . import audit_cli

    parser = argparse.ArgumentParser(prog="stc-server", description="stc server tools")
    sub = parser.add_subparsers(dest="command", required=True)
    audit_cli.add_parser(sub)
    check = sub.add_parser("check", help="check the settings against the live Asterisk (AMI, ARI, modules, endpoint, "
                                         "dialplan, FastAGI); each failure says what to change where")
    check.add_argument("--config", type=Path, help="TOML settings file (default: built-in demo settings)")
    args = parser.parse_args(argv)
    if args.command == "check":
        return run_check(args.config)
    return audit_cli.run(args)


def run_check(path: Path | None) -> int:
    from .check import run_checks

    config = load_or_exit("stc-server check", ServerConfig, path)
    results = asyncio.run(run_checks(config, config_name=str(path) if path else "server.toml"))
    for result in results:
        print(result.line())
    failed = [r for r in results if not r.ok]
    print(f"{len(failed)} problem(s) found" if failed else "all checks passed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        return tools(argv)
    parser = argparse.ArgumentParser(prog="stc-server", description="stc server: TLS tunnels, SIP relay and SRTP media in front of Asterisk",
                                     epilog="Tools: stc-server audit verify|show FILE... (see stc-server audit --help)")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: built-in demo settings)")
    args = parser.parse_args(argv)
    config = load_or_exit("stc-server", ServerConfig, args.config)
    setup_logging(config.log_level)
    app = ServerApp(config)

    def reload() -> None:
        try:
            fresh = load_config(ServerConfig, args.config) if args.config else None
        except ConfigError as exc:
            log.error("reload: %s (nothing changed)", exc)
            return
        asyncio.ensure_future(app.reload(fresh)).add_done_callback(log_failure(log, "reload on SIGHUP"))

    async def start() -> None:
        await app.start()
        if sys.platform != "win32":  # stc-server runs beside Asterisk; SIGHUP is POSIX
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    try:
        # The stock loop, not uvloop: the tunnel server upgrades accepted connections with
        # start_tls, and under uvloop a ClientHello that arrives before that upgrade was left
        # unanswered (the compose test's first client hung for tens of seconds). The media relay
        # runs its own epoll set either way.
        asyncio.run(run_until_signal(start, app.close))
    except (TlsSetupError, FileNotFoundError, CrlFetchError) as exc:
        print(f"stc-server: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"stc-server: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
