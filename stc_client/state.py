"""What stc-client is doing, as one observable value: the app writes, the window reads.

`ClientState` is written by the client app (tunnel up/down, call start/end,
each roster and each refused roster) and read by the local web page, its
websocket and `stc-client status`. Every change produces a new snapshot; a
subscriber keeps only the newest one it has not read yet, so a slow browser
tab never holds the app up and never sees a stale state after a fresh one.

Call the mutators from the event loop's thread (asyncio.Event is not
thread-safe).

Snapshot schema (`ClientState.snapshot()`, JSON-ready, `schema` = 1):

    schema        1
    seq           int, grows by one on every change
    light         "red" | "yellow" | "green" | "amber"
    label         "Not connected" | "Connected, no call" | "In a secure call" | "In a call that is NOT private"
                  | "Reconnecting" (yellow: the call is kept while stc-client rejoins the room)
    reconnecting  {"since", "reason"} while the call's way to the conference is being restored, else null
                  (amber: in a call, but the roster lists an UNAUTHENTICATED channel or a listener)
    reason        human sentence: why red, or what yellow/green means
    reason_code   red: a TunnelRefused reason (server-unreachable,
                  server-certificate-rejected, server-certificate-revoked,
                  refused-by-server, tls-failed, protocol-error,
                  bad-local-settings) or not-connected, tunnel-closed,
                  client-fault; null otherwise
    reason_label  short words for reason_code ("server unreachable", ...), or null
    since         ISO 8601 UTC: when the light last changed colour or reason
    server        PeerIdentity.to_json() of the server, or null
    me            how the server sees this client (its HELLO's identity JSON), or null
    call          {"room", "srtp_profile", "since"} or null
    roster        {"server_id", "room", "version", "issued_at", "state", "received_at"} or null
    participants  list of rows, in join order:
                  {"channel_id", "authenticated", "display_name", "organization",
                   "org_unit", "address", "issuer", "fingerprint",
                   "short_fingerprint", "talking", "joined_at", "is_me",
                   "caller_id", "channel_name"}
                  (identity fields are null for an UNAUTHENTICATED row; caller_id is
                  what Asterisk claims, unverified)
    listeners     list of {"kind", "hears", "hears_name", "channel", "since", "action",
                  "message"}: what else hears the room (the roster's listeners), "message"
                  in words ("Alice's line is being recorded (MixMonitor): stc is stopping it")
    media         the current call's audio: {"sent", "received", "dropped", "last_packet_at"} (packets;
                  ISO 8601 UTC or null), or null outside a call
    warnings      list of {"kind", "message"}; kind is "unauthenticated" (a channel
                  without a certificate is in the room), "listener" (one per listener),
                  "roster-rejected" (a roster's signature/version/room did not check out;
                  stays until the call or tunnel ends) or "roster-unknown" (the server
                  cannot see the room)
    history       list of {"at", "kind", "message"}, oldest first: everything the rosters of
                  the current (or last) call showed, kept after it is gone: who joined and
                  left, UNAUTHENTICATED channels and how long they stayed, listeners and
                  what became of them. kind: "joined", "left", "unauthenticated",
                  "unauthenticated-gone", "listener", "listener-changed", "listener-gone",
                  "reconnecting", "reconnected" (with the gap in seconds).
                  Cleared when the next call starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, Literal

from stc_wire.identity import PeerIdentity
from stc_wire.roster import Roster, RosterEntry, RosterListener, RosterRejected, iso_utc

log = logging.getLogger(__name__)

SCHEMA = 1
Light = Literal["red", "yellow", "green", "amber"]
MAX_HISTORY = 500

LIGHT_LABELS: dict[str, str] = {
    "red": "Not connected",
    "yellow": "Connected, no call",
    "green": "In a secure call",
    "amber": "In a call that is NOT private",
}

# Short words for why the light is red; the long sentence comes from the exception.
REASON_LABELS: dict[str, str] = {
    "not-connected": "not connected yet",
    "not-set-up": "not set up yet",
    "server-unreachable": "server unreachable",
    "server-certificate-rejected": "server certificate wrong",
    "server-certificate-revoked": "server certificate REVOKED",
    "refused-by-server": "refused certificate",
    "tls-failed": "TLS failed",
    "protocol-error": "protocol error",
    "bad-local-settings": "bad local settings",
    "tunnel-closed": "tunnel closed",
    "client-fault": "client error",
}


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class CallInfo:
    """The secure call this client is in."""

    room: str
    srtp_profile: str
    since: datetime


@dataclass(frozen=True)
class MediaCounters:
    """The current call's audio, as the client relays it: so a user can see that audio flows."""

    sent: int  # packets from the softphone, protected and sent to the server
    received: int  # packets from the server, verified and handed to the softphone
    dropped: int  # refused (forged, replayed, malformed, unkeyed, from elsewhere)
    last_packet_at: datetime | None  # when either count last moved


@dataclass(frozen=True)
class RosterRejection:
    """The last roster the client refused, and how many were refused in this call."""

    reason: str
    message: str
    at: datetime
    count: int


class StateSubscription:
    """Snapshots of a ClientState as they change; only the newest unread one is kept.

        async with state.subscribe() as sub:
            async for snapshot in sub:   # the current one first, then each change
                ...
    """

    def __init__(self, state: ClientState) -> None:
        self._state = state
        self._latest: dict[str, Any] | None = state.snapshot()
        self._ready = asyncio.Event()
        self._ready.set()
        self._closed = False

    def _offer(self, snapshot: dict[str, Any]) -> None:
        self._latest = snapshot  # replaces an unread one: a slow reader skips to the newest
        self._ready.set()

    async def next(self) -> dict[str, Any]:
        """The newest snapshot not yet returned (waits for a change if there is none)."""
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._latest is not None:
                snapshot, self._latest = self._latest, None
                self._ready.clear()
                return snapshot
            await self._ready.wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()  # wake a waiting reader so it stops
            self._state._unsubscribe(self)

    def __aiter__(self) -> StateSubscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.next()

    async def __aenter__(self) -> StateSubscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ClientState:
    """The one observable state of stc-client. Light: red without a tunnel, yellow with
    a tunnel and no call, green in a call."""

    def __init__(self, *, clock: Callable[[], datetime] = _utc_now) -> None:
        self._clock = clock
        self._seq = 0
        self._tunnel_up = False
        self._reason_code: str | None = "not-connected"
        self._reason = "stc-client has not connected to the server yet"
        self._since = clock()
        self._server: PeerIdentity | None = None
        self._me: dict[str, Any] | None = None
        self._call: CallInfo | None = None
        self._roster: Roster | None = None
        self._media: MediaCounters | None = None
        self._roster_received_at: datetime | None = None
        self._rejection: RosterRejection | None = None
        self._history: list[dict[str, str]] = []
        self._reconnecting: tuple[datetime, str] | None = None  # (since, why) while a kept call rejoins
        self._subscribers: set[StateSubscription] = set()

    # -- read ------------------------------------------------------------------

    @property
    def light(self) -> Light:
        if self._reconnecting is not None and self._call is not None:
            return "yellow"
        if not self._tunnel_up:
            return "red"
        if self._call is None:
            return "yellow"
        roster = self._roster
        if roster is not None and (roster.unauthenticated or roster.listeners):
            return "amber"
        return "green"

    @property
    def history(self) -> list[dict[str, str]]:
        return list(self._history)

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def server(self) -> PeerIdentity | None:
        return self._server

    @property
    def call(self) -> CallInfo | None:
        return self._call

    @property
    def roster(self) -> Roster | None:
        return self._roster

    @property
    def rejection(self) -> RosterRejection | None:
        return self._rejection

    def subscribe(self) -> StateSubscription:
        """A new subscription; its first snapshot is the current state. Close it when done."""
        sub = StateSubscription(self)
        self._subscribers.add(sub)
        return sub

    def _unsubscribe(self, sub: StateSubscription) -> None:
        self._subscribers.discard(sub)

    # -- write (from the app) ----------------------------------------------------

    def tunnel_down(self, reason_code: str, message: str, *, call_kept: bool = False) -> None:
        """No tunnel (red). `reason_code`: a TunnelRefused reason, or 'tunnel-closed'.
        The call, the roster and its warnings end with the tunnel, unless the call is kept
        while it rejoins (`call_kept`: yellow, "reconnecting")."""
        self._tunnel_up = False
        self._reason_code = reason_code
        self._reason = message
        self._since = self._clock()
        self._server = None
        self._me = None
        if call_kept and self._call is not None:
            self._start_reconnecting(message)
        else:
            self._end_call()
        self._changed()

    def call_reconnecting(self, why: str) -> None:
        """The call lost its way to the conference and is kept while stc-client rejoins (yellow)."""
        if self._call is None or self._reconnecting is not None:
            return
        self._start_reconnecting(why)
        self._changed()

    def _start_reconnecting(self, why: str) -> None:
        if self._reconnecting is None:
            self._reconnecting = (self._clock(), why)
            self._add_history("reconnecting", f"lost the way to the conference ({why}): reconnecting")

    def call_rejoined(self, gap: float | None = None) -> None:
        """Back in the room after a rejoin (green again); the history says how long it took."""
        if self._reconnecting is None:
            return
        since, _ = self._reconnecting
        self._reconnecting = None
        seconds = gap if gap is not None else (self._clock() - since).total_seconds()
        self._add_history("reconnected", f"back in the conference after {seconds:.1f} s")
        if self._call is not None:
            self._reason = f"in a secure call in room {self._call.room}, media protected with {self._call.srtp_profile}"
        self._since = self._clock()
        self._changed()

    def _add_history(self, kind: str, message: str) -> None:
        self._history.append({"at": iso_utc(self._clock()), "kind": kind, "message": message})
        del self._history[:-MAX_HISTORY]

    def tunnel_up(self, server: PeerIdentity, me: Mapping[str, Any] | None = None) -> None:
        """The tunnel is up (yellow): `server` from its certificate, `me` as the server saw us."""
        self._tunnel_up = True
        self._reason_code = None
        self._reason = f"secure tunnel to {server.display_name} is up; no call"
        if self._reconnecting is not None and self._call is not None:
            self._reason = f"secure tunnel to {server.display_name} is up again; rejoining room {self._call.room}"
        self._since = self._clock()
        self._server = server
        self._me = dict(me) if me is not None else None
        self._changed()

    def _not_private(self) -> str:
        roster = self._roster
        if roster is None:
            return ""
        me = (self._me or {}).get("fingerprint_sha256")
        said = [listener_row(li, roster, me)["message"] for li in roster.listeners]
        said += [f"UNAUTHENTICATED channel {e.channel_name} ({_claim(e)}) is in the conference" for e in roster.unauthenticated]
        return "NOT private: " + "; ".join(said) + "." if said else ""

    def call_started(self, room: str, srtp_profile: str, since: datetime | None = None) -> None:
        """In a secure call (green) in `room`, media protected with `srtp_profile`."""
        if not self._tunnel_up:
            raise RuntimeError("a call cannot start without a tunnel")
        when = since or self._clock()
        self._call = CallInfo(room, srtp_profile, when)
        self._history = []
        self._reason = f"in a secure call in room {room}, media protected with {srtp_profile}"
        self._since = when
        self._changed()

    def call_ended(self, why: str | None = None) -> None:
        """Back to yellow; the roster of that call and its warnings go. `why` is shown."""
        if self._call is None and self._roster is None and self._rejection is None:
            return
        self._end_call()
        if self._tunnel_up and self._server is not None:
            self._reason = f"secure tunnel to {self._server.display_name} is up; no call"
            if why:
                self._reason += f" (the last call ended: {why})"
            self._since = self._clock()
        self._changed()

    def set_roster(self, roster: Roster | Mapping[str, Any] | None) -> None:
        """A roster the client has verified (a Roster or its JSON); None clears it."""
        if roster is not None and not isinstance(roster, Roster):
            roster = Roster.from_json(dict(roster))
        if roster is not None:
            self._record_history(self._roster, roster)
        self._roster = roster
        self._roster_received_at = self._clock() if roster is not None else None
        self._changed()

    def roster_rejected(self, error: RosterRejected | str, message: str | None = None) -> None:
        """The verifier refused a roster: RosterRejected, or (reason, message). The shown
        roster stays the last good one; the warning stays until the call or tunnel ends."""
        reason: str
        if isinstance(error, RosterRejected):
            reason, text = error.reason, error.message
        else:
            reason, text = error, message or error
        count = self._rejection.count + 1 if self._rejection is not None else 1
        self._rejection = RosterRejection(reason, text, self._clock(), count)
        log.warning("roster refused (%s): %s", reason, text)
        self._changed()

    def _record_history(self, old: Roster | None, new: Roster) -> None:
        """What changed from the last roster of this call to `new`, in words, at `new`'s issue time."""
        if old is not None and old.room != new.room:
            old = None
        at = new.issued_at
        me = (self._me or {}).get("fingerprint_sha256")
        before = {e.channel_id: e for e in old.entries} if old else {}
        after = {e.channel_id: e for e in new.entries}
        events: list[tuple[str, str]] = []
        for cid, e in after.items():
            if cid in before:
                continue
            if e.identity is None:
                events.append(("unauthenticated", f"UNAUTHENTICATED channel {e.channel_name} "
                                                  f"({_claim(e)}) entered the conference"))
            else:
                events.append(("joined", f"{_who(e, me)} joined"))
        for cid, e in before.items():
            if cid in after:
                continue
            if e.identity is None:
                stayed = _duration(e.joined_at, at)
                events.append(("unauthenticated-gone", f"UNAUTHENTICATED channel {e.channel_name} ({_claim(e)}) "
                                                       f"is gone{stayed}"))
            else:
                events.append(("left", f"{_who(e, me)} left"))
        entries = {**before, **after}
        old_listeners = {_listener_key(li): li for li in (old.listeners if old else ())}
        new_listeners = {_listener_key(li): li for li in new.listeners}
        for key, li in new_listeners.items():
            previous = old_listeners.get(key)
            if previous is None:
                events.append(("listener", listener_message(li, entries.get(li.hears), me)))
            elif previous.action != li.action:
                events.append(("listener-changed", listener_message(li, entries.get(li.hears), me)))
        for key, li in old_listeners.items():
            if key not in new_listeners:
                events.append(("listener-gone", f"{listener_message(li, entries.get(li.hears), me, action=False)}: "
                                                f"no longer{_duration(li.since, at, ' after')}"))
        self._history.extend({"at": at, "kind": kind, "message": message} for kind, message in events)
        del self._history[:-MAX_HISTORY]

    def set_media(self, counters: MediaCounters) -> None:
        """The current call's media counters (ignored outside a call; pushed only when they change)."""
        if self._call is None or counters == self._media:
            return
        self._media = counters
        self._changed()

    def _end_call(self) -> None:
        self._reconnecting = None
        self._media = None
        self._call = None
        self._roster = None
        self._roster_received_at = None
        self._rejection = None

    def _changed(self) -> None:
        self._seq += 1
        if not self._subscribers:
            return
        snapshot = self.snapshot()
        for sub in tuple(self._subscribers):
            sub._offer(snapshot)

    # -- snapshot -----------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-ready values (schema in the module docstring)."""
        light = self.light
        me_fingerprint = (self._me or {}).get("fingerprint_sha256")
        roster = self._roster
        return {
            "schema": SCHEMA,
            "seq": self._seq,
            "light": light,
            "label": "Reconnecting" if self._reconnecting is not None and self._call is not None else LIGHT_LABELS[light],
            "reconnecting": None if self._reconnecting is None or self._call is None
            else {"since": iso_utc(self._reconnecting[0]), "reason": self._reconnecting[1]},
            "reason": self._not_private() if light == "amber" else self._reason,
            "reason_code": self._reason_code if light == "red" else None,
            "reason_label": REASON_LABELS.get(self._reason_code or "", self._reason_code) if light == "red" else None,
            "since": iso_utc(self._since),
            "server": self._server.to_json() if self._server is not None else None,
            "me": self._me,
            "call": None
            if self._call is None
            else {"room": self._call.room, "srtp_profile": self._call.srtp_profile, "since": iso_utc(self._call.since)},
            "roster": None
            if roster is None
            else {
                "server_id": roster.server_id,
                "room": roster.room,
                "version": roster.version,
                "issued_at": roster.issued_at,
                "state": roster.state,
                "received_at": iso_utc(self._roster_received_at or self._since),
            },
            "participants": [] if roster is None else [participant_row(e, me_fingerprint) for e in roster.entries],
            "listeners": [] if roster is None else [listener_row(li, roster, me_fingerprint) for li in roster.listeners],
            "warnings": self._warnings(),
            "history": list(self._history),
            "media": None if self._call is None or self._media is None else {
                "sent": self._media.sent,
                "received": self._media.received,
                "dropped": self._media.dropped,
                "last_packet_at": iso_utc(self._media.last_packet_at) if self._media.last_packet_at else None,
            },
        }

    def _warnings(self) -> list[dict[str, str]]:
        warnings: list[dict[str, str]] = []
        roster = self._roster
        if roster is not None and roster.unauthenticated:
            who = ", ".join(f"{e.caller_id or 'no caller id'} on {e.channel_name}" for e in roster.unauthenticated)
            n = len(roster.unauthenticated)
            warnings.append({
                "kind": "unauthenticated",
                "message": f"{n} UNAUTHENTICATED channel{'s' if n > 1 else ''} in this conference "
                f"(no certificate; anyone could be listening): {who}",
            })
        if roster is not None:
            me = (self._me or {}).get("fingerprint_sha256")
            for li in roster.listeners:
                warnings.append({"kind": "listener", "message": listener_row(li, roster, me)["message"]})
        if self._rejection is not None:
            r = self._rejection
            times = f" ({r.count} refused in this call)" if r.count > 1 else ""
            warnings.append({
                "kind": "roster-rejected",
                "message": f"A roster from the server did not check out ({r.reason}: {r.message}){times}. "
                "The list below is the last verified one; do not trust it blindly.",
            })
        if roster is not None and roster.state == "unknown":
            warnings.append({
                "kind": "roster-unknown",
                "message": "The server cannot see this conference right now: who is in it is unknown.",
            })
        return warnings


def short_fingerprint(fingerprint: str) -> str:
    head = fingerprint[:16]
    return " ".join(head[i : i + 4] for i in range(0, len(head), 4))


def participant_row(entry: RosterEntry, me_fingerprint: str | None = None) -> dict[str, Any]:
    """One roster entry flattened for display (the same rows for the page and the CLI)."""
    ident = entry.identity
    if ident is None:
        return {
            "channel_id": entry.channel_id,
            "authenticated": False,
            "display_name": entry.display_name,
            "organization": None,
            "org_unit": None,
            "address": None,
            "issuer": None,
            "fingerprint": None,
            "short_fingerprint": None,
            "talking": entry.talking,
            "joined_at": entry.joined_at,
            "is_me": False,
            "caller_id": entry.caller_id,
            "channel_name": entry.channel_name,
        }
    sip_uris = ident.get("sip_uris") or []
    emails = ident.get("emails") or []
    fingerprint = str(ident.get("fingerprint_sha256", ""))
    return {
        "channel_id": entry.channel_id,
        "authenticated": True,
        "display_name": entry.display_name,
        "organization": ident.get("organization"),
        "org_unit": ident.get("org_unit"),
        "address": sip_uris[0] if sip_uris else emails[0] if emails else None,
        "issuer": ident.get("issuer"),
        "fingerprint": fingerprint,
        "short_fingerprint": short_fingerprint(fingerprint),
        "talking": entry.talking,
        "joined_at": entry.joined_at,
        "is_me": bool(me_fingerprint) and fingerprint == me_fingerprint,
        "caller_id": None,
        "channel_name": entry.channel_name,
    }


# What each kind of listener does, in words a person understands: (about one participant, about the room).
_LISTENER_WORDS: dict[str, tuple[str, str]] = {
    "mixmonitor": ("{whose} line is being recorded (MixMonitor)", "the conference is being recorded (MixMonitor)"),
    "confbridge-record": ("{whose} line is being recorded (conference recording)",
                          "the whole conference is being recorded (ConfBridge recording)"),
    "chanspy": ("{who} is being listened to from another line (ChanSpy)",
                "someone may be listening in on the conference from another line (ChanSpy)"),
    "snoop": ("{who} is being listened to through the PBX's programming interface (ARI snoop)",
              "the conference is being listened to through the PBX's programming interface (ARI snoop)"),
    "recording": ("{whose} line is being recorded through the PBX's programming interface (ARI recording)",
                  "the conference is being recorded through the PBX's programming interface (ARI recording)"),
    "external-media": ("{whose} audio is being sent out of the PBX (external media)",
                       "the conference's audio is being sent out of the PBX (external media)"),
}
_ACTION_WORDS = {"stopping": "stc is stopping it", "stopped": "stopped by stc",
                 "shown": "allowed by the server's policy, it goes on"}


def listener_message(listener: RosterListener, heard: RosterEntry | None, me_fingerprint: str | None = None,
                     *, action: bool = True) -> str:
    """`Alice's line is being recorded (MixMonitor): stc is stopping it`."""
    one, room = _LISTENER_WORDS.get(
        listener.kind, ("{who} can be heard by something outside the conference (" + listener.kind + ")",
                        "the conference can be heard by something outside it (" + listener.kind + ")"))
    if listener.hears_room or heard is None:
        text = room
    else:
        is_me = bool(me_fingerprint) and heard.identity is not None and \
            heard.identity.get("fingerprint_sha256") == me_fingerprint
        who = "you" if is_me else heard.display_name if heard.identity else f"UNAUTHENTICATED {heard.channel_name}"
        whose = "your" if is_me else f"{who}'s"
        text = one.format(who=who, whose=whose)
        if is_me:
            text = text.replace("you is", "you are")
    text = text[0].upper() + text[1:]
    if not action:
        return text
    if listener.action.startswith("failed: "):
        return f"{text}: stc could not stop it ({listener.action[len('failed: '):]})"
    return f"{text}: {_ACTION_WORDS.get(listener.action, listener.action)}"


def listener_row(listener: RosterListener, roster: Roster, me_fingerprint: str | None = None) -> dict[str, Any]:
    heard = next((e for e in roster.entries if e.channel_id == listener.hears), None)
    return {
        "kind": listener.kind,
        "hears": listener.hears,
        "hears_name": "the whole conference" if heard is None else heard.display_name,
        "channel": listener.channel,
        "since": listener.since,
        "action": listener.action,
        "message": listener_message(listener, heard, me_fingerprint),
    }


def _listener_key(listener: RosterListener) -> tuple[str, str, str]:
    return (listener.kind, listener.channel, listener.hears)


def _who(entry: RosterEntry, me_fingerprint: str | None) -> str:
    if entry.identity is not None and me_fingerprint and entry.identity.get("fingerprint_sha256") == me_fingerprint:
        return f"{entry.display_name} (you)"
    return entry.display_name


def _claim(entry: RosterEntry) -> str:
    return f"claims to be {entry.caller_id}" if entry.caller_id else "no caller id"


def _duration(start: str, end: str, prefix: str = " after") -> str:
    """` after 5 ms` between two roster times, or "" if they cannot be compared."""
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return ""
    if seconds < 0:
        return ""
    return f"{prefix} {seconds * 1000:.0f} ms" if seconds < 10 else f"{prefix} {seconds:.1f} s"
