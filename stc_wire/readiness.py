"""Readiness-driven datagram I/O for the media relays (server and client), on any asyncio loop.

With a socket per flow at 50 packets a second, nearly every wake-up of the loop carries one
datagram per socket, and the stock asyncio loop spends about 18 us on each (a selector event, a
`Handle`, a transport, a protocol call: docs/libraries.md). So the media sockets are not asyncio
transports: they sit in one epoll set of our own, the loop watches only that epoll fd, and one
callback drains every ready socket (until it would block, at most `DRAIN_LIMIT` datagrams each)
through its handler, with no per-datagram objects beyond the bytes and the source address. This
works the same under asyncio and uvloop. Where `select.epoll` is missing, each socket gets
`loop.add_reader` (same draining, no shared set); callers that run on loops without readers
(Windows' proactor) keep asyncio datagram endpoints instead (`supported`).
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
from collections.abc import Callable

_EPOLLIN: int = getattr(select, "EPOLLIN", 1)  # Linux only; the epoll branch never runs elsewhere

__all__ = ["DRAIN_LIMIT", "SHARED_DRAIN_LIMIT", "DatagramReadiness", "Handler"]

logger = logging.getLogger(__name__)

RECV_SIZE = 2048  # above any RTP on an Ethernet path; libsrtp refuses more than 1500 anyway
# Datagrams read from one socket per wake-up, at most: under load a socket holds several, and
# reading them in one go saves a poll each; the bound keeps one flooded socket from starving
# the others (level-triggered: what is left is reported again on the next poll).
DRAIN_LIMIT = 16
# A socket that carries every call's traffic (the server's single media port) is read until it
# would block, bounded only so a flood cannot hold the loop: a per-socket bound that is fair among
# a call's own sockets would starve it against the other calls' sockets (measured: at 500 calls
# the single port lost 8-41 % at 16 per wake-up, docs/benchmarks.md).
SHARED_DRAIN_LIMIT = 1024
_MAX_PASSES_PER_TICK = 8  # with batching: drains per tick, at most
Handler = Callable[[bytes, tuple[str, int]], None]


class DatagramReadiness:
    """Runs a socket's handler on every datagram it holds each time the socket is readable.

    With `batch_interval` (seconds) the sockets are not watched by the loop at all: a timer
    drains every ready socket once per interval. Each wake-up of a process costs far more than
    relaying one datagram (tens of microseconds on a VM), so this bounds wake-ups to
    1/interval a second whatever the load, and adds up to one interval of delay (asyncio and
    uvloop timers have millisecond resolution).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, batch_interval: float | None = None) -> None:
        self._loop = loop
        self._table: dict[int, tuple[Callable[[int], tuple[bytes, tuple[str, int]]], Handler, int]] = {}
        self.wakeups = 0  # loop callbacks run: datagrams / wakeups is the batching achieved
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._interval = batch_interval
        self._timer: asyncio.TimerHandle | None = None
        if self._epoll is not None:
            if batch_interval is None:
                loop.add_reader(self._epoll.fileno(), self._dispatch)
            else:
                self._timer = loop.call_later(batch_interval, self._tick)

    @staticmethod
    def supported(loop: asyncio.AbstractEventLoop) -> bool:
        """True where this works: epoll, or a loop that watches sockets (not the proactor)."""
        if hasattr(select, "epoll"):
            return True
        return not type(loop).__name__.startswith("Proactor")

    def add(self, sock: socket.socket, handler: Handler, *, drain_limit: int = DRAIN_LIMIT) -> None:
        """Watch `sock`; each time it is readable, up to `drain_limit` datagrams go to `handler`."""
        if drain_limit < 1:
            raise ValueError("drain_limit must be at least 1")
        fd = sock.fileno()
        self._table[fd] = (sock.recvfrom, handler, drain_limit)
        if self._epoll is not None:
            self._epoll.register(fd, _EPOLLIN)
        else:
            self._loop.add_reader(fd, self._read_one, fd)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._table.pop(fd, None) is None:
            return
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            self._loop.remove_reader(fd)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._epoll is not None:
            if self._interval is None:
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        else:
            for fd in self._table:
                self._loop.remove_reader(fd)
        self._table.clear()

    def _dispatch(self) -> int:
        """Drains every ready socket; returns how many sockets were ready."""
        table = self._table
        self.wakeups += 1
        events = self._epoll.poll(0)  # type: ignore[union-attr]
        for fd, _ in events:
            entry = table.get(fd)
            if entry is not None:
                _drain(*entry)
        return len(events)

    def _tick(self) -> None:
        assert self._interval is not None
        self._timer = self._loop.call_later(self._interval, self._tick)
        wakeups = self.wakeups
        for _ in range(_MAX_PASSES_PER_TICK):  # a socket may hold more than DRAIN_LIMIT by now
            if not self._dispatch():
                break
        self.wakeups = wakeups + 1  # one wake-up, however many passes

    def _read_one(self, fd: int) -> None:
        self.wakeups += 1
        entry = self._table.get(fd)
        if entry is not None:
            _drain(*entry)


def _drain(recvfrom: Callable[[int], tuple[bytes, tuple[str, int]]], handler: Handler, limit: int) -> None:
    for _ in range(limit):
        try:
            data, source = recvfrom(RECV_SIZE)
        except BlockingIOError:  # drained
            return
        except OSError:  # an ICMP error queued on the socket: it is consumed, datagrams may follow
            continue
        try:
            handler(data, source)
        except Exception:  # a bug must not stop every other call's media
            logger.exception("media handler failed")
