"""The client's softphone side listens on UDP and TCP with one port number. With `[sip] listen_port = 0`
the kernel picks UDP's port; when TCP's twin is taken the client tries a fresh UDP port, and only if
that keeps failing (or a fixed port's TCP is taken) does it go UDP only, with one WARNING. Real
sockets on loopback: a test-held TCP listener takes the port."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stc_client.media import ClientMedia
from stc_client.softphone import TCP_PORT_ATTEMPTS, SoftphoneProxy
from stc_wire.sip import SipResponse, parse_message
from stc_wire.srtp import SrtpProfile

HOST = "127.0.0.1"
REGISTER = ("REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:5099;branch=z9hG4bK-reg1\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=r1\r\nTo: <sip:alice@127.0.0.1>\r\n"
            "Call-ID: reg-1@test\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:5099>\r\n"
            "Expires: 60\r\nContent-Length: 0\r\n\r\n")


Starter = Callable[..., Awaitable["BlockingProxy"]]


def tcp_listener(port: int = 0) -> socket.socket:
    """A TCP socket listening on loopback `port` (0: any free one): that port is taken for TCP."""
    sock = socket.socket()
    sock.bind((HOST, port))
    sock.listen()
    return sock


class BlockingProxy(SoftphoneProxy):
    """A real proxy whose first `blocked_attempts` UDP ports find their TCP twin taken (by the test)."""

    def __init__(self, port: int, blocked_attempts: int) -> None:
        super().__init__(HOST, port, ClientMedia(HOST, softphone_host=HOST),
                         (SrtpProfile.parse("AES_CM_128_HMAC_SHA1_80"),))
        self.blocked_attempts = blocked_attempts
        self.blockers: list[socket.socket] = []

    async def _bind_udp(self, port: int) -> asyncio.DatagramTransport:
        transport = await super()._bind_udp(port)
        if len(self.blockers) < self.blocked_attempts:
            self.blockers.append(tcp_listener(transport.get_extra_info("sockname")[1]))
        return transport


@pytest.fixture
async def started() -> AsyncIterator[Starter]:
    """Starts proxies (`port`, `blocked_attempts`); all closed, with their blockers, at the end."""
    made: list[BlockingProxy] = []

    async def start(port: int = 0, blocked_attempts: int = 0) -> BlockingProxy:
        proxy = BlockingProxy(port, blocked_attempts)
        made.append(proxy)
        await proxy.start()
        return proxy

    yield start
    for proxy in made:
        await proxy.close()
        proxy.media.close()
        for blocker in proxy.blockers:
            blocker.close()


async def register_over_tcp(port: int) -> int:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(REGISTER.format(transport="TCP").encode())
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    response = parse_message(head)
    assert isinstance(response, SipResponse)
    return response.status


async def register_over_udp(port: int) -> int:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.setblocking(False)
        await loop.sock_sendto(sock, REGISTER.format(transport="UDP").encode(), (HOST, port))
        async with asyncio.timeout(5):
            response = parse_message(await loop.sock_recv(sock, 65536))
    assert isinstance(response, SipResponse)
    return response.status


def tcp_complaints(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "SIP over TCP not available" in r.getMessage()]


async def test_port_0_gives_udp_and_tcp_the_same_number(started: Starter, caplog: pytest.LogCaptureFixture) -> None:
    proxy = await started()
    assert await register_over_udp(proxy.port) == 200
    assert await register_over_tcp(proxy.port) == 200
    assert not tcp_complaints(caplog)


async def test_a_taken_tcp_twin_makes_the_client_take_a_fresh_udp_port(started: Starter, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    proxy = await started(blocked_attempts=2)
    blocked = {blocker.getsockname()[1] for blocker in proxy.blockers}
    assert len(blocked) == 2 and proxy.port not in blocked
    assert await register_over_tcp(proxy.port) == 200  # the proxy's own TCP listener answers
    assert await register_over_udp(proxy.port) == 200
    assert not tcp_complaints(caplog)
    assert any(f"udp+tcp {HOST}:{proxy.port}" in r.getMessage() for r in caplog.records)


async def test_tcp_taken_on_every_attempt_is_one_warning_and_udp_still_works(started: Starter, caplog: pytest.LogCaptureFixture) -> None:
    proxy = await started(blocked_attempts=TCP_PORT_ATTEMPTS)
    assert len(proxy.blockers) == TCP_PORT_ATTEMPTS
    [complaint] = tcp_complaints(caplog)
    assert complaint.levelno == logging.WARNING
    assert proxy.port == proxy.blockers[-1].getsockname()[1]
    assert await register_over_udp(proxy.port) == 200


async def test_a_fixed_port_whose_tcp_is_taken_is_one_warning_and_udp_only(started: Starter, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # a port free for UDP ...
        probe.bind((HOST, 0))
        fixed = probe.getsockname()[1]
    proxy = await started(port=fixed, blocked_attempts=1)  # ... whose TCP the test takes
    assert proxy.port == fixed and len(proxy.blockers) == 1
    [complaint] = tcp_complaints(caplog)
    assert complaint.levelno == logging.WARNING
    assert await register_over_udp(fixed) == 200
