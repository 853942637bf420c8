"""AriClient against a small ARI look-alike (aiohttp server on loopback), and the AMI wrapper
against a small AMI look-alike (a TCP server speaking Asterisk 22's AMI framing)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from stc_asterisk.ami import AmiClient, AmiUnavailable
from stc_asterisk.ari import AriClient, AriError
from stc_asterisk.conference import ConferenceState

ZOE = "Zoë Ålice-Øster"
USER, PASSWORD, APP = "stc", "s3cret:with colon", "stc"
BRIDGE = "6a1b0c5e-7f3d-4e1a-9d2b-3c4d5e6f7a80"


def bridge(channels: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"id": BRIDGE, "technology": "softmix", "bridge_type": "mixing", "bridge_class": "base",
            "creator": "ConfBridge", "name": "1000", "channels": list(channels),
            "creationtime": "2026-05-01T10:00:00.000+0000", "video_mode": "none"}


def channel(uniqueid: str, name: str, caller: str = "") -> dict[str, Any]:
    return {"id": uniqueid, "name": name, "state": "Up", "caller": {"name": caller, "number": caller},
            "connected": {"name": "", "number": ""}, "accountcode": "",
            "dialplan": {"context": "stc-conf", "exten": "1000", "priority": 3, "app_name": "ConfBridge", "app_data": "1000"},
            "creationtime": "2026-05-01T10:00:01.000+0000", "language": "en"}


def event(kind: str, **body: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": "2026-05-01T10:00:02.000+0000", "application": APP, **body}


@dataclass
class FakeAri:
    """REST + websocket, as far as stc uses them. `scripts[n]` is what the n-th websocket gets."""

    bridges: list[dict[str, Any]] = field(default_factory=list)
    channels: list[dict[str, Any]] = field(default_factory=list)
    scripts: list[list[Any]] = field(default_factory=list)
    ws_connects: int = 0
    deleted: list[tuple[str, str]] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            if request.headers.get("Authorization") != aiohttp.encode_basic_auth(USER, PASSWORD):
                return web.json_response({"message": "Authentication required"}, status=401)
            return await handler(request)

        app = web.Application(middlewares=[auth])
        async def bridges(request: web.Request) -> web.Response:
            return web.json_response(self.bridges)

        async def channels(request: web.Request) -> web.Response:
            return web.json_response(self.channels)

        app.router.add_get("/ari/bridges", bridges)
        app.router.add_get("/ari/channels", channels)
        app.router.add_delete("/ari/channels/{id}", self.delete_channel)
        app.router.add_get("/ari/events", self.events)
        return app

    async def delete_channel(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["id"]
        if not any(c["id"] == channel_id for c in self.channels):
            return web.json_response({"message": "Channel not found"}, status=404)
        self.channels = [c for c in self.channels if c["id"] != channel_id]
        self.deleted.append((channel_id, request.query.get("reason", "")))
        return web.Response(status=204)

    async def events(self, request: web.Request) -> web.WebSocketResponse:
        self.queries.append(dict(request.query))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        script = self.scripts[self.ws_connects] if self.ws_connects < len(self.scripts) else ["hold"]
        self.ws_connects += 1
        for step in script:
            if step == "hold":
                async for _ in ws:  # until the client closes (answering its close frame)
                    pass
            elif isinstance(step, (int, float)):
                await asyncio.sleep(step)
            elif isinstance(step, bytes):
                await ws.send_bytes(step)
            elif isinstance(step, str):
                await ws.send_str(step)
            else:
                await ws.send_json(step)
        await ws.close()
        return ws


@pytest.fixture
async def fake_ari() -> AsyncIterator[tuple[FakeAri, str]]:
    fake = FakeAri()
    runner = web.AppRunner(fake.app(), handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def wait_for(condition: Any, limit: float = 3.0) -> None:
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)


async def test_rest_calls(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    fake.bridges = [bridge(("1.1",))]
    fake.channels = [channel("1.1", "PJSIP/stc-00000001", ZOE)]
    async with AriClient(url, USER, PASSWORD, APP) as client:
        assert await client.get_bridges() == fake.bridges
        channels = await client.get_channels()
        assert channels[0]["caller"]["name"] == ZOE
        assert await client.hangup_channel("1.1", "no_answer") is True
        assert await client.hangup_channel("1.1") is False
    assert fake.deleted == [("1.1", "no_answer")]


async def test_wrong_password_is_an_ari_error(fake_ari: tuple[FakeAri, str]) -> None:
    _, url = fake_ari
    async with AriClient(url, USER, "wrong", APP) as client:
        with pytest.raises(AriError) as info:
            await client.get_bridges()
    assert info.value.status == 401


async def test_events_iterates_one_connection_until_asterisk_closes_it(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    fake.scripts = [[event("BridgeCreated", bridge=bridge()), "{broken", event("BridgeDestroyed", bridge=bridge())]]
    async with AriClient(url, USER, PASSWORD, APP) as client:
        async with asyncio.timeout(3):
            got = [ev["type"] async for ev in client.events()]
    assert got == ["BridgeCreated", "BridgeDestroyed"]
    assert client.counters.bad_messages == 1


async def test_run_reconnects_and_rebuilds_after_each_connect(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    alice = channel("1.1", "PJSIP/stc-00000001", "alice")
    bob = channel("1.2", "PJSIP/stc-00000002", ZOE)
    fake.bridges = [bridge(("1.1",))]
    fake.channels = [alice]
    fake.scripts = [
        ["not json", b"\x00binary", json.dumps([1, 2]), event("ChannelLeftBridge", bridge=bridge(), channel=alice)],
        [event("ChannelEnteredBridge", bridge=bridge(("1.2",)), channel=bob), "hold"],
    ]
    state = ConferenceState()
    log: list[str] = []
    client = AriClient(url, USER, PASSWORD, APP, backoff_initial=0.05, backoff_max=0.2)

    async def on_connect() -> None:
        log.append("connect")
        state.rebuild(await client.get_bridges(), await client.get_channels())
        # What Asterisk holds by the time of the second connection.
        fake.bridges, fake.channels = [bridge()], []

    def on_event(ev: dict[str, Any]) -> None:
        log.append(ev["type"])
        state.apply_ari(ev)

    def on_disconnect(exc: BaseException | None) -> None:
        log.append(f"disconnect:{exc}")
        state.set_unknown()

    task = asyncio.create_task(client.run(on_event, on_connect, on_disconnect))
    try:
        await wait_for(lambda: "ChannelEnteredBridge" in log)
        assert log == ["connect", "ChannelLeftBridge", "disconnect:None", "connect", "ChannelEnteredBridge"]
        assert [e.channel_id for e in state.entries("1000")] == ["1.2"]
        assert state.entries("1000")[0].caller_id == f'"{ZOE}" <{ZOE}>'
        assert client.connected and client.counters.connects == 2
        assert client.counters.bad_messages == 3
        assert fake.queries[0] == {"app": APP, "subscribeAll": "true"}
    finally:
        await client.close()
        async with asyncio.timeout(2):
            await task
    assert not client.connected


async def test_the_websocket_outlives_the_request_timeout(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    fake.scripts = [[0.6, event("BridgeCreated", bridge=bridge()), "hold"]]
    got: list[str] = []
    client = AriClient(url, USER, PASSWORD, APP, request_timeout=0.3, heartbeat=None)
    task = asyncio.create_task(client.run(lambda ev: got.append(ev["type"]), lambda: None))
    try:
        await wait_for(lambda: got == ["BridgeCreated"])
        assert client.counters.connects == 1
    finally:
        await client.close()
        await task


async def test_event_handler_errors_do_not_stop_the_stream(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    fake.scripts = [[event("First"), event("Second"), "hold"]]
    got: list[str] = []

    def on_event(ev: dict[str, Any]) -> None:
        got.append(ev["type"])
        if ev["type"] == "First":
            raise RuntimeError("bug")

    client = AriClient(url, USER, PASSWORD, APP)
    task = asyncio.create_task(client.run(on_event, lambda: None))
    try:
        await wait_for(lambda: got == ["First", "Second"])
        assert client.counters.callback_errors == 1
    finally:
        await client.close()
        await task


async def test_failing_rebuild_counts_as_a_failed_connection(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    connects: list[int] = []
    disconnects: list[str] = []

    def on_connect() -> None:
        connects.append(1)
        if len(connects) == 1:
            raise AriError("GET /ari/bridges: HTTP 500", 500)

    client = AriClient(url, USER, PASSWORD, APP, backoff_initial=0.05)
    task = asyncio.create_task(client.run(lambda ev: None, on_connect, lambda exc: disconnects.append(str(exc))))
    try:
        await wait_for(lambda: len(connects) == 2)
        assert disconnects == ["GET /ari/bridges: HTTP 500"]
    finally:
        await client.close()
        await task


async def test_backoff_grows_and_is_capped_while_asterisk_is_down() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on `port` any more
    client = AriClient(f"http://127.0.0.1:{port}", USER, PASSWORD, APP, backoff_initial=0.05, backoff_max=0.2)
    connects: list[int] = []
    task = asyncio.create_task(client.run(lambda ev: None, lambda: connects.append(1)))
    await asyncio.sleep(1.0)
    await client.close()
    async with asyncio.timeout(1):
        await task
    # Pauses 0.05, 0.1, 0.2, 0.2, ... : 6 or 7 attempts in 1 s; without the cap only 4-5, without back-off hundreds.
    assert 5 <= client.counters.connect_failures <= 8
    assert connects == []


async def test_wrong_password_keeps_retrying_without_connecting(fake_ari: tuple[FakeAri, str]) -> None:
    fake, url = fake_ari
    client = AriClient(url, USER, "wrong", APP, backoff_initial=0.05, backoff_max=0.05)
    task = asyncio.create_task(client.run(lambda ev: None, lambda: None))
    await wait_for(lambda: client.counters.connect_failures >= 2)
    await client.close()
    await task
    assert fake.ws_connects == 0 and client.counters.connects == 0


# --- AMI -----------------------------------------------------------------------------


@dataclass
class FakeAmi:
    """Asterisk 22's AMI as far as stc uses it: login, ConfbridgeKick, ConfbridgeList, events."""

    secret: str = "amipass"
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    actions: list[dict[str, str]] = field(default_factory=list)
    logins: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        self.writers.append(writer)
        try:
            while True:
                block = await reader.readuntil(b"\r\n\r\n")
                action: dict[str, str] = {}
                for line in block.decode().strip().split("\r\n"):
                    key, _, value = line.partition(": ")
                    action[key] = value
                self.actions.append(action)
                writer.write(self.answer(action))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def answer(self, action: dict[str, str]) -> bytes:
        aid = action.get("ActionID", "")
        name = action.get("Action", "").lower()
        if name == "login":
            if action.get("Secret") != self.secret:
                return f"Response: Error\r\nActionID: {aid}\r\nMessage: Authentication failed\r\n\r\n".encode()
            self.logins += 1
            return (f"Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted\r\n\r\n"
                    "Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n").encode()
        if name == "confbridgekick":
            if action.get("Conference") == "1000" and action.get("Channel") == "PJSIP/mallory-00000003":
                return f"Response: Success\r\nActionID: {aid}\r\nMessage: User kicked\r\n\r\n".encode()
            return f"Response: Error\r\nActionID: {aid}\r\nMessage: No Conference by that name found.\r\n\r\n".encode()
        if name == "confbridgelist":
            if action.get("Conference") != "1000":
                return f"Response: Error\r\nActionID: {aid}\r\nMessage: No active conferences.\r\n\r\n".encode()
            users = "".join(
                f"Event: ConfbridgeList\r\nActionID: {aid}\r\nConference: 1000\r\nChannel: {chan}\r\n"
                f"Uniqueid: {uid}\r\nCallerIDNum: {num}\r\nCallerIDName: {cname}\r\nAdmin: No\r\nMuted: No\r\n"
                f"Talking: No\r\n\r\n"
                for chan, uid, num, cname in (("PJSIP/stc-00000001", "1.1", "alice", ZOE), ("PJSIP/m-3", "1.3", "666", "m"))
            )
            return (f"Response: Success\r\nActionID: {aid}\r\nEventList: start\r\nMessage: Confbridge user list will follow\r\n\r\n"
                    f"{users}Event: ConfbridgeListComplete\r\nActionID: {aid}\r\nEventList: Complete\r\nListItems: 2\r\n\r\n").encode()
        if name == "ping":
            return f"Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\n\r\n".encode()
        return f"Response: Error\r\nActionID: {aid}\r\nMessage: Invalid/unknown command\r\n\r\n".encode()

    async def send_split_event(self, text: str, split_at: int) -> None:
        """One event in two TCP segments, cut at byte `split_at` (inside a UTF-8 character)."""
        data = text.encode("utf-8")
        for writer in self.writers:
            writer.write(data[:split_at])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(data[split_at:])
            await writer.drain()


@pytest.fixture
async def fake_ami() -> AsyncIterator[tuple[FakeAmi, asyncio.Server]]:
    fake = FakeAmi()
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    yield fake, server
    server.close()
    for writer in fake.writers:
        writer.close()


async def test_ami_events_kick_list_and_reconnect(fake_ami: tuple[FakeAmi, asyncio.Server]) -> None:
    fake, server = fake_ami
    port = server.sockets[0].getsockname()[1]
    events: list[dict[str, str]] = []
    ups: list[bool] = []
    client = AmiClient("127.0.0.1", port, "stc", "amipass", on_event=events.append,
                       on_up=lambda: ups.append(True), on_down=lambda exc: ups.append(False), reconnect_timeout=0.1)
    with pytest.raises(AmiUnavailable):
        await client.kick("1000", "PJSIP/x")
    await client.start()
    try:
        await wait_for(lambda: client.up)
        assert ups == [True]
        talking = (f"Event: ConfbridgeTalking\r\nPrivilege: call,all\r\nChannel: PJSIP/stc-00000001\r\n"
                   f"CallerIDName: {ZOE}\r\nConference: 1000\r\nUniqueid: 1.1\r\nTalkingStatus: on\r\n\r\n")
        cut = talking.encode().index("Ö".encode() if "Ö" in talking else "Ø".encode()) + 1
        await fake.send_split_event(talking, cut)
        await fake.send_split_event("Event: Newchannel\r\nChannel: PJSIP/x-9\r\nUniqueid: 9.9\r\n\r\n", 5)
        await wait_for(lambda: len(events) == 1)
        assert events[0]["Event"] == "ConfbridgeTalking"
        assert events[0]["CallerIDName"] == ZOE  # intact although split inside 'Ø'
        assert events[0]["TalkingStatus"] == "on"

        assert await client.kick("1000", "PJSIP/mallory-00000003") is True
        assert await client.kick("1000", "PJSIP/nobody-1") is False
        users = await client.confbridge_list("1000")
        assert [(u["Uniqueid"], u["CallerIDName"]) for u in users] == [("1.1", ZOE), ("1.3", "m")]
        assert await client.confbridge_list("9999") == []

        for writer in fake.writers:  # Asterisk restarts
            writer.close()
        await wait_for(lambda: ups == [True, False, True])
        assert fake.logins == 2
        assert await client.kick("1000", "PJSIP/mallory-00000003") is True
    finally:
        await client.close()
    assert not client.up
    logins = fake.logins
    await asyncio.sleep(0.3)
    assert fake.logins == logins  # closed: no reconnection


async def test_ami_login_refused_is_reported_down(fake_ami: tuple[FakeAmi, asyncio.Server]) -> None:
    fake, server = fake_ami
    port = server.sockets[0].getsockname()[1]
    downs: list[str] = []
    client = AmiClient("127.0.0.1", port, "stc", "wrong", on_event=lambda e: None,
                       on_up=lambda: downs.append("up"), on_down=lambda exc: downs.append(str(exc)), reconnect_timeout=0.1)
    await client.start()
    try:
        await wait_for(lambda: bool(downs))
        assert downs[0].startswith("AMI login refused")
        assert not client.up
    finally:
        await client.close()


async def test_ami_action_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        block = await reader.readuntil(b"\r\n\r\n")  # the login
        aid = [l for l in block.decode().split("\r\n") if l.startswith("ActionID")][0].split(": ")[1]
        writer.write(f"Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted\r\n\r\n".encode())
        try:
            await asyncio.sleep(5)  # then never answers
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = AmiClient("127.0.0.1", server.sockets[0].getsockname()[1], "stc", "x", on_event=lambda e: None,
                       action_timeout=0.2)
    await client.start()
    try:
        await wait_for(lambda: client.up)
        with pytest.raises(AmiUnavailable, match="no answer"):
            await client.kick("1000", "PJSIP/x")
    finally:
        await client.close()
        server.close()
