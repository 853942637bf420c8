"""The signed roster: who is in a conference room, as the server vouches for it.

Pure code. The server builds a `Roster` per room from ConfBridge's state and
the admission bindings, signs it with its TLS certificate's private key
(`RosterSigner`) and sends `SignedRoster.to_bytes()` in a ROSTER frame. The
client checks it with the server's public key (`RosterVerifier`).

Wire format of a signed roster (all integers big-endian):

    b"STCR" | format u8 (=1) | algorithm u8 | payload length u32 | payload
            | signature length u16 | signature

The payload is the roster as canonical JSON (sorted keys, no spaces, UTF-8,
non-ASCII kept as is). The signature covers `b"stc-roster-v1\\0" | algorithm |
payload`, so a signature cannot be replayed under another algorithm or taken
for another kind of stc message.

Listeners: besides the entries, a roster may carry `listeners`, everything else in Asterisk that
hears the room or one participant without being in the bridge (ChanSpy, MixMonitor, the ConfBridge
recorder, ARI snoop channels, ...), and what the server did about each. The key is left out when
there is none, so a roster without listeners is byte for byte what older clients already accept
(and an older client refuses, rather than silently shows, a roster it cannot fully display).

Versions: a roster's `version` is per room and must grow; `RosterVersions`
starts each room at the current time in microseconds, so a restarted server
never reissues a version a client has already seen (unless its clock went back).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Collection, Literal, Mapping, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from stc_wire.identity import PeerIdentity

ROSTER_FORMAT = 1
MAGIC = b"STCR"
SIGNATURE_CONTEXT = b"stc-roster-v1\x00"
# A ROSTER frame carries at most 256 KiB (stc_wire.framing.MAX_PAYLOAD).
MAX_SIGNED_ROSTER = 256 * 1024
_HEAD = struct.Struct(">4sBBI")
_SIGLEN = struct.Struct(">H")
_MIN_RSA_BITS = 2048

RosterState = Literal["ok", "unknown"]
RejectReason = Literal["bad-signature", "stale-version", "replayed", "wrong-room", "wrong-server", "malformed",
                       "too-old", "from-the-future"]
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey]


class RosterError(ValueError):
    """A roster value or its JSON is not valid."""


class RosterRejected(Exception):
    """The client refuses a signed roster. `reason` is a short code; str() is for people."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: RejectReason = reason
        self.message = message


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8 with non-ASCII kept: one byte string per value."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        raise RosterError(f"not encodable as canonical JSON: {exc}") from None


def iso_utc(moment: datetime) -> str:
    """`2026-05-01T10:00:00.123000Z`: aware datetime -> the roster's time format."""
    if moment.tzinfo is None:
        raise RosterError("a roster time needs a time zone")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def normalize_time(text: str, name: str) -> str:
    """Any ISO 8601 time with a zone (ARI's `+0000` included) -> iso_utc form."""
    if not isinstance(text, str):
        raise RosterError(f"{name} must be a string")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RosterError(f"{name} is not an ISO 8601 time: {text[:40]!r}") from None
    return iso_utc(moment)


def identity_json(identity: PeerIdentity | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A PeerIdentity (or its JSON) -> the JSON object a roster entry carries."""
    if identity is None:
        return None
    if isinstance(identity, PeerIdentity):
        return identity.to_json()
    return dict(identity)


@dataclass(frozen=True)
class RosterEntry:
    """One channel in a ConfBridge room."""

    channel_id: str  # Asterisk uniqueid (= ARI channel id)
    room: str
    # PeerIdentity.to_json() of the certificate admitted on this channel;
    # None: UNAUTHENTICATED (in the bridge without an admission binding).
    identity: dict[str, Any] | None
    channel_name: str  # e.g. PJSIP/stc-00000003
    # Only for unauthenticated entries: what Asterisk says the caller is (not verified).
    caller_id: str | None
    joined_at: str  # ISO 8601 UTC
    talking: bool = False

    def __post_init__(self) -> None:
        for name in ("channel_id", "room", "channel_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise RosterError(f"entry {name} must be a non-empty string")
        if self.identity is not None:
            if not isinstance(self.identity, dict):
                raise RosterError("entry identity must be an object or null")
            try:
                PeerIdentity.from_json(self.identity)
            except ValueError as exc:
                raise RosterError(f"entry identity: {exc}") from None
            if self.caller_id is not None:
                raise RosterError("an authenticated entry carries no caller_id")
        if self.caller_id is not None and not isinstance(self.caller_id, str):
            raise RosterError("entry caller_id must be a string or null")
        if not isinstance(self.talking, bool):
            raise RosterError("entry talking must be a boolean")
        object.__setattr__(self, "joined_at", normalize_time(self.joined_at, "entry joined_at"))

    @property
    def authenticated(self) -> bool:
        return self.identity is not None

    def peer_identity(self) -> PeerIdentity | None:
        return None if self.identity is None else PeerIdentity.from_json(self.identity)

    @property
    def display_name(self) -> str:
        """What a client shows: the certificate name, or the unverified caller id."""
        if self.identity is not None:
            return str(self.identity.get("display_name", ""))
        return self.caller_id or self.channel_name

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_id": self.channel_id,
            "room": self.room,
            "identity": self.identity,
            "channel_name": self.channel_name,
            "caller_id": self.caller_id,
            "joined_at": self.joined_at,
            "talking": self.talking,
        }

    @classmethod
    def from_json(cls, obj: Any) -> "RosterEntry":
        if not isinstance(obj, dict):
            raise RosterError("an entry must be an object")
        expected = {"channel_id", "room", "identity", "channel_name", "caller_id", "joined_at", "talking"}
        if set(obj) != expected:
            raise RosterError(f"entry keys must be {sorted(expected)}, got {sorted(obj)}")
        return cls(**obj)

    def _sort_key(self) -> tuple[str, str]:
        return (self.joined_at, self.channel_id)


LISTENER_KINDS = ("chanspy", "snoop", "mixmonitor", "confbridge-record", "recording", "external-media", "other")
HEARS_ROOM = "room"
# What the server did: it is stopping it, it stopped it (and waits for Asterisk to confirm),
# it only shows it (policy 'show'), or "failed: <why>".
LISTENER_ACTIONS = ("stopping", "stopped", "shown")
MAX_ACTION_CHARS = 200


@dataclass(frozen=True)
class RosterListener:
    """Something that hears a participant (or the whole room) without being a participant."""

    kind: str  # one of LISTENER_KINDS; a client shows an unknown kind as "other"
    hears: str  # the heard participant's channel_id, or "room"
    channel: str  # the listening channel (ChanSpy's, Snoop/..., CBRec/...) or, for MixMonitor, the recorded one
    since: str  # ISO 8601 UTC
    action: str  # one of LISTENER_ACTIONS, or "failed: <why>"

    def __post_init__(self) -> None:
        for name in ("kind", "hears", "channel", "action"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise RosterError(f"listener {name} must be a non-empty string")
        if len(self.action) > MAX_ACTION_CHARS:
            raise RosterError(f"listener action longer than {MAX_ACTION_CHARS} characters")
        if self.action not in LISTENER_ACTIONS and not self.action.startswith("failed: "):
            raise RosterError(f"listener action {self.action[:40]!r} is not one of {LISTENER_ACTIONS} or 'failed: ...'")
        object.__setattr__(self, "since", normalize_time(self.since, "listener since"))

    @property
    def hears_room(self) -> bool:
        return self.hears == HEARS_ROOM

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "hears": self.hears, "channel": self.channel, "since": self.since,
                "action": self.action}

    @classmethod
    def from_json(cls, obj: Any) -> "RosterListener":
        if not isinstance(obj, dict):
            raise RosterError("a listener must be an object")
        expected = {"kind", "hears", "channel", "since", "action"}
        if set(obj) != expected:
            raise RosterError(f"listener keys must be {sorted(expected)}, got {sorted(obj)}")
        return cls(**obj)

    def _sort_key(self) -> tuple[str, str, str, str]:
        return (self.since, self.kind, self.channel, self.hears)


@dataclass(frozen=True)
class Roster:
    """One room's participants, as of `issued_at`. Entries are kept sorted by (joined_at, channel_id)."""

    server_id: str
    room: str
    version: int
    issued_at: str
    state: RosterState = "ok"  # 'unknown': Asterisk unreachable, entries are empty
    entries: tuple[RosterEntry, ...] = field(default=())
    # Who else hears the room; kept sorted by (since, kind, channel, hears).
    listeners: tuple[RosterListener, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.server_id, str) or not self.server_id:
            raise RosterError("server_id must be a non-empty string")
        if not isinstance(self.room, str) or not self.room:
            raise RosterError("room must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 0:
            raise RosterError("version must be a non-negative integer")
        if self.state not in ("ok", "unknown"):
            raise RosterError(f"state must be 'ok' or 'unknown', not {self.state!r}")
        object.__setattr__(self, "issued_at", normalize_time(self.issued_at, "issued_at"))
        entries = tuple(self.entries)
        for entry in entries:
            if not isinstance(entry, RosterEntry):
                raise RosterError("entries must be RosterEntry values")
            if entry.room != self.room:
                raise RosterError(f"entry {entry.channel_id} is for room {entry.room!r}, not {self.room!r}")
        if len({e.channel_id for e in entries}) != len(entries):
            raise RosterError("a channel appears twice")
        object.__setattr__(self, "entries", tuple(sorted(entries, key=RosterEntry._sort_key)))
        listeners = tuple(self.listeners)
        channel_ids = {e.channel_id for e in entries}
        for listener in listeners:
            if not isinstance(listener, RosterListener):
                raise RosterError("listeners must be RosterListener values")
            if not listener.hears_room and listener.hears not in channel_ids:
                raise RosterError(f"listener {listener.channel} hears {listener.hears!r}, not a channel of this roster")
        if len({(li.kind, li.channel, li.hears) for li in listeners}) != len(listeners):
            raise RosterError("a listener appears twice")
        object.__setattr__(self, "listeners", tuple(sorted(listeners, key=RosterListener._sort_key)))

    @property
    def unauthenticated(self) -> tuple[RosterEntry, ...]:
        return tuple(e for e in self.entries if e.identity is None)

    @property
    def authenticated(self) -> tuple[RosterEntry, ...]:
        return tuple(e for e in self.entries if e.identity is not None)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": ROSTER_FORMAT,
            "server_id": self.server_id,
            "room": self.room,
            "version": self.version,
            "issued_at": self.issued_at,
            "state": self.state,
            "entries": [e.to_json() for e in self.entries],
        } | ({"listeners": [li.to_json() for li in self.listeners]} if self.listeners else {})

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, obj: Any) -> "Roster":
        if not isinstance(obj, dict):
            raise RosterError("a roster must be an object")
        expected = {"format", "server_id", "room", "version", "issued_at", "state", "entries"}
        if set(obj) - {"listeners"} != expected:
            raise RosterError(f"roster keys must be {sorted(expected)} (and 'listeners'), got {sorted(obj)}")
        listeners = obj.get("listeners", [])
        if not isinstance(listeners, list) or ("listeners" in obj and not listeners):
            raise RosterError("listeners must be a non-empty list when present")
        if obj["format"] != ROSTER_FORMAT:
            raise RosterError(f"unsupported roster format {obj['format']!r}")
        if not isinstance(obj["entries"], list):
            raise RosterError("entries must be a list")
        return cls(
            server_id=obj["server_id"],
            room=obj["room"],
            version=obj["version"],
            issued_at=obj["issued_at"],
            state=obj["state"],
            entries=tuple(RosterEntry.from_json(e) for e in obj["entries"]),
            listeners=tuple(RosterListener.from_json(li) for li in listeners),
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> "Roster":
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RosterError(f"payload is not UTF-8 JSON: {exc}") from None
        return cls.from_json(obj)


class RosterVersions:
    """Hands out roster versions: per room, greater than the last one and at least `now_us`."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, room: str, now_us: int) -> int:
        version = max(self._last.get(room, 0) + 1, now_us)
        self._last[room] = version
        return version


# --- signatures -----------------------------------------------------------------


@dataclass(frozen=True)
class _Algorithm:
    code: int
    name: str


ECDSA_P256_SHA256 = _Algorithm(1, "ecdsa-p256-sha256")
ECDSA_P384_SHA384 = _Algorithm(2, "ecdsa-p384-sha384")
RSA_PSS_SHA256 = _Algorithm(3, "rsa-pss-sha256")
ED25519 = _Algorithm(4, "ed25519")
_ALGORITHMS = {a.code: a for a in (ECDSA_P256_SHA256, ECDSA_P384_SHA384, RSA_PSS_SHA256, ED25519)}
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)


def algorithm_for(key: PrivateKey | PublicKey) -> _Algorithm:
    """The one signature algorithm stc uses with this kind of key."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return ECDSA_P256_SHA256
        if isinstance(key.curve, ec.SECP384R1):
            return ECDSA_P384_SHA384
        raise ValueError(f"unsupported EC curve {key.curve.name}")
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        if key.key_size < _MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits: at least {_MIN_RSA_BITS} needed")
        return RSA_PSS_SHA256
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return ED25519
    raise ValueError(f"unsupported key type {type(key).__name__}")


def _signed_data(code: int, payload: bytes) -> bytes:
    return SIGNATURE_CONTEXT + bytes([code]) + payload


def sign_data(key: PrivateKey, data: bytes) -> tuple[int, bytes]:
    """(algorithm code, signature) over `data` with stc's algorithm for this key. The caller puts
    its own context string in `data`, so a signature made for one purpose never passes for another."""
    algorithm = algorithm_for(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        digest = hashes.SHA256() if algorithm is ECDSA_P256_SHA256 else hashes.SHA384()
        return algorithm.code, key.sign(data, ec.ECDSA(digest))
    if isinstance(key, rsa.RSAPrivateKey):
        return algorithm.code, key.sign(data, _PSS, hashes.SHA256())
    return algorithm.code, key.sign(data)


def verify_data(public_key: PublicKey, code: int, data: bytes, signature: bytes) -> bool:
    """True if `signature` over `data` was made by this key's owner with algorithm `code`."""
    algorithm = algorithm_for(public_key)
    if code != algorithm.code:
        return False
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            digest = hashes.SHA256() if algorithm is ECDSA_P256_SHA256 else hashes.SHA384()
            public_key.verify(signature, data, ec.ECDSA(digest))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, _PSS, hashes.SHA256())
        else:
            public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class SignedRoster:
    """A roster's canonical bytes and the server's signature over them."""

    algorithm: int
    payload: bytes
    signature: bytes

    @property
    def algorithm_name(self) -> str:
        algorithm = _ALGORITHMS.get(self.algorithm)
        return algorithm.name if algorithm else f"unknown-{self.algorithm}"

    def to_bytes(self) -> bytes:
        return (
            _HEAD.pack(MAGIC, ROSTER_FORMAT, self.algorithm, len(self.payload))
            + self.payload
            + _SIGLEN.pack(len(self.signature))
            + self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "SignedRoster":
        """Split the envelope (nothing verified yet); RosterRejected('malformed') if it is not one."""
        if len(data) > MAX_SIGNED_ROSTER:
            raise RosterRejected("malformed", f"{len(data)} bytes, more than {MAX_SIGNED_ROSTER}")
        if len(data) < _HEAD.size + _SIGLEN.size:
            raise RosterRejected("malformed", f"only {len(data)} bytes")
        magic, fmt, algorithm, length = _HEAD.unpack_from(data)
        if magic != MAGIC:
            raise RosterRejected("malformed", "not a signed roster (bad magic)")
        if fmt != ROSTER_FORMAT:
            raise RosterRejected("malformed", f"unsupported format {fmt}")
        start = _HEAD.size
        end = start + length
        if end + _SIGLEN.size > len(data):
            raise RosterRejected("malformed", "payload length runs past the end")
        (siglen,) = _SIGLEN.unpack_from(data, end)
        if end + _SIGLEN.size + siglen != len(data):
            raise RosterRejected("malformed", "signature length does not match the data")
        return cls(algorithm, bytes(data[start:end]), bytes(data[end + _SIGLEN.size :]))

    def unverified_roster(self) -> Roster:
        """The roster without any check: for logs and tools, never for display."""
        return Roster.from_bytes(self.payload)


class RosterSigner:
    """Signs rosters with the server's TLS certificate key (EC P-256/P-384, RSA >= 2048, Ed25519)."""

    def __init__(self, private_key: PrivateKey) -> None:
        self._algorithm = algorithm_for(private_key)
        self._key = private_key

    @property
    def algorithm(self) -> str:
        return self._algorithm.name

    @property
    def algorithm_code(self) -> int:
        return self._algorithm.code

    def sign_data(self, data: bytes) -> tuple[int, bytes]:
        """(algorithm code, signature) over `data`, which starts with its own context string."""
        return sign_data(self._key, data)

    def sign(self, roster: Roster) -> SignedRoster:
        payload = roster.canonical_bytes()
        data = _signed_data(self._algorithm.code, payload)
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            digest = hashes.SHA256() if self._algorithm is ECDSA_P256_SHA256 else hashes.SHA384()
            signature = key.sign(data, ec.ECDSA(digest))
        elif isinstance(key, rsa.RSAPrivateKey):
            signature = key.sign(data, _PSS, hashes.SHA256())
        else:
            signature = key.sign(data)
        signed = SignedRoster(self._algorithm.code, payload, signature)
        if len(signed.to_bytes()) > MAX_SIGNED_ROSTER:
            raise RosterError(f"signed roster for room {roster.room} exceeds {MAX_SIGNED_ROSTER} bytes")
        return signed


def verify_signature(public_key: PublicKey, signed: SignedRoster) -> None:
    """Raise RosterRejected('bad-signature') unless `signed` was signed by this key's owner."""
    algorithm = algorithm_for(public_key)
    if signed.algorithm != algorithm.code:
        raise RosterRejected(
            "bad-signature", f"signed with {signed.algorithm_name}, the server key uses {algorithm.name}"
        )
    data = _signed_data(signed.algorithm, signed.payload)
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            digest = hashes.SHA256() if algorithm is ECDSA_P256_SHA256 else hashes.SHA384()
            public_key.verify(signed.signature, data, ec.ECDSA(digest))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signed.signature, data, _PSS, hashes.SHA256())
        else:
            public_key.verify(signed.signature, data)
    except InvalidSignature:
        raise RosterRejected("bad-signature", "the signature does not verify with the server key") from None


class RosterVerifier:
    """Client side: accepts only rosters signed by the server, for the expected room, each newer than the last.

    `room` / `server_id`: when given, rosters for another room / server are refused.
    `max_age` (seconds): when given, a roster whose `issued_at` is older than that, or further
    than that in the future (clock skew), is refused: a recorded roster cannot be replayed later
    to a fresh verifier (one per tunnel) as if it were the room's present.
    """

    def __init__(
        self,
        server_public_key: PublicKey,
        *,
        room: str | None = None,
        server_id: str | None = None,
        max_age: float | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        replay_memory: int = 1024,
    ) -> None:
        algorithm_for(server_public_key)  # refuse an unusable key now, not at the first roster
        self._key = server_public_key
        self.room = room
        self.server_id = server_id
        self.max_age = max_age
        self._clock = clock
        self._last: dict[str, int] = {}
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._replay_memory = replay_memory

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate, **kwargs: Any) -> "RosterVerifier":
        key = certificate.public_key()
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise ValueError(f"unsupported server key type {type(key).__name__}")
        return cls(key, **kwargs)

    def last_version(self, room: str) -> int | None:
        return self._last.get(room)

    def accept(self, signed: SignedRoster | bytes, *, rooms: Collection[str] | None = None) -> Roster:
        """The verified roster, or RosterRejected with the reason.

        `rooms`: the rooms the caller is in right now (checked besides `room`, if given).
        """
        if isinstance(signed, (bytes, bytearray, memoryview)):
            signed = SignedRoster.from_bytes(bytes(signed))
        verify_signature(self._key, signed)
        try:
            roster = Roster.from_bytes(signed.payload)
        except RosterError as exc:
            raise RosterRejected("malformed", str(exc)) from None
        digest = hashlib.sha256(bytes([signed.algorithm]) + signed.payload).digest()
        self.admit(roster, digest, rooms=rooms)
        return roster

    @property
    def public_key(self) -> PublicKey:
        return self._key

    def check_origin(self, server_id: str, room: str, issued_at: str, *, rooms: Collection[str] | None = None) -> None:
        """RosterRejected unless a message with these fields comes from our server, for our room(s), and is fresh."""
        if self.server_id is not None and server_id != self.server_id:
            raise RosterRejected("wrong-server", f"roster from {server_id!r}, expected {self.server_id!r}")
        if self.room is not None and room != self.room:
            raise RosterRejected("wrong-room", f"roster for room {room!r}, expected {self.room!r}")
        if rooms is not None and room not in rooms:
            expected = ", ".join(sorted(rooms)) or "none: not in a call"
            raise RosterRejected("wrong-room", f"roster for room {room!r}, expected {expected}")
        if self.max_age is not None:
            issued = datetime.strptime(issued_at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            age = (self._clock() - issued).total_seconds()
            if age > self.max_age:
                raise RosterRejected("too-old", f"roster issued {age:.0f} s ago (at most {self.max_age:.0f} s)")
            if age < -self.max_age:
                raise RosterRejected("from-the-future", f"roster issued {-age:.0f} s in the future")

    def admit(self, roster: Roster, digest: bytes, *, rooms: Collection[str] | None = None) -> None:
        """After its signature verified: RosterRejected unless `roster` is for us and newer than the last one
        of its room (`digest` names the signed bytes, for replays); then it becomes the room's last."""
        self.check_origin(roster.server_id, roster.room, roster.issued_at, rooms=rooms)
        if digest in self._seen:
            raise RosterRejected("replayed", f"room {roster.room} version {roster.version} was already accepted")
        last = self._last.get(roster.room)
        if last is not None and roster.version <= last:
            raise RosterRejected(
                "stale-version", f"room {roster.room} version {roster.version} is not newer than {last}"
            )
        self._last[roster.room] = roster.version
        self._seen[digest] = None
        while len(self._seen) > self._replay_memory:
            self._seen.popitem(last=False)
