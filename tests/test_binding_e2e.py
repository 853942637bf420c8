"""Self-contained admission against the real Asterisk 22: bindings stored on the channels survive
an stc-server killed mid-call, and a forged STC_BINDING admits no one.

The restart test runs the first stc-server as `stc-server --config` in its own process, so that
SIGKILL really kills it: no BYE, no hang-up, no goodbye to Asterisk. Its clients' tunnels drop;
the clients keep the softphones' calls and rejoin through the restarted server, whose rejoined
legs replace the channels the dead server admitted (those stay in the ConfBridge until then:
they are the participants a restarted server must recognise meanwhile). The restarted server
runs in the test's loop, where its conference state and every roster it signs can be seen; a
new participant who joins through it must get rosters naming everyone by certificate, and
nobody may be ejected or shown UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from asterisk_lab import FASTAGI_PORT, AmiClient, asterisk_rx, event_is, lab_secret
from sipp import UAC_WAIT_BYE, Codec, SippCaller
from stack import Stack, client_config, free_tcp_port, server_config, stc_stack, wait_until
from stc_asterisk.app import ServerApp
from stc_client.app import ClientApp
from stc_client.settings import dumps_toml
from stc_wire.roster import Roster
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
STC_SERVER = Path(sys.executable).parent / "stc-server"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def fingerprint(pki: TestPki, user: str) -> str:
    cert = x509.load_pem_x509_certificate(pki.users[user].cert.read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@pytest.fixture
def hang_up_everything() -> Iterator[None]:
    """Channels whose stc-server was killed stay in Asterisk: clear them for the next test."""
    yield None
    asterisk_rx("channel request hangup all")


def caller(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str) -> SippCaller:
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), caller=user, service=ROOM,
                        timeout_s=90, scenario=UAC_WAIT_BYE, codec=Codec.PCMA)


def names(roster: Roster) -> list[str]:
    return sorted(e.identity["display_name"] if e.identity else "UNAUTHENTICATED" for e in roster.entries)


def latest(client: ClientApp) -> Roster | None:
    return client.rosters[-1] if client.rosters else None


def write_server_toml(pki: TestPki, port: int, path: Path) -> Path:
    """server_config() as the TOML file `stc-server --config` reads (the demo's server.toml, for the lab)."""
    config = server_config(pki, listen_port=port)
    t, m = config.tunnel, config.media
    doc = {
        "log_level": "INFO",
        "tunnel": {"listen_host": t.listen_host, "listen_port": port, "cert": str(t.cert), "key": str(t.key),
                   "ca_bundle": str(t.ca_bundle), "crl": str(t.crl), "keepalive_interval": t.keepalive_interval,
                   "keepalive_timeout": t.keepalive_timeout},
        "asterisk": {"sip_host": config.asterisk.sip_host, "sip_port": config.asterisk.sip_port,
                     "fastagi_port": FASTAGI_PORT, "ari_password": lab_secret("ari-password"),
                     "ami_secret": lab_secret("ami-secret")},
        "media": {"wan_host": m.wan_host, "pbx_host": m.pbx_host},
        "rooms": {"unauthenticated": "eject", "hidden_listeners": "stop"},
    }
    path.write_text(dumps_toml(doc), encoding="utf-8")
    path.chmod(0o600)  # it holds the lab's secrets
    return path


async def test_killed_server_restarted_keeps_every_participant_with_its_certificate(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], tmp_path: Path,
        caplog: pytest.LogCaptureFixture, hang_up_everything: None) -> None:
    caplog.set_level(logging.INFO)
    port = free_tcp_port()
    log_file = (tmp_path / "stc-server-1.log").open("w")
    first = subprocess.Popen([str(STC_SERVER), "--config", str(write_server_toml(pki, port, tmp_path / "server.toml"))],
                             stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    stack = Stack(pki, None)  # type: ignore[arg-type]  # clients of a server in another process
    restarted: ServerApp | None = None
    try:
        for user in ("alice", "bob"):
            client = ClientApp(client_config(pki, user, port))
            stack.clients[user] = client
            await client.start()
            async with asyncio.timeout(20):
                await client.tunnel_up.wait()
        async with AmiClient() as ami:
            since = ami.mark()
            phones = [caller(sipp_callers, stack, user) for user in ("alice", "bob")]
            for phone in phones:
                phone.start()
            joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=30, since=since)
            await wait_until(lambda: all((r := latest(c)) is not None and names(r) == ["Alice", "Bob"]
                                         for c in stack.clients.values()), 10, "Alice and Bob on both rosters")
            admitted = {j["Uniqueid"]: j["CallerIDNum"] for j in joins}
            # stc-admit stored each channel's binding on it.
            for join in joins:
                assert len(await ami.getvar(join["Channel"], "STC_BINDING")) > 100

            os.kill(first.pid, signal.SIGKILL)  # mid-call: no BYE, no hang-up, nothing said to Asterisk
            first.wait(10)
            assert sorted(m["Uniqueid"] for m in await ami.confbridge_list(ROOM)) == sorted(admitted)

            caplog.clear()
            restarted = ServerApp(server_config(pki, listen_port=port))
            loop = asyncio.get_running_loop()
            started = loop.time()
            await restarted.start()
            rooms = restarted.rooms
            assert rooms is not None

            def identified() -> dict[str, str | None]:
                return {e.channel_id: e.identity["fingerprint_sha256"] if e.identity else None
                        for e in rooms.conference.entries(ROOM)}

            everyone = {fingerprint(pki, user) for user in admitted.values()}
            await wait_until(lambda: set(identified().values()) == everyone, 5,
                             "both participants identified by the restarted server")
            took = loop.time() - started
            assert took < 5.0, f"identified {took:.1f} s after the restart"
            # Each channel of the dead server carries the identity of the certificate that called in on it.
            assert all(identified()[uid] == fingerprint(pki, user) for uid, user in admitted.items() if uid in identified())
            logging.getLogger(__name__).info("participants identified %.2f s after the restart", took)
            # The softphones did nothing: their calls rejoined, and the rejoined legs replaced the old channels.
            await wait_until(lambda: len(identified()) == 2 and not set(identified()) & set(admitted), 10,
                             "the rejoined legs replaced the dead server's channels")
            assert set(identified().values()) == everyone
            for phone in phones:  # no BYE ever reached them: their calls went on
                assert phone.running and "BYE sip:" not in phone.messages(), phone.describe()

            # A new participant, through the restarted server: her rosters name everyone by certificate.
            stack.server = restarted
            await stack.add_client("carol")
            since = ami.mark()
            caller(sipp_callers, stack, "carol").start()
            await ami.wait_for(event_is("ConfbridgeJoin", Conference=ROOM, CallerIDNum="carol"), timeout=30,
                               since=since)
            carol = stack.clients["carol"]
            await wait_until(lambda: (r := latest(carol)) is not None and names(r) == ["Alice", "Bob", "Carol"], 5,
                             "Alice, Bob and Carol on Carol's roster")
            assert all(not r.unauthenticated for r in carol.rosters)
            # Nobody was ejected, and no roster the restarted server signed showed anyone UNAUTHENTICATED.
            assert sorted(m["CallerIDNum"] for m in await ami.confbridge_list(ROOM)) == ["alice", "bob", "carol"]
        pushed = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"room {ROOM} roster v")]
        assert pushed and all(" 0 unauthenticated" in line for line in pushed), pushed
        assert not any("ejecting" in r.getMessage() for r in caplog.records)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
        log_file.close()
        for client in stack.clients.values():
            await client.close()
        if restarted is not None:
            await restarted.close()


INSIDER_CONTEXT = "stc-insider"


def add_insider_dialplan() -> None:
    """9999: the far end of a Local channel. 9997: waits until someone set STC_BINDING on it (AMI Setvar),
    then joins the room straight away (no SIP, no stc-admit)."""
    for line in ("9999,1,Answer()", "9999,2,Wait(60)", "9997,1,Answer()",
                 "9997,2,Wait(0.1)",
                 "9997,3,GotoIf(${STC_BINDING}?4:2)",  # the lab has no app_while; no spaces: the CLI splits on them
                 f"9997,4,ConfBridge({ROOM},stc_bridge,stc_user)"):
        asterisk_rx(f"dialplan add extension {line} into {INSIDER_CONTEXT} replace")


def edited(value: str) -> str:
    """One character of the payload changed to another base64url character."""
    middle = len(value) // 2
    return value[:middle] + ("B" if value[middle] != "B" else "C") + value[middle + 1:]


@pytest.mark.parametrize("forgery", ["copied", "edited"])
async def test_a_forged_stc_binding_is_unauthenticated_and_ejected(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller], forgery: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    add_insider_dialplan()
    async with stc_stack(pki, ("alice",)) as stack, AmiClient() as ami:
        since = ami.mark()
        caller(sipp_callers, stack, "alice").start()
        [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=30, since=since)
        alice = stack.clients["alice"]
        await wait_until(lambda: (r := latest(alice)) is not None and names(r) == ["Alice"], 10, "Alice's roster")
        genuine = await ami.getvar(join["Channel"], "STC_BINDING")
        assert genuine
        value = genuine if forgery == "copied" else edited(genuine)

        since = ami.mark()
        await ami.action({"Action": "Originate", "Channel": f"Local/9999@{INSIDER_CONTEXT}", "Context": INSIDER_CONTEXT,
                          "Exten": "9997", "Priority": "1", "CallerID": "Mallory <666>", "Async": "true"})
        new = await ami.wait_for(lambda e: e.get("Event") == "Newchannel" and e.get("Channel", "").startswith(
            f"Local/9999@{INSIDER_CONTEXT}") and e.get("Channel", "").endswith(";1"), timeout=10, since=since)
        # Once it runs 9997 (waiting for STC_BINDING), the channel can be found by name.
        await ami.wait_for(lambda e: e.get("Event") == "Newexten" and e.get("Channel") == new["Channel"]
                           and e.get("Application") == "GotoIf", timeout=10, since=since)
        await ami.action({"Action": "Setvar", "Channel": new["Channel"], "Variable": "STC_BINDING", "Value": value})
        await ami.wait_for(event_is("ConfbridgeJoin", Conference=ROOM, Channel=new["Channel"]), timeout=10, since=since)

        # Alice is shown the channel as UNAUTHENTICATED, never under her name...
        await wait_until(lambda: any(r.unauthenticated for r in alice.rosters), 10, "UNAUTHENTICATED on the roster")
        assert all(names(r).count("Alice") <= 1 for r in alice.rosters)
        [spy] = next(r for r in alice.rosters if r.unauthenticated).unauthenticated
        assert spy.channel_id == new["Uniqueid"] and spy.caller_id and "666" in spy.caller_id
        # ...and it is ejected: the room is back to Alice alone.
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM, Channel=new["Channel"]), timeout=10, since=since)
        await wait_until(lambda: names(latest(alice)) == ["Alice"], 5, "the forged channel gone")  # type: ignore[arg-type]
        assert [m["CallerIDNum"] for m in await ami.confbridge_list(ROOM)] == ["alice"]
    reason = "wrong-channel" if forgery == "copied" else "bad-signature"
    assert any(f"STC_BINDING refused ({reason}" in r.getMessage() for r in caplog.records), reason


async def test_an_admitted_channel_whose_stc_binding_is_changed_is_unauthenticated_and_ejected(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        for user in ("alice", "bob"):
            caller(sipp_callers, stack, user).start()
        joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=30, since=since)
        alice = stack.clients["alice"]
        await wait_until(lambda: (r := latest(alice)) is not None and names(r) == ["Alice", "Bob"], 10, "both on the roster")
        bob = next(j for j in joins if j["CallerIDNum"] == "bob")
        since = ami.mark()
        # An edit on the live channel (AMI Setvar, as any dialplan or AMI user could do).
        value = edited(await ami.getvar(bob["Channel"], "STC_BINDING"))
        await ami.action({"Action": "Setvar", "Channel": bob["Channel"], "Variable": "STC_BINDING", "Value": value})
        await wait_until(lambda: any(r.unauthenticated for r in alice.rosters), 10, "Bob's channel UNAUTHENTICATED")
        [flagged] = next(r for r in alice.rosters if r.unauthenticated).unauthenticated
        assert flagged.channel_id == bob["Uniqueid"]
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM, Channel=bob["Channel"]), timeout=10, since=since)
        await wait_until(lambda: names(latest(alice)) == ["Alice"], 5, "Bob's channel ejected")  # type: ignore[arg-type]
    assert any("STC_BINDING refused (bad-signature" in r.getMessage() for r in caplog.records)
