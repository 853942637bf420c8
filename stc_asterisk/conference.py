"""Who is in which ConfBridge room, from ARI and AMI events, joined with the admission bindings.

Pure: fed event dicts as Asterisk 22 sends them, it answers which rooms changed
and produces each room's roster entries. The asyncio side (ARI websocket, AMI
connection) only passes events in, and calls `rebuild()` with `GET /ari/bridges`
and `GET /ari/channels` after every (re)connect, `set_unknown()` when Asterisk is gone.

Decisions:
- Membership comes from ARI only (`subscribeAll=true` shows ConfBridge's bridges):
  ARI and AMI are two sockets whose events can arrive in either order, so an
  AMI join arriving after ARI's leave must not resurrect a member. AMI gives the
  talking flags (`ConfbridgeTalking`); an AMI leave clears them.
- Talking is not a roster change: a room's talking flags going on and off would otherwise
  re-sign and resend its whole roster many times a second. `pop_talking_changes()` names the
  rooms whose talkers changed, for the server's small, coalesced talking updates.
- Only bridges whose `creator` is `ConfBridge` count; the room is the bridge `name`.
  ConfBridge's own announcer/recorder channels (`CBAnn/...`, `CBRec/...`) are not participants.
- A channel in a bridge without an admission binding is UNAUTHENTICATED: it is
  listed (with its unverified caller id) and reported by `unauthenticated()` so
  the server can eject it. After a server restart every channel is unbound, so
  every participant is treated as unauthenticated: the server cannot vouch for them.
- Hidden listeners (ChanSpy, MixMonitor, the ConfBridge recorder, snoops, recordings) are
  followed by `stc_asterisk.listeners` and listed on the roster of the room they hear.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, Sequence

from stc_wire.identity import PeerIdentity
from stc_wire.roster import (
    Roster,
    RosterEntry,
    RosterError,
    RosterListener,
    identity_json,
    iso_utc,
    normalize_time,
)

from .listeners import ConciseChannel, HiddenListener, ListenerKey, ListenerTracker, resolve

log = logging.getLogger(__name__)

CONFBRIDGE_CREATOR = "ConfBridge"
_INTERNAL_CHANNEL_PREFIXES = ("CBAnn/", "CBRec/")
_EPOCH = "1970-01-01T00:00:00.000000Z"

ConferenceStatus = Literal["ok", "unknown"]


@dataclass(frozen=True)
class UnboundChannel:
    """A channel in a conference bridge that no admission vouches for."""

    room: str
    bridge_id: str
    channel_id: str
    channel_name: str


@dataclass
class _Member:
    channel_id: str
    channel_name: str
    caller_name: str
    caller_number: str
    joined_at: str
    talking: bool = False


@dataclass
class _Binding:
    identity: dict[str, Any]
    seq: int


def _is_internal(channel_name: str) -> bool:
    return channel_name.startswith(_INTERNAL_CHANNEL_PREFIXES)


def _time(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return normalize_time(value, "time")
    except RosterError:
        return None


def _caller_id(name: str, number: str) -> str:
    if name and number:
        return f'"{name}" <{number}>'
    return name or number


class ConferenceState:
    """ConfBridge rooms and their members; see the module docstring."""

    def __init__(self, *, max_bindings: int = 10_000) -> None:
        self._status: ConferenceStatus = "unknown"
        self._bridge_rooms: dict[str, str] = {}  # ConfBridge bridge id -> room
        self._members: dict[str, dict[str, _Member]] = {}  # bridge id -> channel id -> member
        self._bindings: dict[str, _Binding] = {}  # channel uniqueid -> identity JSON
        self._bind_seq = 0
        self._max_bindings = max_bindings
        self._announced_unknown: set[str] = set()  # rooms whose roster says 'unknown'
        self._listeners = ListenerTracker()
        self._talking_changed: set[str] = set()
        self._entry_cache: dict[str, tuple[tuple[Any, ...], RosterEntry]] = {}  # channel id -> (its state, entry)

    # --- queries ------------------------------------------------------------------

    @property
    def status(self) -> ConferenceStatus:
        return self._status

    def rooms(self) -> list[str]:
        """Rooms with a live bridge (or, while unknown, the rooms last seen)."""
        if self._status == "unknown":
            return sorted(self._announced_unknown)
        return sorted(set(self._bridge_rooms.values()))

    def binding(self, uniqueid: str) -> dict[str, Any] | None:
        found = self._bindings.get(uniqueid)
        return None if found is None else found.identity

    def entries(self, room: str) -> tuple[RosterEntry, ...]:
        if self._status == "unknown":
            return ()
        result: dict[str, RosterEntry] = {}
        for bridge_id, member in self._room_members(room):
            bound = self._bindings.get(member.channel_id)
            # An entry validates its certificate summary when made: in a big room, make each one once.
            key = (room, bound.seq if bound else None, member.channel_name, member.caller_name, member.caller_number,
                   member.joined_at, member.talking)
            cached = self._entry_cache.get(member.channel_id)
            if cached is not None and cached[0] == key:
                result[member.channel_id] = cached[1]
                continue
            result[member.channel_id] = entry = RosterEntry(
                channel_id=member.channel_id,
                room=room,
                identity=bound.identity if bound else None,
                channel_name=member.channel_name or member.channel_id,
                caller_id=None if bound else _caller_id(member.caller_name, member.caller_number),
                joined_at=member.joined_at,
                talking=member.talking,
            )
            self._entry_cache[member.channel_id] = (key, entry)
        if len(self._entry_cache) > 2 * sum(map(len, self._members.values())) + 100:  # forget channels long gone
            present = {cid for members in self._members.values() for cid in members}
            self._entry_cache = {cid: v for cid, v in self._entry_cache.items() if cid in present}
        return tuple(sorted(result.values(), key=lambda e: (e.joined_at, e.channel_id)))

    def talking(self, room: str) -> frozenset[str]:
        """The channel ids of the room's members talking now."""
        if self._status == "unknown":
            return frozenset()
        return frozenset(m.channel_id for _, m in self._room_members(room) if m.talking)

    def pop_talking_changes(self) -> set[str]:
        """The rooms whose talkers changed since the last call (talking is not a roster change)."""
        changed, self._talking_changed = self._talking_changed, set()
        return changed

    def roster(self, room: str, *, server_id: str, version: int, issued_at: str) -> Roster:
        listeners = tuple(
            RosterListener(kind=li.kind, hears=li.hears, channel=li.channel_name, since=li.since,
                           action=li.action or "shown")
            for li in self.hidden_listeners(room)
        )
        return Roster(server_id, room, version, issued_at, self._status, self.entries(room), listeners)

    def hidden_listeners(self, room: str | None = None) -> list[HiddenListener]:
        """Listeners that hear a participant (or a whole room) now, in `room` or in every room."""
        if self._status == "unknown":
            return []
        members = [
            (self._bridge_rooms[bridge_id], m.channel_id, m.channel_name)
            for bridge_id, ms in self._members.items()
            for m in ms.values()
        ]
        found = resolve(self._listeners, members)
        return [li for li in found if room is None or li.room == room]

    def set_listener_action(self, key: ListenerKey, action: str, *, quiet: bool = False) -> set[str]:
        """Record what the server did about a listener; the rooms whose roster changed (none if `quiet`:
        the caller pushes that room's roster itself)."""
        if quiet:
            self._listeners.set_action(key, action)
            return set()
        with self._changes() as changed:
            self._listeners.set_action(key, action)
        return changed.rooms

    def participant_channels(self) -> list[tuple[str, str]]:
        """(channel id, channel name) of every participant, for the MixMonitor scan."""
        return sorted({(m.channel_id, m.channel_name) for ms in self._members.values() for m in ms.values()})

    def apply_scan(self, channels: Sequence[ConciseChannel], mixmonitors: Mapping[str, tuple[str, int]],
                   *, now: datetime | None = None) -> set[str]:
        """What an AMI scan found (see ListenerTracker.apply_scan); the rooms that changed."""
        with self._changes() as changed:
            self._listeners.apply_scan(channels, mixmonitors, now or now_utc())
        return changed.rooms

    def unauthenticated(self, room: str | None = None) -> list[UnboundChannel]:
        """Channels in conference bridges without an admission binding (to eject)."""
        if self._status == "unknown":
            return []
        found = []
        for bridge_id, members in self._members.items():
            bridge_room = self._bridge_rooms[bridge_id]
            if room is not None and bridge_room != room:
                continue
            for member in members.values():
                if member.channel_id not in self._bindings:
                    found.append(UnboundChannel(bridge_room, bridge_id, member.channel_id, member.channel_name))
        return sorted(found, key=lambda u: (u.room, u.channel_id))

    # --- admission bindings -----------------------------------------------------

    def bind(self, uniqueid: str, identity: PeerIdentity | Mapping[str, Any]) -> set[str]:
        """Record that channel `uniqueid` was admitted with `identity`."""
        as_json = identity_json(identity)
        assert as_json is not None
        PeerIdentity.from_json(as_json)  # a bad identity fails here, not when a roster is built
        with self._changes() as changed:
            self._bind_seq += 1
            self._bindings.pop(uniqueid, None)
            self._bindings[uniqueid] = _Binding(as_json, self._bind_seq)
            while len(self._bindings) > self._max_bindings:
                oldest = next(iter(self._bindings))
                log.warning("dropping the oldest admission binding (%s): more than %d", oldest, self._max_bindings)
                del self._bindings[oldest]
        return changed.rooms

    def unbind(self, uniqueid: str) -> set[str]:
        with self._changes() as changed:
            self._bindings.pop(uniqueid, None)
        return changed.rooms

    def binding_mark(self) -> int:
        """Take before fetching a snapshot; pass to rebuild() so it may drop bindings of vanished channels."""
        return self._bind_seq + 1

    # --- ARI ----------------------------------------------------------------------

    def apply_ari(self, event: Mapping[str, Any], *, now: datetime | None = None) -> set[str]:
        """Apply one ARI event; returns the rooms whose roster changed."""
        if not isinstance(event, Mapping):
            log.debug("ARI event that is not an object ignored")
            return set()
        kind = event.get("type")
        changed = self._changes()
        try:
            with changed:
                if kind == "BridgeCreated":
                    self._see_bridge(event["bridge"])
                elif kind == "ChannelEnteredBridge":
                    self._enter(event["bridge"], event["channel"], event.get("timestamp"), now)
                elif kind == "ChannelLeftBridge":
                    self._leave(event["bridge"], event["channel"])
                elif kind == "BridgeDestroyed":
                    self._destroy_bridge(event["bridge"])
                elif kind == "ChannelDestroyed":
                    self._destroy_channel(event["channel"])
                    self._listeners.apply_ari(event, now or now_utc())
                elif not self._listeners.apply_ari(event, now or now_utc()):
                    log.debug("ARI event %r ignored", kind)
        except (KeyError, TypeError, AttributeError) as exc:
            log.debug("malformed ARI %r event ignored: %s: %s", kind, type(exc).__name__, exc)
        return changed.rooms

    def _bridge_room(self, bridge: Mapping[str, Any]) -> tuple[str, str] | None:
        bridge_id = bridge["id"]
        if not isinstance(bridge_id, str) or not bridge_id:
            raise TypeError("bridge id must be a non-empty string")
        if bridge.get("creator") != CONFBRIDGE_CREATOR:
            return None
        name = bridge.get("name")
        if not isinstance(name, str) or not name:
            raise TypeError("ConfBridge bridge without a name")
        return bridge_id, name

    def _see_bridge(self, bridge: Mapping[str, Any]) -> str | None:
        found = self._bridge_room(bridge)
        if found is None:
            return None
        bridge_id, room = found
        self._bridge_rooms[bridge_id] = room
        self._members.setdefault(bridge_id, {})
        return bridge_id

    def _enter(self, bridge: Mapping[str, Any], channel: Mapping[str, Any], timestamp: Any, now: datetime | None) -> None:
        bridge_id = self._see_bridge(bridge)
        if bridge_id is None:
            return
        member = _member_from(channel, _time(timestamp) or (iso_utc(now) if now else None))
        if member is None:
            return
        self._members[bridge_id].setdefault(member.channel_id, member)

    def _leave(self, bridge: Mapping[str, Any], channel: Mapping[str, Any]) -> None:
        found = self._bridge_room(bridge)
        if found is None:
            return
        members = self._members.get(found[0])
        if members is not None:
            members.pop(_channel_id(channel), None)

    def _destroy_bridge(self, bridge: Mapping[str, Any]) -> None:
        found = self._bridge_room(bridge)
        if found is None:
            return
        self._bridge_rooms.pop(found[0], None)
        self._members.pop(found[0], None)

    def _destroy_channel(self, channel: Mapping[str, Any]) -> None:
        channel_id = _channel_id(channel)
        for members in self._members.values():
            members.pop(channel_id, None)
        self._bindings.pop(channel_id, None)

    def rebuild(
        self,
        bridges: Sequence[Mapping[str, Any]],
        channels: Sequence[Mapping[str, Any]],
        *,
        binding_mark: int | None = None,
    ) -> set[str]:
        """Replace everything with a snapshot from `GET /ari/bridges` and `GET /ari/channels`.

        With `binding_mark` (from binding_mark() taken before the GETs), bindings
        made before the snapshot for channels absent from it are dropped.
        """
        by_id: dict[str, Mapping[str, Any]] = {}
        for channel in channels:
            if isinstance(channel, Mapping) and isinstance(channel.get("id"), str):
                by_id[channel["id"]] = channel
        with self._changes() as changed:
            self._listeners.rebuild(list(by_id.values()), now_utc())
            old_members = {cid: m for members in self._members.values() for cid, m in members.items()}
            self._bridge_rooms.clear()
            self._members.clear()
            for bridge in bridges:
                try:
                    bridge_id = self._see_bridge(bridge)
                except (KeyError, TypeError, AttributeError) as exc:
                    log.debug("malformed bridge in snapshot ignored: %s", exc)
                    continue
                if bridge_id is None:
                    continue
                listed = bridge.get("channels")
                for channel_id in listed if isinstance(listed, list) else []:
                    found = by_id.get(channel_id)
                    if found is None:
                        continue  # destroyed between the two GETs
                    channel = found
                    previous = old_members.get(channel_id)
                    member = _member_from(channel, previous.joined_at if previous else None)
                    if member is None:
                        continue
                    if previous is not None:
                        member.talking = previous.talking
                    self._members[bridge_id][member.channel_id] = member
            if binding_mark is not None:
                for uniqueid in [u for u, b in self._bindings.items() if b.seq < binding_mark and u not in by_id]:
                    del self._bindings[uniqueid]
            self._status = "ok"
            self._announced_unknown.clear()
        return changed.rooms

    def set_unknown(self) -> set[str]:
        """Asterisk is unreachable: every room's roster becomes 'unknown' until the next rebuild()."""
        with self._changes() as changed:
            if self._status == "ok":
                self._announced_unknown = set(self._bridge_rooms.values())
            self._status = "unknown"
            self._bridge_rooms.clear()
            self._members.clear()
            self._listeners.clear()
        return changed.rooms

    # --- AMI ----------------------------------------------------------------------

    def apply_ami(self, event: Mapping[str, Any], *, now: datetime | None = None) -> set[str]:
        """Apply one AMI event (a panoramisk Message or a dict); returns the rooms that changed."""
        if not isinstance(event, Mapping):
            log.debug("AMI event that is not a mapping ignored")
            return set()
        fields = {str(k).lower(): v for k, v in event.items()}
        kind = fields.get("event")
        with self._changes() as changed:
            about_listener = self._listeners.apply_ami(fields, now or now_utc())
        if about_listener:
            return changed.rooms
        uniqueid = fields.get("uniqueid")
        if not isinstance(uniqueid, str) or not uniqueid:
            log.debug("AMI %r event without Uniqueid ignored", kind)
            return set()
        with self._changes() as changed:
            if kind == "ConfbridgeTalking":
                status = str(fields.get("talkingstatus", "")).lower()
                if status not in ("on", "off"):
                    log.debug("ConfbridgeTalking with TalkingStatus %r ignored", status)
                else:
                    self._set_talking(uniqueid, status == "on", fields.get("conference"))
            elif kind == "ConfbridgeLeave":
                self._set_talking(uniqueid, False, fields.get("conference"))
            else:
                log.debug("AMI event %r ignored", kind)
        return changed.rooms

    def _set_talking(self, uniqueid: str, talking: bool, conference: Any) -> None:
        for bridge_id, members in self._members.items():
            if isinstance(conference, str) and conference and self._bridge_rooms[bridge_id] != conference:
                continue
            member = members.get(uniqueid)
            if member is not None and member.talking != talking:
                member.talking = talking
                self._talking_changed.add(self._bridge_rooms[bridge_id])

    # --- change tracking ------------------------------------------------------------

    def _digest(self) -> dict[str, tuple[Any, ...]]:
        view: dict[str, list[tuple[Any, ...]]] = {room: [] for room in self.rooms()}
        if self._status == "ok":
            for bridge_id, members in self._members.items():
                room = self._bridge_rooms[bridge_id]
                for m in members.values():
                    bound = self._bindings.get(m.channel_id)
                    view[room].append(
                        (m.channel_id, m.channel_name, m.caller_name, m.caller_number, m.joined_at,
                         bound.seq if bound else None)
                    )
        heard: dict[str, list[tuple[Any, ...]]] = {room: [] for room in view}
        for li in self.hidden_listeners():
            heard.setdefault(li.room, []).append((li.key, li.hears, li.channel_name, li.since, li.action, li.count))
        return {room: (self._status, tuple(sorted(items)), tuple(sorted(heard.get(room, []))))
                for room, items in view.items()}

    def _changes(self) -> "_ChangeTracker":
        return _ChangeTracker(self)

    def _room_members(self, room: str) -> list[tuple[str, _Member]]:
        return [
            (bridge_id, member)
            for bridge_id, members in self._members.items()
            if self._bridge_rooms[bridge_id] == room
            for member in members.values()
        ]


class _ChangeTracker:
    """`with state._changes() as changed:` ... `changed.rooms` = rooms whose view differs."""

    def __init__(self, state: ConferenceState) -> None:
        self._state = state
        self.rooms: set[str] = set()

    def __enter__(self) -> "_ChangeTracker":
        self._before = self._state._digest()
        return self

    def __exit__(self, *exc_info: object) -> None:
        after = self._state._digest()
        self.rooms = {room for room in set(self._before) | set(after) if self._before.get(room) != after.get(room)}


def _channel_id(channel: Mapping[str, Any]) -> str:
    channel_id = channel["id"]
    if not isinstance(channel_id, str) or not channel_id:
        raise TypeError("channel id must be a non-empty string")
    return channel_id


def _member_from(channel: Mapping[str, Any], joined_at: str | None) -> _Member | None:
    channel_id = _channel_id(channel)
    name = channel.get("name")
    name = name if isinstance(name, str) else ""
    if _is_internal(name):
        return None
    caller = channel.get("caller")
    caller = caller if isinstance(caller, Mapping) else {}
    caller_name = caller.get("name")
    caller_number = caller.get("number")
    return _Member(
        channel_id=channel_id,
        channel_name=name,
        caller_name=caller_name if isinstance(caller_name, str) else "",
        caller_number=caller_number if isinstance(caller_number, str) else "",
        joined_at=joined_at or _time(channel.get("creationtime")) or _EPOCH,
    )


def now_utc() -> datetime:
    """For the asyncio side: the `now` to pass in."""
    return datetime.now(timezone.utc)
