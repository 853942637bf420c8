"""FastAGI: the pure parsers, then the server over loopback against a fake Asterisk 22."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest

from stc_asterisk.fastagi import (
    Admission,
    AgiDeadChannel,
    AgiHangup,
    AgiInvalidCommand,
    AgiProtocolError,
    AgiReply,
    AgiReplyParser,
    AgiRequest,
    AgiRequestParser,
    AgiSession,
    AgiTimeout,
    AgiUsageError,
    FastAgiServer,
    RoomPolicy,
    TokenRefused,
    make_admission_handler,
    parse_reply,
    quote_arg,
    split_args,
)
from stc_wire.identity import PeerIdentity

ZOE = "Zoë Ålice-Øster"


def header_lines(script: str = "stc-admit", uniqueid: str = "1714557600.1", extension: str = "1000", **extra: str) -> list[str]:
    """The header Asterisk 22 sends for AGI(agi://127.0.0.1:4573/<script>), in its order."""
    values = {
        "network": "yes",
        "network_script": script,
        "request": f"agi://127.0.0.1:4573/{script}",
        "channel": f"PJSIP/alice-0000000{uniqueid[-1:] or 0}",
        "language": "en",
        "type": "PJSIP",
        "uniqueid": uniqueid,
        "version": "22.10.1",
        "callerid": "alice",
        "calleridname": "Alice",
        "callingpres": "0",
        "callingani2": "0",
        "callington": "0",
        "callingtns": "0",
        "dnid": extension,
        "rdnis": "unknown",
        "context": "stc-conf",
        "extension": extension,
        "priority": "2",
        "enhanced": "0.0",
        "accountcode": "",
        "threadid": "140244365907648",
    }
    values.update(extra)
    return [f"agi_{k}: {v}" for k, v in values.items()]


def header_bytes(**kwargs: str) -> bytes:
    return ("\n".join(header_lines(**kwargs)) + "\n\n").encode("utf-8")


# --- request parser ----------------------------------------------------------


def test_header_whole_and_byte_by_byte_give_the_same_request() -> None:
    data = header_bytes(arg_1="1000", arg_2="x y")
    whole = AgiRequestParser().feed(data)
    parser = AgiRequestParser()
    results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1])
    assert results[-1] == whole
    assert whole is not None
    assert (whole.network_script, whole.script, whole.channel) == ("stc-admit", "stc-admit", "PJSIP/alice-00000001")
    assert (whole.uniqueid, whole.callerid, whole.calleridname) == ("1714557600.1", "alice", "Alice")
    assert (whole.context, whole.extension, whole.priority, whole.dnid) == ("stc-conf", "1000", "2", "1000")
    assert whole.args == ("1000", "x y")
    assert whole.variables["accountcode"] == ""
    assert whole.variables["rdnis"] == "unknown"


def test_header_with_crlf_and_query_string_script() -> None:
    data = header_bytes(network_script="stc-admit?room=1").replace(b"\n", b"\r\n")
    request = AgiRequestParser().feed(data)
    assert request is not None
    assert request.script == "stc-admit"
    assert request.network_script == "stc-admit?room=1"


def test_header_truncated_is_incomplete_and_remainder_is_kept() -> None:
    data = header_bytes()
    parser = AgiRequestParser()
    assert parser.feed(data[: len(data) // 2]) is None
    assert not parser.done
    assert parser.feed(data[len(data) // 2 : -1]) is None  # everything but the final empty line
    request = parser.feed(b"\nHANGUP\n")
    assert request is not None and parser.remainder == b"HANGUP\n"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "not an agi_ header line"),
        (b"agi_network yes\n\n", "without a colon"),
        (b"\n", "empty header"),
        (b"agi_channel: a\nagi_channel: b\n\n", "repeated"),
        (b"agi_: x\n\n", "not an agi_ header line"),
        (b"agi_x: " + b"y" * 9000, "longer than 8192 bytes"),
        (b"".join(b"agi_k%d: v\n" % i for i in range(200)), "more than 128 lines"),
    ],
)
def test_header_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(AgiProtocolError, match=message):
        AgiRequestParser().feed(data)


def test_header_oversize_is_refused_byte_by_byte_too() -> None:
    parser = AgiRequestParser(max_bytes=64)
    data = b"agi_channel: " + b"x" * 100
    with pytest.raises(AgiProtocolError, match="longer than 64 bytes"):
        for i in range(len(data)):
            parser.feed(data[i : i + 1])


def test_header_non_utf8_is_replaced_not_fatal() -> None:
    request = AgiRequestParser().feed(b"agi_network: yes\nagi_calleridname: Zo\xeb\xff\n\n")
    assert request is not None
    assert request.calleridname == "Zo\ufffd\ufffd"


# --- reply parser ------------------------------------------------------------


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["200 result=1"], AgiReply(200, "1", None, "")),
        (["200 result=0"], AgiReply(200, "0", None, "")),
        (["200 result=1 (tok-123)"], AgiReply(200, "1", "tok-123", "")),
        (["200 result=1 ()"], AgiReply(200, "1", "", "")),
        ([f"200 result=1 ({ZOE} (x))"], AgiReply(200, "1", f"{ZOE} (x)", "")),
        (["200 result= (timeout)"], AgiReply(200, "", "timeout", "")),
        (["200 result=0 endpos=1234"], AgiReply(200, "0", None, "endpos=1234")),
        (["200 result=-1"], AgiReply(200, "-1", None, "")),
        (["100 result=0 Trying...", "200 result=1"], AgiReply(200, "1", None, "")),
        (["200 result=1\r\n"], AgiReply(200, "1", None, "")),
    ],
)
def test_reply_success(lines: list[str], expected: AgiReply) -> None:
    assert parse_reply(lines) == expected


def test_reply_result_int() -> None:
    assert parse_reply(["200 result=-1"]).result_int == -1
    assert parse_reply(["200 result= (timeout)"]).result_int is None


@pytest.mark.parametrize(
    "lines, error, code",
    [
        (["510 Invalid or unknown command"], AgiInvalidCommand, 510),
        (["511 Command Not Permitted on a dead channel or intercept routine"], AgiDeadChannel, 511),
        (
            [
                "520-Invalid command syntax.  Proper usage follows:",
                " Usage: SET VARIABLE <variablename> <value>",
                "520 End of proper usage.",
            ],
            AgiUsageError,
            520,
        ),
    ],
)
def test_reply_command_errors(lines: list[str], error: type[Exception], code: int) -> None:
    with pytest.raises(error) as info:
        parse_reply(lines)
    assert info.value.code == code  # type: ignore[attr-defined]
    if code == 520:
        assert info.value.usage == (" Usage: SET VARIABLE <variablename> <value>",)  # type: ignore[attr-defined]


def test_reply_usage_block_is_incomplete_until_its_end() -> None:
    parser = AgiReplyParser()
    assert parser.feed_line("520-Invalid command syntax.  Proper usage follows:") is None
    assert parser.feed_line("Usage: HANGUP [<channelname>]") is None
    with pytest.raises(AgiUsageError):
        parser.feed_line("520 End of proper usage.")


def test_reply_hangup_and_garbage() -> None:
    with pytest.raises(AgiHangup):
        parse_reply(["HANGUP"])
    for bad in (["hello"], ["200 ok"], ["2000 result=1"], ["200 result=1 (open"]):
        with pytest.raises(AgiProtocolError):
            parse_reply(bad)
    with pytest.raises(AgiProtocolError, match="truncated"):
        parse_reply(["100 result=0 Trying..."])


def test_reply_usage_block_is_bounded() -> None:
    parser = AgiReplyParser(max_usage_lines=3)
    parser.feed_line("520-Invalid command syntax.")
    with pytest.raises(AgiProtocolError):
        for _ in range(10):
            parser.feed_line("more usage")


# --- quoting -----------------------------------------------------------------


@pytest.mark.parametrize("value", [ZOE, 'a "quoted" \\ value', "", " lead and trail ", "tab\there", "${EVIL}", "1"])
def test_quote_round_trips_through_asterisk_argument_splitting(value: str) -> None:
    assert split_args(f"SET VARIABLE STC_X {quote_arg(value)}") == ["SET", "VARIABLE", "STC_X", value]


def test_split_args_matches_res_agi_cases() -> None:
    assert split_args('GET FULL VARIABLE "${X}"') == ["GET", "FULL", "VARIABLE", "${X}"]
    assert split_args(r"VERBOSE a\ b 1") == ["VERBOSE", "a b", "1"]
    assert split_args('SET VARIABLE X ab"c d"e') == ["SET", "VARIABLE", "X", "abc de"]


def test_quote_refuses_line_breaks() -> None:
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(ValueError):
            quote_arg(bad)


# --- the server against a fake Asterisk ---------------------------------------


@dataclass
class FakeChannel:
    """Answers AGI commands the way Asterisk 22's res_agi does, and records them."""

    sip_headers: dict[str, str] = field(default_factory=dict)
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    raw_lines: list[bytes] = field(default_factory=list)
    hung_up: bool = False
    closed_by_server: bool = False
    answer: bool = True

    def reply(self, args: list[str]) -> bytes:
        verb = " ".join(args[:3]).upper()
        if self.hung_up and not verb.startswith(("GET", "VERBOSE")):
            return b"511 Command Not Permitted on a dead channel or intercept routine\n"
        if verb.startswith("SET VARIABLE") and len(args) == 4:
            self.variables[args[2]] = args[3]
            return b"200 result=1\n"
        if verb.startswith("GET FULL VARIABLE") and len(args) == 4:
            found = re.fullmatch(r"\$\{PJSIP_HEADER\(read,([^)]+)\)\}", args[3])
            value = self.sip_headers.get(found.group(1), "") if found else ""
            return f"200 result=1 ({value})\n".encode("utf-8")
        if args and args[0].upper() == "HANGUP":
            self.hung_up = True
            return b"200 result=1\nHANGUP\n"
        if args and args[0].upper() == "VERBOSE":
            return b"200 result=1\n"
        return b"510 Invalid or unknown command\n"


async def fake_asterisk(port: int, channel: FakeChannel, header: bytes, *, limit: float = 5.0) -> FakeChannel:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(limit):
            writer.write(header)
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    channel.closed_by_server = True
                    return channel
                channel.raw_lines.append(line)
                args = split_args(line.decode("utf-8").rstrip("\n"))
                channel.commands.append(args)
                if channel.answer:
                    writer.write(channel.reply(args))
                    await writer.drain()
    finally:
        writer.close()


def identity(name: str = ZOE, org: str | None = "ACME", fingerprint: str = "ab" * 32) -> PeerIdentity:
    return PeerIdentity(
        display_name=name,
        subject=f"CN={name},O={org}",
        organization=org,
        org_unit=None,
        sip_uris=("sip:zoe@example.org",),
        emails=(),
        issuer="CN=stc test CA",
        serial=0x1234,
        fingerprint_sha256=fingerprint,
        not_before=datetime(2026, 1, 1, tzinfo=timezone.utc),
        not_after=datetime(2027, 1, 1, tzinfo=timezone.utc),
    )


@dataclass
class Setup:
    tokens: dict[str, Admission]
    admitted: list[tuple[AgiRequest, Any, str]]


def admission_server(setup: Setup, policy: RoomPolicy | None = None, **kwargs: Any) -> FastAgiServer:
    handler = make_admission_handler(
        setup.tokens.get, policy or RoomPolicy(), lambda req, ident, room: setup.admitted.append((req, ident, room))
    )
    return FastAgiServer("127.0.0.1", 0, {"stc-admit": handler}, **kwargs)


async def test_admitted_flow_sets_variables_in_order() -> None:
    zoe = identity()
    setup = Setup({"tok-1": Admission(zoe, "call-7")}, [])
    async with admission_server(setup) as server:
        channel = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes())
    assert channel.commands == [
        ["GET", "FULL", "VARIABLE", "${PJSIP_HEADER(read,X-STC-Token)}"],
        ["SET", "VARIABLE", "CALLERID(name)", ZOE],
        ["SET", "VARIABLE", "STC_IDENTITY", f"CN={ZOE},O=ACME"],
        ["SET", "VARIABLE", "STC_FINGERPRINT", "ab" * 32],
        ["SET", "VARIABLE", "STC_ADMITTED", "1"],
    ]
    assert channel.raw_lines[1] == f'SET VARIABLE CALLERID(name) "{ZOE}"\n'.encode("utf-8")
    assert channel.closed_by_server and not channel.hung_up
    assert len(setup.admitted) == 1
    request, who, room = setup.admitted[0]
    assert (request.uniqueid, who, room) == ("1714557600.1", zoe, "1000")
    assert server.counters.sessions == 1 and server.counters.errors == 0


async def test_room_comes_from_the_first_agi_argument() -> None:
    setup = Setup({"tok-1": Admission(identity())}, [])
    async with admission_server(setup) as server:
        await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes(arg_1="2000"))
    assert [room for _, _, room in setup.admitted] == ["2000"]


GOOD = {"X-STC-Token": "tok-1"}


@pytest.mark.parametrize(
    "headers, policy, request_fields, reason",
    [
        ({}, None, {}, "token-missing"),
        ({"X-STC-Token": "tok-unknown"}, None, {}, "token-unknown"),
        ({"X-STC-Token": "bad token;x"}, None, {}, "token-malformed"),
        ({"X-STC-Token": "x" * 2000}, None, {}, "token-malformed"),
        (GOOD, {"1000": [{"o": "Other Org"}]}, {}, "policy-refused"),
        (GOOD, {"*": []}, {}, "policy-refused"),
        (GOOD, None, {"extension": ""}, "no-room"),
        (GOOD, None, {"uniqueid": ""}, "no-channel"),
    ],
)
async def test_refused_flows_hang_up_before_conference(
    headers: dict[str, str], policy: dict[str, Any] | None, request_fields: dict[str, str], reason: str
) -> None:
    setup = Setup({"tok-1": Admission(identity())}, [])
    room_policy = RoomPolicy.from_mapping(policy) if policy is not None else None
    async with admission_server(setup, room_policy) as server:
        channel = await fake_asterisk(server.port, FakeChannel(headers), header_bytes(**request_fields))
    assert channel.hung_up
    assert channel.commands[-2:] == [["SET", "VARIABLE", "STC_REFUSED", reason], ["HANGUP"]]
    assert "STC_ADMITTED" not in channel.variables and "CALLERID(name)" not in channel.variables
    assert setup.admitted == []


async def test_policy_admits_the_matching_certificate() -> None:
    setup = Setup({"tok-1": Admission(identity(org="ACME"))}, [])
    policy = RoomPolicy.from_mapping({"1000": [{"o": "Other"}, {"o": "ACME", "sip_uri": "SIP:zoe@example.org"}]})
    async with admission_server(setup, policy) as server:
        channel = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes())
    assert channel.variables["STC_ADMITTED"] == "1"


async def test_a_token_admits_one_channel_only() -> None:
    setup = Setup({"tok-1": Admission(identity())}, [])
    async with admission_server(setup) as server:
        first = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes(uniqueid="1.1"))
        again = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes(uniqueid="1.1"))
        other = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes(uniqueid="1.2"))
    assert first.variables["STC_ADMITTED"] == "1"
    assert again.variables["STC_ADMITTED"] == "1"  # the same channel re-running the script
    assert other.hung_up and other.variables["STC_REFUSED"] == "token-reused"
    assert [req.uniqueid for req, _, _ in setup.admitted] == ["1.1", "1.1"]


def bound(call_id: str = "c-1@10.0.0.7", room: str = "1000") -> Admission:
    """What a signed binding vouches for (as RoomService.lookup_token answers)."""
    return Admission(identity(), "c-1", call_id=call_id, room=room, seal=lambda channel: f"sealed.{channel}")


async def test_a_binding_admits_its_own_call_and_is_stored_on_the_channel() -> None:
    setup = Setup({"tok-1": bound()}, [])
    async with admission_server(setup) as server:
        channel = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1", "Call-ID": "c-1@10.0.0.7"}),
                                      header_bytes())
    assert ["GET", "FULL", "VARIABLE", "${PJSIP_HEADER(read,Call-ID)}"] in channel.commands
    assert channel.variables["STC_BINDING"] == "sealed.1714557600.1"  # sealed to this channel's uniqueid
    assert channel.variables["STC_ADMITTED"] == "1" and channel.variables["STC_FINGERPRINT"] == "ab" * 32
    assert [name for name, *_ in (c[2:] for c in channel.commands if c[:2] == ["SET", "VARIABLE"])][-2:] == [
        "STC_BINDING", "STC_ADMITTED"]


@pytest.mark.parametrize("call_id, agi_room, reason", [
    ("other@10.0.0.7", "1000", "token-wrong-call"),  # a token lifted from another INVITE
    ("", "1000", "token-wrong-call"),
    ("c-1@10.0.0.7", "2000", "token-wrong-room"),
])
async def test_a_binding_for_another_call_or_room_is_refused(call_id: str, agi_room: str, reason: str) -> None:
    setup = Setup({"tok-1": bound()}, [])
    headers = {"X-STC-Token": "tok-1"} | ({"Call-ID": call_id} if call_id else {})
    async with admission_server(setup) as server:
        channel = await fake_asterisk(server.port, FakeChannel(headers), header_bytes(arg_1=agi_room))
    assert channel.hung_up and channel.variables["STC_REFUSED"] == reason
    assert "STC_BINDING" not in channel.variables and setup.admitted == []


@pytest.mark.parametrize("reason", ["token-forged", "token-expired"])
async def test_a_refused_binding_hangs_up_with_its_reason(reason: str) -> None:
    def lookup(token: str) -> Admission | None:
        raise TokenRefused(reason, "as the verifier said")

    handler = make_admission_handler(lookup, RoomPolicy(), lambda *_: None)
    async with FastAgiServer("127.0.0.1", 0, {"stc-admit": handler}) as server:
        channel = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes())
    assert channel.hung_up and channel.variables["STC_REFUSED"] == reason
    assert handler.counters.refused[reason] == 1


async def test_unknown_script_is_hung_up() -> None:
    setup = Setup({}, [])
    async with admission_server(setup) as server:
        channel = await fake_asterisk(server.port, FakeChannel(), header_bytes(script="nope"))
    assert channel.commands == [["HANGUP"]]
    assert channel.hung_up and channel.closed_by_server
    assert server.counters.unknown_scripts == 1


async def read_until_closed(reader: asyncio.StreamReader, limit: float) -> bytes:
    async with asyncio.timeout(limit):
        return await reader.read()


async def test_half_open_connections_are_closed_while_another_session_completes() -> None:
    setup = Setup({"tok-1": Admission(identity())}, [])
    loop = asyncio.get_running_loop()
    half = header_bytes()[:200]
    async with admission_server(setup, header_timeout=0.6) as server:
        start = loop.time()
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", server.port)
        silent_w.write(half)  # half a header, then nothing
        eof_r, eof_w = await asyncio.open_connection("127.0.0.1", server.port)
        eof_w.write(half)
        eof_w.write_eof()  # half a header, then EOF
        await eof_w.drain()

        good = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes(), limit=2.0)
        good_done = loop.time() - start
        assert good.variables["STC_ADMITTED"] == "1"
        assert good_done < 0.5, "the good session waited for the stuck ones"

        assert await read_until_closed(eof_r, 0.5) == b""
        assert await read_until_closed(silent_r, 2.0) == b""
        silent_closed = loop.time() - start
        assert 0.5 < silent_closed < 1.5
        silent_w.close()
        eof_w.close()
    assert server.counters.errors == 2
    assert server.counters.sessions == 1


async def test_garbage_connection_is_closed() -> None:
    setup = Setup({}, [])
    async with admission_server(setup) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert await read_until_closed(reader, 1.0) == b""
        writer.close()
    assert server.counters.errors == 1 and server.counters.sessions == 0


async def test_connections_over_max_sessions_are_refused() -> None:
    setup = Setup({}, [])
    async with admission_server(setup, max_sessions=1, header_timeout=5.0) as server:
        _, held = await asyncio.open_connection("127.0.0.1", server.port)
        held.write(b"agi_network: yes\n")
        await held.drain()
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            closed = await read_until_closed(reader, 1.0)
        except ConnectionResetError:
            closed = b""
        assert closed == b""
        assert server.counters.refused == 1 and server.counters.active == 1
        held.close()
        writer.close()


async def test_silent_asterisk_times_out_a_command() -> None:
    setup = Setup({"tok-1": Admission(identity())}, [])
    loop = asyncio.get_running_loop()
    async with admission_server(setup, command_timeout=0.3) as server:
        start = loop.time()
        channel = await fake_asterisk(
            server.port, FakeChannel({"X-STC-Token": "tok-1"}, answer=False), header_bytes(), limit=2.0
        )
        assert channel.closed_by_server and loop.time() - start < 1.5
    assert len(channel.commands) == 1
    assert server.counters.errors == 1 and setup.admitted == []


async def test_session_helpers_and_handler_crash() -> None:
    seen: dict[str, Any] = {}

    async def script(session: AgiSession) -> None:
        seen["token"] = await session.get_full_variable("${PJSIP_HEADER(read,X-STC-Token)}")
        seen["missing"] = await session.get_full_variable("${PJSIP_HEADER(read,X-None)}")
        await session.verbose(f"hello {ZOE}", 3)
        with pytest.raises(AgiInvalidCommand):
            await session.command("NO SUCH COMMAND")
        raise RuntimeError("bug in a script")

    async with FastAgiServer("127.0.0.1", 0, {"s": script}, command_timeout=1.0) as server:
        channel = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "abc"}), header_bytes(script="s"))
    assert seen == {"token": "abc", "missing": ""}
    assert channel.commands[2] == ["VERBOSE", f"hello {ZOE}", "3"]
    assert channel.commands[-1] == ["HANGUP"]  # a crashed script hangs its channel up
    assert server.counters.errors == 1


async def test_commands_after_hangup_raise_without_sending() -> None:
    results: list[str] = []

    async def script(session: AgiSession) -> None:
        await session.hangup()
        try:
            await session.set_variable("X", "1")
        except AgiHangup:
            results.append("hangup")

    async with FastAgiServer("127.0.0.1", 0, {"s": script}) as server:
        channel = await fake_asterisk(server.port, FakeChannel(), header_bytes(script="s"))
    assert channel.commands == [["HANGUP"]]
    assert results == ["hangup"]


async def test_policy_rules_from_config_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown policy rule"):
        RoomPolicy.from_mapping({"1000": [{"cn": "x", "colour": "blue"}]})
    with pytest.raises(ValueError, match="any = true"):
        RoomPolicy.from_mapping({"1000": [{}]})
    with pytest.raises(ValueError, match="list of tables"):
        RoomPolicy.from_mapping({"1000": {"cn": "x"}})  # type: ignore[dict-item]
    policy = RoomPolicy.from_mapping(
        {"1000": [{"fingerprint": ":".join(["AB"] * 32)}], "2000": [{"any": True}], "*": [{"cn": "admin"}]}
    )
    assert policy.allows("1000", identity(fingerprint="ab" * 32))
    assert not policy.allows("1000", identity(fingerprint="cd" * 32))
    assert policy.allows("2000", identity())
    assert not policy.allows("3000", identity())
    assert policy.allows("3000", identity(name="admin"))
    assert RoomPolicy().allows("anything", identity())


async def test_timeout_is_reported_as_agitimeout() -> None:
    caught: list[type[BaseException]] = []

    async def script(session: AgiSession) -> None:
        try:
            await session.command("VERBOSE x 1")
        except AgiTimeout as exc:
            caught.append(type(exc))
            raise

    async with FastAgiServer("127.0.0.1", 0, {"s": script}, command_timeout=0.2) as server:
        await fake_asterisk(server.port, FakeChannel(answer=False), header_bytes(script="s"), limit=2.0)
    assert caught == [AgiTimeout]


async def test_a_line_break_in_a_certificate_name_cannot_inject_a_command() -> None:
    evil = identity(name="Eve\nHANGUP")
    setup = Setup({"tok-1": Admission(evil)}, [])
    async with admission_server(setup) as server:
        channel = await fake_asterisk(server.port, FakeChannel({"X-STC-Token": "tok-1"}), header_bytes())
    assert [c[:3] for c in channel.commands] == [["GET", "FULL", "VARIABLE"]] + [["SET", "VARIABLE", n] for n in
                                                 ("CALLERID(name)", "STC_IDENTITY", "STC_FINGERPRINT", "STC_ADMITTED")]
    assert channel.variables["CALLERID(name)"] == "Eve HANGUP"
    assert not channel.hung_up
