"""The tunnel protocol state machine, with no I/O (bring your own socket).

Feed received bytes to `receive_data()`; it returns the messages the
application must act on and queues any automatic answers (the server's HELLO,
PONG). Take bytes to write from `data_to_send()`. A protocol violation raises
TunnelError after queueing a CLOSE carrying the reason, so the shell only has
to flush and hang up.
"""

from __future__ import annotations

import enum
from typing import Any, NoReturn

from .framing import FrameDecoder, FramingError
from .messages import (
    PROTOCOL_VERSIONS,
    Close,
    CloseCode,
    Hello,
    Message,
    MessageError,
    Ping,
    Pong,
    decode_message,
    encode_message,
)


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    AWAITING_HELLO = "awaiting-hello"
    OPEN = "open"
    CLOSED = "closed"


class TunnelError(Exception):
    """The tunnel must close. `reason` is a short code for logs; the message says why."""

    def __init__(self, reason: str, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = code


class TunnelConnection:
    def __init__(
        self,
        role: Role,
        *,
        capabilities: tuple[str, ...] = (),
        agent: str = "",
        versions: tuple[int, ...] = PROTOCOL_VERSIONS,
        peer_info: dict[str, Any] | None = None,
    ) -> None:
        self.role = role
        self.state = State.AWAITING_HELLO
        self.version: int | None = None
        self.peer_hello: Hello | None = None
        self.close_received: Close | None = None
        self._capabilities = capabilities
        self._agent = agent
        self._versions = versions
        self._peer_info = peer_info
        self._decoder = FrameDecoder()
        self._out = bytearray()

    # -- outgoing ---------------------------------------------------------
    def start(self) -> None:
        """The client speaks first with its HELLO; the server waits for it."""
        if self.role is Role.CLIENT:
            self._queue(Hello(self._versions, self._capabilities, self._agent))

    def send(self, message: Message) -> None:
        if self.state is not State.OPEN:
            raise TunnelError("not-open", f"cannot send {type(message).__name__}: tunnel is {self.state.value}")
        self._queue(message)

    def ping(self, opaque: bytes = b"") -> None:
        self.send(Ping(opaque))

    def close(self, code: int, reason: str) -> None:
        if self.state is not State.CLOSED:
            self._queue(Close(code, reason))
            self.state = State.CLOSED

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _queue(self, message: Message) -> None:
        self._out += encode_message(message)

    # -- incoming ---------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Message]:
        if self.state is State.CLOSED:
            return []
        try:
            frames = self._decoder.feed(data)
        except FramingError as exc:
            self._fail(exc.reason, str(exc))
        events: list[Message] = []
        for frame in frames:
            try:
                message = decode_message(frame)
            except MessageError as exc:
                self._fail(MessageError.reason, f"{frame.type.name}: {exc}")
            event = self._handle(message)
            if event is not None:
                events.append(event)
            if self.state is State.CLOSED:
                break
        return events

    def receive_eof(self) -> None:
        """The peer closed its side. Raises if it left a frame half-sent or never said CLOSE."""
        pending = self._decoder.pending
        was_closed = self.state is State.CLOSED
        self.state = State.CLOSED
        if pending:
            raise TunnelError("truncated-frame", f"connection ended inside a frame ({pending} bytes pending)")
        if not was_closed and self.close_received is None:
            raise TunnelError("eof", "connection ended without a CLOSE", CloseCode.NORMAL)

    def _handle(self, message: Message) -> Message | None:
        if self.state is State.AWAITING_HELLO and not isinstance(message, Close):
            # A CLOSE is the one frame allowed before HELLO: a refusal with its reason.
            if isinstance(message, Hello):
                return self._handle_hello(message)
            self._fail("no-hello", f"{type(message).__name__} frame before HELLO")
        if isinstance(message, Hello):
            self._fail("duplicate-hello", "second HELLO on an open tunnel")
        if isinstance(message, Ping):
            self._queue(Pong(message.opaque))
            return None
        if isinstance(message, Close):
            self.close_received = message
            self.state = State.CLOSED
        return message

    def _handle_hello(self, hello: Hello) -> Hello:
        common = set(hello.versions) & set(self._versions)
        if not common:
            self._fail(
                "unsupported-version",
                f"no common protocol version (peer offers {list(hello.versions)}, we speak {list(self._versions)})",
                CloseCode.UNSUPPORTED_VERSION,
            )
        self.version = max(common)
        if self.role is Role.SERVER:
            self._queue(Hello((self.version,), self._capabilities, self._agent, self._peer_info))
        elif len(hello.versions) != 1:
            self._fail("bad-hello", "server HELLO must name exactly one version")
        self.peer_hello = hello
        self.state = State.OPEN
        return hello

    def _fail(self, reason: str, message: str, code: int = CloseCode.PROTOCOL_ERROR) -> NoReturn:
        self.close(code, f"{reason}: {message}")
        raise TunnelError(reason, message, code)
