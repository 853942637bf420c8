"""A real stc-server and real stc-clients in the test's event loop, against the lab's Asterisk.

The server faces its clients on 127.0.0.2 (tunnel and SRTP), so that hop can be
captured on its own (`host 127.0.0.2`); Asterisk, the server's Asterisk side and
the softphones stay on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import asterisk_lab
from asterisk_lab import FASTAGI_PORT, SIP_HOST, SIP_PORT, lab_secret
from sipp import SippCaller, free_udp_port

from stc_asterisk.app import ServerApp
from stc_asterisk.config import (
    AdminSettings,
    AsteriskSettings,
    MediaSettings,
    RoomSettings,
    ServerConfig,
    TunnelSettings,
)
from stc_client.app import ClientApp
from stc_client.config import (
    ClientConfig,
    IdentitySettings,
    ServerSettings,
    SipSettings,
)
from stc_client.config import MediaSettings as ClientMediaSettings
from stc_client.settings import dumps_toml
from stc_wire.config import load_config
from tests.certs import TestPki

WAN_HOST = "127.0.0.2"


def server_config(pki: TestPki, *, listen_port: int = 0, unauthenticated: str = "eject", hidden_listeners: str = "stop",
                  listen_host: str = WAN_HOST, **media: object) -> ServerConfig:
    """`listen_port` 0: any free port; `unauthenticated` ("eject" or "flag") and `hidden_listeners`
    ("stop" or "show"): the rooms' policies."""
    return ServerConfig(
        tunnel=TunnelSettings(listen_host=listen_host, listen_port=listen_port, cert=pki.server.cert, key=pki.server.key,
                              ca_bundle=pki.ca, crl=pki.crl, keepalive_interval=2, keepalive_timeout=6),
        # The lab's dialplan calls FastAGI on its fixed port; without the lab, any free port.
        asterisk=AsteriskSettings(sip_host=SIP_HOST, sip_port=SIP_PORT, ari_password=lab_secret("ari-password"),
                                  ami_secret=lab_secret("ami-secret"),
                                  fastagi_port=FASTAGI_PORT if asterisk_lab.lab_started_here() else 0),
        media=replace(MediaSettings(wan_host=WAN_HOST, pbx_host="127.0.0.1"), **media),  # type: ignore[arg-type]
        rooms=RoomSettings(unauthenticated=unauthenticated, hidden_listeners=hidden_listeners),
        admin=AdminSettings(port=0),  # /metrics, /healthz, /readyz on a free loopback port
    )


def client_config(pki: TestPki, user: str, server_port: int, profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",),
                  *, server_host: str = WAN_HOST, sip_host: str = "127.0.0.1") -> ClientConfig:
    return ClientConfig(
        server=ServerSettings(host=server_host, port=server_port, name="localhost", keepalive_interval=2,
                              keepalive_timeout=6, reconnect_max_delay=2),
        identity=IdentitySettings(cert=pki.users[user].cert, key=pki.users[user].key, ca_bundle=pki.ca),
        sip=SipSettings(listen_host=sip_host, listen_port=0),
        media=ClientMediaSettings(srtp_profiles=profiles),
    )


def free_tcp_port(host: str = WAN_HOST) -> int:
    """A TCP port nothing listens on right now (for a server started later)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def write_client_config(pki: TestPki, user: str, server_port: int, config_dir: Path,
                        profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",)) -> Path:
    """client_config() as a TOML file in `config_dir` (so the window can save settings to it), with
    the window on a free port ([ui] port 0) and the softphone side on a free UDP port."""
    config = client_config(pki, user, server_port, profiles)
    s, i = config.server, config.identity
    doc = {
        "server": {"host": s.host, "port": s.port, "name": s.name, "keepalive_interval": s.keepalive_interval,
                   "keepalive_timeout": s.keepalive_timeout, "reconnect_max_delay": s.reconnect_max_delay},
        "identity": {"cert": str(i.cert), "key": str(i.key), "ca_bundle": str(i.ca_bundle)},
        "sip": {"listen_host": config.sip.listen_host, "listen_port": free_udp_port(config.sip.listen_host)},
        "media": {"srtp_profiles": list(profiles)},
        "ui": {"host": "127.0.0.1", "port": 0, "secret_file": str(config_dir / f"{user}-window-secret")},
    }
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / f"{user}.toml"
    path.write_text(dumps_toml(doc), encoding="utf-8")
    return path


async def start_window_client(config_path: Path) -> ClientApp:
    """A client as `stc-client --config PATH` starts it, window included; it does not wait for the tunnel."""
    client = ClientApp(load_config(ClientConfig, config_path), config_path=config_path, window=True)
    await client.start()
    return client


@dataclass
class Stack:
    pki: TestPki
    server: ServerApp
    clients: dict[str, ClientApp] = field(default_factory=dict)

    @property
    def server_port(self) -> int:
        assert self.server.tunnels is not None
        return self.server.tunnels.port

    async def add_client(self, user: str, profiles: tuple[str, ...] = ("AES_CM_128_HMAC_SHA1_80",), *,
                         config_dir: Path | None = None, server_host: str = WAN_HOST,
                         sip_host: str = "127.0.0.1") -> ClientApp:
        """A client whose tunnel is up. With `config_dir`, it runs from a config file written there and
        serves its window (`client.window.url`), as write_client_config() describes."""
        if config_dir is None:
            client = ClientApp(client_config(self.pki, user, self.server_port, profiles, server_host=server_host,
                                             sip_host=sip_host))
            await client.start()
        else:
            client = await start_window_client(write_client_config(self.pki, user, self.server_port, config_dir, profiles))
        self.clients[user] = client  # closed with the stack even if the tunnel never comes up
        async with asyncio.timeout(10):
            await client.tunnel_up.wait()
        return client

    def sip_port(self, user: str) -> int:
        return self.clients[user].softphone.port


@asynccontextmanager
async def stc_stack(pki: TestPki, users: tuple[str, ...] = (), *, listen_port: int = 0, unauthenticated: str = "eject",
                    hidden_listeners: str = "stop", listen_host: str = WAN_HOST, **media: object) -> AsyncIterator[Stack]:
    """A started server (see server_config for the options) and a client per user, all closed on exit."""
    server = ServerApp(server_config(pki, listen_port=listen_port, unauthenticated=unauthenticated,
                                     hidden_listeners=hidden_listeners, listen_host=listen_host, **media))
    await server.start()
    stack = Stack(pki, server)
    try:
        for user in users:
            await stack.add_client(user)
        yield stack
    finally:
        for client in stack.clients.values():
            await client.close()
        await server.close()


async def wait_until(predicate, timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def room_caller(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str, **kwargs: object) -> SippCaller:
    """A SIPp softphone of `user` (From `user`, display name `User`) dialling room 1000 through
    that user's stc-client; any SippCaller option may be given, `timeout_s` is 60 unless said."""
    kwargs.setdefault("service", "1000")
    kwargs.setdefault("timeout_s", 60)
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), caller=user,
                        caller_name=user.title(), **kwargs)
