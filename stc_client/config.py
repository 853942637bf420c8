"""stc-client settings (one TOML file, `stc-client --config PATH`)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from stc_wire.config import check_log_level, check_srtp_profiles, port_ok

from .srv import resolver_address
from .window_secret import default_secret_path


@dataclass
class ServerSettings:
    """The stc-server to tunnel to. `name` is what its certificate must say (default: host)."""

    host: str = "localhost"
    port: int = 5443
    name: str = ""
    # More servers of the same deployment, as "host:port", tried in order after host:port when a
    # tunnel is lost or cannot be opened (every one must show a certificate for `name`).
    hosts: tuple[str, ...] = ()
    # A DNS domain whose _stc._tcp SRV records list the servers (tried before host and hosts).
    srv_domain: str = ""
    # The DNS server asked for those records, "host" or "host:port" (default: the first
    # nameserver in /etc/resolv.conf); for a deployment's own DNS, or where resolv.conf has none.
    srv_resolver: str = ""
    connect_timeout: float = 10.0
    # A PING every keepalive_interval; nothing received for keepalive_timeout: the path is dead,
    # the tunnel is dropped and calls start rejoining (a few seconds, so a blip is caught fast).
    keepalive_interval: float = 2.0
    keepalive_timeout: float = 6.0
    # After a lost or refused tunnel, retry with back-off (from 0.2 s) up to this many seconds apart.
    reconnect_max_delay: float = 30.0
    # A call whose way to the conference is lost is kept (the softphone hears nothing) and
    # rejoined; it is hung up only when rejoining has not worked for this many seconds.
    reconnect_timeout: float = 30.0
    # A roster issued longer ago (or further in the future) than this is refused: clock skew
    # between client and server must stay below it.
    roster_max_age: float = 60.0

    @property
    def expected_name(self) -> str:
        return self.name or self.host

    def validate(self) -> None:
        if not port_ok(self.port):
            raise ValueError(f"port: {self.port} is not a TCP port")
        for entry in self.hosts:
            server_address(entry)
        if self.srv_resolver:
            resolver_address(self.srv_resolver)
        if self.reconnect_timeout <= 0:
            raise ValueError("reconnect_timeout: must be positive")
        if self.keepalive_timeout <= self.keepalive_interval:
            raise ValueError("keepalive_timeout: must be longer than keepalive_interval")
        if self.roster_max_age <= 0:
            raise ValueError("roster_max_age: must be positive")


@dataclass
class IdentitySettings:
    """This user's certificate and key, and the CA that must have signed the server's."""

    cert: Path = Path("pki/users/alice.pem")
    key: Path = Path("pki/users/alice.key")
    ca_bundle: Path = Path("pki/ca.pem")
    # The CA's certificate revocation list (PEM): a revoked or unlisted-CA server certificate is
    # refused, and so is every server while the CRL is out of date (fail-closed). None: no check.
    crl: Path | None = None
    # A PKCS#12 bundle used instead of cert/key when set.
    pkcs12: Path | None = None
    pkcs12_passphrase: str = ""


@dataclass
class SipSettings:
    """Where the softphone sends its SIP (plain UDP, loopback only by default)."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 5060
    # A call whose softphone sends no media and answers no in-dialog OPTIONS for this many
    # seconds is hung up (a phone that died without a BYE must not stay in the room).
    softphone_timeout: float = 30.0
    # The softphones allowed to use this client, as "host:port" (its SIP port) or "host" (any
    # port there). SIP from anywhere else is answered 403: another program on this machine must
    # not place calls under your certificate. Empty: any local program may (a warning at start).
    softphones: tuple[str, ...] = ()

    def validate(self) -> None:
        if not port_ok(self.listen_port):
            raise ValueError(f"listen_port: {self.listen_port} is not a UDP port")
        for entry in self.softphones:
            softphone_address(entry)
        if self.softphone_timeout <= 0:
            raise ValueError("softphone_timeout: must be positive")


@dataclass
class MediaSettings:
    """SRTP profiles offered to the server, in order of preference."""

    srtp_profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)

    def validate(self) -> None:
        check_srtp_profiles(self.srtp_profiles)


@dataclass
class UiSettings:
    """The client window: a local web page, on loopback only."""

    host: str = "127.0.0.1"
    port: int = 8765
    # The window's secret (stc_client/window_secret.py); default $XDG_CONFIG_HOME/stc-client/window-secret.
    secret_file: Path | None = None
    # `stc-client` (run) opens the window in the default browser on start (`--no-browser`: not this time).
    open_browser: bool = True

    @property
    def secret_path(self) -> Path:
        return self.secret_file or default_secret_path()

    def validate(self) -> None:
        if not port_ok(self.port) and self.port != 0:
            raise ValueError(f"port: {self.port} is not a TCP port")
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"host: {self.host!r} is not a loopback address (the window is for this machine only)")


@dataclass
class ClientConfig:
    server: ServerSettings = field(default_factory=ServerSettings)
    identity: IdentitySettings = field(default_factory=IdentitySettings)
    sip: SipSettings = field(default_factory=SipSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    ui: UiSettings = field(default_factory=UiSettings)
    log_level: str = "INFO"

    def validate(self) -> None:
        check_log_level(self.log_level)


def softphone_address(entry: str) -> tuple[str, int | None]:
    """ "127.0.0.1:5070" -> ("127.0.0.1", 5070); "[::1]:5070" -> ("::1", 5070); "127.0.0.1" -> (host, None)."""
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"softphones: {entry!r} is not an IP address (optionally with :port)") from None
    if not port_text:
        return host, None
    if not port_text.isdigit() or not port_ok(int(port_text)):
        raise ValueError(f"softphones: {entry!r} has no valid port")
    return host, int(port_text)


def server_address(entry: str) -> tuple[str, int]:
    """ "stc2.example.org:5443" -> ("stc2.example.org", 5443); "[2001:db8::1]:5443" -> ("2001:db8::1", 5443)."""
    text = entry.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
    if not host or ":" in host and not text.startswith("[") or not port_text.isdigit() or not port_ok(int(port_text)):
        raise ValueError(f"hosts: {entry!r} is not host:port")
    return host, int(port_text)
