"""stc-server settings (one TOML file, `stc-server --config PATH`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from stc_wire.config import check_log_level, check_srtp_profiles, port_ok


@dataclass
class TunnelSettings:
    """Where clients connect, and the certificates that decide who may."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 5443
    # SO_REUSEPORT on the listener (and on the FastAGI one): several stc-server processes on one
    # machine (one per core) share listen_port and fastagi_port, the kernel spreading new
    # connections over them (any process admits any call: the binding is signed). Each process
    # then needs its own [media] wan_ports/pbx_ports (or single_port) and [admin] port.
    reuse_port: bool = False
    cert: Path = Path("pki/server.pem")
    key: Path = Path("pki/server.key")
    ca_bundle: Path = Path("pki/ca.pem")
    crl: Path = Path("pki/crl.pem")
    # The certificates of the deployment's other stc-servers: admission bindings (X-STC-Token,
    # STC_BINDING) signed by any of them, or by `cert`, are accepted.
    trusted_servers: tuple[Path, ...] = ()
    # A client that has not finished TLS and HELLO within these is dropped.
    handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 45.0
    max_clients: int = 1000  # connections still in TLS or HELLO count too
    # Connections not yet through TLS and HELLO, in total and from one source address; more are closed at once.
    pending_handshakes: int = 256
    pending_handshakes_per_source: int = 16
    # A client that leaves this much unsent, or does not take a write within write_timeout, is closed as too slow.
    send_queue_bytes: int = 1024 * 1024
    write_timeout: float = 5.0
    # The kernel's send buffer per tunnel (SO_SNDBUF; 0: the kernel's own, which grows to megabytes):
    # with it, a peer that stops reading is noticed after a few hundred KiB instead of several MiB.
    socket_send_buffer: int = 64 * 1024
    # How often connected clients are checked again (CRL or CA bundle changed, certificate expired).
    trust_recheck_interval: float = 10.0
    # The CRL's distribution point (http:// or https://), fetched into `crl` (the local copy, kept
    # for restarts) at start, every crl_refresh_interval, at the latest crl_refresh_margin before the
    # CRL's nextUpdate, and on SIGHUP. Empty: `crl` is a file someone else keeps current.
    crl_url: str = ""
    crl_refresh_interval: float = 300.0
    crl_refresh_margin: float = 3600.0
    # A CRL that cannot be refreshed is a warning and a metric (stc_crl_refresh_failing) at once; past
    # its nextUpdate, new clients are still checked against it for this many seconds, then refused
    # and every tunnel closed (fail closed). 0: at nextUpdate.
    crl_fail_closed_after: float = 0.0

    def validate(self) -> None:
        if not port_ok(self.listen_port):
            raise ValueError(f"listen_port: {self.listen_port} is not a TCP port")
        for name in ("handshake_timeout", "hello_timeout", "keepalive_interval", "keepalive_timeout", "trust_recheck_interval",
                     "write_timeout", "send_queue_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.keepalive_timeout <= self.keepalive_interval:
            raise ValueError("keepalive_timeout: must be longer than keepalive_interval")
        if self.pending_handshakes < 1 or self.pending_handshakes_per_source < 1:
            raise ValueError("pending_handshakes, pending_handshakes_per_source: must be at least 1")
        if self.crl_url and not self.crl_url.startswith(("http://", "https://")):
            raise ValueError(f"crl_url: {self.crl_url!r} is not an http(s) URL")
        if self.crl_refresh_interval <= 0:
            raise ValueError("crl_refresh_interval: must be positive")
        for name in ("crl_refresh_margin", "crl_fail_closed_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must not be negative")
        if self.socket_send_buffer < 0:
            raise ValueError("socket_send_buffer: must be 0 (the kernel's) or a size in bytes")


@dataclass
class AsteriskNode:
    """One Asterisk: where stc-server sends its SIP, and its ARI and AMI.

    A cluster lists several as `[[asterisk.nodes]]`; without them, `[asterisk]` itself is the one node.
    """

    name: str = ""  # names the node in logs and places rooms (stc_asterisk.placement): keep it stable
    sip_host: str = "127.0.0.1"
    sip_port: int = 5080
    # ARI (membership) and AMI (talking, kick). There are no built-in secrets: each is given
    # in the file or, better, as a file only stc-server can read (`*_file`, read once at start).
    ari_url: str = "http://127.0.0.1:8088"
    ari_user: str = "stc"
    ari_password: str = ""
    ari_password_file: Path | None = None
    ari_app: str = "stc"  # the name's start: each process registers its own, ari_app-HOST-PID-RANDOM
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "stc"
    ami_secret: str = ""
    ami_secret_file: Path | None = None

    @property
    def sip_address(self) -> tuple[str, int]:
        return (self.sip_host, self.sip_port)

    def validate(self) -> None:
        self.validate_node(read_secrets=False)

    def validate_node(self, *, read_secrets: bool) -> None:
        if not self.name.strip():
            raise ValueError("name: every Asterisk node needs a name")
        for name in ("sip_port", "ami_port"):
            if not port_ok(getattr(self, name)) and getattr(self, name) != 0:
                raise ValueError(f"{name}: {getattr(self, name)} is not a port")
        if not self.ari_url.startswith(("http://", "https://")):
            raise ValueError(f"ari_url: {self.ari_url!r} is not an http(s) URL")
        if read_secrets:
            self.ari_password = _secret("ari_password", self.ari_password, self.ari_password_file, "ARI password")
            self.ami_secret = _secret("ami_secret", self.ami_secret, self.ami_secret_file, "AMI secret")


# The keys of one node: in [asterisk] for a single Asterisk, in each [[asterisk.nodes]] for several.
NODE_KEYS = tuple(f.name for f in fields(AsteriskNode) if f.name != "name")


@dataclass
class AsteriskSettings(AsteriskNode):
    """The Asterisk next to the server (loopback in the shipped configuration), or a cluster of them."""

    name: str = "asterisk"
    # FastAGI: where stc-server listens for the dialplan's AGI(agi://.../stc-admit).
    fastagi_host: str = "127.0.0.1"
    fastagi_port: int = 4573
    # The only addresses FastAGI connections are served from (empty: every node's sip_host and
    # loopback), and the sessions at once from one of them.
    fastagi_allowed: tuple[str, ...] = ()
    # Why a cap: an allowed address that opens sessions and never finishes them (a stuck or hostile
    # dialplan, a loopback neighbour) must not use up this server's sockets and tasks for the others;
    # the server as a whole takes this many per Asterisk node. Why 400: every admission is one
    # session and all of them come from the node's one address, so a 200-participant room joining
    # at once holds up to 200 (the old 50 refused the rest, and a refused admission hangs the call
    # up); twice that leaves room for a second room's burst on the same node.
    fastagi_sessions_per_source: int = 400
    # Off only for a server that relays calls without watching rooms (no roster, no admission).
    watch_conferences: bool = True
    # Several Asterisk nodes ([[asterisk.nodes]], each with name, sip_*, ari_*, ami_*): a room
    # lives on one of them, the same one for every stc-server (rendezvous hashing of the room
    # over the node names), and every server follows every node's ARI and AMI. Empty: the
    # node is [asterisk] itself.
    nodes: tuple[AsteriskNode, ...] = ()

    def node_list(self) -> tuple[AsteriskNode, ...]:
        return self.nodes or (self,)

    def fastagi_sources(self) -> tuple[str, ...]:
        return self.fastagi_allowed or (*dict.fromkeys(n.sip_host for n in self.node_list()), "127.0.0.1", "::1")

    def validate(self) -> None:
        if self.fastagi_sessions_per_source < 1:
            raise ValueError("fastagi_sessions_per_source: must be at least 1")
        if not port_ok(self.fastagi_port) and self.fastagi_port != 0:
            raise ValueError(f"fastagi_port: {self.fastagi_port} is not a port")
        if not self.nodes:
            self.validate_node(read_secrets=self.watch_conferences)
            return
        single = AsteriskNode()
        flat = [key for key in NODE_KEYS if getattr(self, key) != getattr(single, key)]
        if flat:
            raise ValueError(f"{', '.join(flat)}: with [[asterisk.nodes]], give these in each node, not in [asterisk]")
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"nodes: node names must differ (got {', '.join(names)})")
        for i, node in enumerate(self.nodes):
            try:
                node.validate_node(read_secrets=self.watch_conferences)
            except ValueError as exc:
                raise ValueError(f"nodes[{i}] ({node.name}).{exc}") from None


def _secret(name: str, value: str, path: Path | None, what: str) -> str:
    """The secret `name` from the settings or from `{name}_file`; a clear error without one."""
    if value and path is not None:
        raise ValueError(f"{name}: set {name} or {name}_file, not both")
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{name}_file: cannot read the {what} from {path}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        if not value:
            raise ValueError(f"{name}_file: {path} is empty (it should hold the {what})")
    if not value:
        raise ValueError(f"{name}: no {what} set; give {name}_file (a file holding it) or {name} "
                         f"(stc-server has no built-in secrets; it must match Asterisk's)")
    return value


@dataclass
class RoomSettings:
    """Who may join which room, and what happens to a channel without an stc identity.

    `policy` maps a room (or "*") to rules; a rule is a table of certificate fields that must all
    match (cn, o, ou, sip_uri, email, fingerprint) or {any = true}. No entry: any valid certificate.
    """

    unauthenticated: str = "eject"
    policy: dict[str, Any] = field(default_factory=dict)
    # Something that hears a room without being in it (ChanSpy, MixMonitor, the ConfBridge
    # recorder, an ARI snoop or recording): "stop" it (spy channels hung up, recordings stopped)
    # or only "show" it on every roster (deployments that must record). Either way it is listed.
    hidden_listeners: str = "stop"
    # Per-room exceptions to `hidden_listeners`, e.g. {"1042" = "show"}.
    hidden_listeners_per_room: dict[str, str] = field(default_factory=dict)

    def hidden_listener_policy(self, room: str) -> str:
        return self.hidden_listeners_per_room.get(room, self.hidden_listeners)

    def validate(self) -> None:
        if self.unauthenticated not in ("eject", "flag"):
            raise ValueError(f"unauthenticated: {self.unauthenticated!r} must be 'eject' or 'flag'")
        for name, value in [("hidden_listeners", self.hidden_listeners),
                            *((f"hidden_listeners_per_room.{r}", v) for r, v in self.hidden_listeners_per_room.items())]:
            if value not in ("stop", "show"):
                raise ValueError(f"{name}: {value!r} must be 'stop' or 'show'")
        from .fastagi import RoomPolicy

        try:
            RoomPolicy.from_mapping(self.policy)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"policy: {exc}") from None


@dataclass
class MediaSettings:
    """Media relay addresses: `wan_host` faces the clients, `pbx_host` faces Asterisk."""

    wan_host: str = "127.0.0.1"
    pbx_host: str = "127.0.0.1"
    # In order of preference; a client offering none of them is refused with the reason.
    srtp_profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")
    # A confirmed call from which no SRTP, SRTCP or keep-alive arrived for this many seconds is
    # hung up (its client sends keep-alives while its softphone is silent, so this is a dead path).
    call_timeout: float = 30.0
    # UDP port ranges for a firewall, "FIRST-LAST" (inclusive; each call takes an even/odd pair
    # on each side). Empty: the kernel's ephemeral ports.
    wan_ports: str = ""
    pbx_ports: str = ""
    # One UDP port on wan_host for every call's SRTP and SRTCP (told apart by source address;
    # a new source is bound only by a packet that authenticates): the firewall opens one port.
    # 0: off, a port pair per call (wan_ports).
    single_port: int = 0

    def validate(self) -> None:
        check_srtp_profiles(self.srtp_profiles)
        if not 0 <= self.single_port < 65536:
            raise ValueError(f"single_port: {self.single_port} is not a UDP port (0: off)")
        self.wan_port_range()
        self.pbx_port_range()
        if self.call_timeout <= 0:
            raise ValueError("call_timeout: must be positive")

    def wan_port_range(self) -> range | None:
        return port_range("wan_ports", self.wan_ports)

    def pbx_port_range(self) -> range | None:
        return port_range("pbx_ports", self.pbx_ports)


def port_range(name: str, text: str) -> range | None:
    """ "40000-40999" -> range(40000, 41000); "" -> None."""
    if not text.strip():
        return None
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"{name}: {text!r} is not FIRST-LAST")
    lo, hi = int(first), int(last)
    if not (port_ok(lo) and port_ok(hi)) or hi - lo < 1 + lo % 2:
        raise ValueError(f"{name}: {text!r} is not a range of UDP ports holding an even/odd pair")
    return range(lo, hi + 1)


@dataclass
class LimitSettings:
    """What one client or source address may hold on the server. Every refusal is counted and
    logged, at most one line per reason every `refusal_log_interval` seconds."""

    calls_per_tunnel: int = 4  # calls with media open at once (each MEDIA_OFFER binds four UDP sockets)
    media_offers_per_call: int = 4  # MEDIA_OFFERs for one Call-ID, refused ones included
    remembered_calls: int = 64  # per tunnel: refused offers kept for the INVITE that follows
    token_ttl: float = 30.0  # an admission token not used by then is forgotten
    malformed_sip_per_tunnel: int = 20  # malformed SIP frames before the tunnel is closed
    refusal_log_interval: float = 10.0

    def validate(self) -> None:
        for name in ("calls_per_tunnel", "media_offers_per_call", "remembered_calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if self.malformed_sip_per_tunnel < 0:
            raise ValueError("malformed_sip_per_tunnel: must not be negative")
        for name in ("token_ttl", "refusal_log_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")


@dataclass
class AuditSettings:
    """The audit trail (see stc_asterisk/audit.py): off unless `path` is set."""

    path: Path | None = None
    sign_interval: float = 60.0  # the chain head is signed this often (if anything was added), and at stop
    rotate_bytes: int = 64 * 1024 * 1024  # a file past this size is signed, renamed PATH.<UTC time>, and a new one begun

    def validate(self) -> None:
        if self.sign_interval <= 0:
            raise ValueError("sign_interval: must be positive")
        if self.rotate_bytes < 0:
            raise ValueError("rotate_bytes: must be 0 (never) or a size in bytes")


@dataclass
class AdminSettings:
    """The operator's HTTP endpoints: /metrics (Prometheus text format), /healthz, /readyz.

    Loopback by default: they tell who is connected and from where, so expose them only to
    the monitoring network. Port 0 takes any free port (tests).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9477

    def validate(self) -> None:
        if not port_ok(self.port) and self.port != 0:
            raise ValueError(f"port: {self.port} is not a TCP port")


@dataclass
class ServerConfig:
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    asterisk: AsteriskSettings = field(default_factory=AsteriskSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    rooms: RoomSettings = field(default_factory=RoomSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    log_level: str = "INFO"

    def validate(self) -> None:
        check_log_level(self.log_level)
