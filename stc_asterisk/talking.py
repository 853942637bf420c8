"""Who talks, told at most a few times a second per room.

ConfBridge sends a ConfbridgeTalking event each time someone starts or stops talking: in a busy
room several a second. Each becomes at most one small signed talking update per room per
`interval`: the first change goes out at once, the ones that follow within the interval are
folded into one update sent when it ends, with the state of that moment (the last state wins).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

log = logging.getLogger(__name__)

# At most one talking update per room per this many seconds.
TALKING_INTERVAL = 0.3


class TalkingCoalescer:
    def __init__(self, send: Callable[[str], None], *, interval: float = TALKING_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}  # room -> when its last update went out
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def changed(self, room: str) -> None:
        """The room's talkers changed: send now, or at the end of the current interval."""
        if room in self._timers:
            return  # an update is already due; it will carry this change too
        wait = self._last.get(room, float("-inf")) + self.interval - self._clock()
        if wait <= 0:
            self._fire(room)
        else:
            self._timers[room] = asyncio.get_running_loop().call_later(wait, self._fire, room)

    def _fire(self, room: str) -> None:
        self._timers.pop(room, None)
        self._last[room] = self._clock()
        try:
            self._send(room)
        except Exception:  # one room's failure must not stop the others' updates
            log.exception("talking update for room %s failed", room)

    def forget(self, room: str) -> None:
        timer = self._timers.pop(room, None)
        if timer is not None:
            timer.cancel()
        self._last.pop(room, None)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
