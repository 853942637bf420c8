"""A thin ARI client on aiohttp: a few REST calls and the `/ari/events` websocket.

ARI cannot control ConfBridge's bridges (they are not in a Stasis application),
but with `subscribeAll=true` it reports them; stc only reads bridges and
channels and hangs channels up.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Union

import aiohttp
from yarl import URL

log = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], Union[None, Awaitable[None]]]
ConnectCallback = Callable[[], Union[None, Awaitable[None]]]
DisconnectCallback = Callable[[Union[BaseException, None]], Union[None, Awaitable[None]]]

_MAX_EVENT_BYTES = 4 * 1024 * 1024


class AriError(Exception):
    """An ARI request failed (HTTP status other than 2xx, or a body that is not the expected JSON)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class AriCounters:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    events: int = 0
    bad_messages: int = 0
    callback_errors: int = 0


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class AriClient:
    """`AriClient("http://127.0.0.1:8088", user, password, app)`; use inside a running loop."""

    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        app: str,
        *,
        request_timeout: float = 5.0,
        heartbeat: float | None = 20.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        if not app:
            raise ValueError("an ARI application name is needed")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self._base = URL(base_url.rstrip("/"))
        self._auth = aiohttp.encode_basic_auth(user, password)
        self.app = app
        self._request_timeout = request_timeout
        self._heartbeat = heartbeat
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._stop = asyncio.Event()
        self._closing: asyncio.Task[bool] | None = None
        self.connected = False
        self.counters = AriCounters()

    # --- lifecycle ----------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": self._auth},
                # Bounds the REST calls and the websocket handshake, not the websocket's life.
                timeout=aiohttp.ClientTimeout(total=self._request_timeout),
            )
        return self._session

    async def close(self) -> None:
        """Stop run() and close the HTTP session."""
        self.stop()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "AriClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def stop(self) -> None:
        """Make run() return after the current step (the websocket is closed)."""
        self._stop.set()
        if self._ws is not None and not self._ws.closed:
            self._closing = asyncio.get_running_loop().create_task(self._ws.close())

    # --- REST ---------------------------------------------------------------------

    def _url(self, path: str) -> URL:
        return self._base.with_path(self._base.path.rstrip("/") + path)

    async def _get_list(self, path: str) -> list[dict[str, Any]]:
        async with self._http().get(self._url(path)) as response:
            body = await self._json(response, path)
        if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
            raise AriError(f"GET {path}: expected a JSON list of objects")
        return body

    async def _json(self, response: aiohttp.ClientResponse, what: str) -> Any:
        if response.status // 100 != 2:
            text = (await response.text())[:200]
            raise AriError(f"{what}: HTTP {response.status} {text}", response.status)
        try:
            return await response.json(content_type=None)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AriError(f"{what}: body is not JSON: {exc}", response.status) from None

    async def get_bridges(self) -> list[dict[str, Any]]:
        """`GET /ari/bridges`: every bridge, ConfBridge's included."""
        return await self._get_list("/ari/bridges")

    async def get_channels(self) -> list[dict[str, Any]]:
        """`GET /ari/channels`."""
        return await self._get_list("/ari/channels")

    async def hangup_channel(self, channel_id: str, reason: str = "normal") -> bool:
        """`DELETE /ari/channels/{id}?reason=...`; False if the channel no longer exists."""
        if not channel_id or "/" in channel_id:
            raise ValueError(f"bad channel id {channel_id!r}")
        url = self._url(f"/ari/channels/{channel_id}").with_query(reason=reason)
        async with self._http().delete(url) as response:
            if response.status == 404:
                return False
            if response.status // 100 != 2:
                raise AriError(f"hang-up of {channel_id}: HTTP {response.status}", response.status)
        return True

    async def stop_recording(self, name: str) -> bool:
        """`POST /ari/recordings/live/{name}/stop`; False if no such live recording."""
        if not name or "/" in name:
            raise ValueError(f"bad recording name {name!r}")
        async with self._http().post(self._url(f"/ari/recordings/live/{name}/stop")) as response:
            if response.status == 404:
                return False
            if response.status // 100 != 2:
                raise AriError(f"stop of recording {name}: HTTP {response.status}", response.status)
        return True

    # --- events -------------------------------------------------------------------

    async def _connect_ws(self) -> aiohttp.ClientWebSocketResponse:
        url = self._url("/ari/events").with_query(app=self.app, subscribeAll="true")
        return await self._http().ws_connect(
            url,
            heartbeat=self._heartbeat,
            max_msg_size=_MAX_EVENT_BYTES,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._request_timeout),
        )

    async def _messages(self, ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    event = json.loads(message.data)
                except json.JSONDecodeError:
                    self.counters.bad_messages += 1
                    log.debug("ARI message that is not JSON ignored")
                    continue
                if not isinstance(event, dict):
                    self.counters.bad_messages += 1
                    log.debug("ARI message that is not an object ignored")
                    continue
                self.counters.events += 1
                yield event
            elif message.type == aiohttp.WSMsgType.ERROR:
                raise aiohttp.ClientError(f"websocket error: {ws.exception()}")
            else:
                self.counters.bad_messages += 1
                log.debug("ARI websocket message of type %s ignored", message.type)

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events of one websocket connection; ends when Asterisk closes it."""
        ws = await self._connect_ws()
        self._ws = ws
        try:
            async for event in self._messages(ws):
                yield event
        finally:
            await ws.close()
            self._ws = None

    async def run(
        self,
        on_event: EventCallback,
        on_connect: ConnectCallback,
        on_disconnect: DisconnectCallback | None = None,
    ) -> None:
        """Follow the event stream until stop(): reconnect with capped exponential back-off.

        After each connect, `on_connect()` runs before any event is delivered (the
        websocket buffers meanwhile): rebuild the state there. `on_disconnect(exc)`
        runs when an established connection ends. A callback that raises is logged;
        one in on_connect counts as a failed connection.
        """
        delay = self._backoff_initial
        self._stop.clear()
        while not self._stop.is_set():
            try:
                ws = await self._connect_ws()
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                self.counters.connect_failures += 1
                log.warning("ARI connect to %s failed: %s; retrying in %.1f s", self._base, _describe(exc), delay)
                await self._pause(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            self._ws = ws
            self.connected = True
            self.counters.connects += 1
            log.info("ARI events connected (%s, app %s)", self._base, self.app)
            failure: BaseException | None = None
            try:
                await _call(on_connect)
                delay = self._backoff_initial
                async for event in self._messages(ws):
                    try:
                        await _call(on_event, event)
                    except Exception:
                        self.counters.callback_errors += 1
                        log.exception("ARI event handler failed on %s", event.get("type"))
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, AriError) as exc:
                failure = exc
            except Exception as exc:  # on_connect's own bug: log it, reconnect
                failure = exc
                self.counters.callback_errors += 1
                log.exception("ARI on_connect failed")
            finally:
                await ws.close()
                self._ws = None
                self.connected = False
            self.counters.disconnects += 1
            if not self._stop.is_set():
                log.warning("ARI events disconnected: %s; reconnecting in %.1f s", _describe(failure), delay)
            if on_disconnect is not None:
                try:
                    await _call(on_disconnect, failure)
                except Exception:
                    self.counters.callback_errors += 1
                    log.exception("ARI on_disconnect failed")
            await self._pause(delay)
            delay = min(delay * 2, self._backoff_max)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            pass


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "closed by Asterisk"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status} {exc.message}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
