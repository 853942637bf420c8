"""The `stc-admit` FastAGI script: bind an Asterisk channel to a certificate identity.

stc-server marks each INVITE it relays with a per-call token in `X-STC-Token`
(and strips that header from clients). The dialplan runs this script before
`ConfBridge(room)`. It reads the token from the INVITE and asks the server what
it vouches for: the token is a signed binding (stc_wire.binding) that any server
of the deployment can verify, naming the certificate, the room and the SIP Call-ID.
The script checks that the channel's Call-ID and room are the ones named, checks
the room policy, reports the binding, and marks the channel (CALLERID(name),
STC_IDENTITY, STC_FINGERPRINT, STC_BINDING: the binding sealed to this channel's
uniqueid, STC_ADMITTED=1). Anything else hangs the channel up before it reaches
the conference. A token admits one channel: remembered in memory (a second line;
after a restart the Call-ID check and the expiry still bound a replay).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol

from .protocol import AgiError, AgiHangup, AgiRequest
from .server import AgiSession

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-STC-Token"
# A signed binding is base64url; at most stc_wire.binding.MAX_BINDING_CHARS.
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~+/=-]{1,1900}")
BINDING_VARIABLE = "STC_BINDING"
_CALL_ID_EXPRESSION = "${PJSIP_HEADER(read,Call-ID)}"
_MAX_ROOM_LEN = 80


class IdentityLike(Protocol):
    """What admission reads of `stc_wire.identity.PeerIdentity`."""

    @property
    def display_name(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def fingerprint_sha256(self) -> str: ...


@dataclass(frozen=True)
class Admission:
    """What the server knows about a token: the tunnel's certificate identity."""

    identity: Any  # a PeerIdentity (IdentityLike plus organization, org_unit, sip_uris, emails)
    call_ref: str = ""  # the server's name for the call, for logs only
    call_id: str | None = None  # the SIP Call-ID the token names: the channel's must be the same
    room: str | None = None  # the room the token names: the dialplan's must be the same
    seal: Callable[[str], str] | None = None  # channel uniqueid -> the STC_BINDING value to store


class TokenRefused(Exception):
    """lookup_token's answer for a token it refuses with a precise reason (one of Refusal's)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Refusal:
    """Reasons a channel is hung up (also set as STC_REFUSED on the channel)."""

    NO_ROOM = "no-room"
    NO_CHANNEL = "no-channel"
    TOKEN_MISSING = "token-missing"
    TOKEN_MALFORMED = "token-malformed"
    TOKEN_UNKNOWN = "token-unknown"
    TOKEN_REUSED = "token-reused"
    TOKEN_FORGED = "token-forged"  # the signature does not verify, or no trusted server signed it
    TOKEN_EXPIRED = "token-expired"
    WRONG_CALL = "token-wrong-call"  # issued for another SIP Call-ID
    WRONG_ROOM = "token-wrong-room"  # issued for another room
    POLICY = "policy-refused"
    INTERNAL = "internal-error"


def normalize_fingerprint(value: str) -> str:
    """`AB:CD:...` or `abcd...` -> `abcd...`."""
    return value.replace(":", "").replace(" ", "").lower()


def _values(identity: Any, attribute: str) -> tuple[str, ...]:
    value = getattr(identity, attribute, None)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value)
    return (str(value),)


_RULE_KEYS = ("cn", "o", "ou", "sip_uri", "email", "fingerprint")


@dataclass(frozen=True)
class PolicyRule:
    """All given fields must match; a rule with no field matches any valid certificate.

    cn, o, ou: exact match on the subject's CN (display_name), O, OU.
    sip_uri, email: case-insensitive match on one of the SAN entries.
    fingerprint: SHA-256 of the certificate, with or without colons.
    """

    cn: str | None = None
    o: str | None = None
    ou: str | None = None
    sip_uri: str | None = None
    email: str | None = None
    fingerprint: str | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "PolicyRule":
        unknown = set(raw) - set(_RULE_KEYS) - {"any"}
        if unknown:
            raise ValueError(f"unknown policy rule key(s): {', '.join(sorted(unknown))}")
        if "any" in raw:
            if raw["any"] is not True or len(raw) > 1:
                raise ValueError("a rule with 'any' must be exactly {any = true}")
            return cls()
        values: dict[str, str] = {}
        for key in _RULE_KEYS:
            if key in raw:
                if not isinstance(raw[key], str) or not raw[key]:
                    raise ValueError(f"policy rule {key!r} must be a non-empty string")
                values[key] = raw[key]
        if not values:
            raise ValueError("an empty rule: write {any = true} to admit any valid certificate")
        return cls(**values)

    def matches(self, identity: Any) -> bool:
        if self.cn is not None and self.cn not in _values(identity, "display_name"):
            return False
        if self.o is not None and self.o not in _values(identity, "organization"):
            return False
        if self.ou is not None and self.ou not in _values(identity, "org_unit"):
            return False
        if self.sip_uri is not None and self.sip_uri.lower() not in {v.lower() for v in _values(identity, "sip_uris")}:
            return False
        if self.email is not None and self.email.lower() not in {v.lower() for v in _values(identity, "emails")}:
            return False
        if self.fingerprint is not None:
            have = {normalize_fingerprint(v) for v in _values(identity, "fingerprint_sha256")}
            if normalize_fingerprint(self.fingerprint) not in have:
                return False
        return True


@dataclass(frozen=True)
class RoomPolicy:
    """Who may join which room: rules per room name, `*` for rooms not listed.

    A room without rules (and no `*`) admits any valid certificate; a room
    listed with an empty list admits nobody.
    """

    rooms: Mapping[str, tuple[PolicyRule, ...]] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Iterable[Mapping[str, Any]]]) -> "RoomPolicy":
        rooms: dict[str, tuple[PolicyRule, ...]] = {}
        for room, rules in raw.items():
            if isinstance(rules, (str, bytes, Mapping)):
                raise ValueError(f"room {room!r}: rules must be a list of tables")
            try:
                rooms[str(room)] = tuple(PolicyRule.from_mapping(rule) for rule in rules)
            except ValueError as exc:
                raise ValueError(f"room {room!r}: {exc}") from None
        return cls(rooms)

    def rules_for(self, room: str) -> tuple[PolicyRule, ...] | None:
        if room in self.rooms:
            return self.rooms[room]
        return self.rooms.get("*")

    def allows(self, room: str, identity: Any) -> bool:
        rules = self.rules_for(room)
        if rules is None:
            return True
        return any(rule.matches(identity) for rule in rules)


@dataclass
class AdmissionCounters:
    admitted: int = 0
    refused: Counter[str] = field(default_factory=Counter)


OnAdmit = Callable[[AgiRequest, Any, str], None]
OnRefuse = Callable[[AgiRequest, str, str], None]  # (request, room, reason)


def room_of(request: AgiRequest) -> str:
    """The conference name: AGI's first argument if given, else the dialled extension."""
    if request.args and request.args[0]:
        return request.args[0]
    return request.extension


def _one_line(value: str) -> str:
    # An AGI command is one line: a certificate name with a line break or NUL must not end it.
    return "".join(" " if ch in "\r\n\x00" else ch for ch in value)


def _token_tag(token: str) -> str:
    # Tokens are bearer secrets for the life of a call: log a digest, not the value.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


class AdmissionHandler:
    """The FastAGI handler; see the module docstring. Build with make_admission_handler()."""

    def __init__(
        self,
        lookup_token: Callable[[str], Admission | None],
        policy: RoomPolicy,
        on_admit: OnAdmit,
        *,
        header: str = TOKEN_HEADER,
        max_bindings: int = 4096,
        on_refuse: OnRefuse | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9-]+", header):
            raise ValueError(f"bad SIP header name {header!r}")
        self._lookup_token = lookup_token
        self._policy = policy
        self._on_admit = on_admit
        self._on_refuse = on_refuse
        self._expression = f"${{PJSIP_HEADER(read,{header})}}"
        self._max_bindings = max_bindings
        # token digest -> channel uniqueid: a token admits one channel only.
        self._bound: OrderedDict[str, str] = OrderedDict()
        self.counters = AdmissionCounters()

    def set_policy(self, policy: RoomPolicy) -> None:
        """A reloaded room policy: for channels admitted from now on (those in a room stay)."""
        self._policy = policy

    async def __call__(self, session: AgiSession) -> None:
        request = session.request
        room = room_of(request)
        if not request.uniqueid:
            await self._refuse(session, Refusal.NO_CHANNEL, "the request carries no agi_uniqueid")
            return
        if not room or len(room) > _MAX_ROOM_LEN or not room.isprintable():
            await self._refuse(session, Refusal.NO_ROOM, f"no usable room name ({room[:40]!r})")
            return
        token = await session.get_full_variable(self._expression)
        if not token:
            await self._refuse(session, Refusal.TOKEN_MISSING, f"room {room}: the INVITE carries no token")
            return
        if not _TOKEN_RE.fullmatch(token):
            await self._refuse(session, Refusal.TOKEN_MALFORMED, f"room {room}: malformed token ({len(token)} chars)")
            return
        tag = _token_tag(token)
        try:
            admission = self._lookup_token(token)
        except TokenRefused as exc:
            await self._refuse(session, exc.reason, f"room {room}: token {tag}: {exc.detail}")
            return
        if admission is None:
            await self._refuse(session, Refusal.TOKEN_UNKNOWN, f"room {room}: unknown token {tag}")
            return
        identity = admission.identity
        if admission.room is not None and admission.room != room:
            await self._refuse(session, Refusal.WRONG_ROOM, f"room {room}: token {tag} was issued for another room")
            return
        if admission.call_id is not None:
            # Bind the token to this SIP dialog: a token lifted from one INVITE admits no other call.
            call_id = await session.get_full_variable(_CALL_ID_EXPRESSION)
            if call_id != admission.call_id:
                await self._refuse(session, Refusal.WRONG_CALL,
                                   f"room {room}: token {tag} was issued for another SIP Call-ID")
                return
        bound_to = self._bound.get(tag)
        if bound_to is not None and bound_to != request.uniqueid:
            await self._refuse(
                session, Refusal.TOKEN_REUSED, f"room {room}: token {tag} already admitted channel {bound_to}"
            )
            return
        self._bind(tag, request.uniqueid)
        if not self._policy.allows(room, identity):
            await self._refuse(session, Refusal.POLICY, f"room {room}: {identity.subject} is not allowed in by policy")
            return
        try:
            sealed = admission.seal(request.uniqueid) if admission.seal is not None else None
            self._on_admit(request, identity, room)
        except Exception:
            session.log.exception("on_admit failed for %s", identity.subject)
            await self._refuse(session, Refusal.INTERNAL, "the server could not record the admission")
            return
        await session.set_variable("CALLERID(name)", _one_line(identity.display_name or identity.subject))
        await session.set_variable("STC_IDENTITY", _one_line(identity.subject))
        await session.set_variable("STC_FINGERPRINT", _one_line(identity.fingerprint_sha256))
        if sealed is not None:
            await session.set_variable(BINDING_VARIABLE, sealed)
        await session.set_variable("STC_ADMITTED", "1")
        self.counters.admitted += 1
        session.log.info(
            "admitted %s (%s) to room %s%s",
            identity.subject,
            identity.fingerprint_sha256,
            room,
            f" [call {admission.call_ref}]" if admission.call_ref else "",
        )

    def _bind(self, tag: str, uniqueid: str) -> None:
        self._bound[tag] = uniqueid
        self._bound.move_to_end(tag)
        while len(self._bound) > self._max_bindings:
            self._bound.popitem(last=False)

    async def _refuse(self, session: AgiSession, reason: str, detail: str) -> None:
        self.counters.refused[reason] += 1
        session.log.warning("refused (%s): %s; hanging up", reason, detail)
        if self._on_refuse is not None:
            try:
                self._on_refuse(session.request, room_of(session.request), reason)
            except Exception:
                session.log.exception("on_refuse failed")
        try:
            await session.set_variable("STC_REFUSED", reason)
            await session.hangup()
        except AgiHangup:
            session.log.info("channel already gone")
        except AgiError as exc:
            session.log.warning("hang-up after refusal not confirmed: %s", exc)


def make_admission_handler(
    lookup_token: Callable[[str], Admission | None],
    policy: RoomPolicy,
    on_admit: OnAdmit,
    *,
    header: str = TOKEN_HEADER,
    on_refuse: OnRefuse | None = None,
) -> AdmissionHandler:
    """The `stc-admit` handler for FastAgiServer(handlers={"stc-admit": ...})."""
    return AdmissionHandler(lookup_token, policy, on_admit, header=header, on_refuse=on_refuse)
