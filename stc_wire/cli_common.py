"""What every stc program does at start: read its config, set up logging, run until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import FrameType
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
    """Start, then wait for SIGINT/SIGTERM (Ctrl+C, Ctrl+Break on Windows) and stop cleanly (so
    sockets and calls are released)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    undo = catch_stop_signals(loop, done.set)
    try:
        await start()
        try:
            await done.wait()
        finally:
            await stop()
    finally:
        undo()


def stop_signals() -> tuple[signal.Signals, ...]:
    if sys.platform == "win32":
        return (signal.SIGINT, signal.SIGTERM, signal.SIGBREAK)
    return (signal.SIGINT, signal.SIGTERM)


def catch_stop_signals(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> Callable[[], None]:
    """Run `callback` in `loop` on a stop signal; returns what puts the old handlers back.

    The selector loops (POSIX) take signals themselves. Windows' proactor loop cannot
    (add_signal_handler raises NotImplementedError): there a plain signal handler hands over with
    call_soon_threadsafe, and the loop wakes for it through the wakeup fd it sets for signals.
    """
    sigs = stop_signals()
    previous = {sig: signal.getsignal(sig) for sig in sigs}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    try:
        for sig in sigs:
            loop.add_signal_handler(sig, callback)
    except NotImplementedError:
        pass
    else:
        def remove_loop_handlers() -> None:
            for sig in sigs:
                loop.remove_signal_handler(sig)
            restore()
        return remove_loop_handlers

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)

    for sig in sigs:
        signal.signal(sig, handler)
    return restore
