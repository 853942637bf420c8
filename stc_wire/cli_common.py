"""What every stc program does at start: read its config, set up logging, run until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TypeVar

from .config import ConfigError, load_config

T = TypeVar("T")


def load_or_exit(program: str, cls: type[T], path: Path | None) -> T:
    try:
        return load_config(cls, path)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_fast(main: Coroutine[object, object, T]) -> T:
    """`asyncio.run`, on uvloop when it is installed (`pip install 'stc[fast]'`): each wake-up
    of the loop costs less, and a client's media is mostly wake-ups (docs/benchmarks.md)."""
    try:
        import uvloop
    except ImportError:  # not installed, or no build for this platform (Windows)
        return asyncio.run(main)
    return uvloop.run(main)  # type: ignore[no-any-return]


async def run_until_signal(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    """Start, then wait for SIGINT/SIGTERM and stop cleanly (so sockets and calls are released)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await start()
    try:
        await done.wait()
    finally:
        await stop()
