"""Long-lived tasks that restart after an unexpected exception instead of ending silently."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

STABLE_AFTER = 60.0  # a component that ran this long before failing starts again at once


async def supervise(name: str, run: Callable[[], Awaitable[None]], log: logging.Logger, *,
                    min_delay: float = 0.5, max_delay: float = 30.0) -> None:
    """Run `run()` until it returns; each time it raises, log the traceback and start it again
    after a delay that doubles while it keeps failing. Cancellation ends it."""
    loop = asyncio.get_running_loop()
    delay = min_delay
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if loop.time() - started > STABLE_AFTER:
                delay = min_delay
            log.exception("%s failed; starting it again in %g s", name, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)


def log_failure(log: logging.Logger, name: str) -> Callable[["asyncio.Task[Any]"], None]:
    """A done-callback for short tasks nobody awaits: their exception is logged with its traceback, not lost."""
    def done(task: "asyncio.Task[Any]") -> None:
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            log.error("%s failed", name, exc_info=exc)
    return done
