"""Bad input from the softphone: malformed SIP and SDP that cannot be relayed never crash a client
or leak media; other calls go on. The real server is in the loop; Asterisk is not needed."""

from __future__ import annotations

import asyncio
import socket

import pytest

from stack import stc_stack
from stc_wire.sip import parse_message
from tests.certs import TestPki, make_test_pki

INVITE = (
    "INVITE sip:1000@127.0.0.1 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{n};rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:alice@127.0.0.1>;tag=a{n}\r\n"
    "To: <sip:1000@127.0.0.1>\r\n"
    "Call-ID: bad-{n}@test\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:{port}>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{body}"
)


def sdp(proto: str = "RTP/AVP", extra: str = "") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 40000 {proto} 8\r\na=rtpmap:8 PCMA/8000\r\n{extra}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def exchange(port: int, data: bytes, timeout: float = 2.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, data.replace(b"{port}", str(sock.getsockname()[1]).encode()), ("127.0.0.1", port))
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(sock, 65536)
    except TimeoutError:
        return None
    finally:
        sock.close()


def invite(n: int, body: str) -> bytes:
    return INVITE.format(port="{port}", n=n, length=len(body.encode()), body=body).encode()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (sdp("RTP/SAVP", "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA\r\n"), "RTP/SAVP"),
        (sdp().replace("c=IN IP4 127.0.0.1\r\n", ""), "connection"),
    ],
)
async def test_unrelayable_sdp_is_refused_with_488_and_nothing_sent(pki: TestPki, body: str, reason: str) -> None:
    async with stc_stack(pki, ("alice",)) as stack:
        client = stack.clients["alice"]
        answer = await exchange(stack.sip_port("alice"), invite(1, body))
        assert answer is not None
        response = parse_message(answer)
        assert getattr(response, "status", None) == 488
        assert reason.lower() in (response.get("Warning") or "").lower()
        assert not client.softphone.calls and stack.server.media.open_calls == 0


async def test_malformed_sip_is_answered_400_or_dropped_and_calls_go_on(pki: TestPki) -> None:
    async with stc_stack(pki, ("alice",)) as stack:
        port = stack.sip_port("alice")
        client = stack.clients["alice"]
        # A request with a broken CSeq: the client answers 400.
        broken = invite(2, sdp()).replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
        answer = await exchange(port, broken)
        assert answer is not None and answer.startswith(b"SIP/2.0 400")
        # Pure garbage: a logged, counted drop; no answer.
        assert await exchange(port, b"\x00\x01garbage\xff" * 10, timeout=0.5) is None
        assert client.softphone.drops["malformed"] == 2
        # The client still works: a REGISTER is answered (locally).
        register = (b"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-r1\r\n"
                    b"From: <sip:alice@127.0.0.1>;tag=r1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: reg-1\r\n"
                    b"CSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n")
        answer = await exchange(port, register)
        assert answer is not None and answer.startswith(b"SIP/2.0 200")
        assert client.tunnel is not None and client.tunnel.stream.closed is None


async def test_no_tunnel_means_503_never_plaintext(pki: TestPki) -> None:
    async with stc_stack(pki, ("alice",)) as stack:
        await stack.server.close()  # the server goes away
        client = stack.clients["alice"]
        async with asyncio.timeout(5):
            while client.tunnel is not None:
                await asyncio.sleep(0.05)
        answer = await exchange(stack.sip_port("alice"), invite(3, sdp()))
        assert answer is not None and answer.startswith(b"SIP/2.0 503")
        assert b"tunnel is down" in answer


async def test_only_the_configured_softphone_may_use_the_client(pki: TestPki) -> None:
    """sip.softphones: another local program gets 403 for anything it sends; the softphone passes."""
    from dataclasses import replace

    from stack import client_config
    from stc_client.app import ClientApp

    loop = asyncio.get_running_loop()
    phone, other = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    for sock in (phone, other):
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    async with stc_stack(pki) as stack:
        config = client_config(pki, "alice", stack.server_port)
        config = replace(config, sip=replace(config.sip, softphones=(f"127.0.0.1:{phone.getsockname()[1]}",)))
        client = ClientApp(config)
        await client.start()
        stack.clients["alice"] = client
        await asyncio.wait_for(client.tunnel_up.wait(), 10)
        try:
            answers = {}
            for name, sock in (("other", other), ("phone", phone)):
                request = invite(7, sdp("RTP/SAVP")).replace(b"{port}", str(sock.getsockname()[1]).encode())
                await loop.sock_sendto(sock, request, ("127.0.0.1", client.softphone.port))
                answers[name] = parse_message(await asyncio.wait_for(loop.sock_recv(sock, 65536), 3))
            assert getattr(answers["other"], "status", None) == 403
            assert getattr(answers["phone"], "status", None) == 488  # past the gate: refused for its SDP
            assert client.softphone.drops["foreign-source"] == 1
            assert not client.softphone.calls and stack.server.media.open_calls == 0
        finally:
            phone.close()
            other.close()
