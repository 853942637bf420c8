"""Rosters for big rooms: certificate summaries sent once, deltas, and small signed talking updates.

Pure code. A full roster of 200 participants is about 140 KB, and before this module every join
sent it to all 200 (28 MB), and every ConfbridgeTalking re-signed and resent it. Now:

- The signed roster is the *compact* roster: every entry names its certificate summary (the
  PeerIdentity JSON) by `identity_ref`, the SHA-256 of the summary's canonical JSON. The one
  signature covers the whole roster, summaries included through their hashes.
- A roster update carries the changes against a version the client holds (`base`): entries
  added, changed (full compact entries) and removed (channel ids), plus the summaries of the
  references the client does not hold yet. A client holds exactly the summaries its current
  roster references, so the server knows which to send without asking. Without a base
  (`base` null) the update is the full roster.
- The client rebuilds the full compact roster from what it holds plus the delta and checks the
  one signature over it; every summary it is given must hash to its reference. A delta whose
  base it does not hold raises RosterOutOfStep: the client then sends a resync request and the
  server answers with the full roster.
- Talking (AMI ConfbridgeTalking) is a small signed update naming the room, the roster version
  it refers to, a per-room sequence number and who talks now; the server coalesces them.

Wire formats (ROSTER frame payloads; integers big-endian):

    roster update   b"STCD" | format u8 (=2) | algorithm u8 | body length u32 | body | signature length u16 | signature
    talking update  b"STCT" | format u8 (=1) | algorithm u8 | body length u32 | body | signature length u16 | signature
    resync request  b"STCQ" | JSON {"room": str, "have": int | null}      (client -> server, unsigned: inside TLS)

A roster update's body is JSON: server_id, room, version, issued_at, state, talking, listeners,
base, identities {ref: summary}, added [compact entries], changed [compact entries], removed
[channel ids]. Its signature covers `b"stc-roster-v2\\0" | algorithm | canonical JSON of the
compact roster` where the compact roster is {format: 2, server_id, room, version, issued_at,
state, entries (sorted by joined_at, channel_id), talking (sorted channel ids), listeners (only
when there are any)} and a compact entry is {channel_id, channel_name, caller_id, joined_at,
identity: ref or null}. A talking update's body is canonical JSON {server_id, room, version, seq,
issued_at, talking} and its signature covers `b"stc-talking-v1\\0" | algorithm | body`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Collection, Mapping

from stc_wire.roster import (
    MAX_SIGNED_ROSTER,
    Roster,
    RosterEntry,
    RosterError,
    RosterListener,
    RosterRejected,
    RosterSigner,
    RosterVerifier,
    canonical_json,
    normalize_time,
    verify_data,
)

ROSTER_MAGIC = b"STCD"
TALKING_MAGIC = b"STCT"
RESYNC_MAGIC = b"STCQ"
COMPACT_FORMAT = 2
TALKING_FORMAT = 1
ROSTER_CONTEXT = b"stc-roster-v2\x00"
TALKING_CONTEXT = b"stc-talking-v1\x00"
_HEAD = struct.Struct(">4sBBI")
_SIGLEN = struct.Struct(">H")
_ENTRY_KEYS = frozenset({"channel_id", "channel_name", "caller_id", "joined_at", "identity"})
_UPDATE_KEYS = frozenset({"server_id", "room", "version", "issued_at", "state", "talking", "listeners", "base",
                          "identities", "added", "changed", "removed"})
_TALKING_KEYS = frozenset({"server_id", "room", "version", "seq", "issued_at", "talking"})
MAX_RESYNC_REQUEST = 512
_HEX = frozenset("0123456789abcdef")


class RosterOutOfStep(Exception):
    """A roster or talking update refers to a version (or summaries) this client does not hold:
    not an attack, nothing to show; ask the server for the full roster (`resync_request`)."""

    def __init__(self, room: str, have: int | None, message: str) -> None:
        super().__init__(message)
        self.room = room
        self.have = have


def identity_ref(identity: Mapping[str, Any]) -> str:
    """The short name of a certificate summary on the wire: SHA-256 (hex) of its canonical JSON."""
    return hashlib.sha256(canonical_json(dict(identity))).hexdigest()


# --- compact entries -------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactEntry:
    """One roster entry with its certificate summary replaced by `identity_ref`; `encoded` is its canonical JSON."""

    channel_id: str
    joined_at: str
    encoded: bytes
    ref: str | None
    obj: dict[str, Any] = field(compare=False, repr=False)

    @classmethod
    def from_entry(cls, entry: RosterEntry) -> "CompactEntry":
        ref = identity_ref(entry.identity) if entry.identity is not None else None
        obj = {"channel_id": entry.channel_id, "channel_name": entry.channel_name, "caller_id": entry.caller_id,
               "joined_at": entry.joined_at, "identity": ref}
        return cls(entry.channel_id, entry.joined_at, canonical_json(obj), ref, obj)

    @classmethod
    def from_json(cls, obj: Any) -> "CompactEntry":
        if not isinstance(obj, dict) or set(obj) != _ENTRY_KEYS:
            raise RosterError(f"a compact entry must be an object with keys {sorted(_ENTRY_KEYS)}")
        for name in ("channel_id", "channel_name", "joined_at"):
            if not isinstance(obj[name], str) or not obj[name]:
                raise RosterError(f"compact entry {name} must be a non-empty string")
        if obj["caller_id"] is not None and not isinstance(obj["caller_id"], str):
            raise RosterError("compact entry caller_id must be a string or null")
        ref = obj["identity"]
        if ref is not None and (not isinstance(ref, str) or len(ref) != 64 or not set(ref) <= _HEX):
            raise RosterError("compact entry identity must be a 64-hex-digit reference or null")
        if len(obj["joined_at"]) != 27 or not obj["joined_at"].endswith("Z"):  # the display entry parses it fully
            raise RosterError("compact entry joined_at is not in the roster's time format")
        return cls(obj["channel_id"], obj["joined_at"], canonical_json(obj), ref, obj)

    def sort_key(self) -> tuple[str, str]:
        return (self.joined_at, self.channel_id)


def compact_roster_bytes(header: Mapping[str, Any], entries: Collection[CompactEntry]) -> bytes:
    """Canonical JSON of the compact roster, spliced from the entries' own canonical JSON (each
    entry is encoded once, not once per roster): equal to canonical_json(the whole object)."""
    rest = canonical_json({"format": COMPACT_FORMAT, **header})
    listed = b",".join(e.encoded for e in sorted(entries, key=CompactEntry.sort_key))
    # "entries" sorts before every other key of the compact roster.
    return b'{"entries":[' + listed + b"]," + rest[1:]


def _header(roster: Roster) -> dict[str, Any]:
    header: dict[str, Any] = {"server_id": roster.server_id, "room": roster.room, "version": roster.version,
                              "issued_at": roster.issued_at, "state": roster.state,
                              "talking": sorted(e.channel_id for e in roster.entries if e.talking)}
    if roster.listeners:
        header["listeners"] = [li.to_json() for li in roster.listeners]
    return header


def _envelope(magic: bytes, fmt: int, algorithm: int, body: bytes, signature: bytes) -> bytes:
    data = _HEAD.pack(magic, fmt, algorithm, len(body)) + body + _SIGLEN.pack(len(signature)) + signature
    if len(data) > MAX_SIGNED_ROSTER:
        raise RosterError(f"a roster message of {len(data)} bytes exceeds {MAX_SIGNED_ROSTER}")
    return data


def _open_envelope(data: bytes, magic: bytes, fmt: int) -> tuple[int, bytes, bytes]:
    """(algorithm, body, signature); RosterRejected('malformed') if `data` is not such an envelope."""
    if len(data) > MAX_SIGNED_ROSTER:
        raise RosterRejected("malformed", f"{len(data)} bytes, more than {MAX_SIGNED_ROSTER}")
    if len(data) < _HEAD.size + _SIGLEN.size:
        raise RosterRejected("malformed", f"only {len(data)} bytes")
    got_magic, got_fmt, algorithm, length = _HEAD.unpack_from(data)
    if got_magic != magic or got_fmt != fmt:
        raise RosterRejected("malformed", f"not a {magic!r} message of format {fmt}")
    end = _HEAD.size + length
    if end + _SIGLEN.size > len(data):
        raise RosterRejected("malformed", "body length runs past the end")
    (siglen,) = _SIGLEN.unpack_from(data, end)
    if end + _SIGLEN.size + siglen != len(data):
        raise RosterRejected("malformed", "signature length does not match the data")
    return algorithm, bytes(data[_HEAD.size : end]), bytes(data[end + _SIGLEN.size :])


def message_kind(data: bytes) -> str:
    """'roster', 'talking', 'resync' or 'unknown', from the first four bytes of a ROSTER frame."""
    return {ROSTER_MAGIC: "roster", TALKING_MAGIC: "talking", RESYNC_MAGIC: "resync"}.get(bytes(data[:4]), "unknown")


def peek_update(data: bytes) -> tuple[str, int, int | None] | None:
    """(room, version, base) of a roster update, nothing verified; None if it is not one. For the
    client to decide what a refused update deserves (a resync request, or nothing)."""
    try:
        _, body, _ = _open_envelope(data, ROSTER_MAGIC, COMPACT_FORMAT)
        obj = _json_object(body)
    except RosterRejected:
        return None
    room, version, base = obj.get("room"), obj.get("version"), obj.get("base")
    if not isinstance(room, str) or not isinstance(version, int) or not (base is None or isinstance(base, int)):
        return None
    return room, version, base


# --- the server's side -----------------------------------------------------------------------


@dataclass
class Publication:
    """One signed roster of a room and the messages that carry it."""

    roster: Roster
    base: int | None  # the version the delta is against (the room's previous publication), if any
    _entries: dict[str, CompactEntry]
    _identities: dict[str, dict[str, Any]]
    _previous_entries: dict[str, CompactEntry] | None
    algorithm: int
    signature: bytes

    @property
    def version(self) -> int:
        return self.roster.version

    @property
    def talking(self) -> tuple[str, ...]:
        return tuple(sorted(e.channel_id for e in self.roster.entries if e.talking))

    def _message(self, base: int | None, added: list[CompactEntry], changed: list[CompactEntry], removed: list[str],
                 known: set[str]) -> bytes:
        refs = {e.ref for e in added + changed if e.ref is not None} - known
        body = {**_header(self.roster), "base": base, "identities": {r: self._identities[r] for r in sorted(refs)},
                "added": [e.obj for e in added], "changed": [e.obj for e in changed], "removed": removed}
        body.setdefault("listeners", [])
        return _envelope(ROSTER_MAGIC, COMPACT_FORMAT, self.algorithm, canonical_json(body), self.signature)

    @cached_property
    def full(self) -> bytes:
        """For a client that holds nothing of this room (or asked for a resync): every entry and summary."""
        return self._message(None, sorted(self._entries.values(), key=CompactEntry.sort_key), [], [], set())

    @cached_property
    def delta(self) -> bytes | None:
        """For a client that holds version `base`: the changes, and the summaries that are new to it."""
        if self._previous_entries is None or self.base is None:
            return None
        before, after = self._previous_entries, self._entries
        added = sorted((e for cid, e in after.items() if cid not in before), key=CompactEntry.sort_key)
        changed = sorted((e for cid, e in after.items() if cid in before and before[cid] != e), key=CompactEntry.sort_key)
        removed = sorted(cid for cid in before if cid not in after)
        known = {e.ref for e in before.values() if e.ref is not None}
        return self._message(self.base, added, changed, removed, known)


class RosterPublisher:
    """Server side: signs each new roster of a room once, and keeps the room's last one to make deltas."""

    def __init__(self, signer: RosterSigner) -> None:
        self._signer = signer
        self._last: dict[str, Publication] = {}
        self._compact: dict[str, dict[str, tuple[RosterEntry, CompactEntry]]] = {}  # room -> channel -> made from

    def publish(self, roster: Roster) -> Publication:
        made = self._compact.get(roster.room, {})
        entries: dict[str, CompactEntry] = {}
        identities: dict[str, dict[str, Any]] = {}
        for entry in roster.entries:
            known = made.get(entry.channel_id)
            # Encoding and hashing 200 summaries costs more than signing: reuse those of an unchanged entry.
            compact = known[1] if known is not None and (known[0] is entry or known[0] == entry) else \
                CompactEntry.from_entry(entry)
            entries[entry.channel_id] = compact
            if compact.ref is not None and entry.identity is not None:
                identities[compact.ref] = entry.identity
        self._compact[roster.room] = {e.channel_id: (e, entries[e.channel_id]) for e in roster.entries}
        signed = compact_roster_bytes(_header(roster), entries.values())
        code = self._signer.algorithm_code
        algorithm, signature = self._signer.sign_data(ROSTER_CONTEXT + bytes([code]) + signed)
        previous = self._last.get(roster.room)
        publication = Publication(roster, previous.version if previous else None, entries, identities,
                                  previous._entries if previous else None, algorithm, signature)
        self._last[roster.room] = publication
        return publication

    def last(self, room: str) -> Publication | None:
        return self._last.get(room)

    def forget(self, room: str) -> None:
        self._last.pop(room, None)
        self._compact.pop(room, None)


def sign_talking(signer: RosterSigner, *, server_id: str, room: str, version: int, seq: int, issued_at: str,
                 talking: Collection[str]) -> bytes:
    """A talking update: who talks in `room` now, as of roster `version`; `seq` grows per room."""
    body = canonical_json({"server_id": server_id, "room": room, "version": version, "seq": seq,
                           "issued_at": normalize_time(issued_at, "issued_at"), "talking": sorted(talking)})
    algorithm, signature = signer.sign_data(TALKING_CONTEXT + bytes([signer.algorithm_code]) + body)
    return _envelope(TALKING_MAGIC, TALKING_FORMAT, algorithm, body, signature)


def resync_request(room: str, have: int | None) -> bytes:
    """Client -> server: send me the full roster of `room` (I hold version `have`)."""
    return RESYNC_MAGIC + canonical_json({"room": room, "have": have})


def parse_resync_request(data: bytes) -> str:
    """The room a resync request asks for; RosterError if it is not one."""
    if len(data) > MAX_RESYNC_REQUEST or not data.startswith(RESYNC_MAGIC):
        raise RosterError("not a resync request")
    try:
        obj = json.loads(data[len(RESYNC_MAGIC):].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RosterError("a resync request is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("room"), str) or not obj["room"]:
        raise RosterError("a resync request names no room")
    return str(obj["room"])


# --- the client's side -----------------------------------------------------------------------


@dataclass(frozen=True)
class TalkingUpdate:
    room: str
    version: int
    seq: int
    issued_at: str
    talking: frozenset[str]


@dataclass
class _Held:
    """What a client holds of one room: the verified compact roster and what it shows."""

    version: int
    header: dict[str, Any]
    entries: dict[str, CompactEntry]
    identities: dict[str, dict[str, Any]]
    talking: frozenset[str]
    shown: dict[tuple[bytes, bool], RosterEntry]  # display entries, made once each
    roster: Roster


class RosterReceiver:
    """Client side: verifies roster and talking updates (with a RosterVerifier's checks: server_id,
    room, age, versions, replays) and keeps what each room's next delta builds on."""

    def __init__(self, verifier: RosterVerifier) -> None:
        self.verifier = verifier
        self._held: dict[str, _Held] = {}
        self._talk_seq: dict[str, int] = {}

    def held_version(self, room: str) -> int | None:
        held = self._held.get(room)
        return held.version if held else None

    def roster(self, room: str) -> Roster | None:
        held = self._held.get(room)
        return held.roster if held else None

    def accept(self, data: bytes, *, rooms: Collection[str] | None = None) -> Roster:
        """A roster update -> the verified full roster (for display); RosterRejected or RosterOutOfStep."""
        algorithm, body, signature = _open_envelope(data, ROSTER_MAGIC, COMPACT_FORMAT)
        obj = _json_object(body)
        if set(obj) != _UPDATE_KEYS:
            raise RosterRejected("malformed", f"roster update keys must be {sorted(_UPDATE_KEYS)}")
        room, version, base = obj["room"], obj["version"], obj["base"]
        if not isinstance(room, str) or not _is_int(version) or not (base is None or _is_int(base)):
            raise RosterRejected("malformed", "room, version or base has the wrong type")
        last = self.verifier.last_version(room)
        if last is not None and version <= last:  # before the base check: an old delta is a replay, not a gap
            raise RosterRejected("stale-version", f"room {room} version {version} is not newer than {last}")
        held = self._held.get(room)
        if base is not None and (held is None or held.version != base):
            have = held.version if held else None
            raise RosterOutOfStep(room, have, f"room {room} update v{version} is against v{base}; this client holds "
                                  f"{'v' + str(have) if have is not None else 'nothing'}")
        try:
            entries, identities = self._apply(obj, held if base is not None else None)
            header = {k: obj[k] for k in ("server_id", "room", "version", "issued_at", "state", "talking")}
            if obj["listeners"]:
                header["listeners"] = obj["listeners"]
            signed = compact_roster_bytes(header, entries.values())
        except RosterError as exc:
            raise RosterRejected("malformed", str(exc)) from None
        if not verify_data(self.verifier.public_key, algorithm, ROSTER_CONTEXT + bytes([algorithm]) + signed, signature):
            raise RosterRejected("bad-signature", "the signature does not verify with the server key")
        for ref, identity in identities.items():
            if identity_ref(identity) != ref:  # the signature covers refs; a summary must hash to its ref
                raise RosterRejected("bad-signature", f"a certificate summary does not match its reference {ref[:16]}")
        talking = frozenset(header["talking"])
        shown: dict[tuple[bytes, bool], RosterEntry] = {}
        try:
            roster = _display(header, entries, identities, talking, held.shown if held else {}, shown)
        except (ValueError, TypeError, KeyError) as exc:
            raise RosterRejected("malformed", str(exc)) from None
        self.verifier.admit(roster, hashlib.sha256(bytes([algorithm]) + signed).digest(), rooms=rooms)
        kept = {e.ref: identities[e.ref] for e in entries.values() if e.ref is not None}
        self._held[room] = _Held(version, header, entries, kept, talking, shown, roster)
        return roster

    def _apply(self, obj: dict[str, Any], held: _Held | None) -> tuple[dict[str, CompactEntry], dict[str, dict[str, Any]]]:
        """The compact entries and summaries after this update; RosterError if it does not fit what we hold."""
        entries = dict(held.entries) if held else {}
        identities = dict(held.identities) if held else {}
        given = obj["identities"]
        if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
            raise RosterError("identities must map references to certificate summaries")
        identities.update(given)
        for name in ("added", "changed", "removed"):
            if not isinstance(obj[name], list):
                raise RosterError(f"{name} must be a list")
        for channel_id in obj["removed"]:
            if not isinstance(channel_id, str) or entries.pop(channel_id, None) is None:
                raise RosterError(f"removed channel {str(channel_id)[:40]!r} is not in the base roster")
        for name, present in (("changed", True), ("added", False)):
            for raw in obj[name]:
                entry = CompactEntry.from_json(raw)
                if (entry.channel_id in entries) != present:
                    raise RosterError(f"{name} channel {entry.channel_id!r} {'is not' if present else 'is already'} "
                                      "in the base roster")
                entries[entry.channel_id] = entry
        missing = {e.ref for e in entries.values() if e.ref is not None and e.ref not in identities}
        if missing:
            raise RosterError(f"{len(missing)} certificate summary reference(s) without a summary")
        talking = obj["talking"]
        if not isinstance(talking, list) or not all(isinstance(c, str) and c in entries for c in talking):
            raise RosterError("talking must list channels of the roster")
        return entries, identities

    def accept_talking(self, data: bytes, *, rooms: Collection[str] | None = None) -> tuple[TalkingUpdate, Roster]:
        """A talking update -> (the update, the room's roster showing who talks); RosterRejected or RosterOutOfStep."""
        algorithm, body, signature = _open_envelope(data, TALKING_MAGIC, TALKING_FORMAT)
        if not verify_data(self.verifier.public_key, algorithm, TALKING_CONTEXT + bytes([algorithm]) + body, signature):
            raise RosterRejected("bad-signature", "the talking update's signature does not verify with the server key")
        obj = _json_object(body)
        if set(obj) != _TALKING_KEYS or not all(isinstance(obj[k], str) for k in ("server_id", "room", "issued_at")) \
                or not _is_int(obj["version"]) or not _is_int(obj["seq"]) or not isinstance(obj["talking"], list) \
                or not all(isinstance(c, str) for c in obj["talking"]):
            raise RosterRejected("malformed", f"a talking update must have {sorted(_TALKING_KEYS)} of the right types")
        try:
            issued_at = normalize_time(obj["issued_at"], "issued_at")
        except RosterError as exc:
            raise RosterRejected("malformed", str(exc)) from None
        room, version, seq = obj["room"], obj["version"], obj["seq"]
        self.verifier.check_origin(obj["server_id"], room, issued_at, rooms=rooms)
        last_seq = self._talk_seq.get(room)
        if last_seq is not None and seq <= last_seq:
            raise RosterRejected("replayed", f"room {room} talking update {seq} is not newer than {last_seq}")
        held = self._held.get(room)
        if held is None or version > held.version:
            raise RosterOutOfStep(room, held.version if held else None,
                                  f"room {room} talking update refers to v{version}, which this client does not hold")
        if version < held.version:
            raise RosterRejected("stale-version", f"room {room} talking update refers to v{version}, "
                                                  f"older than the roster held (v{held.version})")
        talking = frozenset(obj["talking"])
        if not talking <= set(held.entries):
            raise RosterRejected("malformed", "a talking update names a channel that is not on the roster")
        shown: dict[tuple[bytes, bool], RosterEntry] = {}
        try:
            roster = _display(held.header, held.entries, held.identities, talking, held.shown, shown)
        except (ValueError, TypeError, KeyError) as exc:
            raise RosterRejected("malformed", str(exc)) from None
        self._talk_seq[room] = seq
        held.talking, held.shown, held.roster = talking, shown, roster
        return TalkingUpdate(room, version, seq, issued_at, talking), roster


def _display(header: Mapping[str, Any], entries: Mapping[str, CompactEntry], identities: Mapping[str, dict[str, Any]],
             talking: frozenset[str], cache: Mapping[tuple[bytes, bool], RosterEntry],
             shown: dict[tuple[bytes, bool], RosterEntry]) -> Roster:
    """The full roster a client shows; entries unchanged since the last one are reused, not validated again."""
    room = header["room"]
    rows = []
    for entry in entries.values():
        key = (entry.encoded, entry.channel_id in talking)
        row = cache.get(key)
        if row is None:
            identity = identities[entry.ref] if entry.ref is not None else None
            obj = entry.obj  # RosterEntry checks the summary is a valid PeerIdentity
            row = RosterEntry(entry.channel_id, room, identity, obj["channel_name"], obj["caller_id"], entry.joined_at,
                              key[1])
        shown[key] = row
        rows.append(row)
    listeners = tuple(RosterListener.from_json(li) for li in header.get("listeners", ()))
    return Roster(header["server_id"], room, header["version"], header["issued_at"], header["state"], tuple(rows),
                  listeners)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RosterRejected("malformed", "the body is not UTF-8 JSON") from None
    if not isinstance(obj, dict):
        raise RosterRejected("malformed", "the body is not a JSON object")
    return obj
