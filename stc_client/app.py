"""stc-client as one object: keeps the tunnel up, serves the softphone and the window."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING


from stc_wire.messages import LegLost, Message, RosterUpdate
from stc_wire.roster import Roster
from stc_wire.roster_sync import TalkingUpdate
from stc_wire.srtp import SrtpProfile

from .config import ClientConfig, server_address, softphone_address
from .media import ClientMedia
from .dialog import CallState
from .roster_view import ClientRosters
from .softphone import ClientCall, SoftphoneProxy
from .srv import SrvError, lookup_srv, resolver_address, try_order
from .state import ClientState, MediaCounters, listener_message
from .tunnel_client import ClientTunnel, TunnelRefused, open_tunnel
from .window_secret import load_or_create_secret

if TYPE_CHECKING:
    from .ui import UiServer

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path("stc-client.toml")
CAPABILITIES = ("sip", "srtp", "roster")
FIRST_RETRY = 0.2  # seconds before the first reconnect; doubles up to server.reconnect_max_delay
KEPT_CALLS_MAX_DELAY = 1.0  # the longest back-off while a kept call waits for a tunnel
CLOSE_TIMEOUT = 3.0  # seconds a lost tunnel may take to say goodbye before it is dropped


class ClientApp:
    def __init__(self, config: ClientConfig, *, config_path: Path | None = None, window: bool = False) -> None:
        self.config = config
        self.config_path = config_path
        self.state = ClientState()
        self.tunnel: ClientTunnel | None = None
        self.tunnel_up = asyncio.Event()
        self.window: UiServer | None = None
        self._want_window = window
        self._task: asyncio.Task[None] | None = None
        self.faults = 0  # unexpected exceptions while serving a tunnel (each logged, then reconnected)
        self.rosters: deque[Roster] = deque(maxlen=100)  # every verified roster, newest last
        self.talking: deque[TalkingUpdate] = deque(maxlen=100)  # every verified talking update, newest last
        self._roster_view: ClientRosters | None = None
        self._tunnel_server: tuple[str, int] | None = None  # the server of the tunnel now up
        self._lost_server: tuple[str, int] | None = None  # the server of the tunnel just lost: tried last
        self._verifier_key: object = None
        self._end_reason = ""  # why the last call ended, for the window
        self._counters: asyncio.Task[None] | None = None
        self._build(config)

    def _build(self, config: ClientConfig) -> None:
        # The softphone's media ports live where its SIP does (127.0.0.1, or ::1 for an IPv6 phone).
        self.media = ClientMedia(config.server.host, softphone_host=config.sip.listen_host)
        self.softphone = SoftphoneProxy(
            config.sip.listen_host, config.sip.listen_port, self.media,
            tuple(SrtpProfile.parse(p) for p in config.media.srtp_profiles), on_change=self._call_changed,
            softphone_timeout=config.sip.softphone_timeout, on_call_end=self._call_ended,
            softphones=tuple(softphone_address(entry) for entry in config.sip.softphones),
            reconnect_timeout=config.server.reconnect_timeout, on_reconnect=self._call_reconnect)

    async def start(self) -> None:
        # A window secret that cannot be made or trusted stops the start before anything is bound.
        secret = load_or_create_secret(self.config.ui.secret_path) if self._want_window else ""
        setting_up = self.needs_setup
        if not setting_up:
            await self.softphone.start()
        if self._want_window:
            from .ui import UiServer

            # Settings saved from the window go to the config file in use (or a new ./stc-client.toml).
            window = UiServer(self.state, self.config_path or DEFAULT_CONFIG, host=self.config.ui.host,
                              port=self.config.ui.port, apply_settings=self.apply_settings, secret=secret)
            await window.start()
            self.window = window
            # The one place the secret is shown: the address for the user to open (as Jupyter does).
            log.info("client window at %s", window.url)
        if setting_up:
            # Nothing to connect with yet: the window's first-start page imports the identity and
            # the server's address, and apply_settings starts the softphone side and the tunnel.
            log.warning("stc-client is not set up yet (no %s): open its window to import your certificate",
                        self.config_path)
            self.state.tunnel_down("not-set-up", "stc-client is not set up yet: import your certificate "
                                   "(PKCS#12 file) and the server's address below")
            return
        self._task = asyncio.create_task(self._keep_tunnel())
        self._counters = asyncio.create_task(self._count_media())

    @property
    def needs_setup(self) -> bool:
        """A first start: the window is on and the settings file it would save to does not exist yet."""
        return self._want_window and self.config_path is not None and not self.config_path.exists()

    async def close(self) -> None:
        await self._stop_calls_and_tunnel()
        if self.window is not None:
            await self.window.close()

    async def _stop_calls_and_tunnel(self) -> None:
        await self.softphone.close()
        if self.tunnel is not None:
            await self.tunnel.close("client shutting down")
        for task in (self._task, self._counters):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self.media.close()

    async def apply_settings(self, config: ClientConfig) -> None:
        """New settings from the window: drop calls and tunnel, rebind, reconnect."""
        log.info("settings changed: reconnecting")
        await self._stop_calls_and_tunnel()
        self.config = config
        self._build(config)
        self.tunnel_up.clear()
        await self.softphone.start()
        self._task = asyncio.create_task(self._keep_tunnel())
        self._counters = asyncio.create_task(self._count_media())

    async def _count_media(self) -> None:
        """Once a second, the current call's packet counters into the window's state."""
        seen: tuple[str, int, int] | None = None
        moved_at: datetime | None = None
        while True:
            await asyncio.sleep(1.0)
            call = self.softphone.active_call
            if call is None:
                seen = moved_at = None
                continue
            try:
                stats = self.media.stats(call.stream_id)
            except KeyError:
                continue
            now = (call.stream_id, stats.outbound_packets, stats.inbound_packets)
            if now != seen:
                seen, moved_at = now, datetime.now(timezone.utc)
            self.state.set_media(MediaCounters(stats.outbound_packets, stats.inbound_packets, stats.drops, moved_at))

    def _call_ended(self, call: ClientCall) -> None:
        self._end_reason = call.end_reason

    def _call_reconnect(self, call: ClientCall) -> None:
        """A kept call lost its way to the conference (yellow, "reconnecting"), or is back (green)."""
        if call.dialog.gap:
            self.state.call_reconnecting("the way to the conference was lost")
        elif call.dialog.state is CallState.CONFIRMED:
            self.state.call_rejoined(call.last_gap)

    def _call_changed(self) -> None:
        call = self.softphone.active_call
        if call is not None and call.profile is not None:
            if self.state.call is None or self.state.call.room != call.room:
                self.state.call_started(call.room, call.profile.value, call.started)
        elif self.state.call is not None:
            self.state.call_ended(self._end_reason or None)

    async def on_message(self, message: Message) -> None:
        if isinstance(message, RosterUpdate):
            await self._roster(message.data)
        elif isinstance(message, LegLost):
            log.warning("the server says the conference lost call %s (%s)", message.call_id, message.reason)
            self.softphone.leg_lost(message.call_id, f"the conference server lost the call: {message.reason}")
        else:
            await self.softphone.on_server_message(message)

    async def _roster(self, data: bytes) -> None:
        """Verify (signature, room, version) before anything of it is believed or shown."""
        if self.tunnel is None:
            return
        if not self.softphone.calls:
            # A push that crossed our hang-up: nothing to show it in, nothing to refuse.
            log.debug("roster ignored: not in a call")
            return
        certificate = self.tunnel.server_certificate
        key = certificate.public_key()
        if self._roster_view is None or self._verifier_key != key:
            self._roster_view = ClientRosters(certificate, max_age=self.config.server.roster_max_age)
            self._verifier_key = key
        # Only rosters of the rooms our calls are in: never another room's, never a stale one.
        received = self._roster_view.receive(data, rooms={call.room for call in self.softphone.calls.values()})
        if received.resync is not None:
            log.info("roster out of step with the server: asking for the full roster")
            await self.tunnel.send(RosterUpdate(received.resync))
        if received.rejected is not None:
            exc = received.rejected
            log.error("roster REFUSED (%s): %s", exc.reason, exc)
            self.state.roster_rejected(exc)
            return
        roster = received.roster
        if roster is None:
            return
        if received.talking is not None:
            self.talking.append(received.talking)
            log.debug("room %s: %d talking", roster.room, len(received.talking.talking))
        else:
            self.rosters.append(roster)
            log.info("%s", describe_roster(roster))
        if self.state.call is None:
            # A push that crossed our hang-up (or came before our 200 OK): the window shows
            # only the roster of the call it is in; the next push after joining brings it.
            log.debug("roster v%d of room %s not shown: not in a call", roster.version, roster.room)
            return
        self.state.set_roster(roster)

    async def _keep_tunnel(self) -> None:
        """Keep a tunnel up for as long as the client runs: whatever goes wrong, say so and reconnect."""
        delay = FIRST_RETRY
        while True:
            try:
                if await self._serve_one_tunnel():
                    delay = FIRST_RETRY
            except Exception:  # a message we could not handle, or a bug: never the end of the client
                self.faults += 1
                log.exception("stc-client fault while serving the tunnel; dropping it and reconnecting")
                try:
                    await self._tunnel_gone("client-fault", "stc-client hit an internal error and is reconnecting "
                                            "(its log has the details)")
                except Exception:
                    log.exception("cleaning up after that fault failed too")
            await asyncio.sleep(delay)
            # While calls wait to rejoin, a returning path must not wait out a long back-off.
            ceiling = min(KEPT_CALLS_MAX_DELAY, self.config.server.reconnect_max_delay) if self._calls_kept() \
                else self.config.server.reconnect_max_delay
            delay = min(delay * 2, ceiling)

    async def _servers(self) -> list[tuple[str, int]]:
        """Where to connect, in order: the SRV records (when configured), host:port, then hosts."""
        server = self.config.server
        found: list[tuple[str, int]] = []
        if server.srv_domain:
            try:
                resolver = resolver_address(server.srv_resolver) if server.srv_resolver else None
                records = await lookup_srv(f"_stc._tcp.{server.srv_domain}", resolver=resolver)
                found = [(r.target, r.port) for r in try_order(records)]
            except SrvError as exc:
                log.warning("no SRV records for _stc._tcp.%s (%s): using the configured servers", server.srv_domain, exc)
        for address in [(server.host, server.port), *(server_address(entry) for entry in server.hosts)]:
            if address not in found:
                found.append(address)
        return found

    async def _open_any(self) -> ClientTunnel:
        """A tunnel to the first server that takes us; the last refusal if none does."""
        refused: TunnelRefused | None = None
        servers = await self._servers()
        if self._lost_server in servers and len(servers) > 1:
            # The server whose tunnel was just lost goes last: a killed server's address can take
            # connect_timeout to fail, while the deployment's other servers take the calls at once.
            servers.remove(self._lost_server)
            servers.append(self._lost_server)
        for address in servers:
            try:
                tunnel = await open_tunnel(self.config, capabilities=CAPABILITIES, address=address)
                self._tunnel_server, self._lost_server = address, None
                return tunnel
            except TunnelRefused as exc:
                log.error("tunnel to %s:%d refused (%s): %s", *address, exc.reason, exc)
                refused = exc
        assert refused is not None
        raise refused

    async def _serve_one_tunnel(self) -> bool:
        """Open a tunnel and serve it until it closes; False if it never came up."""
        try:
            self.tunnel = await self._open_any()
        except TunnelRefused as exc:
            self.state.tunnel_down(exc.reason, str(exc), call_kept=self._calls_kept())
            return False
        self.softphone.tunnel_up(self.tunnel.send)
        self.state.tunnel_up(self.tunnel.server_identity, self.tunnel.own_identity)
        self.tunnel_up.set()
        info = await self.tunnel.run(self.on_message)
        log.warning("tunnel closed: %s", info.reason)
        await self._tunnel_gone("tunnel-closed", f"the tunnel closed: {info.reason}")
        return True

    async def _tunnel_gone(self, reason_code: str, message: str) -> None:
        """No tunnel any more: close it if it is still open, hang up the calls, turn the light red."""
        self.tunnel_up.clear()
        self._lost_server, self._tunnel_server = self._tunnel_server, None
        tunnel, self.tunnel = self.tunnel, None
        # Calls first: they start rejoining (or end) now, whatever closing the old tunnel takes.
        await self.softphone.tunnel_lost(message)
        self.state.tunnel_down(reason_code, message, call_kept=self._calls_kept())
        if tunnel is not None:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await tunnel.close(f"client: {reason_code}")  # a no-op when the tunnel closed by itself
            except TimeoutError:
                tunnel.stream.drop()

    def _calls_kept(self) -> bool:
        return any(call.dialog.gap for call in self.softphone.calls.values())


def describe_roster(roster: Roster) -> str:
    """The roster as the client prints it: one line per participant, the unauthenticated loudly."""
    lines = [f"roster of room {roster.room}, version {roster.version}, state {roster.state}, "
             f"{len(roster.entries)} participant(s):"]
    for entry in roster.entries:
        if entry.identity is None:
            lines.append(f"  !! UNAUTHENTICATED channel {entry.channel_name} (claims caller id {entry.caller_id!r})")
        else:
            ident = entry.identity
            lines.append(f"  - {ident.get('display_name')} <{', '.join(ident.get('sip_uris') or ident.get('emails') or [])}> "
                         f"issuer {ident.get('issuer')}, SHA-256 {str(ident.get('fingerprint_sha256', ''))[:16]}..."
                         f"{' (talking)' if entry.talking else ''}")
    heard = {e.channel_id: e for e in roster.entries}
    for listener in roster.listeners:
        lines.append(f"  !! NOT PRIVATE: {listener_message(listener, heard.get(listener.hears))} [{listener.channel}]")
    return "\n".join(lines)
