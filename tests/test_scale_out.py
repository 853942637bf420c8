"""Several stc-server processes on one machine: `[tunnel] reuse_port` shares the tunnel port.

Real `stc-server` processes (no Asterisk needed: they relay no calls here), each with its own
media port range and admin port; the kernel spreads new tunnels over them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack import WAN_HOST, client_config, free_tcp_port, wait_until
from stc_client.settings import dumps_toml
from stc_client.tunnel_client import ClientTunnel, open_tunnel
from tests.certs import TestPki, make_test_pki

STC_SERVER = Path(sys.executable).parent / "stc-server"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def server_toml(pki: TestPki, path: Path, *, port: int, admin_port: int, wan_ports: str, pbx_ports: str,
                reuse_port: bool) -> Path:
    doc = {
        "tunnel": {"listen_host": WAN_HOST, "listen_port": port, "reuse_port": reuse_port, "cert": str(pki.server.cert),
                   "key": str(pki.server.key), "ca_bundle": str(pki.ca), "crl": str(pki.crl)},
        "asterisk": {"watch_conferences": False},
        "media": {"wan_host": WAN_HOST, "pbx_host": "127.0.0.1", "wan_ports": wan_ports, "pbx_ports": pbx_ports},
        "admin": {"port": admin_port},
    }
    path.write_text(dumps_toml(doc), encoding="utf-8")
    return path


class Servers:
    """`stc-server` processes started by one test, stopped (and their logs kept) at its end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, config: Path) -> subprocess.Popen[bytes]:
        log = (self.tmp_path / f"{config.stem}.log").open("wb")
        process = subprocess.Popen([str(STC_SERVER), "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def log(self, config_stem: str) -> str:
        return (self.tmp_path / f"{config_stem}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop()


def accepted_tunnels(admin_port: int) -> int | None:
    """stc_tunnels_accepted from a process's /metrics; None while it does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("stc_tunnels_accepted_total ") or line.startswith("stc_tunnels_accepted "):
            return int(float(line.split()[1]))
    return 0


async def test_two_server_processes_share_the_tunnel_port_and_both_take_tunnels(pki: TestPki, servers: Servers,
                                                                               tmp_path: Path) -> None:
    port = free_tcp_port()
    admin = [free_tcp_port("127.0.0.1"), free_tcp_port("127.0.0.1")]
    # Each process its own media ranges: one machine, no port ever wanted by both.
    ranges = [("40000-40999", "41000-41999"), ("42000-42999", "43000-43999")]
    for n in range(2):
        servers.start(server_toml(pki, tmp_path / f"server-{n}.toml", port=port, admin_port=admin[n],
                                  wan_ports=ranges[n][0], pbx_ports=ranges[n][1], reuse_port=True))
    await wait_until(lambda: all(accepted_tunnels(a) is not None for a in admin), 30, "both processes up")
    assert all(p.poll() is None for p in servers.processes), servers.log("server-1")

    # New connections are spread by the kernel (a hash of the addresses): open tunnels, each from
    # a fresh source port, until both processes have taken some.
    tunnels: list[ClientTunnel] = []
    try:
        for _ in range(40):
            tunnels.append(await open_tunnel(client_config(pki, "alice", port)))
            counts = [accepted_tunnels(a) or 0 for a in admin]
            if min(counts) >= 2:
                break
        counts = [accepted_tunnels(a) or 0 for a in admin]
        assert min(counts) >= 2, f"tunnels per process: {counts}"
        assert sum(counts) == len(tunnels)
    finally:
        await asyncio.gather(*(t.close() for t in tunnels), return_exceptions=True)


async def test_without_reuse_port_a_second_process_cannot_take_the_port(pki: TestPki, servers: Servers,
                                                                        tmp_path: Path) -> None:
    port = free_tcp_port()
    admin = [free_tcp_port("127.0.0.1"), free_tcp_port("127.0.0.1")]
    first = servers.start(server_toml(pki, tmp_path / "first.toml", port=port, admin_port=admin[0],
                                      wan_ports="", pbx_ports="", reuse_port=False))
    await wait_until(lambda: accepted_tunnels(admin[0]) is not None, 30, "the first process up")
    second = servers.start(server_toml(pki, tmp_path / "second.toml", port=port, admin_port=admin[1],
                                       wan_ports="", pbx_ports="", reuse_port=False))
    assert second.wait(30) == 1
    assert "cannot start" in servers.log("second") and "in use" in servers.log("second")
    assert first.poll() is None


async def test_fastagi_listeners_share_the_dialplans_port_with_reuse_port() -> None:
    """The dialplan names one FastAGI port; every process of the machine listens on it."""
    from stc_asterisk.fastagi import FastAgiServer

    first = FastAgiServer("127.0.0.1", 0, {}, reuse_port=True)
    await first.start()
    try:
        second = FastAgiServer("127.0.0.1", first.port, {}, reuse_port=True)
        await second.start()
        await second.close()
        with pytest.raises(OSError):
            await FastAgiServer("127.0.0.1", first.port, {}).start()
    finally:
        await first.close()
