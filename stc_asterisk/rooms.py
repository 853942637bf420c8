"""Who is in which conference, proven by certificate, told to everyone in it.

Ties together: the per-call tokens the SIP relay puts on INVITEs, the FastAGI
`stc-admit` script that binds an Asterisk channel to the token's tunnel
identity, ARI (membership, rebuilt on every reconnect) and AMI (talking,
kick), and the signed roster pushed through the tunnel to every participant
of a room on every change (a delta against the version each client holds: stc_wire.roster_sync),
and who talks in small signed updates, coalesced per room (stc_asterisk.talking). A channel in a conference without an stc identity
is listed as UNAUTHENTICATED and, by policy, ejected. Anything else that hears a
room (ChanSpy, MixMonitor, the ConfBridge recorder, ARI snoops and recordings) is
listed on the roster too and, by the room's `hidden_listeners` policy, stopped.

Tokens are signed bindings (stc_wire.binding), and stc-admit stores each channel's binding
on the channel (STC_BINDING). A channel in a room that this process did not admit (after a
restart, or admitted by another server of the deployment) is looked up through ARI: its
STC_BINDING must verify for its uniqueid, its SIP Call-ID and its room, or it is
UNAUTHENTICATED. Rosters wait for those look-ups, so no one is shown UNAUTHENTICATED for the
time an ARI request takes. An STC_BINDING set by anything but stc-admit (AMI VarSet events)
makes the channel be looked up again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from stc_wire import messages as wire
from stc_wire.binding import Binding, BindingRejected, BindingSigner, BindingVerifier
from stc_wire.identity import PeerIdentity
from stc_wire.roster import Roster, RosterEntry, RosterError, RosterSigner, RosterVersions, iso_utc
from stc_wire.roster_sync import Publication, RosterPublisher, parse_resync_request, sign_talking

from .ami import AmiClient
from .ari import AriClient
from .conference import ConferenceState
from .config import AsteriskNode
from .listeners import HiddenListener, concise_channels, mixmonitor_list_count
from .fastagi import BINDING_VARIABLE, Admission, FastAgiServer, Refusal, RoomPolicy, TokenRefused, make_admission_handler
from .fastagi.protocol import AgiRequest
from .limits import BoundedDict, TokenBook
from .supervise import log_failure, supervise
from .talking import TalkingCoalescer
from .tunnel_server import TunnelPeer

if TYPE_CHECKING:
    from .app import ServerApp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenGrant:
    peer_id: str
    identity: PeerIdentity
    call_id: str
    room: str


def _server_certificate(path: Path) -> x509.Certificate:
    """One of `tunnel.trusted_servers`, or a ValueError that names the file."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"tunnel.trusted_servers: cannot use {path}: {exc}") from None


class RoomService:
    """The rooms of one Asterisk node (`node`; the only one without [[asterisk.nodes]]). With
    several nodes the app makes one per node; the first also serves FastAGI for all of them."""

    def __init__(self, app: "ServerApp", node: AsteriskNode | None = None) -> None:
        self.app = app
        config = app.config
        self.node = node or config.asterisk.node_list()[0]
        self.serves_fastagi = True
        # The RoomService of the node a room lives on (the app's placement; this one alone by default).
        self.home_of: Callable[[str], RoomService] = lambda room: self
        self.conference = ConferenceState()
        self.versions = RosterVersions()
        key_pem = config.tunnel.key.read_bytes()
        key = load_pem_private_key(key_pem, password=None)
        self.signer = RosterSigner(key)  # type: ignore[arg-type]
        self.publisher = RosterPublisher(self.signer)
        self.talk_seq = RosterVersions()  # talking updates' sequence numbers, per room
        # peer id -> room -> the roster version last sent to it: a delta against that, or the full roster.
        self._held: dict[str, dict[str, int]] = {}
        self._told_talking: dict[str, tuple[int, frozenset[str]]] = {}  # room -> (version, talkers) last told
        self._resynced: BoundedDict[tuple[str, str], float] = BoundedDict(10_000)
        self.resyncs_refused = 0
        self.rosters_sent = {"delta": 0, "full": 0, "resync": 0, "talking": 0}  # messages, by kind
        self.talking = TalkingCoalescer(self._send_talking)
        cert = x509.load_pem_x509_certificate(config.tunnel.cert.read_bytes())
        self.binding_signer = BindingSigner(key, cert)  # type: ignore[arg-type]
        self.binding_verifier = BindingVerifier([cert, *map(_server_certificate, config.tunnel.trusted_servers)])
        # Channels whose STC_BINDING is being read through ARI, and those whose binding was refused.
        self._binding_checks: dict[str, asyncio.Task[set[str]]] = {}
        self._refused_bindings: set[str] = set()
        # channel uniqueid -> the STC_BINDING value this process stored or verified on it: a VarSet
        # event with any other value means something else changed it.
        self._channel_bindings: BoundedDict[str, str] = BoundedDict(10_000)
        self.server_id = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
        self.policy = RoomPolicy.from_mapping(config.rooms.policy)
        self.tokens: TokenBook[TokenGrant] = TokenBook(config.limits.token_ttl)
        ast = config.asterisk
        self.admission = make_admission_handler(self.lookup_token, self.policy, self.on_admit, on_refuse=self.on_refuse)
        self.fastagi = FastAgiServer(ast.fastagi_host, ast.fastagi_port, {"stc-admit": self.admission},
            allowed_sources=ast.fastagi_sources(), max_sessions_per_source=ast.fastagi_sessions_per_source,
            max_sessions=ast.fastagi_sessions_per_source * len(ast.node_list()),  # every node its full share
            reuse_port=config.tunnel.reuse_port)  # processes sharing the tunnel port share this one too
        node = self.node
        # ARI gives an application's events to one websocket only (a newer one takes them over), so
        # each process following a node registers its own name: several servers or processes (and
        # `stc-server check`) never starve each other.
        self.ari = AriClient(node.ari_url, node.ari_user, node.ari_password,
                             f"{node.ari_app}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}")
        self.ami = AmiClient(node.ami_host, node.ami_port, node.ami_user, node.ami_secret, on_event=self._ami_event,
                             on_up=self._ami_up, on_down=lambda exc: log.warning("AMI down: %s", exc),
                             event_patterns=("Confbridge*", "ChanSpy*", "MixMonitor*", "VarSet"))
        self._ari_task: asyncio.Task[None] | None = None
        self._push_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ejecting: set[str] = set()
        self._flagged: set[str] = set()  # UNAUTHENTICATED channels already counted as seen
        self._audited: dict[str, dict[str, RosterEntry]] = {}  # room -> channel -> entry, as last audited
        self._scan_lock = asyncio.Lock()

    async def start(self) -> None:
        if self.serves_fastagi:
            await self.fastagi.start()
            log.info("admission FastAGI on %s:%d", self.app.config.asterisk.fastagi_host, self.fastagi.port)
        await self.ami.start()
        self._ari_task = asyncio.create_task(supervise(
            f"ARI of {self.node.name}", lambda: self.ari.run(self._ari_event, self._ari_connected, self._ari_lost), log))
        log.info("Asterisk node %s: following conferences through ARI %s and AMI %s:%d", self.node.name,
                 self.node.ari_url, self.node.ami_host, self.node.ami_port)

    async def close(self) -> None:
        self.ari.stop()
        if self._ari_task is not None:
            self._ari_task.cancel()
            await asyncio.gather(self._ari_task, return_exceptions=True)
        await self.ari.close()
        await self.ami.close()
        await self.fastagi.close()
        self.talking.close()
        for task in list(self._tasks):
            task.cancel()

    # -- tokens (the SIP relay's side) -------------------------------------------
    def issue(self, peer: TunnelPeer, call_id: str, room: str) -> str:
        """The X-STC-Token for this call: a signed binding; "" if none can be made (admission refuses)."""
        key = f"{peer.id}/{call_id}"
        held = self.tokens.token_for(key)
        if held is not None:  # a retransmitted INVITE gets the token its call already has
            return held
        binding = Binding.new(peer.identity, room, call_id, now=time.time(), ttl=self.app.config.limits.token_ttl)
        try:
            token = self.binding_signer.sign(binding)
        except BindingRejected as exc:
            log.error("[%s] no admission token for call %s: %s", peer.id, call_id, exc)
            return ""
        # Kept in memory only so that a retransmission gets the same token; an unused one expires.
        return self.tokens.issue(key, token, TokenGrant(peer.id, peer.identity, call_id, room))

    def release(self, token: str) -> None:
        self.tokens.release(token)

    def lookup_token(self, token: str) -> Admission | None:
        """What a token vouches for, by its signature alone: any server of the deployment may have issued it."""
        try:
            binding = self.binding_verifier.verify_token(token, now=time.time())
        except BindingRejected as exc:
            raise TokenRefused(Refusal.TOKEN_EXPIRED if exc.reason == "expired" else Refusal.TOKEN_FORGED,
                               exc.message) from None
        grant = self.tokens.use(token)  # ours: it no longer expires in memory
        call_ref = f"{grant.peer_id}/{grant.call_id}" if grant else f"Call-ID {binding.call_id}"
        return Admission(binding.identity, call_ref, call_id=binding.call_id, room=binding.room,
                         seal=functools.partial(self._seal, binding))

    def _seal(self, binding: Binding, channel_id: str) -> str:
        """The STC_BINDING value for the channel stc-admit is admitting."""
        value = self.binding_signer.sign(binding.for_channel(channel_id))
        self.home_of(binding.room)._channel_bindings[channel_id] = value  # noqa: SLF001 - its VarSet arrives there
        return value

    def on_admit(self, request: AgiRequest, identity: Any, room: str) -> None:
        # The channel is not in the bridge yet (the AGI runs before ConfBridge): the roster goes
        # out when ARI reports it entering, unless the binding changed a room's view already.
        home = self.home_of(room)  # the node the relay sent this room's calls to
        home._changed(home.conference.bind(request.uniqueid, identity))  # noqa: SLF001
        self.app.audit.record("admitted", room=room, channel_id=request.uniqueid, subject=identity.subject,
                              fingerprint=identity.fingerprint_sha256)

    def on_refuse(self, request: AgiRequest, room: str, reason: str) -> None:
        self.app.audit.record("admission-refused", room=room[:80], channel_id=request.uniqueid,
                              caller_id=f"{request.calleridname} <{request.callerid}>", reason=reason)

    # -- Asterisk events ------------------------------------------------------------
    async def _ari_connected(self) -> None:
        mark = self.conference.binding_mark()
        bridges = await self.ari.get_bridges()
        channels = await self.ari.get_channels()
        changed = self.conference.rebuild(bridges, channels, binding_mark=mark)
        self._refused_bindings.clear()  # read every unbound channel's STC_BINDING again
        changed |= await self._check_bindings()
        log.info("conference state rebuilt from ARI: rooms %s", ", ".join(self.conference.rooms()) or "none")
        if self.ami.up:
            changed |= await self._scan_listeners()
        self._changed(changed | set(self.conference.rooms()))

    async def _ami_up(self) -> None:
        log.info("AMI up")
        if self.ari.connected:
            self._changed(await self._scan_listeners())

    async def _scan_listeners(self) -> set[str]:
        """What no event will tell again after a (re)connect: the ConfBridge recorders (internal
        channels, invisible to ARI) and the MixMonitors on every participant's channel."""
        async with self._scan_lock:
            try:
                channels = concise_channels(await self.ami.command("core show channels concise"))
                mixmonitors = {}
                for channel_id, name in self.conference.participant_channels():
                    listing = await self.ami.command(f"mixmonitor list {name}")
                    mixmonitors[channel_id] = (name, mixmonitor_list_count(listing))
            except Exception as exc:
                log.warning("scan for hidden listeners failed: %s", exc)
                return set()
        changed = self.conference.apply_scan(channels, mixmonitors)
        found = self.conference.hidden_listeners()
        log.info("scan for hidden listeners: %d found%s", len(found),
                 "".join(f"; {li.kind} {li.channel_name} in room {li.room}" for li in found))
        return changed

    def _ari_lost(self, exc: BaseException | None) -> None:
        log.warning("Asterisk %s unreachable (%s): conference state of its rooms unknown until it is back", self.node.name,
                    exc or "closed")
        self._changed(self.conference.set_unknown())

    def _ari_event(self, event: dict[str, Any]) -> None:
        changed = self.conference.apply_ari(event)
        self._start_binding_checks()
        self._changed(changed)

    # -- bindings read back from the channels -----------------------------------------
    def _start_binding_checks(self) -> None:
        """Start an ARI look-up of STC_BINDING for every member this process knows no binding of."""
        unbound = {c.channel_id: c.room for c in self.conference.unauthenticated()}
        self._refused_bindings &= set(unbound)  # forget channels gone or bound since
        for channel_id, room in unbound.items():
            if channel_id in self._binding_checks or channel_id in self._refused_bindings:
                continue
            task = asyncio.get_running_loop().create_task(self._check_binding(channel_id, room))
            self._binding_checks[channel_id] = task
            task.add_done_callback(functools.partial(self._binding_checked, channel_id))

    def _binding_checked(self, channel_id: str, task: "asyncio.Task[set[str]]") -> None:
        if self._binding_checks.get(channel_id) is task:
            del self._binding_checks[channel_id]
        if not task.cancelled() and task.exception() is None:
            self._changed(task.result())

    async def _check_bindings(self) -> set[str]:
        """Look up every unbound member's binding now; the rooms whose view changed."""
        self._start_binding_checks()
        changed: set[str] = set()
        for result in await asyncio.gather(*self._binding_checks.values(), return_exceptions=True):
            if isinstance(result, set):
                changed |= result
        return changed

    async def _check_binding(self, channel_id: str, room: str) -> set[str]:
        """Bind `channel_id` if its STC_BINDING verifies for this channel, its SIP Call-ID and `room`."""
        try:
            value = await self.ari.get_channel_variable(channel_id, BINDING_VARIABLE)
        except Exception as exc:  # fail closed: unbound, so ejected by default
            log.warning("channel %s: its STC_BINDING could not be read: %s", channel_id, exc)
            return set()
        call_id: str | None = None
        if value:
            try:
                call_id = await self.ari.get_channel_variable(channel_id, "CHANNEL(pjsip,call-id)")
            except Exception as exc:  # not a PJSIP channel: no Call-ID, so no binding holds
                log.debug("channel %s has no SIP Call-ID: %s", channel_id, exc)
        if not value:
            log.info("channel %s in room %s carries no STC_BINDING", channel_id, room)
            self._refused_bindings.add(channel_id)
            return set()
        try:
            binding = self.binding_verifier.verify_channel(value, channel=channel_id, call_id=call_id or "", room=room)
        except BindingRejected as exc:
            log.warning("channel %s in room %s: STC_BINDING refused (%s): UNAUTHENTICATED", channel_id, room, exc)
            self._refused_bindings.add(channel_id)
            return set()
        if channel_id not in {c for c, _ in self.conference.participant_channels()}:
            return set()  # left while we asked
        log.info("channel %s in room %s: binding of %s (%s) verified", channel_id, room,
                 binding.identity.subject, binding.identity.fingerprint_sha256)
        self._channel_bindings[channel_id] = value
        return self.conference.bind(channel_id, binding.identity)

    def _ami_event(self, event: dict[str, Any]) -> None:
        fields = {str(k).lower(): v for k, v in event.items()}
        if str(fields.get("event", "")).lower() == "varset":
            if str(fields.get("variable", "")).upper() == BINDING_VARIABLE:
                self._binding_set(fields)
            return
        self._changed(self.conference.apply_ami(event))
        for room in self.conference.pop_talking_changes():
            self.talking.changed(room)

    def _binding_set(self, fields: dict[str, Any]) -> None:
        """STC_BINDING was set on a channel: unless to the value stc-admit stored (or we verified),
        forget what we knew of that channel and verify it again, as if admitted elsewhere."""
        channel_id = fields.get("uniqueid")
        if not isinstance(channel_id, str) or not channel_id:
            return
        if self._channel_bindings.get(channel_id) == fields.get("value"):
            return  # stc-admit's own SET VARIABLE
        # Unknown to us: an edit, or (with several servers) another server's stc-admit.
        level = logging.WARNING if self.conference.binding(channel_id) is not None else logging.DEBUG
        log.log(level, "channel %s: STC_BINDING set by something other than our stc-admit: verifying it again",
                channel_id)
        self._channel_bindings.pop(channel_id, None)
        self._refused_bindings.discard(channel_id)
        stale = self._binding_checks.pop(channel_id, None)
        if stale is not None:  # it may have read the value before this change
            stale.cancel()
        changed = self.conference.unbind(channel_id)
        self._start_binding_checks()
        self._changed(changed)

    # -- pushing rosters ------------------------------------------------------------
    def _changed(self, rooms: set[str]) -> None:
        if not rooms:
            return
        task = asyncio.get_running_loop().create_task(self._push(rooms, time.monotonic()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure(log, f"roster push for {', '.join(sorted(rooms))}"))

    async def _push(self, rooms: set[str], changed_at: float) -> None:
        # A member admitted elsewhere is not UNAUTHENTICATED: wait for its binding before telling anyone.
        await asyncio.gather(*self._binding_checks.values(), return_exceptions=True)
        async with self._push_lock:  # versions go out in order; pushing only queues, never waits on a peer
            for room in sorted(rooms):
                self._police_listeners(room)
                self._push_room(room)
                self.app.metrics.roster_pushed(time.monotonic() - changed_at)
        for room in sorted(rooms):
            await self._enforce(room)

    def _sessions_in(self, room: str) -> list[Any]:
        return [session for session in list(self.app.sessions.values())
                if any(call.room == room and call.confirmed for call in session.calls.values())]

    def _push_room(self, room: str) -> None:
        now = datetime.now(timezone.utc)
        version = self.versions.next(room, time.time_ns() // 1000)
        roster = self.conference.roster(room, server_id=self.server_id, version=version, issued_at=iso_utc(now))
        publication = self.publisher.publish(roster)  # the one signature of this roster
        self._audit_membership(roster)
        self.app.audit.record("roster-pushed", room=room, version=version, participants=len(roster.entries),
                              state=roster.state)
        sessions = self._sessions_in(room)
        self._forget_held(room, {session.peer.id for session in sessions})
        deltas = 0
        for session in sessions:
            held = self._held.setdefault(session.peer.id, {})
            delta = publication.delta if held.get(room) == publication.base else None
            deltas += delta is not None
            self._send_roster(session, room, delta or publication.full, version)
        self.rosters_sent["delta"] += deltas
        self.rosters_sent["full"] += len(sessions) - deltas
        self._told_talking[room] = (version, frozenset(publication.talking))
        if not roster.entries:  # an empty room: the next roster is full for everyone
            self.publisher.forget(room)
            self.talking.forget(room)
            self._told_talking.pop(room, None)
        log.info("room %s roster v%d: %d participant(s), %d unauthenticated, %d hidden listener(s), state %s; "
                 "%d delta(s), %d full", room, version, len(roster.entries), len(roster.unauthenticated),
                 len(roster.listeners), roster.state, deltas, len(sessions) - deltas)

    def _send_roster(self, session: Any, room: str, data: bytes, version: int) -> None:
        try:
            session.peer.push(wire.RosterUpdate(data))
        except Exception as exc:  # that tunnel is closing; the others still get it
            log.debug("roster to %s not sent: %s", session.peer.id, exc)
            self._held.get(session.peer.id, {}).pop(room, None)
            return
        self._held.setdefault(session.peer.id, {})[room] = version

    def _forget_held(self, room: str, present: set[str]) -> None:
        """Sessions no longer in `room` (or gone) get its full roster if they come back."""
        for peer_id in list(self._held):
            if peer_id not in present:
                self._held[peer_id].pop(room, None)
            if not self._held[peer_id] or peer_id not in self.app.sessions:
                del self._held[peer_id]

    def resync(self, peer: TunnelPeer, data: bytes) -> None:
        """A client asks for the full roster of a room it is in (a delta did not fit what it holds)."""
        try:
            room = parse_resync_request(data)
        except RosterError as exc:
            self.resyncs_refused += 1
            log.debug("[%s] roster resync request refused: %s", peer.id, exc)
            return
        home = self.home_of(room)
        if home is not self:  # the room lives on another Asterisk node: its service holds the roster
            home.resync(peer, data)
            return
        session = self.app.sessions.get(peer.id)
        publication: Publication | None = self.publisher.last(room)
        now = time.monotonic()
        if session is None or session not in self._sessions_in(room) or publication is None:
            self.resyncs_refused += 1
            log.debug("[%s] roster resync for room %s refused: not in it, or no roster yet", peer.id, room[:80])
            return
        if now - self._resynced.get((peer.id, room), float("-inf")) < 1.0:
            self.resyncs_refused += 1  # at most one full roster a second per client and room
            return
        self._resynced[(peer.id, room)] = now
        log.info("[%s] full roster v%d of room %s on request", peer.id, publication.version, room)
        self._send_roster(session, room, publication.full, publication.version)
        self.rosters_sent["resync"] += 1

    def _send_talking(self, room: str) -> None:
        """One talking update: who talks in `room` now, for the clients holding its last roster."""
        publication = self.publisher.last(room)
        if publication is None:
            return
        talking = self.conference.talking(room)
        if self._told_talking.get(room) == (publication.version, talking):
            return  # back to what they were last told
        self._told_talking[room] = (publication.version, talking)
        data = sign_talking(self.signer, server_id=self.server_id, room=room, version=publication.version,
                            seq=self.talk_seq.next(room, time.time_ns() // 1000),
                            issued_at=iso_utc(datetime.now(timezone.utc)), talking=talking)
        for session in self._sessions_in(room):
            if self._held.get(session.peer.id, {}).get(room) != publication.version:
                continue  # its next roster, full, says who talks
            try:
                session.peer.push(wire.RosterUpdate(data))
            except Exception as exc:
                log.debug("talking update to %s not sent: %s", session.peer.id, exc)
                continue
            self.rosters_sent["talking"] += 1
        log.debug("room %s talking update (roster v%d): %d talking", room, publication.version, len(talking))

    def _audit_membership(self, roster: Roster) -> None:
        """Joins and leaves since the room's last roster (none while the state is unknown: Asterisk
        is away, and who left is told after it is back)."""
        if roster.state != "ok":
            return
        before = self._audited.pop(roster.room, {})
        now = {e.channel_id: e for e in roster.entries}
        for channel_id, entry in now.items():
            if channel_id not in before:
                self.app.audit.record("join", room=roster.room, channel_id=channel_id, channel=entry.channel_name,
                                      joined_at=entry.joined_at, **_who(entry))
        for channel_id, entry in before.items():
            if channel_id not in now:
                self.app.audit.record("leave", room=roster.room, channel_id=channel_id, channel=entry.channel_name,
                                      **_who(entry))
        if now:
            self._audited[roster.room] = now

    async def _enforce(self, room: str) -> None:
        present = {c.channel_id for c in self.conference.unauthenticated()}
        self.app.metrics.rooms.unauthenticated_seen += len(present - self._flagged)
        self._flagged = present
        if self.app.config.rooms.unauthenticated != "eject":
            return
        # Forget channels already gone, so the set holds only ejections still under way.
        self._ejecting &= {c.channel_id for c in self.conference.unauthenticated()}
        for channel in self.conference.unauthenticated(room):
            if channel.channel_id in self._ejecting or channel.channel_id in self._binding_checks:
                continue
            self._ejecting.add(channel.channel_id)
            log.warning("UNAUTHENTICATED channel %s (%s) in room %s: ejecting", channel.channel_name,
                        channel.channel_id, room)
            try:
                if await self.ari.hangup_channel(channel.channel_id, reason="normal"):
                    self.app.metrics.rooms.unauthenticated_ejected += 1
                    self.app.audit.record("ejected", room=room, channel_id=channel.channel_id, channel=channel.channel_name,
                                          reason="unauthenticated")
            except Exception as exc:
                log.error("could not eject %s: %s", channel.channel_name, exc)
                self._ejecting.discard(channel.channel_id)

    # -- hidden listeners ---------------------------------------------------------------
    def _heard(self, listener: HiddenListener) -> str:
        """Whom a listener hears, for the log: the certificate name (or the channel) or the room."""
        if listener.hears == "room":
            return f"the whole room {listener.room}"
        identity = self.conference.binding(listener.hears)
        who = identity.get("display_name") if identity else "an UNAUTHENTICATED caller"
        return f"{who} ({listener.hears_name or listener.hears})"

    def _police_listeners(self, room: str) -> None:
        """Decide, before the roster goes out, what happens to each new listener: its roster line
        then already says "stopping" or "shown"; the stop itself runs in the background."""
        policy = self.app.config.rooms.hidden_listener_policy(room)
        for listener in self.conference.hidden_listeners(room):
            if listener.action is not None:
                continue
            heard = self._heard(listener)
            if policy == "show":
                log.warning("hidden listener in room %s: %s %s hears %s; shown on the roster (policy 'show')",
                            room, listener.kind, listener.channel_name, heard)
                self.conference.set_listener_action(listener.key, "shown", quiet=True)
                continue
            log.warning("hidden listener in room %s: %s %s hears %s; stopping it", room, listener.kind,
                        listener.channel_name, heard)
            self.conference.set_listener_action(listener.key, "stopping", quiet=True)
            task = asyncio.get_running_loop().create_task(self._stop_listener(listener, heard))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _stop_listener(self, listener: HiddenListener, heard: str) -> None:
        try:
            done = await self._stop(listener)
        except Exception as exc:
            outcome = f"failed: {type(exc).__name__}: {exc}"[:200]
            log.error("could not stop %s %s (hears %s): %s", listener.kind, listener.channel_name, heard, exc)
        else:
            outcome = "stopped" if done else "failed: Asterisk did not stop it"
            log.warning("%s %s (heard %s in room %s): %s", listener.kind, listener.channel_name, heard,
                        listener.room, outcome)
        self._changed(self.conference.set_listener_action(listener.key, outcome))

    async def _stop(self, listener: HiddenListener) -> bool:
        family, name = listener.key
        if family == "mixmonitor":
            # StopMixMonitor without an id stops one instance: once per MixMonitor on the channel.
            ok = True
            for _ in range(max(listener.count, 1)):
                response = await self.ami.action({"Action": "StopMixMonitor", "Channel": listener.channel_name})
                ok = ok and not isinstance(response, list) and bool(response.success)
            return ok
        if family == "confbridge-record":
            response = await self.ami.action({"Action": "ConfbridgeStopRecord", "Conference": name})
            return not isinstance(response, list) and bool(response.success)
        if family == "recording":
            await self.ari.stop_recording(name)  # False: it had already ended
            return True
        if listener.channel_id is not None:
            await self.ari.hangup_channel(listener.channel_id, reason="normal")  # False: already gone
            return True
        return False


def _who(entry: RosterEntry) -> dict[str, Any]:
    """The certificate a roster entry stands for, or the unverified caller id of an UNAUTHENTICATED one."""
    if entry.identity is None:
        return {"unauthenticated": True, "caller_id": entry.caller_id}
    return {"subject": entry.identity.get("subject"), "display_name": entry.identity.get("display_name"),
            "fingerprint": entry.identity.get("fingerprint_sha256")}
