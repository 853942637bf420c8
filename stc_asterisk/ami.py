"""AMI over panoramisk: ConfBridge events in, ConfbridgeKick / ConfbridgeList out, up/down reported.

panoramisk's Manager reconnects by itself (every `reconnect_timeout` seconds
after a lost connection or a failed connect) and logs in again. This wrapper
adds what stc needs on top (see docs/libraries.md for the defects):
- `on_up()` after each successful login, `on_down(exc)` when the connection
  is lost or the login refused;
- a UTF-8 decoder that keeps a character split across two TCP segments
  (panoramisk decodes each segment alone and drops the pieces);
- timeouts on actions, and actions never replayed after a reconnection
  (panoramisk queues unanswered ones and resends them: a kick must not fire late);
- close() really stops: no reconnection scheduled afterwards.
"""

from __future__ import annotations

import asyncio
import codecs
import inspect
import logging
from typing import Any, Callable, Iterable

from panoramisk import Manager
from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, str]], Any]
UpCallback = Callable[[], Any]
DownCallback = Callable[[BaseException | None], Any]


class AmiUnavailable(Exception):
    """AMI is not connected, or did not answer in time."""


class AmiLoginRefused(Exception):
    """Asterisk refused the AMI username/secret."""


class _Utf8AmiProtocol(AMIProtocol):
    """Decodes the byte stream incrementally, then hands whole characters to panoramisk."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def data_received(self, data: bytes) -> None:
        text = self._decoder.decode(data)
        if text:
            super().data_received(text.encode("utf-8"))


def message_fields(message: Message) -> dict[str, str]:
    """A panoramisk Message as a plain dict (keys as Asterisk wrote them)."""
    return {key: value for key, value in message.items() if key != "content"}


def _report(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        result = callback(*args)
        if inspect.isawaitable(result):
            asyncio.ensure_future(result)
    except Exception:
        log.exception("AMI callback %r failed", callback)


class _Manager(Manager):  # type: ignore[misc]
    def __init__(self, owner: "AmiClient", **config: Any) -> None:
        super().__init__(**config)
        self._owner = owner
        self.reconnect_timeout = float(config["reconnect_timeout"])  # panoramisk truncates to int
        self.closing = False

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self.closing:
            return None
        return super().connect(*args, **kwargs)

    def login(self, future: "asyncio.Future[Message]") -> bool:
        try:
            ok = bool(super().login(future))
        except Exception as exc:  # the connection went away during login
            log.warning("AMI login did not complete: %s", exc)
            return False
        if ok:
            self._owner._set_up()
        else:
            message = future.result().get("Message", "")
            self._owner._set_down(AmiLoginRefused(f"AMI login refused: {message}"))
        return ok

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        # Fail, rather than replay after the reconnection, what was never answered.
        while self.awaiting_actions:
            action = self.awaiting_actions.popleft()
            if not action.future.done():
                action.future.set_exception(AmiUnavailable("AMI connection lost before the answer"))
        self._owner._set_down(exc)


class AmiClient:
    """An AMI connection; create and start() it inside the running loop."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        on_event: EventCallback,
        on_up: UpCallback | None = None,
        on_down: DownCallback | None = None,
        event_patterns: Iterable[str] = ("Confbridge*",),
        reconnect_timeout: float = 2.0,
        action_timeout: float = 5.0,
        ping_interval: int = 10,
    ) -> None:
        self._config = dict(
            host=host,
            port=port,
            username=username,
            secret=secret,
            reconnect_timeout=reconnect_timeout,
            ping_delay=ping_interval,
            ping_interval=ping_interval,
            protocol_factory=_Utf8AmiProtocol,
        )
        self._on_event = on_event
        self._on_up = on_up
        self._on_down = on_down
        self._patterns = tuple(event_patterns)
        self._action_timeout = action_timeout
        self._manager: _Manager | None = None
        self.up = False

    async def start(self) -> None:
        """Connect (and keep reconnecting); returns at once, `on_up` reports the login."""
        if self._manager is not None:
            raise RuntimeError("already started")
        self._manager = _Manager(self, loop=asyncio.get_running_loop(), **self._config)
        for pattern in self._patterns:
            self._manager.register_event(pattern, self._dispatch)
        self._manager.connect()

    async def close(self) -> None:
        manager = self._manager
        if manager is None:
            return
        manager.closing = True
        manager.close()
        was_up, self.up = self.up, False
        if was_up:
            _report(self._on_down, None)

    def _set_up(self) -> None:
        self.up = True
        log.info("AMI logged in to %s:%s", self._config["host"], self._config["port"])
        _report(self._on_up)

    def _set_down(self, exc: BaseException | None) -> None:
        if self._manager is not None and self._manager.closing:
            return
        was_up, self.up = self.up, False
        if isinstance(exc, AmiLoginRefused):
            log.error("%s", exc)
        elif was_up:
            log.warning("AMI connection lost: %s", exc or "closed by Asterisk")
        if was_up or isinstance(exc, AmiLoginRefused):
            _report(self._on_down, exc)

    def _dispatch(self, manager: Manager, message: Message) -> None:
        try:
            self._on_event(message_fields(message))
        except Exception:
            log.exception("AMI event handler failed on %s", message.get("Event"))

    async def action(self, fields: dict[str, str]) -> Message | list[Message]:
        """Send one action; its response (a list for actions that answer with an event list)."""
        manager = self._manager
        if manager is None or not self.up or manager.protocol is None:
            raise AmiUnavailable("AMI not connected")
        action = Action(dict(fields))
        future = manager.send_action(action)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self._action_timeout)
        except asyncio.TimeoutError:
            manager.protocol.responses.pop(action.id, None)
            raise AmiUnavailable(f"no answer to {fields.get('Action')} within {self._action_timeout:g} s") from None

    async def kick(self, room: str, channel: str) -> bool:
        """`ConfbridgeKick`: True if Asterisk kicked `channel` (a channel name, or `all`/`participants`) out of `room`."""
        response = await self.action({"Action": "ConfbridgeKick", "Conference": room, "Channel": channel})
        assert isinstance(response, Message)
        if response.success:
            log.info("kicked %s out of conference %s", channel, room)
            return True
        log.warning("ConfbridgeKick %s from %s refused: %s", channel, room, response.get("Message"))
        return False

    async def command(self, command: str) -> str:
        """The `Command` action: the CLI output as one text ("" if Asterisk refused the command)."""
        response = await self.action({"Action": "Command", "Command": command})
        message = response[0] if isinstance(response, list) else response
        if not message.success:
            log.debug("AMI Command %r refused: %s", command, message.get("Message"))
            return ""
        output = message.get("Output", "")
        # Asterisk repeats the Output header once per line; panoramisk gives a list for that.
        return "\n".join(output) if isinstance(output, list) else str(output)

    async def confbridge_list(self, room: str) -> list[dict[str, str]]:
        """`ConfbridgeList`: one dict per user (Channel, Uniqueid, CallerIDNum, CallerIDName, ...); [] if no such room."""
        response = await self.action({"Action": "ConfbridgeList", "Conference": room})
        if isinstance(response, Message):
            log.debug("ConfbridgeList %s: %s", room, response.get("Message"))
            return []
        return [message_fields(m) for m in response if m.get("Event") == "ConfbridgeList"]
