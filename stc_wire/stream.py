"""The asyncio shell around TunnelConnection: reads, writes, keep-alive, close.

Both stc-client and stc-server run one TunnelStream per tunnel. All protocol
decisions stay in TunnelConnection; this module only moves bytes and time.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .messages import Close, CloseCode, Hello, Message
from .tls import describe_ssl_error
from .tunnel import State, TunnelConnection, TunnelError

READ_SIZE = 65536


@dataclass(frozen=True)
class CloseInfo:
    code: int
    reason: str
    by_peer: bool


class TunnelStream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: TunnelConnection,
        *,
        keepalive_interval: float,
        keepalive_timeout: float,
        log: logging.LoggerAdapter[logging.Logger] | logging.Logger,
    ) -> None:
        self.connection = connection
        self._reader = reader
        self._writer = writer
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._log = log
        self._closed: CloseInfo | None = None
        self._write_lock = asyncio.Lock()

    @property
    def closed(self) -> CloseInfo | None:
        return self._closed

    async def handshake(self, timeout: float) -> Hello:
        """Exchange HELLOs; raises TunnelError on refusal, EOF or timeout."""
        self.connection.start()
        await self._flush()
        try:
            async with asyncio.timeout(timeout):
                while self.connection.state is State.AWAITING_HELLO:
                    data = await self._read()
                    if not data:
                        self.connection.receive_eof()
                    for message in self.connection.receive_data(data):
                        if isinstance(message, Close):
                            raise TunnelError("closed-by-peer", message.reason, message.code)
                    await self._flush()
        except TimeoutError:
            await self._abort(CloseCode.PROTOCOL_ERROR, "hello-timeout: no HELLO within the time allowed")
            raise TunnelError("hello-timeout", f"no HELLO within {timeout:g} s") from None
        except TunnelError as exc:
            await self._abort(exc.code, f"{exc.reason}: {exc}")
            raise
        assert self.connection.peer_hello is not None
        return self.connection.peer_hello

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise TunnelError("closed", f"tunnel closed ({self._closed.reason})")
        self.connection.send(message)
        await self._flush()

    async def run(self, on_message: Callable[[Message], Awaitable[None]]) -> CloseInfo:
        """Serve the open tunnel until it closes; returns how it closed. Never raises for peer faults."""
        keepalive = asyncio.create_task(self._keepalive())
        try:
            while self._closed is None:
                try:
                    async with asyncio.timeout(self._keepalive_timeout):
                        data = await self._read()
                except TimeoutError:
                    await self._abort(CloseCode.KEEPALIVE_TIMEOUT, f"keepalive-timeout: nothing received for {self._keepalive_timeout:g} s")
                    break
                except TunnelError as exc:
                    await self._abort(exc.code, f"{exc.reason}: {exc}", by_peer=True)
                    break
                try:
                    if not data:
                        self.connection.receive_eof()
                        await self._abort(CloseCode.NORMAL, "peer closed the connection")
                        break
                    messages = self.connection.receive_data(data)
                except TunnelError as exc:
                    await self._abort(exc.code, f"{exc.reason}: {exc}", by_peer=exc.reason == "eof")
                    break
                await self._flush()  # automatic answers (PONG)
                for message in messages:
                    if isinstance(message, Close):
                        await self._abort(message.code, message.reason, by_peer=True)
                        break
                    await on_message(message)
        finally:
            keepalive.cancel()
        assert self._closed is not None
        return self._closed

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "closing") -> None:
        if self._closed is None and self.connection.state is not State.CLOSED:
            self.connection.close(code, reason)
        await self._abort(code, reason)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_interval)
            if self.connection.state is not State.OPEN:
                return
            self.connection.ping()
            await self._flush()

    async def _read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except ssl.SSLError as exc:
            # A TLS alert from the peer (for instance a refused certificate
            # under TLS 1.3, reported only after our handshake "succeeded").
            raise TunnelError("tls-alert", describe_ssl_error(exc)) from None
        except (ConnectionError, OSError) as exc:
            raise TunnelError("connection-lost", str(exc) or type(exc).__name__) from None

    async def _flush(self) -> None:
        data = self.connection.data_to_send()
        if not data or self._writer.is_closing():
            return
        async with self._write_lock:
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                self._log.debug("write failed: %s", exc)

    async def _abort(self, code: int, reason: str, *, by_peer: bool = False) -> None:
        if self._closed is None:
            self._closed = CloseInfo(code, reason, by_peer)
        await self._flush()  # the CLOSE frame, if one was queued
        if not self._writer.is_closing():
            self._writer.close()
        try:
            async with asyncio.timeout(2):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
            pass
