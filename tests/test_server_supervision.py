"""The server's long-lived tasks survive their own bugs, and one client's odd stream ids touch only its own calls."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from stack import client_config, server_config, wait_until
from stc_asterisk.app import ServerApp
from stc_asterisk.supervise import supervise
from stc_client.tunnel_client import open_tunnel
from stc_wire.media_keys import KeyAgreement, Side
from stc_wire.messages import MediaAnswer, MediaEnd, MediaOffer, MediaReject, Message
from stc_wire.stream import CloseInfo
from tests.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[ServerApp]:
    config = server_config(pki)
    config.asterisk.watch_conferences = False
    config.tunnel.trust_recheck_interval = 0.05
    app = ServerApp(config)
    await app.start()
    yield app
    await app.close()


async def test_supervise_restarts_after_a_failure_and_ends_when_the_component_returns(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"bug number {len(runs)}")

    async with asyncio.timeout(10):
        await supervise("flaky", flaky, logging.getLogger("t"), min_delay=0.01)
    assert len(runs) == 3
    failures = [r for r in caplog.records if r.name == "t" and "flaky failed" in r.getMessage()]
    assert len(failures) == 2 and all(r.exc_info and "bug number" in str(r.exc_info[1]) for r in failures)


async def test_the_certificate_recheck_survives_an_unexpected_exception(server: ServerApp,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    tunnels = server.tunnels
    assert tunnels is not None
    calls: list[int] = []
    real = tunnels.recheck_peers

    async def recheck_with_a_bug() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the recheck")
        return await real()

    tunnels.recheck_peers = recheck_with_a_bug  # type: ignore[method-assign]
    await wait_until(lambda: len(calls) >= 3, 10, "the recheck running again after its failure")
    [failure] = [r for r in caplog.records if "certificate recheck failed" in r.getMessage()]
    assert failure.exc_info is not None and "a bug in the recheck" in str(failure.exc_info[1])


async def test_a_reused_stream_id_is_refused_and_touches_no_other_call(pki: TestPki, server: ServerApp) -> None:
    tunnel = await open_tunnel(client_config(pki, "alice", server.tunnels.port))  # type: ignore[union-attr]
    got: list[Message] = []
    closed: list[CloseInfo] = []

    async def reader() -> None:
        async def on_message(message: Message) -> None:
            got.append(message)
        closed.append(await tunnel.run(on_message))

    task = asyncio.create_task(reader())
    key = KeyAgreement(Side.CLIENT).public_bytes
    profiles = ("AES_CM_128_HMAC_SHA1_80",)

    def media() -> list[Message]:
        return [m for m in got if isinstance(m, (MediaAnswer, MediaReject))]

    for n, (stream_id, call_id) in enumerate([("x", "c1"), ("x", "c2"), ("a/x", "c3")], 1):
        await tunnel.send(MediaOffer(stream_id, call_id, profiles, key))
        await wait_until(lambda: len(media()) >= n, 5, f"the answer to offer {n}")
    first, second, third = media()
    assert isinstance(first, MediaAnswer) and isinstance(third, MediaAnswer)
    assert isinstance(second, MediaReject) and second.reason == "stream_id already in use on this tunnel"
    assert server.media.open_calls == 2 and not closed
    # Ending stream "x" ends that call only, not "a/x" (whose id ends the same way).
    await tunnel.send(MediaEnd("x"))
    await wait_until(lambda: server.media.open_calls == 1, 5, "stream x released")
    [session] = server.sessions.values()
    assert list(session.pending) == ["c3"] and not closed  # keyed calls wait for their INVITE
    await tunnel.close()
    await task
