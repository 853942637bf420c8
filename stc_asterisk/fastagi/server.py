"""A small asyncio FastAGI server with timeouts and size limits.

panoramisk's FastAGI server spins on EOF in its header loop (see
docs/libraries.md); this one reads the header line by line under a deadline,
so a garbage, half-open or slow peer is closed without stalling the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Collection, Mapping, MutableMapping

from ..limits import RefusalLog

from .protocol import (
    MAX_HEADER_BYTES,
    AgiError,
    AgiHangup,
    AgiProtocolError,
    AgiReply,
    AgiReplyParser,
    AgiRequest,
    AgiRequestParser,
    AgiTimeout,
    check_command_text,
    quote_arg,
)

log = logging.getLogger(__name__)

AgiHandler = Callable[["AgiSession"], Awaitable[None]]

# One reply line (a GET FULL VARIABLE value included) must fit in this.
MAX_LINE_BYTES = 16 * 1024
_CLOSE_TIMEOUT = 1.0


class AgiConnectionClosed(AgiHangup):
    """Asterisk closed the connection (the AGI ended with the channel)."""


@dataclass
class AgiServerCounters:
    sessions: int = 0  # requests handed to a handler (unknown scripts included)
    refused: int = 0  # connections closed at once: max_sessions reached
    refused_sources: int = 0  # connections closed at once: not from an allowed address
    refused_per_source: int = 0  # connections closed at once: max_sessions_per_source reached
    errors: int = 0  # garbage, early EOF, timeouts, handler failures
    unknown_scripts: int = 0
    active: int = 0


class _SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[agi {self.extra['tag']}] {msg}", kwargs  # type: ignore[index]


class AgiSession:
    """One FastAGI connection after its header: send commands, read replies."""

    def __init__(
        self,
        request: AgiRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        command_timeout: float,
    ) -> None:
        self.request = request
        self._reader = reader
        self._writer = writer
        self._command_timeout = command_timeout
        self._hung_up = False
        self._broken = False
        self.log = _SessionLog(log, {"tag": f"{request.uniqueid or '?'} {request.channel or '?'}"})

    @property
    def hung_up(self) -> bool:
        return self._hung_up

    async def command(self, text: str) -> AgiReply:
        """Send one command line and return its 2xx reply.

        Raises AgiHangup (channel gone), AgiCommandError (5xx), AgiTimeout,
        AgiProtocolError (unreadable reply; the session is unusable afterwards).
        """
        check_command_text(text)
        if self._hung_up:
            raise AgiHangup(f"channel hung up, not sending {text.split(' ', 1)[0]}")
        if self._broken:
            raise AgiProtocolError("session unusable after an earlier error")
        parser = AgiReplyParser()
        try:
            async with asyncio.timeout(self._command_timeout):
                self._writer.write(text.encode("utf-8") + b"\n")
                await self._writer.drain()
                while True:
                    reply = parser.feed_line(await self._read_line())
                    if reply is not None:
                        return reply
        except TimeoutError:
            self._broken = True
            raise AgiTimeout(f"no reply to {text.split(' ', 1)[0]} within {self._command_timeout:g} s") from None
        except AgiHangup:
            self._hung_up = True
            raise
        except AgiProtocolError:
            self._broken = True
            raise
        except ConnectionError as exc:
            self._hung_up = True
            raise AgiConnectionClosed(f"connection lost: {exc}") from exc

    async def _read_line(self) -> str:
        try:
            raw = await self._reader.readline()
        except ValueError as exc:  # a line over the stream limit
            raise AgiProtocolError(f"reply line longer than {MAX_LINE_BYTES} bytes") from exc
        if not raw.endswith(b"\n"):
            raise AgiConnectionClosed("connection closed by Asterisk")
        return raw.decode("utf-8", errors="replace")

    async def set_variable(self, name: str, value: str) -> AgiReply:
        """`SET VARIABLE name value`; `name` may be a function such as `CALLERID(name)`."""
        if not name or any(ch in name for ch in ' \t"\\'):
            raise ValueError(f"bad channel variable name {name!r}")
        return await self.command(f"SET VARIABLE {name} {quote_arg(value)}")

    async def get_full_variable(self, expression: str) -> str | None:
        """Evaluate `expression` (e.g. `${PJSIP_HEADER(read,X-Foo)}`) on the channel.

        Asterisk answers `200 result=1 (value)`, with an empty value for an unset
        variable or a missing header; None means `result=0` (no channel).
        """
        reply = await self.command(f"GET FULL VARIABLE {quote_arg(expression)}")
        if reply.result != "1":
            return None
        return reply.data if reply.data is not None else ""

    async def hangup(self) -> None:
        """Hang up this session's channel; later commands raise AgiHangup without being sent."""
        await self.command("HANGUP")
        self._hung_up = True

    async def verbose(self, message: str, level: int = 1) -> None:
        """Write `message` to the Asterisk log at verbosity `level`."""
        await self.command(f"VERBOSE {quote_arg(message)} {int(level)}")

    async def close(self) -> None:
        await _close_writer(self._writer)


def _plain_address(address: str) -> str:
    """An IPv4-mapped IPv6 peer (a dual-stack listener) as its IPv4 address."""
    return address[7:] if address.lower().startswith("::ffff:") and "." in address else address


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()


class FastAgiServer:
    """Serves `handlers[script]` for `AGI(agi://host:port/script)`.

    Use `async with FastAgiServer(...) as server:` or `await start()` / `await close()`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handlers: Mapping[str, AgiHandler],
        *,
        header_timeout: float = 5.0,
        command_timeout: float = 5.0,
        max_sessions: int = 100,
        max_header_bytes: int = MAX_HEADER_BYTES,
        allowed_sources: Collection[str] | None = None,
        max_sessions_per_source: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        """`allowed_sources`: the only peer addresses served (None: any); `max_sessions_per_source`:
        sessions at once from one address (None: `max_sessions`); `reuse_port`: SO_REUSEPORT, so
        several stc-server processes on one machine share the dialplan's FastAGI port."""
        if header_timeout <= 0 or command_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_sessions < 1 or (max_sessions_per_source is not None and max_sessions_per_source < 1):
            raise ValueError("max_sessions and max_sessions_per_source must be at least 1")
        self._allowed = None if allowed_sources is None else {_plain_address(a) for a in allowed_sources}
        self._max_per_source = max_sessions_per_source or max_sessions
        self._by_source: Counter[str] = Counter()
        self._refusals = RefusalLog(log)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._handlers = dict(handlers)
        self._header_timeout = header_timeout
        self._command_timeout = command_timeout
        self._max_sessions = max_sessions
        self._max_header_bytes = max_header_bytes
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = AgiServerCounters()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port, limit=MAX_LINE_BYTES,
                                                  reuse_port=self._reuse_port or None)
        log.info("FastAGI listening on %s:%d (scripts: %s)", self._host, self.port, ", ".join(sorted(self._handlers)))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "FastAgiServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = _plain_address(str(peer[0])) if peer else "?"
        if self._allowed is not None and source not in self._allowed:
            self.counters.refused_sources += 1
            self._refusals.refuse("source", "FastAGI connection from %s refused: not an allowed Asterisk address", peer)
            writer.transport.abort()
            return
        if self.counters.active >= self._max_sessions:
            self.counters.refused += 1
            self._refusals.refuse("full", "FastAGI connection from %s refused: %d sessions already running", peer,
                                  self.counters.active)
            writer.transport.abort()
            return
        if self._by_source[source] >= self._max_per_source:
            self.counters.refused_per_source += 1
            self._refusals.refuse("per-source", "FastAGI connection from %s refused: %d sessions from %s already running",
                                  peer, self._by_source[source], source)
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self.counters.active += 1
        self._by_source[source] += 1
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            # close() cancels the sessions; ending normally keeps asyncio's stream
            # callback (3.11) from logging the cancellation as an error.
            log.debug("FastAGI session from %s cancelled by close()", peer)
        finally:
            self.counters.active -= 1
            self._by_source[source] -= 1
            if not self._by_source[source]:
                del self._by_source[source]
            self._tasks.discard(task)  # type: ignore[arg-type]
            await _close_writer(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object) -> None:
        try:
            request = await self._read_request(reader)
        except (AgiProtocolError, TimeoutError, ConnectionError) as exc:
            self.counters.errors += 1
            reason = f"no header within {self._header_timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("FastAGI connection from %s closed: %s", peer, reason)
            return
        session = AgiSession(request, reader, writer, command_timeout=self._command_timeout)
        self.counters.sessions += 1
        handler = self._handlers.get(request.script)
        if handler is None:
            self.counters.unknown_scripts += 1
            session.log.warning("unknown script %r: hanging up the channel", request.network_script)
            await self._hangup_quietly(session)
            return
        session.log.debug("script %s started", request.script)
        try:
            await handler(session)
        except AgiHangup as exc:
            session.log.info("channel gone during %s: %s", request.script, exc)
        except AgiError as exc:
            self.counters.errors += 1
            session.log.warning("%s failed: %s: %s", request.script, type(exc).__name__, exc)
        except Exception:
            self.counters.errors += 1
            session.log.exception("%s crashed; hanging up the channel", request.script)
            await self._hangup_quietly(session)

    async def _read_request(self, reader: asyncio.StreamReader) -> AgiRequest:
        parser = AgiRequestParser(max_bytes=self._max_header_bytes)
        async with asyncio.timeout(self._header_timeout):
            while True:
                try:
                    raw = await reader.readline()
                except ValueError as exc:
                    raise AgiProtocolError(f"header line longer than {MAX_LINE_BYTES} bytes") from exc
                if not raw.endswith(b"\n"):
                    started = bool(raw) or parser.bytes_seen > 0
                    raise AgiProtocolError(
                        "connection closed in the middle of the header" if started else "connection closed before the header"
                    )
                request = parser.feed(raw)
                if request is not None:
                    return request

    async def _hangup_quietly(self, session: AgiSession) -> None:
        try:
            await session.hangup()
        except AgiError as exc:
            session.log.debug("hang-up not confirmed: %s", exc)

