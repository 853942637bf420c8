"""stc-server as one object: everything it runs, started and stopped together."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

from stc_wire.srtp import SrtpProfile

from .audit import AuditLog, AuditSink, NoAudit
from .config import AsteriskNode, ServerConfig
from .media import MediaRelay
from .metrics import ServerMetrics
from .placement import home
from .sip_relay import TunnelCalls
from .supervise import supervise
from .tunnel_server import TunnelPeer, TunnelServer

if TYPE_CHECKING:
    from .admin import AdminServer
    from .rooms import RoomService

log = logging.getLogger(__name__)
CAPABILITIES = ("sip", "srtp", "roster")


class Admissions(Protocol):
    """Per-call tokens that let the FastAGI service bind an Asterisk channel to a tunnel's identity."""

    def issue(self, peer: TunnelPeer, call_id: str, room: str) -> str: ...

    def release(self, token: str) -> None: ...


class ServerApp:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.srtp_profiles: tuple[SrtpProfile, ...] = tuple(SrtpProfile.parse(p) for p in config.media.srtp_profiles)
        self.media = MediaRelay(wan_host=config.media.wan_host, pbx_host=config.media.pbx_host,
                                wan_ports=config.media.wan_port_range(), pbx_ports=config.media.pbx_port_range(),
                                single_port=config.media.single_port or None)
        self.admissions: Admissions | None = None
        self.tunnels: TunnelServer | None = None
        self.rooms: "RoomService | None" = None  # the first node's (it also serves FastAGI)
        self.nodes: "dict[str, RoomService]" = {}  # every node's, by name (the first is self.rooms)
        self.sessions: dict[str, TunnelCalls] = {}
        self.metrics = ServerMetrics(self)
        self.admin: "AdminServer | None" = None
        self.audit: AuditSink = NoAudit()
        self._audit_log: AuditLog | None = None
        self._audit_signing: asyncio.Task[None] | None = None

    async def _new_session(self, peer: TunnelPeer) -> TunnelCalls:
        calls = TunnelCalls(self, peer)
        await calls.open()
        self.sessions[peer.id] = calls
        return calls

    def _open_audit(self) -> None:
        settings = self.config.audit
        if settings.path is None:
            return
        key, signer = self._server_key()
        self._audit_log = AuditLog(settings.path, key, signer, rotate_bytes=settings.rotate_bytes)  # type: ignore[arg-type]
        self.audit = self._audit_log
        self._audit_signing = asyncio.create_task(supervise("the audit log's signing", self._sign_audit, log))
        self.audit.record("server-started", signer=signer)

    def _server_key(self) -> tuple[object, str]:
        """The TLS key and the SHA-256 of the certificate, which names the signer in the audit log."""
        key = load_pem_private_key(self.config.tunnel.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(self.config.tunnel.cert.read_bytes())
        return key, hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    async def _sign_audit(self) -> None:
        while True:
            await asyncio.sleep(self.config.audit.sign_interval)
            if self._audit_log is not None:
                self._audit_log.sign()

    async def start(self) -> None:
        tunnel = self.config.tunnel
        if tunnel.crl_url and not tunnel.crl.exists():  # first start: no local copy to fall back on yet
            from .crl import CrlFetcher

            await CrlFetcher(tunnel.crl_url, tunnel.ca_bundle, tunnel.crl).fetch()
        self._open_audit()
        if self.config.asterisk.watch_conferences:
            from .rooms import RoomService

            first, *others = self.config.asterisk.node_list()
            self.rooms = RoomService(self, first)
            self.nodes = {first.name: self.rooms}
            for node in others:
                service = RoomService(self, node)
                service.serves_fastagi = False  # one FastAGI per server, for every node's dialplan
                service.versions = self.rooms.versions  # a room's versions only grow, whichever node it is on
                self.nodes[node.name] = service
            for service in self.nodes.values():
                service.home_of = self.room_service_for
            self.admissions = self.rooms
            for service in self.nodes.values():
                await service.start()
        self.tunnels = TunnelServer(self.config.tunnel, self._new_session, capabilities=CAPABILITIES)
        self.tunnels.audit = self.audit
        await self.tunnels.start()
        if self.config.admin.enabled:
            from .admin import AdminServer

            self.admin = AdminServer(self, self.config.admin)
            await self.admin.start()

    def room_node(self, room: str) -> AsteriskNode:
        """The Asterisk node `room` lives on (stc_asterisk.placement): the same for every server
        that sees the same nodes up. Without watching rooms every node counts as up."""
        nodes = {node.name: node for node in self.config.asterisk.node_list()}
        if len(nodes) == 1:
            return next(iter(nodes.values()))

        def is_up(name: str) -> bool:
            service = self.nodes.get(name)
            return service is None or service.ari.connected

        def holds(name: str) -> bool:
            service = self.nodes.get(name)
            return service is not None and service.conference.status == "ok" and room in service.conference.rooms()

        return nodes[home(room, list(nodes), is_up, holds)]

    def asterisk_for_room(self, room: str) -> tuple[str, int]:
        return self.room_node(room).sip_address

    def room_service_for(self, room: str) -> "RoomService":
        assert self.rooms is not None
        return self.nodes.get(self.room_node(room).name, self.rooms)

    async def reload(self, config: ServerConfig | None) -> None:
        """SIGHUP: the CRL refreshed, certificate, key, CA bundle and CRL loaded again, and (from a re-read
        settings file) the room policy replaced; tunnels and calls that are still acceptable stay up."""
        if config is not None and self.rooms is not None:
            from .fastagi import RoomPolicy

            policy = RoomPolicy.from_mapping(config.rooms.policy)
            for service in self.nodes.values():
                service.policy = policy
                service.admission.set_policy(policy)
            self.config.rooms = config.rooms
            log.info("reload: room policy replaced")
        if self.tunnels is not None:
            await self.tunnels.reload()
        if self._audit_log is not None:
            try:
                key, signer = self._server_key()
            except (OSError, ValueError) as exc:
                log.error("reload: the audit log keeps signing with the previous key: %s", exc)
            else:
                self._audit_log.change_key(key, signer)  # type: ignore[arg-type]

    async def close(self) -> None:
        if self.admin is not None:
            await self.admin.close()
        if self.tunnels is not None:
            await self.tunnels.close()
        for service in self.nodes.values():
            await service.close()
        self.media.close()
        if self._audit_signing is not None:
            self._audit_signing.cancel()
        if self._audit_log is not None:
            self.audit.record("server-stopped")
            self._audit_log.close()
