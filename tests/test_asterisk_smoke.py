"""The real-Asterisk smoke test: SIPp callers meet in ConfBridge, seen through AMI.

Nothing here sleeps: every step waits for the AMI event or the process exit it needs.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

import shutil
from collections.abc import Iterator
from pathlib import Path

from asterisk_lab import AmiClient, asterisk_rx, asterisk_version, event_is, lab_start, lab_stop
from sipp import UAC_CONF, UAC_WAIT_BYE, Codec, SippCaller

pytestmark = pytest.mark.asterisk
REPO = Path(__file__).resolve().parents[1]


def direct_dial_variant(dest: Path) -> Path:
    """asterisk-conf/ without the stc-admit gate: callers may dial rooms directly (lab smoke test only)."""
    shutil.copytree(REPO / "asterisk-conf", dest)
    dialplan = dest / "extensions.conf"
    text = dialplan.read_text()
    start, end = text.index("; >>> stc-admit"), text.index("; <<< stc-admit")
    dialplan.write_text(text[:start] + text[end:])
    return dest


@pytest.fixture(scope="module")
def asterisk_lab(asterisk_lab: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's lab Asterisk, restarted on the direct-dial variant for this module, then restored."""
    lab_stop()
    status = lab_start(direct_dial_variant(tmp_path_factory.mktemp("conf") / "asterisk-conf"))
    try:
        yield status
    finally:
        lab_stop()
        lab_start()

JOIN_TIMEOUT_S = 20.0
LEAVE_TIMEOUT_S = 20.0
NATIVE_FORMAT = {Codec.PCMU: "(ulaw)", Codec.PCMA: "(alaw)"}


def test_lab_runs_asterisk_22(asterisk_lab: str) -> None:
    assert asterisk_version().startswith("22."), asterisk_version()
    assert asterisk_lab.startswith("asterisk-lab: Asterisk 22."), asterisk_lab
    modules = asterisk_rx("module show like app_confbridge")
    assert "app_confbridge.so" in modules and "Running" in modules, modules


async def test_three_callers_meet_in_room_1000(
    asterisk_lab: str, sipp_callers: Callable[..., SippCaller]
) -> None:
    room = "1000"
    codecs = {"alice": Codec.PCMA, "bob": Codec.PCMU, "carol": Codec.PCMA}
    async with AmiClient() as ami:
        since = ami.mark()
        assert await ami.confbridge_list(room) == []
        callers = {
            name: sipp_callers(
                scenario=UAC_WAIT_BYE,
                service=room,
                caller=name,
                caller_name=name.title(),
                codec=codec,
                play_audio=name == "alice",  # one caller talks (PCMA capture), two listen
                timeout_s=60,
            )
            for name, codec in codecs.items()
        }
        for caller in callers.values():
            caller.start()

        joins = await ami.wait_for_count(
            event_is("ConfbridgeJoin", Conference=room), 3, timeout=JOIN_TIMEOUT_S, since=since
        )
        assert sorted(join["CallerIDNum"] for join in joins) == sorted(codecs)
        assert sorted(join["CallerIDName"] for join in joins) == ["Alice", "Bob", "Carol"]

        members = await ami.confbridge_list(room)
        assert sorted(member["CallerIDNum"] for member in members) == sorted(codecs)
        assert {member["Channel"] for member in members} == {join["Channel"] for join in joins}
        # The codec each caller offered is the one its channel runs (payload type 0 vs 8).
        for join in joins:
            native = await ami.getvar(join["Channel"], "CHANNEL(audionativeformat)")
            assert native == NATIVE_FORMAT[codecs[join["CallerIDNum"]]], (join["CallerIDNum"], native)
        assert all(caller.running for caller in callers.values())

        # Asterisk hangs up on each caller (BYE); each answers 200 and exits successfully.
        for join in joins:
            await ami.action({"Action": "ConfbridgeKick", "Conference": room, "Channel": join["Channel"]})
        leaves = await ami.wait_for_count(
            event_is("ConfbridgeLeave", Conference=room), 3, timeout=LEAVE_TIMEOUT_S, since=since
        )
        assert {leave["Channel"] for leave in leaves} == {join["Channel"] for join in joins}
        await ami.wait_for(event_is("ConfbridgeEnd", Conference=room), timeout=LEAVE_TIMEOUT_S, since=since)
        for caller in callers.values():
            assert await caller.wait_async(LEAVE_TIMEOUT_S) == 0, caller.describe()
            assert "BYE sip:" in caller.messages()
        assert await ami.confbridge_list(room) == []


async def test_callers_hang_up_by_themselves(asterisk_lab: str, sipp_callers: Callable[..., SippCaller]) -> None:
    room = "1001"
    names = ["dave", "erin", "frank"]
    async with AmiClient() as ami:
        since = ami.mark()
        callers = [
            sipp_callers(scenario=UAC_CONF, service=room, caller=name, codec=Codec.PCMU, hold_ms=3000, timeout_s=30)
            for name in names
        ]
        for caller in callers:
            caller.start()

        joins = await ami.wait_for_count(
            event_is("ConfbridgeJoin", Conference=room), 3, timeout=JOIN_TIMEOUT_S, since=since
        )
        assert sorted(join["CallerIDNum"] for join in joins) == names
        leaves = await ami.wait_for_count(
            event_is("ConfbridgeLeave", Conference=room), 3, timeout=LEAVE_TIMEOUT_S, since=since
        )
        end = await ami.wait_for(event_is("ConfbridgeEnd", Conference=room), timeout=LEAVE_TIMEOUT_S, since=since)
        # All three were in the room together: every join came before the first leave.
        position = {id(event): index for index, event in enumerate(ami.events)}
        assert max(position[id(e)] for e in joins) < min(position[id(e)] for e in leaves)
        assert position[id(end)] > max(position[id(e)] for e in leaves)
        for caller in callers:
            # Exit 0: our BYE was answered 200.
            assert await caller.wait_async(LEAVE_TIMEOUT_S) == 0, caller.describe()
            stats = caller.stats()
            assert (stats.successful_calls, stats.failed_calls) == (1, 0), caller.describe()


async def test_killed_caller_stays_until_hung_up(asterisk_lab: str, sipp_callers: Callable[..., SippCaller]) -> None:
    """A caller that vanishes without BYE stays in the room (nothing in plain SIP tells
    Asterisk); hanging its channel up through AMI ends the conference."""
    room = "1002"
    async with AmiClient() as ami:
        since = ami.mark()
        ghost = sipp_callers(scenario=UAC_CONF, service=room, caller="ghost", codec=Codec.PCMA, timeout_s=60)
        ghost.start()
        join = await ami.wait_for(event_is("ConfbridgeJoin", Conference=room), timeout=JOIN_TIMEOUT_S, since=since)
        ghost.kill()  # no BYE
        assert ghost.killed and not ghost.running
        members = await ami.confbridge_list(room)
        assert [member["Channel"] for member in members] == [join["Channel"]]

        await ami.action({"Action": "Hangup", "Channel": join["Channel"]})
        await ami.wait_for(
            event_is("ConfbridgeLeave", Conference=room, Channel=join["Channel"]), timeout=LEAVE_TIMEOUT_S, since=since
        )
        await ami.wait_for(event_is("ConfbridgeEnd", Conference=room), timeout=LEAVE_TIMEOUT_S, since=since)
        assert await ami.confbridge_list(room) == []
