"""`stc-server --config PATH`: the tunnel end beside Asterisk."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stc_wire.cli_common import load_or_exit, run_fast, run_until_signal, setup_logging
from stc_wire.tls import TlsSetupError

from .app import ServerApp
from .config import ServerConfig

log = logging.getLogger("stc_asterisk")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stc-server", description="stc server: TLS tunnels, SIP relay and SRTP media in front of Asterisk")
    parser.add_argument("--config", type=Path, help="TOML settings file (default: built-in demo settings)")
    args = parser.parse_args(argv)
    config = load_or_exit("stc-server", ServerConfig, args.config)
    setup_logging(config.log_level)
    app = ServerApp(config)
    try:
        run_fast(run_until_signal(app.start, app.close))
    except (TlsSetupError, FileNotFoundError) as exc:
        print(f"stc-server: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"stc-server: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
