"""FastAGI wire format, pure: the request header Asterisk sends, its replies, argument quoting.

Asterisk 22 opens a TCP connection per `AGI(agi://host:port/script)` and sends
`agi_key: value` lines ended by an empty line. The AGI side then writes one
command per line and reads one reply per command:

    200 result=1 (value)            success, with optional data in parentheses
    510 Invalid or unknown command
    511 Command Not Permitted on a dead channel or intercept routine
    520-Invalid command syntax.  Proper usage follows:
    ...usage text...
    520 End of proper usage.
    HANGUP                          unsolicited: the channel hung up

Nothing here touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

MAX_HEADER_BYTES = 8 * 1024
MAX_HEADER_LINES = 128
MAX_USAGE_LINES = 64
# Commands and quoted arguments go on one line: these characters cannot be sent.
_FORBIDDEN_IN_COMMAND = ("\n", "\r", "\x00")


class AgiError(Exception):
    """Base of every FastAGI error."""


class AgiProtocolError(AgiError):
    """The peer sent something that is not FastAGI (garbage, oversize, truncated)."""


class AgiHangup(AgiError):
    """The channel hung up (an unsolicited `HANGUP` line)."""


class AgiTimeout(AgiError):
    """Asterisk did not answer a command in time."""


class AgiCommandError(AgiError):
    """Asterisk refused a command: 510 (unknown), 511 (dead channel), 520 (usage)."""

    def __init__(self, code: int, message: str, usage: tuple[str, ...] = ()) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.usage = usage


class AgiInvalidCommand(AgiCommandError):
    """510 Invalid or unknown command."""


class AgiDeadChannel(AgiCommandError):
    """511 Command Not Permitted on a dead channel or intercept routine."""


class AgiUsageError(AgiCommandError):
    """520 Invalid command syntax (the usage text is in `usage`)."""


_COMMAND_ERRORS: dict[int, type[AgiCommandError]] = {510: AgiInvalidCommand, 511: AgiDeadChannel, 520: AgiUsageError}


@dataclass(frozen=True)
class AgiRequest:
    """The header of one FastAGI session. Unknown keys stay in `variables`."""

    network_script: str
    channel: str
    uniqueid: str
    callerid: str
    calleridname: str
    context: str
    extension: str
    priority: str
    dnid: str
    version: str
    threadid: str
    # `agi_arg_1`, `agi_arg_2`, ... in order (the AGI() application's extra arguments).
    args: tuple[str, ...]
    # Every header line, keyed without the `agi_` prefix.
    variables: Mapping[str, str] = field(repr=False)

    @property
    def script(self) -> str:
        """The script name without a query string or leading slashes."""
        return self.network_script.split("?", 1)[0].strip("/")

    @classmethod
    def from_variables(cls, variables: Mapping[str, str]) -> "AgiRequest":
        args: list[str] = []
        while f"arg_{len(args) + 1}" in variables:
            args.append(variables[f"arg_{len(args) + 1}"])
        get = variables.get
        return cls(
            network_script=get("network_script", ""),
            channel=get("channel", ""),
            uniqueid=get("uniqueid", ""),
            callerid=get("callerid", ""),
            calleridname=get("calleridname", ""),
            context=get("context", ""),
            extension=get("extension", ""),
            priority=get("priority", ""),
            dnid=get("dnid", ""),
            version=get("version", ""),
            threadid=get("threadid", ""),
            args=tuple(args),
            variables=dict(variables),
        )


class AgiRequestParser:
    """Reads the request header from bytes as they arrive.

    `feed()` returns None until the empty line, then the request; bytes after the
    empty line are kept in `remainder`. Raises AgiProtocolError on anything else.
    """

    def __init__(self, *, max_bytes: int = MAX_HEADER_BYTES, max_lines: int = MAX_HEADER_LINES) -> None:
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._buffer = bytearray()
        self._consumed = 0
        self._variables: dict[str, str] = {}
        self._lines = 0
        self._request: AgiRequest | None = None
        self.remainder = b""

    @property
    def done(self) -> bool:
        return self._request is not None

    @property
    def bytes_seen(self) -> int:
        return self._consumed + len(self._buffer)

    def feed(self, data: bytes) -> AgiRequest | None:
        if self._request is not None:
            raise AgiProtocolError("header already complete")
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if self._consumed + len(self._buffer) > self._max_bytes:
                    raise AgiProtocolError(f"header longer than {self._max_bytes} bytes")
                return None
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._consumed += end + 1
            if self._consumed > self._max_bytes:
                raise AgiProtocolError(f"header longer than {self._max_bytes} bytes")
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if not self._variables:
                    raise AgiProtocolError("empty header")
                self._request = AgiRequest.from_variables(self._variables)
                self.remainder = bytes(self._buffer)
                self._buffer.clear()
                return self._request
            self._lines += 1
            if self._lines > self._max_lines:
                raise AgiProtocolError(f"header has more than {self._max_lines} lines")
            self._add_line(line)

    def _add_line(self, line: str) -> None:
        if not line.startswith("agi_"):
            raise AgiProtocolError(f"not an agi_ header line: {line[:60]!r}")
        key, sep, value = line.partition(":")
        if not sep:
            raise AgiProtocolError(f"header line without a colon: {line[:60]!r}")
        if len(key) == 4 or not key.isascii() or " " in key:
            raise AgiProtocolError(f"not an agi_ header line: {line[:60]!r}")
        name = key[4:]
        if name in self._variables:
            raise AgiProtocolError(f"header key {key!r} repeated")
        self._variables[name] = value[1:] if value.startswith(" ") else value


@dataclass(frozen=True)
class AgiReply:
    """A successful (2xx) reply: `200 result=<result> (<data>) <extra>`."""

    code: int
    result: str
    data: str | None = None
    extra: str = ""

    @property
    def result_int(self) -> int | None:
        try:
            return int(self.result)
        except ValueError:
            return None


class AgiReplyParser:
    """Turns reply lines into AgiReply, or raises the matching AgiError.

    `feed_line()` returns None while a reply is incomplete (inside a 520 usage
    block, or after a `100` provisional line).
    """

    def __init__(self, *, max_usage_lines: int = MAX_USAGE_LINES) -> None:
        self._max_usage_lines = max_usage_lines
        self._usage: list[str] | None = None
        self._usage_head = ""

    def feed_line(self, line: str) -> AgiReply | None:
        line = line.rstrip("\r\n")
        if self._usage is not None:
            return self._usage_line(line)
        if line == "HANGUP":
            raise AgiHangup("channel hung up")
        if line.startswith("520-"):
            self._usage = []
            self._usage_head = line[4:]
            return None
        code_text, _, rest = line.partition(" ")
        if len(code_text) != 3 or not code_text.isdigit():
            raise AgiProtocolError(f"not an AGI reply: {line[:80]!r}")
        code = int(code_text)
        if code == 100:
            return None
        if code in _COMMAND_ERRORS:
            raise _COMMAND_ERRORS[code](code, rest)
        if code != 200:
            raise AgiCommandError(code, rest)
        return _parse_success(code, rest, line)

    def _usage_line(self, line: str) -> AgiReply | None:
        assert self._usage is not None
        if line.startswith("520 "):
            usage = tuple(self._usage)
            self._usage = None
            raise AgiUsageError(520, self._usage_head, usage)
        self._usage.append(line)
        if len(self._usage) > self._max_usage_lines:
            raise AgiProtocolError(f"520 usage block longer than {self._max_usage_lines} lines")
        return None


def _parse_success(code: int, rest: str, line: str) -> AgiReply:
    if not rest.startswith("result="):
        raise AgiProtocolError(f"200 reply without result=: {line[:80]!r}")
    body = rest[len("result=") :]
    # `200 result= (timeout)` has an empty result followed by data.
    result, _, after = body.partition(" ")
    data: str | None = None
    extra = after
    if after.startswith("("):
        # The data runs to the last ')' of the line: a value may itself contain ')'.
        close = after.rfind(")")
        if close < 0:
            raise AgiProtocolError(f"unterminated data in reply: {line[:80]!r}")
        data = after[1:close]
        extra = after[close + 1 :].strip()
    return AgiReply(code, result, data, extra)


def parse_reply(lines: list[str]) -> AgiReply:
    """Parse a complete reply given as lines (convenience for tests and tools)."""
    parser = AgiReplyParser()
    for line in lines:
        reply = parser.feed_line(line)
        if reply is not None:
            return reply
    raise AgiProtocolError("truncated reply")


def quote_arg(value: str) -> str:
    """Quote one command argument so res_agi's parse_args() reads it back exactly.

    parse_args() splits on unquoted blanks, toggles quoting on `"` and takes the
    character after `\\` literally; Unicode passes through as UTF-8.
    """
    check_command_text(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_command_text(text: str) -> None:
    for bad in _FORBIDDEN_IN_COMMAND:
        if bad in text:
            raise ValueError(f"AGI command text cannot contain {bad!r}")


def split_args(line: str) -> list[str]:
    """res_agi.c parse_args() in Python: how Asterisk splits a command line.

    Used by tests and fake peers to read commands exactly as Asterisk would.
    """
    args: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None:
                current = []
            continue
        if ch in " \t" and not quoted and not escaped:
            if current is not None:
                args.append("".join(current))
                current = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if current is None:
            current = []
        current.append(ch)
        escaped = False
    if current is not None:
        args.append("".join(current))
    return args
