"""stc-client as one object: keeps the tunnel up, serves the softphone and the window."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING

from stc_wire.messages import Message, RosterUpdate
from stc_wire.roster import Roster, RosterError, RosterRejected, RosterVerifier
from stc_wire.srtp import SrtpProfile

from .config import ClientConfig
from .media import ClientMedia
from .softphone import SoftphoneProxy
from .state import ClientState, listener_message
from .tunnel_client import ClientTunnel, TunnelRefused, open_tunnel

if TYPE_CHECKING:
    from .ui import UiServer

log = logging.getLogger(__name__)
DEFAULT_CONFIG = Path("stc-client.toml")
CAPABILITIES = ("sip", "srtp", "roster")


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
        self.rosters: deque[Roster] = deque(maxlen=100)  # every verified roster, newest last
        self._verifier: RosterVerifier | None = None
        self._verifier_key: object = None
        self._build(config)

    def _build(self, config: ClientConfig) -> None:
        self.media = ClientMedia(config.server.host)
        self.softphone = SoftphoneProxy(
            config.sip.listen_host, config.sip.listen_port, self.media,
            tuple(SrtpProfile.parse(p) for p in config.media.srtp_profiles), on_change=self._call_changed)

    async def start(self) -> None:
        await self.softphone.start()
        if self._want_window:
            from .ui import UiServer

            # Settings saved from the window go to the config file in use (or a new ./stc-client.toml).
            window = UiServer(self.state, self.config_path or DEFAULT_CONFIG, host=self.config.ui.host,
                              port=self.config.ui.port, apply_settings=self.apply_settings)
            await window.start()
            self.window = window
            log.info("client window at %s", window.url)
        self._task = asyncio.create_task(self._keep_tunnel())

    async def close(self) -> None:
        await self._stop_calls_and_tunnel()
        if self.window is not None:
            await self.window.close()

    async def _stop_calls_and_tunnel(self) -> None:
        await self.softphone.close()
        if self.tunnel is not None:
            await self.tunnel.close("client shutting down")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
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

    def _call_changed(self) -> None:
        call = self.softphone.active_call
        if call is not None and call.profile is not None:
            if self.state.call is None or self.state.call.room != call.room:
                self.state.call_started(call.room, call.profile.value, call.started)
        elif self.state.call is not None:
            self.state.call_ended()

    async def on_message(self, message: Message) -> None:
        if isinstance(message, RosterUpdate):
            self._roster(message.data)
        else:
            await self.softphone.on_server_message(message)

    def _roster(self, data: bytes) -> None:
        """Verify (signature, room, version) before anything of it is believed or shown."""
        if self.tunnel is None:
            return
        key = self.tunnel.server_certificate.public_key()
        if self._verifier is None or self._verifier_key != key:
            self._verifier = RosterVerifier.from_certificate(self.tunnel.server_certificate)
            self._verifier_key = key
        try:
            roster = self._verifier.accept(data)
        except RosterRejected as exc:
            log.error("roster REFUSED (%s): %s", exc.reason, exc)
            self.state.roster_rejected(exc)
            return
        except (RosterError, ValueError) as exc:
            log.error("roster REFUSED (malformed): %s", exc)
            self.state.roster_rejected("malformed", str(exc))
            return
        self.rosters.append(roster)
        log.info("%s", describe_roster(roster))
        if self.state.call is None:
            # A push that crossed our hang-up (or came before our 200 OK): the window shows
            # only the roster of the call it is in; the next push after joining brings it.
            log.debug("roster v%d of room %s not shown: not in a call", roster.version, roster.room)
            return
        self.state.set_roster(roster)

    async def _keep_tunnel(self) -> None:
        delay = 1.0
        while True:
            try:
                self.tunnel = await open_tunnel(self.config, capabilities=CAPABILITIES)
            except TunnelRefused as exc:
                log.error("tunnel refused (%s): %s", exc.reason, exc)
                self.state.tunnel_down(exc.reason, str(exc))
            else:
                delay = 1.0
                self.softphone.tunnel_up(self.tunnel.send)
                self.state.tunnel_up(self.tunnel.server_identity, self.tunnel.own_identity)
                self.tunnel_up.set()
                info = await self.tunnel.run(self.on_message)
                self.tunnel_up.clear()
                self.tunnel = None
                await self.softphone.tunnel_lost(f"tunnel closed: {info.reason}")
                log.warning("tunnel closed: %s", info.reason)
                self.state.tunnel_down("tunnel-closed", f"the tunnel closed: {info.reason}")
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.server.reconnect_max_delay)


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
