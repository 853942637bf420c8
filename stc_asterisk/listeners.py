"""Hidden listeners: everything in Asterisk that hears a conference without being in its bridge.

Pure: fed AMI and ARI events (as Asterisk 22 sends them) and the snapshots taken at every
(re)connect, it keeps one `_Listener` per thing that listens. `ConferenceState` owns a tracker,
maps each listener to the room of the channel it hears and puts it on that room's roster.

What announces each kind (read in Asterisk's sources, checked against the lab):
- ChanSpy/ExtenSpy: AMI `ChanSpyStart`/`ChanSpyStop` (SpyerUniqueid/SpyerChannel,
  SpyeeUniqueid/SpyeeChannel); at a reconnect, a channel whose dialplan application is
  ChanSpy/ExtenSpy (ARI `dialplan.app_name`), target guessed from its arguments.
- ARI snoop: a `Snoop/<spyee uniqueid>-<seq>` channel (ARI `ChannelCreated`, snapshot); it also
  raises `ChanSpyStart` with the Snoop channel as spyer, which lands on the same listener.
- MixMonitor: AMI `MixMonitorStart`/`MixMonitorStop` (Channel, Uniqueid), one per instance; at
  a reconnect, `mixmonitor list <channel>` per participant (`mixmonitor_list_count`).
- ConfBridge recording: AMI `ConfbridgeRecord`/`ConfbridgeStopRecord` (Conference). Its
  `CBRec/<room>-<seq>` channel is internal: ARI never shows it, `core show channels concise`
  does (`concise_channels`), which is how a reconnect finds it.
- ARI recordings: `RecordingStarted`/`RecordingFinished`/`RecordingFailed` with
  `target_uri` `channel:<id>` (a participant's channel in ConfBridge cannot be recorded by ARI,
  409: in practice the target is a snoop channel, and the recording hears what it hears).
- External media / AudioSocket channels (`UnicastRTP/`, `AudioSocket/`, `WebSocket/`) that
  snoop on a participant show as snoops; any of them joining the bridge is UNAUTHENTICATED.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

from stc_wire.roster import HEARS_ROOM, RosterError, iso_utc, normalize_time

log = logging.getLogger(__name__)

ListenerKey = tuple[str, str]  # (family, id): ("spy", spyer uniqueid), ("mixmonitor", uniqueid), ...

_SNOOP_NAME = re.compile(r"^Snoop/(?P<target>[^/]+)-[0-9a-fA-F]{8}$")
_CBREC_NAME = re.compile(r"^CBRec/(?P<room>.+)-[0-9a-fA-F]{8}$")
_SPY_APPS = {"chanspy", "extenspy"}
_EXTERNAL_PREFIXES = ("UnicastRTP/", "AudioSocket/", "WebSocket/")


@dataclass
class _Listener:
    kind: str
    channel_name: str  # the listening channel, or for MixMonitor the recorded one
    since: str
    channel_id: str | None = None  # the listening channel's uniqueid, when it has its own channel
    hears: str | None = None  # the heard channel's uniqueid; None with `room` or `spec`
    hears_name: str = ""  # the heard channel's name, when known (Local ;2 halves are mapped to ;1)
    room: str | None = None  # a room-wide listener (the ConfBridge recorder)
    spec: str | None = None  # ChanSpy's channel prefix found at a reconnect: target not known
    count: int = 1  # MixMonitor instances on one channel
    action: str | None = None  # what the server did; None: not decided yet


@dataclass(frozen=True)
class HiddenListener:
    """A listener as the server acts on it: resolved to a room and, unless room-wide, a participant."""

    key: ListenerKey
    kind: str
    room: str
    hears: str  # the participant's channel id, or "room"
    hears_name: str  # the participant's channel name, or "" for the room
    channel_id: str | None  # the listening channel (to hang up), if it is a channel of its own
    channel_name: str
    since: str
    action: str | None
    count: int = 1


@dataclass(frozen=True)
class ConciseChannel:
    """One line of `core show channels concise` (the fields stc uses)."""

    name: str
    application: str
    data: str
    bridge_id: str
    uniqueid: str


def concise_channels(text: str) -> list[ConciseChannel]:
    """Parse `core show channels concise`: Channel!Context!Exten!Prio!State!App!Data!CallerID!
    Account!PeerAccount!AMA!Duration!BridgeID!Uniqueid; lines that do not fit are skipped."""
    found = []
    for line in text.splitlines():
        fields = line.strip().split("!")
        if len(fields) < 14 or "/" not in fields[0]:
            continue
        found.append(ConciseChannel(fields[0], fields[5], fields[6], fields[-2], fields[-1]))
    return found


def mixmonitor_list_count(text: str) -> int:
    """How many MixMonitors `mixmonitor list <channel>` lists (rows after the ==== line)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("===="):
            return sum(1 for row in lines[index + 1 :] if "\t" in row and row.split("\t", 1)[0].strip())
    return 0


def _time(value: Any, now: datetime) -> str:
    if isinstance(value, str) and value:
        try:
            return normalize_time(value, "time")
        except RosterError:
            pass
    return iso_utc(now)


def _spy_kind(spyer_name: str) -> str:
    if spyer_name.startswith("Snoop/"):
        return "snoop"
    if spyer_name.startswith(_EXTERNAL_PREFIXES):
        return "external-media"
    return "chanspy"


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    return value if isinstance(value, str) else ""


class ListenerTracker:
    """Every hidden listener Asterisk has told about; see the module docstring."""

    def __init__(self) -> None:
        self._listeners: dict[ListenerKey, _Listener] = {}

    def items(self) -> list[tuple[ListenerKey, _Listener]]:
        return sorted(self._listeners.items())

    def clear(self) -> None:
        self._listeners.clear()

    def set_action(self, key: ListenerKey, action: str) -> bool:
        listener = self._listeners.get(key)
        if listener is None or listener.action == action:
            return False
        listener.action = action
        return True

    # --- AMI ----------------------------------------------------------------------

    def apply_ami(self, fields: Mapping[str, Any], now: datetime) -> bool:
        """One AMI event with lower-cased keys; True if it was about a listener."""
        kind = fields.get("event")
        since = iso_utc(now)
        if kind == "ChanSpyStart":
            spyer, spyee = _text(fields, "spyeruniqueid"), _text(fields, "spyeeuniqueid")
            if not spyer or not spyee:
                return False
            name = _text(fields, "spyerchannel") or spyer
            old = self._listeners.get(("spy", spyer))
            self._listeners[("spy", spyer)] = _Listener(
                kind=_spy_kind(name), channel_name=name, since=old.since if old else since, channel_id=spyer,
                hears=spyee, hears_name=_text(fields, "spyeechannel"), action=old.action if old else None)
            return True
        if kind == "ChanSpyStop":
            spyer = _text(fields, "spyeruniqueid")
            listener = self._listeners.get(("spy", spyer))
            # A snoop channel listens until it is destroyed; a ChanSpy moves on to its next target.
            if listener is not None and listener.kind == "chanspy":
                del self._listeners[("spy", spyer)]
            return listener is not None
        if kind in ("MixMonitorStart", "MixMonitorStop"):
            uniqueid, name = _text(fields, "uniqueid"), _text(fields, "channel")
            if not uniqueid or name.startswith("CBRec/"):
                return False  # the ConfBridge recorder is one room-wide listener of its own
            key = ("mixmonitor", uniqueid)
            listener = self._listeners.get(key)
            if kind == "MixMonitorStart":
                if listener is None:
                    self._listeners[key] = _Listener("mixmonitor", name or uniqueid, since, hears=uniqueid,
                                                     hears_name=name)
                else:
                    listener.count += 1
                    listener.action = None  # a new instance: the policy decides again
            elif listener is not None:
                listener.count -= 1
                if listener.count <= 0:
                    del self._listeners[key]
            return True
        if kind in ("ConfbridgeRecord", "ConfbridgeStopRecord"):
            room = _text(fields, "conference")
            if not room:
                return False
            key = ("confbridge-record", room)
            if kind == "ConfbridgeRecord":
                if key not in self._listeners:
                    self._listeners[key] = _Listener("confbridge-record", f"CBRec/{room}", since, room=room)
            else:
                self._listeners.pop(key, None)
            return True
        return False

    # --- ARI ----------------------------------------------------------------------

    def apply_ari(self, event: Mapping[str, Any], now: datetime) -> bool:
        """One ARI event; True if it was about a listener."""
        kind = event.get("type")
        if kind == "ChannelCreated":
            channel = event.get("channel")
            if isinstance(channel, Mapping):
                return self._see_channel(channel, _time(event.get("timestamp"), now), from_snapshot=False)
            return False
        if kind == "ChannelDestroyed":
            channel = event.get("channel")
            channel_id = channel.get("id") if isinstance(channel, Mapping) else None
            return isinstance(channel_id, str) and self.channel_gone(channel_id)
        if kind in ("RecordingStarted", "RecordingFinished", "RecordingFailed"):
            recording = event.get("recording")
            if not isinstance(recording, Mapping):
                return False
            name, target = recording.get("name"), recording.get("target_uri")
            if not isinstance(name, str) or not name or not isinstance(target, str):
                return False
            key = ("recording", name)
            if kind != "RecordingStarted":
                return self._listeners.pop(key, None) is not None
            scheme, _, target_id = target.partition(":")
            if scheme != "channel" or not target_id:
                return False  # a bridge recording needs a Stasis bridge: not a ConfBridge room
            self._listeners[key] = _Listener("recording", name, _time(event.get("timestamp"), now), hears=target_id)
            return True
        return False

    def _see_channel(self, channel: Mapping[str, Any], since: str, *, from_snapshot: bool) -> bool:
        channel_id, name = channel.get("id"), channel.get("name")
        if not isinstance(channel_id, str) or not channel_id or not isinstance(name, str):
            return False
        key = ("spy", channel_id)
        if key in self._listeners:
            return False
        snoop = _SNOOP_NAME.match(name)
        if snoop is not None:
            self._listeners[key] = _Listener("snoop", name, since, channel_id=channel_id,
                                             hears=snoop.group("target"))
            return True
        dialplan = channel.get("dialplan")
        app = dialplan.get("app_name") if isinstance(dialplan, Mapping) else None
        if from_snapshot and isinstance(app, str) and app.lower() in _SPY_APPS:
            data = dialplan.get("app_data") if isinstance(dialplan, Mapping) else ""
            spec = (data if isinstance(data, str) else "").split(",", 1)[0].strip()
            if app.lower() == "extenspy" or spec.lower() == "all":
                spec = ""  # any channel may be the target
            self._listeners[key] = _Listener("chanspy", name, since, channel_id=channel_id, spec=spec)
            return True
        return False

    def channel_gone(self, channel_id: str) -> bool:
        """A channel was destroyed: what it listened with, and what listened to it through it, end."""
        gone = [k for k, li in self._listeners.items()
                if li.channel_id == channel_id or (k[0] in ("mixmonitor", "recording") and li.hears == channel_id)]
        for key in gone:
            del self._listeners[key]
        return bool(gone)

    # --- snapshots ------------------------------------------------------------------

    def rebuild(self, channels: Iterable[Mapping[str, Any]], now: datetime) -> None:
        """After `GET /ari/channels`: drop listeners whose channels are gone, add snoops and spies
        found in the snapshot (those already known from events keep their exact target)."""
        live: dict[str, Mapping[str, Any]] = {}
        for channel in channels:
            if isinstance(channel, Mapping) and isinstance(channel.get("id"), str):
                live[channel["id"]] = channel
        for key, li in list(self._listeners.items()):
            if key[0] == "confbridge-record":
                continue  # internal channel, not in ARI: the AMI scan decides
            if li.channel_id is not None and li.channel_id not in live:
                del self._listeners[key]
            elif key[0] in ("mixmonitor", "recording") and li.hears not in live:
                del self._listeners[key]
        for channel in live.values():
            self._see_channel(channel, _time(channel.get("creationtime"), now), from_snapshot=True)

    def apply_scan(self, channels: Iterable[ConciseChannel], mixmonitors: Mapping[str, tuple[str, int]],
                   now: datetime) -> bool:
        """After an AMI scan: `core show channels concise` and, per participant channel uniqueid,
        (channel name, number of MixMonitors). Returns True if anything changed."""
        before = {k: (li.count, li.channel_name) for k, li in self._listeners.items()}
        since = iso_utc(now)
        recorders = {}
        for channel in channels:
            match = _CBREC_NAME.match(channel.name)
            if match is not None:
                recorders[match.group("room")] = channel
        for key in [k for k in self._listeners if k[0] == "confbridge-record" and k[1] not in recorders]:
            del self._listeners[key]
        for room, channel in recorders.items():
            listener = self._listeners.get(("confbridge-record", room))
            if listener is None:
                self._listeners[("confbridge-record", room)] = _Listener(
                    "confbridge-record", channel.name, since, room=room)
            else:
                listener.channel_name = channel.name
        for uniqueid, (name, count) in mixmonitors.items():
            key = ("mixmonitor", uniqueid)
            if count <= 0:
                self._listeners.pop(key, None)
            elif key in self._listeners:
                self._listeners[key].count = count
            else:
                self._listeners[key] = _Listener("mixmonitor", name, since, hears=uniqueid, hears_name=name,
                                                 count=count)
        return before != {k: (li.count, li.channel_name) for k, li in self._listeners.items()}


@dataclass
class _Resolver:
    """Maps a heard channel to a participant: by id, through a snoop, or a Local channel's other half."""

    member_room: dict[str, str]  # participant channel id -> room
    member_names: dict[str, tuple[str, str]]  # participant channel name -> (channel id, room)
    listeners: Mapping[ListenerKey, _Listener]
    rooms: set[str] = field(default_factory=set)

    def participant(self, channel_id: str | None, name: str) -> tuple[str, str] | None:
        for _ in range(3):  # a recording of a snoop of a participant: follow at most a short chain
            if channel_id is None:
                break
            room = self.member_room.get(channel_id)
            if room is not None:
                return channel_id, room
            through = self.listeners.get(("spy", channel_id))
            if through is None or through.hears is None:
                break
            channel_id, name = through.hears, through.hears_name
        for candidate in (name, _other_half(name)):
            if candidate and candidate in self.member_names:
                return self.member_names[candidate]
        return None


def _other_half(name: str) -> str:
    if name.startswith("Local/") and name.endswith((";1", ";2")):
        return name[:-1] + ("1" if name.endswith("2") else "2")
    return ""


def resolve(tracker: ListenerTracker, members: Iterable[tuple[str, str, str]]) -> list[HiddenListener]:
    """The tracker's listeners placed in rooms. `members`: (room, channel id, channel name) of every
    participant. A listener that hears no current participant is not listed (yet)."""
    member_list = list(members)
    resolver = _Resolver(
        member_room={cid: room for room, cid, _ in member_list},
        member_names={name: (cid, room) for room, cid, name in member_list if name},
        listeners=dict(tracker.items()),
        rooms={room for room, _, _ in member_list},
    )
    found: list[HiddenListener] = []

    def place(key: ListenerKey, li: _Listener, room: str, hears: str, hears_name: str) -> None:
        found.append(HiddenListener(key=key, kind=li.kind, room=room, hears=hears, hears_name=hears_name,
                                    channel_id=li.channel_id, channel_name=li.channel_name, since=li.since,
                                    action=li.action, count=li.count))

    for key, li in tracker.items():
        if li.room is not None:
            if li.room in resolver.rooms:
                place(key, li, li.room, HEARS_ROOM, "")
            continue
        if li.spec is not None:
            # A spy found by a scan: it may hear any participant its channel prefix matches.
            for room in sorted({room for room, _, name in member_list if name.lower().startswith(li.spec.lower())}):
                place(key, li, room, HEARS_ROOM, "")
            continue
        heard = resolver.participant(li.hears, li.hears_name)
        if heard is not None:
            channel_id, room = heard
            place(key, li, room, channel_id, next((n for _, c, n in member_list if c == channel_id), ""))
    return found
