"""The audit trail of a real conference on the lab's Asterisk 22, read back with `stc-server audit`."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from asterisk_lab import AmiClient, asterisk_rx, event_is
from sipp import UAC_WAIT_BYE, Codec, SippCaller
from stack import WAN_HOST, Stack, server_config, wait_until
from stc_asterisk.app import ServerApp
from stc_asterisk.cli import main
from stc_wire.tls import client_context
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def refused_attempt(pki: TestPki, port: int, user: str) -> None:
    context = client_context(pki.users[user].cert, pki.users[user].key, pki.ca)
    try:
        reader, writer = await asyncio.open_connection(WAN_HOST, port, ssl=context, server_hostname="localhost")
        async with asyncio.timeout(10):
            await reader.read()
        writer.close()
    except (ssl.SSLError, ConnectionError):
        pass


def verify(path: Path, cert: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", "verify", str(path), "--cert", str(cert)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def test_a_conference_leaves_a_trail_nobody_can_quietly_edit(asterisk_lab: str, pki: TestPki, tmp_path: Path,
                                                                  sipp_callers: Callable[..., SippCaller],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    asterisk_rx("dialplan add extension 9999,1,Answer() into stc-insider replace")
    asterisk_rx("dialplan add extension 9999,2,Wait(60) into stc-insider replace")
    audit_path = tmp_path / "audit.jsonl"
    config = server_config(pki)
    config.audit.path = audit_path
    server = ServerApp(config)
    await server.start()
    stack = Stack(pki, server)
    try:
        alice = await stack.add_client("alice")
        async with AmiClient() as ami:
            since = ami.mark()
            call = sipp_callers(target_host="127.0.0.1", target_port=alice.softphone.port, caller="alice",
                                service=ROOM, scenario=UAC_WAIT_BYE, codec=Codec.PCMA, timeout_s=60)
            call.start()
            [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=30, since=since)
            await refused_attempt(pki, stack.server_port, "revoked")
            await ami.action({"Action": "Originate", "Channel": "Local/9999@stc-insider", "Application": "ConfBridge",
                              "Data": f"{ROOM},stc_bridge,stc_user", "CallerID": "Spy <666>", "Async": "true"})
            await ami.wait_for(lambda e: e.get("Event") == "ConfbridgeLeave" and e.get("Channel", "").startswith("Local/"),
                               timeout=15, since=since)
            await wait_until(lambda: server.metrics.rooms.unauthenticated_ejected == 1, 10, "the spy ejected")
            await ami.action({"Action": "Hangup", "Channel": join["Channel"]})
            assert await call.wait_async(20) == 0, call.describe()
            await wait_until(lambda: not any(s.calls for s in server.sessions.values()), 10, "the call released")
            await asyncio.sleep(0.5)  # the last roster (the room empty) is pushed and audited
        metrics = {s.name: s.value for f in text_string_to_metric_families(generate_latest(server.metrics.registry).decode())
                   for s in f.samples if not s.labels}
        assert metrics["stc_unauthenticated_channels_seen_total"] == metrics["stc_unauthenticated_channels_ejected_total"] == 1
    finally:
        for client in stack.clients.values():
            await client.close()
        await server.close()

    # `audit show --room 1000`: exactly who was in the room and when.
    assert main(["audit", "show", str(audit_path), "--room", ROOM]) == 0
    shown = capsys.readouterr().out.splitlines()
    events = [(line.split()[1], "UNAUTHENTICATED" if "UNAUTHENTICATED" in line else "Alice" if "Alice" in line else "?")
              for line in shown]
    assert sorted(events) == sorted([("admitted", "Alice"), ("join", "Alice"), ("join", "UNAUTHENTICATED"),
                                     ("ejected", "?"), ("leave", "UNAUTHENTICATED"), ("leave", "Alice")]), shown
    assert events.index(("join", "Alice")) < events.index(("join", "UNAUTHENTICATED")) < events.index(("leave", "Alice"))
    assert all("room 1000" in line for line in shown)
    assert any("Local/9999" in line and "666" in line for line in shown if line.split()[1] == "join")
    # The refused certificate, without a room, is on the whole trail.
    assert main(["audit", "show", str(audit_path)]) == 0
    everything = capsys.readouterr().out.splitlines()
    refused = [line for line in everything if line.split()[1] == "tunnel-refused"]
    assert len(refused) == 1 and "revoked" in refused[0], refused
    assert [line.split()[1] for line in everything if line.split()[1] == "tunnel-accepted"] == ["tunnel-accepted"]

    # Intact: the real command says so.
    ok = subprocess.run([sys.executable, "-m", "stc_asterisk.cli", "audit", "verify", str(audit_path),
                         "--cert", str(pki.server.cert)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "signatures verified" in ok.stdout

    # Editing, deleting or moving any one line is caught, and the line named.
    original = audit_path.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    for index in range(len(original)):
        edited = list(original)
        record = json.loads(edited[index])
        record["time"] = "2020-01-01T00:00:00.000000Z"
        edited[index] = json.dumps(record)
        deleted = original[:index] + original[index + 1:]
        cases = {"edited": edited, "deleted": deleted}
        if index + 1 < len(original):
            moved = list(original)
            moved[index], moved[index + 1] = moved[index + 1], moved[index]
            cases["moved"] = moved
        for what, lines in cases.items():
            broken.write_text("\n".join(lines) + "\n")
            code, text = verify(broken, pki.server.cert, capsys)
            assert code == 1, f"{what} line {index + 1} not caught"
            assert f"{broken}:{index + 1}:" in text, f"{what} line {index + 1}: {text}"
