"""The asyncio shell around TunnelConnection: reads, writes, keep-alive, close.

Both stc-client and stc-server run one TunnelStream per tunnel. All protocol
decisions stay in TunnelConnection; this module only moves bytes and time.

Sending never waits on the peer: frames go to a bounded outgoing buffer that one
writer task per tunnel hands to the socket. A peer that lets the buffer fill, or
does not take a write within `write_timeout`, is closed as "too slow", so one
stalled reader cannot hold up whoever pushes to many tunnels.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .messages import Close, CloseCode, Hello, Message
from .tls import describe_ssl_error
from .tunnel import State, TunnelConnection, TunnelError

READ_SIZE = 65536
SEND_QUEUE_BYTES = 1024 * 1024  # waiting for the socket, per tunnel; far above any burst of SIP and rosters
WRITE_TIMEOUT = 5.0
TOO_SLOW = "too-slow"


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
        send_queue_bytes: int = SEND_QUEUE_BYTES,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self.connection = connection
        self._reader = reader
        self._writer = writer
        self._keepalive_interval = keepalive_interval
        self._keepalive_timeout = keepalive_timeout
        self._log = log
        self._closed: CloseInfo | None = None
        self._send_queue_bytes = send_queue_bytes
        self._write_timeout = write_timeout
        self._outgoing: deque[bytes] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> CloseInfo | None:
        return self._closed

    async def handshake(self, timeout: float) -> Hello:
        """Exchange HELLOs; raises TunnelError on refusal, EOF or timeout."""
        self.connection.start()
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                while self.connection.state is State.AWAITING_HELLO:
                    data = await self._read()
                    if not data:
                        self.connection.receive_eof()
                    for message in self.connection.receive_data(data):
                        if isinstance(message, Close):
                            raise TunnelError("closed-by-peer", message.reason, message.code)
                    self._flush()
        except TimeoutError:
            await self._abort(CloseCode.PROTOCOL_ERROR, "hello-timeout: no HELLO within the time allowed")
            raise TunnelError("hello-timeout", f"no HELLO within {timeout:g} s") from None
        except TunnelError as exc:
            await self._abort(exc.code, f"{exc.reason}: {exc}")
            raise
        assert self.connection.peer_hello is not None
        return self.connection.peer_hello

    async def send(self, message: Message) -> None:
        self.send_nowait(message)

    def send_nowait(self, message: Message) -> None:
        """Queue `message` for the writer task; raises TunnelError if the tunnel is closed (or
        is closed now, its peer too slow to take what is already queued)."""
        if self._closed is not None:
            raise TunnelError("closed", f"tunnel closed ({self._closed.reason})")
        self.connection.send(message)
        self._flush()
        if self._closed is not None:
            raise TunnelError("closed", f"tunnel closed ({self._closed.reason})")

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
                self._flush()  # automatic answers (PONG)
                for message in messages:
                    if self._closed is not None:  # closed meanwhile (a peer too slow to read)
                        break
                    if isinstance(message, Close):
                        await self._abort(message.code, message.reason, by_peer=True)
                        break
                    await on_message(message)
        finally:
            keepalive.cancel()
            if self._closed is None and self._writer_task is not None:  # on_message raised: the caller closes
                self._writer_task.cancel()
        assert self._closed is not None
        return self._closed

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "closing") -> None:
        if self._closed is None and self.connection.state is not State.CLOSED:
            self.connection.close(code, reason)
        await self._abort(code, reason)

    def drop(self) -> None:
        """Abort the connection at once (nothing more is sent or awaited)."""
        if self._closed is None:
            self._closed = CloseInfo(CloseCode.NORMAL, "dropped", False)
        self._writer.transport.abort()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self._keepalive_interval)
            if self.connection.state is not State.OPEN:
                return
            self.connection.ping()
            self._flush()

    async def _read(self) -> bytes:
        try:
            return await self._reader.read(READ_SIZE)
        except ssl.SSLError as exc:
            # A TLS alert from the peer (for instance a refused certificate
            # under TLS 1.3, reported only after our handshake "succeeded").
            raise TunnelError("tls-alert", describe_ssl_error(exc)) from None
        except (ConnectionError, OSError) as exc:
            raise TunnelError("connection-lost", str(exc) or type(exc).__name__) from None

    def _flush(self) -> None:
        """Move what the connection has to send into the outgoing buffer (never waits)."""
        data = self.connection.data_to_send()
        if not data or self._writer.is_closing():
            return
        if self._queued + len(data) > self._send_queue_bytes:
            self._too_slow(f"more than {self._send_queue_bytes} bytes waiting to be sent")
            return
        self._outgoing.append(data)
        self._queued += len(data)
        self._wakeup.set()
        if self._writer_task is None:
            self._writer_task = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._outgoing:
                continue
            data = b"".join(self._outgoing)
            self._outgoing.clear()
            self._queued = 0
            try:
                async with asyncio.timeout(self._write_timeout):
                    self._writer.write(data)
                    await self._writer.drain()
            except TimeoutError:
                self._too_slow(f"a write was not taken within {self._write_timeout:g} s")
                return
            except (ConnectionError, OSError, ssl.SSLError) as exc:
                self._log.debug("write failed: %s", exc)
                return

    def _too_slow(self, why: str) -> None:
        """Drop the connection at once: no goodbye, since the peer is not taking data anyway."""
        if self._closed is None:
            self._closed = CloseInfo(CloseCode.POLICY, f"{TOO_SLOW}: {why}", False)
            self._log.warning("closing a tunnel whose peer is too slow: %s", why)
        self._outgoing.clear()
        self._queued = 0
        self._writer.transport.abort()

    async def _abort(self, code: int, reason: str, *, by_peer: bool = False) -> None:
        if self._closed is None:
            self._closed = CloseInfo(code, reason, by_peer)
        self._flush()  # the CLOSE frame, if one was queued
        if self._writer_task is not None and self._writer_task is not asyncio.current_task():
            self._writer_task.cancel()  # what it took is in the transport's buffer already
        if self._outgoing and not self._writer.is_closing():
            self._writer.write(b"".join(self._outgoing))  # close() below sends it before closing
        self._outgoing.clear()
        self._queued = 0
        if code == CloseCode.KEEPALIVE_TIMEOUT:
            self._writer.transport.abort()  # the path is dead: waiting for a goodbye only delays what follows
            return
        if not self._writer.is_closing():
            self._writer.close()
        try:
            async with asyncio.timeout(2):
                await self._writer.wait_closed()
        except TimeoutError:
            self._writer.transport.abort()  # a peer that does not take the goodbye either
        except (ConnectionError, OSError, ssl.SSLError):
            pass
