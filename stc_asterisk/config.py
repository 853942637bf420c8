"""stc-server settings (one TOML file, `stc-server --config PATH`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stc_wire.config import port_ok


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

    def validate(self) -> None:
        if not port_ok(self.listen_port):
            raise ValueError(f"listen_port: {self.listen_port} is not a TCP port")
        for name in ("handshake_timeout", "hello_timeout", "keepalive_interval", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive")
        if self.keepalive_timeout <= self.keepalive_interval:
            raise ValueError("keepalive_timeout: must be longer than keepalive_interval")


@dataclass
class AsteriskSettings:
    """The Asterisk next to the server (loopback in the shipped configuration)."""

    sip_host: str = "127.0.0.1"
    sip_port: int = 5080

    def validate(self) -> None:
        if not port_ok(self.sip_port):
            raise ValueError(f"sip_port: {self.sip_port} is not a UDP port")


@dataclass
class MediaSettings:
    """Media relay addresses: `wan_host` faces the clients, `pbx_host` faces Asterisk."""

    wan_host: str = "127.0.0.1"
    pbx_host: str = "127.0.0.1"
    # In order of preference; a client offering none of them is refused with the reason.
    srtp_profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM")

    def validate(self) -> None:
        from stc_wire.srtp import SrtpProfile, UnknownSrtpProfile

        for name in self.srtp_profiles:
            try:
                SrtpProfile.parse(name)
            except UnknownSrtpProfile as exc:
                raise ValueError(f"srtp_profiles: {exc}") from None


@dataclass
class ServerConfig:
    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    asterisk: AsteriskSettings = field(default_factory=AsteriskSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    log_level: str = "INFO"

    def validate(self) -> None:
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level: {self.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")
