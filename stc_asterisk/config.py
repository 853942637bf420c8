"""stc-server settings (one TOML file, `stc-server --config PATH`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stc_wire.config import check_log_level, check_srtp_profiles, port_ok


@dataclass
class TunnelSettings:
    """Where clients connect, and the certificates that decide who may."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 5443
    cert: Path = Path("pki/server.pem")
    key: Path = Path("pki/server.key")
    ca_bundle: Path = Path("pki/ca.pem")
    crl: Path = Path("pki/crl.pem")
    # A client that has not finished TLS and HELLO within these is dropped.
    handshake_timeout: float = 10.0
    hello_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_timeout: float = 45.0
    max_clients: int = 1000
    # How often connected clients are checked again (CRL or CA bundle changed, certificate expired).
    trust_recheck_interval: float = 10.0

    def validate(self) -> None:
        if not port_ok(self.listen_port):
            raise ValueError(f"listen_port: {self.listen_port} is not a TCP port")
        for name in ("handshake_timeout", "hello_timeout", "keepalive_interval", "keepalive_timeout", "trust_recheck_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.keepalive_timeout <= self.keepalive_interval:
            raise ValueError("keepalive_timeout: must be longer than keepalive_interval")


@dataclass
class AsteriskSettings:
    """The Asterisk next to the server (loopback in the shipped configuration)."""

    sip_host: str = "127.0.0.1"
    sip_port: int = 5080
    # FastAGI: where stc-server listens for the dialplan's AGI(agi://.../stc-admit).
    fastagi_host: str = "127.0.0.1"
    fastagi_port: int = 4573
    # ARI (membership) and AMI (talking, kick). The demo secrets of asterisk-conf/.
    ari_url: str = "http://127.0.0.1:8088"
    ari_user: str = "stc"
    ari_password: str = "stc-demo-ari"
    ari_app: str = "stc"
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "stc"
    ami_secret: str = "stc-demo-ami"
    # Off only for a server that relays calls without watching rooms (no roster, no admission).
    watch_conferences: bool = True

    def validate(self) -> None:
        for name in ("sip_port", "fastagi_port", "ami_port"):
            if not port_ok(getattr(self, name)) and getattr(self, name) != 0:
                raise ValueError(f"{name}: {getattr(self, name)} is not a port")
        if not self.ari_url.startswith(("http://", "https://")):
            raise ValueError(f"ari_url: {self.ari_url!r} is not an http(s) URL")


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

    def validate(self) -> None:
        check_srtp_profiles(self.srtp_profiles)


@dataclass
class ServerConfig:
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    asterisk: AsteriskSettings = field(default_factory=AsteriskSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    rooms: RoomSettings = field(default_factory=RoomSettings)
    log_level: str = "INFO"

    def validate(self) -> None:
        check_log_level(self.log_level)
