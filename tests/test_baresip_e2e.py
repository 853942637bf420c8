"""A real softphone through stc: baresip (Debian's baresip-core) -> stc-client -> stc-server -> Asterisk 22.

HD voice: Opus, G.722 and PCMA phones in one room, each test checking which codec was
negotiated on both hops (the softphone's SDP answer from stc-client, and the codec of the
Asterisk channel), audio from a talker measured at two listeners, DTMF reaching ConfBridge,
hold and resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from asterisk_lab import AmiClient, event_is
from baresip import Baresip, block_rms, silence_wav, talk_wav
from capture import Capture
from stack import Stack, stc_stack, wait_until
from stc_wire.sdp import SessionDescription
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
DISPLAY = {"alice": "Alice", "bob": "Bob", "carol": "Carol"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("wav")
    return talk_wav(folder / "talk.wav"), silence_wav(folder / "silence.wav")


def answered_codec(sip: list[bytes]) -> str:
    """The first codec of the SDP answer stc-client sent the phone (its INVITE's 200 OK)."""
    for payload in sip:
        head, _, body = payload.partition(b"\r\n\r\n")
        cseq = [line for line in head.split(b"\r\n") if line.lower().startswith(b"cseq:")]
        if not head.startswith(b"SIP/2.0 200") or not cseq or not cseq[0].endswith(b"INVITE") or b"m=audio" not in body:
            continue
        audio = next(m for m in SessionDescription.from_bytes(body).media if m.kind == "audio")
        first = audio.formats[0]
        for kind, value in audio.lines:
            if kind == "a" and value.startswith(f"rtpmap:{first} "):
                return value.split(" ", 1)[1].split("/")[0].lower()
        return first
    raise AssertionError("no SDP answer reached the phone")


async def asterisk_codec(ami: AmiClient, channel: str) -> str:
    [reply] = await ami.action({"Action": "Getvar", "Channel": channel, "Variable": "CHANNEL(audionativeformat)"})
    return str(reply.get("Value", "")).lower()


@asynccontextmanager
async def phones(stack: Stack, tmp_path: Path, plan: dict[str, tuple[str, Path]]) -> AsyncIterator[dict[str, Baresip]]:
    async with AsyncExitStack() as stack_of_phones:
        made = {}
        for user, (codec, source) in plan.items():
            made[user] = await stack_of_phones.enter_async_context(
                Baresip(tmp_path / user, user=user, codecs=(codec,), source=source))
        yield made


ALIAS = {"opus": "opus/48000/2", "g722": "G722/16000/1", "pcma": "PCMA/8000/1"}


async def test_opus_g722_and_pcma_phones_hear_each_other_through_stc(
        asterisk_lab: str, pki: TestPki, tmp_path: Path, wavs: tuple[Path, Path]) -> None:
    talk, silence = wavs
    plan = {"alice": (ALIAS["opus"], talk), "bob": (ALIAS["g722"], silence), "carol": (ALIAS["pcma"], silence)}
    expected = {"alice": ("opus", "opus"), "bob": ("g722", "g722"), "carol": ("pcma", "alaw")}
    async with stc_stack(pki, tuple(plan)) as stack, AmiClient() as ami, phones(stack, tmp_path, plan) as ph:
        since = ami.mark()
        captures = {u: Capture(f"udp and host 127.0.0.1 and port {p.sip_port}") for u, p in ph.items()}
        for capture in captures.values():
            capture.__enter__()
        try:
            for user in ("bob", "carol", "alice"):
                await ph[user].dial(f"sip:{ROOM}@127.0.0.1:{stack.sip_port(user)}")
                await ph[user].wait_event("CALL_ESTABLISHED")
            joins = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 3, timeout=20, since=since)
            await wait_until(lambda: all(c.state.light == "green" for c in stack.clients.values()), 10, "green lights")
            await asyncio.sleep(8)  # alice talks: four tone bursts
            channels = {j["CallerIDName"]: j["Channel"] for j in joins}
            on_asterisk = {u: await asterisk_codec(ami, channels[DISPLAY[u]]) for u in plan}
        finally:
            for capture in captures.values():
                capture.stop()
        for user in plan:
            await ph[user].command("hangup")
        await ami.wait_for_count(event_is("ConfbridgeLeave", Conference=ROOM), 3, timeout=20, since=since)
        on_phone = {u: answered_codec([p.payload for p in captures[u].packets()]) for u in plan}
        for capture in captures.values():
            capture.cleanup()
        for user, (phone_codec, asterisk_name) in expected.items():
            assert on_phone[user] == phone_codec, (user, on_phone)
            assert asterisk_name in on_asterisk[user], (user, on_asterisk)
        stats = stack.server.media.stats()
        assert stats.auth_drops == stats.replay_drops == stats.repeats_refused == 0, stats
    # Audio from the talker at both listeners: loud blocks while alice's tone plays, quiet between.
    for listener in ("bob", "carol"):
        _, heard = ph[listener].recordings()
        rms = block_rms(heard)
        loud = [r for r in rms if r > 1000]
        quiet = [r for r in rms if r < 100]
        assert len(loud) > 15 and len(quiet) > 15, f"{listener} heard {len(loud)} loud, {len(quiet)} quiet blocks of {len(rms)}"


async def test_dtmf_hold_and_resume_from_a_real_phone(
        asterisk_lab: str, pki: TestPki, tmp_path: Path, wavs: tuple[Path, Path]) -> None:
    _, silence = wavs
    plan = {"alice": (ALIAS["opus"], silence)}
    async with stc_stack(pki, tuple(plan)) as stack, AmiClient() as ami, phones(stack, tmp_path, plan) as ph:
        alice = ph["alice"]
        since = ami.mark()
        await alice.dial(f"sip:{ROOM}@127.0.0.1:{stack.sip_port('alice')}")
        await alice.wait_event("CALL_ESTABLISHED")
        [join] = await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        channel = join["Channel"]
        await asyncio.sleep(1)  # media flowing both ways first
        await alice.command("sndcode", "1")
        await ami.wait_for(event_is("DTMFEnd", Channel=channel, Digit="1"), timeout=10, since=since)
        await alice.command("hold")
        await ami.wait_for(event_is("Hold", Channel=channel), timeout=10, since=since)
        await alice.command("resume")
        await ami.wait_for(event_is("Unhold", Channel=channel), timeout=10, since=since)
        await alice.command("hangup")
        await ami.wait_for(event_is("ConfbridgeLeave", Conference=ROOM, Channel=channel), timeout=10, since=since)
        await wait_until(lambda: not stack.clients["alice"].softphone.calls, 5, "call released")
