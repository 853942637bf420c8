"""SIP messages (RFC 3261) as values: parse a datagram, read and rewrite headers, serialize.

Pure code, bytes in and values out: no socket, no clock. The stc proxies use it
to forward every message between a softphone and Asterisk, rewriting Via and
Contact addresses on the way, and to answer locally (400, 488, 503, ...).

Parsing is strict where a proxy must be (start line, the headers it routes by,
Content-Length, size limits) and tolerant where RFC 3261 and RFC 4475 ask for it
(compact header names, folded lines, LWS around separators, bare-LF line ends,
CRLFs before the start line, octets after the body of a UDP datagram).

Header and start-line text is decoded as UTF-8 with surrogate escapes, so any
byte round-trips. A message that is parsed and not modified serializes to the
exact bytes it came from; once modified, it is emitted in canonical form
(`Name: value` lines, CRLF) with a Content-Length that always matches the body.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Self

logger = logging.getLogger(__name__)

MAX_MESSAGE_SIZE = 64 * 1024
"""Largest datagram accepted (bytes); larger ones get 513 Message Too Large."""
MAX_HEADER_COUNT = 128
"""Most header lines (after unfolding) in one message."""
MAX_HEADER_LINE = 8 * 1024
"""Longest start line or unfolded header line (characters)."""
_MAX_CONTENT_LENGTH_DIGITS = 10

SIP_VERSION = "SIP/2.0"
BRANCH_MAGIC_COOKIE = "z9hG4bK"

# RFC 3261 section 7.3.3 and the IANA "Header Fields" registry (compact form column).
COMPACT_FORMS: dict[str, str] = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "n": "Identity-Info",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

# Headers whose value is a comma-separated list (RFC 3261 section 7.3.1), so
# `get_all` may split one line into several values. Others are never split:
# WWW-Authenticate, Date and unknown headers have commas of their own.
_LIST_HEADERS = frozenset(
    {
        "via",
        "contact",
        "route",
        "record-route",
        "path",
        "service-route",
        "allow",
        "allow-events",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "in-reply-to",
    }
)
# Must appear at most once: a second one makes the message ambiguous (RFC 4475 3.1.2.x).
_SINGLE_HEADERS = ("call-id", "cseq", "from", "to", "max-forwards", "content-length")
_MANDATORY_HEADERS = ("via", "from", "to", "call-id", "cseq")

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_TOKEN_RE = re.compile(rf"{_TOKEN}\Z")
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*:\S+\Z")
_VERSION_RE = re.compile(r"SIP/[0-9]+\.[0-9]+\Z", re.IGNORECASE)
_STATUS_LINE_RE = re.compile(r"(SIP/[0-9]+\.[0-9]+) ([0-9]+)(?: (.*))?\Z", re.IGNORECASE | re.DOTALL)
_CSEQ_RE = re.compile(rf"([0-9]+)[ \t]+({_TOKEN})\Z")
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")
_LINE_END_RE = re.compile(r"\r?\n")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9\-.]+\Z")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+\Z")
_SENT_PROTOCOL_RE = re.compile(
    rf"\s*({_TOKEN})\s*/\s*({_TOKEN})\s*/\s*({_TOKEN})\s+(.+?)\s*\Z", re.DOTALL
)
_SENT_BY_RE = re.compile(r"(\[[^\]]*\]|[^\s:\[\]]+)(?:\s*:\s*([0-9]{1,5}))?\Z")


class SipParseError(Exception):
    """Bytes that are not an acceptable SIP message (or a header value that does not parse).

    `status` is the SIP response a server should answer a request with
    (400 unless another code says more, e.g. 505 or 513).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Param = tuple[str, str | None]
Header = tuple[str, str]


def header_key(name: str) -> str:
    """Case-insensitive lookup key of a header name, compact forms expanded: 'v' -> 'via'."""
    lowered = name.lower()
    if len(lowered) == 1:
        return COMPACT_FORMS.get(lowered, lowered).lower()
    return lowered


def split_header_values(value: str) -> list[str]:
    """Split a comma-separated header value, honouring quoted strings and <...> URIs."""
    items: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    while i < len(value):
        ch = value[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == "<":
            in_angle = True
        elif ch == ">":
            in_angle = False
        elif ch == "," and not in_angle:
            items.append(value[start:i])
            start = i + 1
        i += 1
    items.append(value[start:])
    return [item.strip(" \t") for item in items if item.strip(" \t")]


def _check_header(name: str, value: str) -> None:
    # Refuse what would inject lines into the serialized message.
    if not _TOKEN_RE.match(name):
        raise ValueError(f"invalid SIP header name {name!r}")
    if "\r" in value or "\n" in value:
        raise ValueError(f"SIP header {name} value contains a line break")


class _Message:
    """Header access shared by SipRequest and SipResponse (which hold `headers` and `body`)."""

    headers: list[Header]
    body: bytes
    _raw: _RawHead | None

    # -- reading --------------------------------------------------------
    def get(self, name: str) -> str | None:
        """Value of the first header called `name` (any case, compact form accepted), or None."""
        key = header_key(name)
        for hname, value in self.headers:
            if header_key(hname) == key:
                return value
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of `name` in order; comma-joined list headers (Via, Contact, Route...) are split."""
        key = header_key(name)
        values: list[str] = []
        for hname, value in self.headers:
            if header_key(hname) == key:
                if key in _LIST_HEADERS:
                    values.extend(split_header_values(value))
                else:
                    values.append(value)
        return values

    def count(self, name: str) -> int:
        """How many header lines carry `name`."""
        key = header_key(name)
        return sum(1 for hname, _ in self.headers if header_key(hname) == key)

    # -- writing --------------------------------------------------------
    def set(self, name: str, value: str) -> None:
        """Give `name` this single value: the first line keeps its place (and spelling), others go."""
        _check_header(name, value)
        key = header_key(name)
        new: list[Header] = []
        done = False
        for hname, hvalue in self.headers:
            if header_key(hname) == key:
                if not done:
                    new.append((hname, value))
                    done = True
            else:
                new.append((hname, hvalue))
        if not done:
            new.append((name, value))
        self.headers = new

    def remove(self, name: str) -> int:
        """Remove every `name` line; return how many were removed."""
        key = header_key(name)
        kept = [(n, v) for n, v in self.headers if header_key(n) != key]
        removed = len(self.headers) - len(kept)
        self.headers = kept
        return removed

    def prepend(self, name: str, value: str) -> None:
        """Insert a `name` line before the first existing one (at the top if none): a proxy's Via."""
        _check_header(name, value)
        key = header_key(name)
        for index, (hname, _) in enumerate(self.headers):
            if header_key(hname) == key:
                self.headers.insert(index, (name, value))
                return
        self.headers.insert(0, (name, value))

    def append(self, name: str, value: str) -> None:
        """Add a `name` line after every other header."""
        _check_header(name, value)
        self.headers.append((name, value))

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the first value of a list header, splitting `Via: a, b` if needed."""
        key = header_key(name)
        for index, (hname, hvalue) in enumerate(self.headers):
            if header_key(hname) == key:
                values = split_header_values(hvalue)
                if len(values) <= 1:
                    del self.headers[index]
                    return values[0] if values else hvalue
                self.headers[index] = (hname, ", ".join(values[1:]))
                return values[0]
        return None

    def replace_first_value(self, name: str, value: str) -> None:
        """Replace the first value of a list header (the top Via), leaving the rest of its line."""
        _check_header(name, value)
        key = header_key(name)
        for index, (hname, hvalue) in enumerate(self.headers):
            if header_key(hname) == key:
                rest = split_header_values(hvalue)[1:]
                self.headers[index] = (hname, ", ".join([value, *rest]))
                return
        raise KeyError(f"no {name} header to replace")

    def copy(self) -> Self:
        """A copy whose header list can change without touching this message."""
        return replace(self, headers=list(self.headers))  # type: ignore[type-var]

    def with_body(self, body: bytes, content_type: str | None = None) -> Self:
        """A copy carrying `body` (see `set_body`)."""
        new = self.copy()
        new.set_body(body, content_type)
        return new

    def set_body(self, body: bytes, content_type: str | None = None) -> None:
        """Replace the body; set Content-Type (or drop it with an empty body). Content-Length follows."""
        self.body = bytes(body)
        if content_type is not None:
            self.set("Content-Type", content_type)
        elif not body:
            self.remove("Content-Type")

    # -- the headers a proxy routes by ------------------------------------
    def _required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise SipParseError(f"missing {name} header")
        return value

    @property
    def call_id(self) -> str:
        return self._required("Call-ID")

    @property
    def cseq(self) -> tuple[int, str]:
        """(sequence number, method) of the CSeq header."""
        return parse_cseq(self._required("CSeq"))

    @property
    def from_tag(self) -> str | None:
        return parse_name_addr(self._required("From")).tag

    @property
    def to_tag(self) -> str | None:
        return parse_name_addr(self._required("To")).tag

    @property
    def top_via(self) -> Via:
        vias = self.get_all("Via")
        if not vias:
            raise SipParseError("missing Via header")
        return parse_via(vias[0])

    @property
    def top_via_branch(self) -> str | None:
        return self.top_via.branch

    @property
    def content_type(self) -> str | None:
        """The media type of the body, lowercased, without parameters ('application/sdp')."""
        value = self.get("Content-Type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip(" \t").lower()

    # -- serializing ------------------------------------------------------
    def _start_line(self) -> str:
        raise NotImplementedError

    def _start_fields(self) -> tuple[object, ...]:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form. Unmodified parsed messages come out byte for byte as they went in."""
        raw = self._raw
        if (
            raw is not None
            and raw.start_fields == self._start_fields()
            and raw.headers == tuple(self.headers)
            and _declared_length(self.headers) == len(self.body)
        ):
            return raw.head + self.body
        lines = [self._start_line()]
        length_done = False
        for name, value in self.headers:
            if header_key(name) == "content-length":
                if length_done:
                    continue
                value = str(len(self.body))
                length_done = True
            lines.append(f"{name}: {value}")
        if not length_done:
            lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


def _is_digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²' and other scripts' digits."""
    return text.isascii() and text.isdigit()


def _declared_length(headers: Iterable[Header]) -> int | None:
    for name, value in headers:
        if header_key(name) == "content-length":
            return int(value) if _is_digits(value) and len(value) <= _MAX_CONTENT_LENGTH_DIGITS else None
    return None


@dataclass(frozen=True)
class _RawHead:
    """What a message looked like when parsed, to re-emit its exact bytes while unchanged."""

    start_fields: tuple[object, ...]
    headers: tuple[Header, ...]
    head: bytes


@dataclass
class SipRequest(_Message):
    method: str
    uri: str
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    version: str = SIP_VERSION
    _raw: _RawHead | None = field(default=None, repr=False, compare=False)

    def _start_fields(self) -> tuple[object, ...]:
        return (self.method, self.uri, self.version)

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} {self.version}"



@dataclass
class SipResponse(_Message):
    status: int
    reason: str
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""
    version: str = SIP_VERSION
    _raw: _RawHead | None = field(default=None, repr=False, compare=False)

    def _start_fields(self) -> tuple[object, ...]:
        return (self.status, self.reason, self.version)

    def _start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"



SipMessage = SipRequest | SipResponse


# ---------------------------------------------------------------------------
# Parsing a datagram
# ---------------------------------------------------------------------------


def is_keepalive(data: bytes) -> bool:
    """A RFC 5626 keep-alive (CRLFCRLF ping, CRLF pong): only line ends, no message."""
    return bool(data) and not data.strip(b"\r\n")


def parse_message(data: bytes) -> SipMessage:
    """Parse one SIP message from one datagram. Raises SipParseError."""
    data = bytes(data)
    if len(data) > MAX_MESSAGE_SIZE:
        raise SipParseError(
            f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_SIZE}", status=513
        )
    # RFC 3261 section 7.5: ignore line ends before the start line.
    message = data.lstrip(b"\r\n")
    if not message:
        raise SipParseError("empty message")
    blank = _BLANK_LINE_RE.search(message)
    if blank is None:
        raise SipParseError("no empty line after the headers (truncated message?)")
    head = message[: blank.end()]
    rest = message[blank.end() :]
    lines = _LINE_END_RE.split(message[: blank.start()].decode("utf-8", "surrogateescape"))
    start_line = lines[0]
    if len(start_line) > MAX_HEADER_LINE:
        raise SipParseError(f"start line longer than {MAX_HEADER_LINE} characters")
    headers = _parse_headers(lines[1:])
    body = _take_body(headers, rest)

    msg: SipMessage
    if start_line[:4].upper() == "SIP/":
        status, reason, version = _parse_status_line(start_line)
        msg = SipResponse(status, reason, headers, body, version)
    else:
        method, uri, version = _parse_request_line(start_line)
        msg = SipRequest(method, uri, headers, body, version)
    _check_mandatory(msg)
    msg._raw = _RawHead(msg._start_fields(), tuple(headers), head)
    return msg


def _parse_request_line(line: str) -> tuple[str, str, str]:
    # Trailing white space is tolerated (RFC 4475 3.1.2.10); more than one SP
    # between elements is not (3.1.2.9), nor LWS inside the URI (3.1.2.8).
    parts = line.rstrip(" \t").split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"malformed request line {_show(line)}")
    method, uri, version = parts
    if not _TOKEN_RE.match(method):
        raise SipParseError(f"invalid method {_show(method)}")
    if not _VERSION_RE.match(version):
        raise SipParseError(f"malformed SIP version {_show(version)}")
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"unsupported SIP version {_show(version)}", status=505)
    if not _URI_RE.match(uri):
        raise SipParseError(f"malformed Request-URI {_show(uri)}")
    if uri[:4].lower() == "sip:" or uri[:5].lower() == "sips:":
        sip_uri = parse_sip_uri(uri)
        if sip_uri.headers:
            # RFC 3261 19.1.5: headers are not allowed in a Request-URI (RFC 4475 3.1.2.11).
            raise SipParseError(f"Request-URI carries headers: {_show(uri)}")
    return method, uri, version


def _parse_status_line(line: str) -> tuple[int, str, str]:
    match = _STATUS_LINE_RE.match(line)
    if match is None:
        raise SipParseError(f"malformed status line {_show(line)}")
    version, code, reason = match.group(1), match.group(2), match.group(3) or ""
    if version.upper() != SIP_VERSION:
        raise SipParseError(f"unsupported SIP version {_show(version)}", status=505)
    if len(code) != 3 or not 100 <= int(code) <= 699:
        raise SipParseError(f"status code {_show(code)} is not in 100-699")
    return int(code), reason, version


def _parse_headers(lines: list[str]) -> list[Header]:
    headers: list[Header] = []
    for line in lines:
        if len(line) > MAX_HEADER_LINE:
            raise SipParseError(f"header line longer than {MAX_HEADER_LINE} characters")
        if line[:1] in (" ", "\t"):
            # A folded continuation: RFC 3261 7.3.1 makes the line end plus
            # leading white space equivalent to a single SP.
            if not headers:
                raise SipParseError("continuation line before any header")
            name, value = headers[-1]
            continuation = line.strip(" \t")
            value = f"{value} {continuation}" if value and continuation else value + continuation
            if len(name) + len(value) > MAX_HEADER_LINE:
                raise SipParseError(f"header {name} longer than {MAX_HEADER_LINE} characters")
            headers[-1] = (name, value)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon:
            raise SipParseError(f"header line without a colon: {_show(line)}")
        if not _TOKEN_RE.match(name):
            raise SipParseError(f"invalid header name {_show(name)}")
        headers.append((name, value.strip(" \t")))
        if len(headers) > MAX_HEADER_COUNT:
            raise SipParseError(f"more than {MAX_HEADER_COUNT} headers")
    return headers


def _take_body(headers: list[Header], rest: bytes) -> bytes:
    lengths = [value for name, value in headers if header_key(name) == "content-length"]
    if not lengths:
        return rest  # optional over UDP: the body is the rest of the datagram
    value = lengths[0]
    if not _is_digits(value) or len(value) > _MAX_CONTENT_LENGTH_DIGITS:
        raise SipParseError(f"invalid Content-Length {_show(value)}")
    length = int(value)
    if length > len(rest):
        raise SipParseError(
            f"Content-Length {length} exceeds the {len(rest)} bytes of body received"
        )
    # RFC 3261 18.3: octets after Content-Length in a datagram are discarded.
    return rest[:length]


def _check_mandatory(msg: SipMessage) -> None:
    for key in _SINGLE_HEADERS:
        if msg.count(key) > 1:
            raise SipParseError(f"more than one {key} header")
    for key in _MANDATORY_HEADERS:
        value = msg.get(key)
        if value is None or not value:
            raise SipParseError(f"missing {key} header")
    cseq_number, cseq_method = parse_cseq(msg._required("CSeq"))
    if isinstance(msg, SipRequest) and cseq_method != msg.method:
        raise SipParseError(
            f"CSeq method {_show(cseq_method)} does not match the request method {_show(msg.method)}"
        )
    max_forwards = msg.get("Max-Forwards")
    if max_forwards is not None and (
        not _is_digits(max_forwards) or len(max_forwards) > 5 or int(max_forwards) > 255
    ):
        raise SipParseError(f"invalid Max-Forwards {_show(max_forwards)}")
    # What a proxy routes and tracks dialogs by must parse, so that the
    # properties (top_via_branch, from_tag, to_tag) never fail later.
    msg.top_via  # noqa: B018
    parse_name_addr(msg._required("From"))
    parse_name_addr(msg._required("To"))


def parse_cseq(value: str) -> tuple[int, str]:
    """'314159 INVITE' -> (314159, 'INVITE'); the number must be below 2**31 (RFC 3261 8.1.1.5)."""
    match = _CSEQ_RE.match(value.strip(" \t"))
    if match is None:
        raise SipParseError(f"malformed CSeq {_show(value)}")
    digits = match.group(1)
    if len(digits) > 10 or int(digits) >= 2**31:
        raise SipParseError(f"CSeq number {_show(digits)} is not below 2**31")
    return int(digits), match.group(2)


def _show(text: str, limit: int = 80) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


# ---------------------------------------------------------------------------
# Answering locally
# ---------------------------------------------------------------------------


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[Header] = (),
) -> SipResponse:
    """A response to `request` built as RFC 3261 8.2.6.2 says: Via(s), From, To, Call-ID, CSeq copied.

    `to_tag` is added to To unless it already has one (in-dialog requests).
    `headers` are appended after those; the body is empty (Content-Length: 0).
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} is not in 100-699")
    if reason is None:
        reason = REASON_PHRASES.get(status, "Unknown")
    copied: list[Header] = [(name, value) for name, value in request.headers if header_key(name) == "via"]
    for name in ("From", "To", "Call-ID", "CSeq"):
        value = request._required(name)
        if name == "To" and to_tag is not None and parse_name_addr(value).tag is None:
            value = f"{value};tag={to_tag}"
        copied.append((name, value))
    response = SipResponse(status, reason, copied)
    for name, value in headers:
        response.append(name, value)
    response.append("Content-Length", "0")
    return response


def make_request(method: str, uri: str, *, via: str, from_: str, to: str, call_id: str, cseq: int,
                 headers: Iterable[Header] = ()) -> SipRequest:
    """A request of our own (RFC 3261 8.1.1): Via, Max-Forwards, From, To, Call-ID and `cseq method`,
    then `headers`. Bodiless (Content-Length: 0) until `set_body`."""
    request = SipRequest(method, uri, [])
    for name, value in (("Via", via), ("Max-Forwards", "70"), ("From", from_), ("To", to), ("Call-ID", call_id),
                        ("CSeq", f"{cseq} {method}"), *headers):
        request.append(name, value)
    request.append("Content-Length", "0")
    return request


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie and 64 random bits."""
    return BRANCH_MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag (64 random bits)."""
    return secrets.token_hex(8)


# ---------------------------------------------------------------------------
# Header values: parameters, Via, name-addr, SIP URIs
# ---------------------------------------------------------------------------


def _split_params(text: str) -> list[str]:
    """Split ';a=1;b;c="x;y"' at semicolons outside quoted strings (the text before the first ';' included)."""
    parts: list[str] = []
    start = 0
    in_quotes = False
    i = 0
    while i < len(text):
        ch = text[i]
        if in_quotes:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_quotes = False
        elif ch == '"':
            in_quotes = True
        elif ch == ";":
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if in_quotes:
        raise SipParseError(f"unterminated quoted string in {_show(text)}")
    parts.append(text[start:])
    return parts


def _parse_params(pieces: list[str], where: str) -> tuple[Param, ...]:
    params: list[Param] = []
    for piece in pieces:
        name, equals, value = piece.partition("=")
        name = name.strip(" \t")
        if not _TOKEN_RE.match(name):
            raise SipParseError(f"invalid parameter {_show(piece)} in {where}")
        if equals:
            value = value.strip(" \t")
            if not value:
                raise SipParseError(f"parameter {name} without a value in {where}")
            params.append((name, value))
        else:
            params.append((name, None))
    return tuple(params)


def _format_params(params: Iterable[Param]) -> str:
    return "".join(f";{name}" if value is None else f";{name}={value}" for name, value in params)


def _find_param(params: tuple[Param, ...], name: str) -> str | None:
    lowered = name.lower()
    for pname, value in params:
        if pname.lower() == lowered:
            return value
    return None


def _has_param(params: tuple[Param, ...], name: str) -> bool:
    lowered = name.lower()
    return any(pname.lower() == lowered for pname, _ in params)


def _set_param(params: tuple[Param, ...], name: str, value: str | None) -> tuple[Param, ...]:
    lowered = name.lower()
    if any(pname.lower() == lowered for pname, _ in params):
        return tuple((pname, value) if pname.lower() == lowered else (pname, v) for pname, v in params)
    return (*params, (name, value))


def _without_param(params: tuple[Param, ...], name: str) -> tuple[Param, ...]:
    lowered = name.lower()
    return tuple((pname, v) for pname, v in params if pname.lower() != lowered)


def _check_port(port: int | None) -> None:
    if port is not None and not 0 < port <= 65535:
        raise ValueError(f"port {port} is not in 1-65535")


def _format_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _parse_host(text: str, where: str) -> str:
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else ""
        if not inner or not _IPV6_RE.match(inner):
            raise SipParseError(f"invalid IPv6 reference {_show(text)} in {where}")
        return inner
    if not text or not _HOSTNAME_RE.match(text):
        raise SipParseError(f"invalid host {_show(text)} in {where}")
    return text


def _parse_port(text: str, where: str) -> int:
    if not _is_digits(text) or len(text) > 5 or not 0 < int(text) <= 65535:
        raise SipParseError(f"invalid port {_show(text)} in {where}")
    return int(text)


@dataclass(frozen=True)
class Via:
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`."""

    transport: str
    host: str
    """Sent-by host; an IPv6 address without its brackets."""
    port: int | None = None
    params: tuple[Param, ...] = ()
    protocol: str = SIP_VERSION

    @property
    def branch(self) -> str | None:
        return _find_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _find_param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The rport value a server filled in, or None (also for a bare `;rport` request)."""
        value = _find_param(self.params, "rport")
        return int(value) if value is not None and _is_digits(value) and len(value) <= 5 else None

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return _has_param(self.params, name)

    def with_sent_by(self, host: str, port: int | None) -> Via:
        _check_port(port)
        return replace(self, host=host, port=port)

    def with_param(self, name: str, value: str | None = None) -> Via:
        """Set (or add at the end) a parameter; value None makes a flag like `;rport`."""
        return replace(self, params=_set_param(self.params, name, value))

    def without_param(self, name: str) -> Via:
        return replace(self, params=_without_param(self.params, name))

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return (
            f"{self.protocol}/{self.transport} {_format_host(self.host)}{port}"
            f"{_format_params(self.params)}"
        )


def parse_via(value: str) -> Via:
    """Parse one Via value (not a comma-joined list: use `get_all('Via')` first)."""
    pieces = _split_params(value)
    match = _SENT_PROTOCOL_RE.match(pieces[0])
    if match is None:
        raise SipParseError(f"malformed Via {_show(value)}")
    name, version, transport, sent_by = match.groups()
    by = _SENT_BY_RE.match(sent_by)
    if by is None:
        raise SipParseError(f"malformed Via sent-by {_show(sent_by)}")
    host = _parse_host(by.group(1), "Via")
    port = _parse_port(by.group(2), "Via") if by.group(2) else None
    params = _parse_params(pieces[1:], "Via")
    return Via(transport, host, port, params, f"{name}/{version}")


def make_via(
    host: str, port: int | None, branch: str, *, transport: str = "UDP", rport: bool = True
) -> Via:
    """The Via a proxy puts on top: `SIP/2.0/UDP host:port;branch=...;rport`."""
    _check_port(port)
    params: tuple[Param, ...] = (("branch", branch),)
    if rport:
        params += (("rport", None),)
    return Via(transport, host, port, params)


@dataclass(frozen=True)
class SipUri:
    """A sip: or sips: URI split where a proxy needs it; user part, params and headers kept as written."""

    scheme: str
    userinfo: str | None
    host: str
    """An IPv6 address without its brackets."""
    port: int | None = None
    params: str = ""
    """';lr;transport=udp' as written, or ''."""
    headers: str = ""
    """'?Subject=x' as written, or ''."""

    def with_host_port(self, host: str, port: int | None) -> SipUri:
        _check_port(port)
        return replace(self, host=host, port=port)

    def param(self, name: str) -> str | None:
        return _find_param(_parse_params(_split_params(self.params)[1:], "URI"), name)

    def __str__(self) -> str:
        user = f"{self.userinfo}@" if self.userinfo is not None else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme}:{user}{_format_host(self.host)}{port}{self.params}{self.headers}"


def parse_sip_uri(uri: str) -> SipUri:
    """Split a sip:/sips: URI. Other schemes raise SipParseError with status 416."""
    scheme, colon, rest = uri.strip(" \t").partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        raise SipParseError(f"not a sip: or sips: URI: {_show(uri)}", status=416)
    # '@' may appear in neither host, params nor headers unescaped, but the
    # user part may hold ';' and '?' (RFC 3261 25.1 user-unreserved).
    at = rest.rfind("@")
    userinfo = rest[:at] if at >= 0 else None
    hostport = rest[at + 1 :]
    if userinfo == "":
        raise SipParseError(f"empty user part in {_show(uri)}")
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise SipParseError(f"unterminated IPv6 reference in {_show(uri)}")
        host_text, tail = hostport[: close + 1], hostport[close + 1 :]
    else:
        cut = len(hostport)
        for sep in ":;?":
            index = hostport.find(sep)
            if 0 <= index < cut:
                cut = index
        host_text, tail = hostport[:cut], hostport[cut:]
    host = _parse_host(host_text, "URI")
    port: int | None = None
    if tail.startswith(":"):
        end = len(tail)
        for sep in ";?":
            index = tail.find(sep)
            if 0 <= index < end:
                end = index
        port = _parse_port(tail[1:end], "URI")
        tail = tail[end:]
    question = tail.find("?")
    params, headers = (tail, "") if question < 0 else (tail[:question], tail[question:])
    if params and not params.startswith(";"):
        raise SipParseError(f"malformed URI {_show(uri)}")
    return SipUri(scheme, userinfo, host, port, params, headers)


def sip_uri_host_port(uri: str) -> tuple[str, int | None]:
    """(host, port or None) of a sip:/sips: URI; IPv6 hosts without brackets."""
    parsed = parse_sip_uri(uri)
    return parsed.host, parsed.port


def uri_with_host_port(uri: str, host: str, port: int | None) -> str:
    """The same URI (user, params, headers unchanged) pointing at host:port."""
    return str(parse_sip_uri(uri).with_host_port(host, port))


@dataclass(frozen=True)
class NameAddr:
    """A From/To/Contact/Route value: `"Name" <sip:user@host:port;uri-params>;tag=x`."""

    uri: str
    display_name: str | None = None
    """As written: a quoted string with its quotes, or tokens; None when absent."""
    params: tuple[Param, ...] = ()
    """Header parameters (after the URI), e.g. tag, expires, q."""
    bracketed: bool = True
    """Whether the URI was in <>; an addr-spec without <> is re-emitted the same way."""

    @property
    def tag(self) -> str | None:
        return _find_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _find_param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        return replace(self, params=_set_param(self.params, name, value))

    def with_uri(self, uri: str) -> NameAddr:
        return replace(self, uri=uri)

    def with_host_port(self, host: str, port: int | None) -> NameAddr:
        return replace(self, uri=uri_with_host_port(self.uri, host, port))

    def __str__(self) -> str:
        # Without <> a ';', ',' or '?' in the URI would be read as a header parameter.
        if self.display_name or self.bracketed or any(ch in self.uri for ch in ";,?"):
            display = f"{self.display_name} " if self.display_name else ""
            text = f"{display}<{self.uri}>"
        else:
            text = self.uri
        return text + _format_params(self.params)


def parse_name_addr(value: str) -> NameAddr:
    """Parse a name-addr or addr-spec with header parameters; '*' (Contact) gives uri '*'."""
    text = value.strip(" \t")
    if not text:
        raise SipParseError("empty address")
    display: str | None = None
    if text.startswith('"'):
        end = _quoted_string_end(text)
        display = text[:end]
        text = text[end:].lstrip(" \t")
        if not text.startswith("<"):
            raise SipParseError(f"display name not followed by <URI> in {_show(value)}")
    open_angle = text.find("<")
    if open_angle >= 0:
        tokens = text[:open_angle].strip(" \t")
        if tokens:
            if display is not None:
                raise SipParseError(f"two display names in {_show(value)}")
            display = tokens
        close_angle = text.find(">", open_angle)
        if close_angle < 0:
            raise SipParseError(f"unterminated <URI> in {_show(value)}")
        # LWS inside <> is invalid (RFC 4475 3.1.2.14) but harmless to strip.
        uri = text[open_angle + 1 : close_angle].strip(" \t")
        rest = text[close_angle + 1 :].strip(" \t")
        bracketed = True
        if rest and not rest.startswith(";"):
            raise SipParseError(f"unexpected text after <URI> in {_show(value)}")
        pieces = _split_params(rest)[1:] if rest else []
    else:
        # RFC 3261 20: without <>, parameters after the URI are header parameters.
        pieces = _split_params(text)
        uri = pieces.pop(0).strip(" \t")
        bracketed = False
        if any(ch in uri for ch in " \t,?"):
            raise SipParseError(f"malformed addr-spec {_show(value)}")
    if not uri:
        raise SipParseError(f"empty URI in {_show(value)}")
    if uri != "*" and not _URI_RE.match(uri):
        raise SipParseError(f"malformed URI {_show(uri)}")
    return NameAddr(uri, display, _parse_params(pieces, "address"), bracketed)


def _quoted_string_end(text: str) -> int:
    """Index just past the closing quote of the quoted string `text` starts with."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    raise SipParseError(f"unterminated quoted string in {_show(text)}")


def name_addr_with_host_port(value: str, host: str, port: int | None) -> str:
    """A From/To/Contact value with its URI's host and port replaced (display name, params kept)."""
    return str(parse_name_addr(value).with_host_port(host, port))
