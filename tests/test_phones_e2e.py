"""What other softphones do, through stc against real Asterisk 22: a late offer (INVITE without
SDP) and a phone that requires rtcp-mux (RFC 5761), each heard at a listener."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asterisk_lab import AmiClient, event_is
from capture import Capture
from sipp import SCENARIO_DIR, Codec, SippCaller
from stack import Stack, stc_stack, wait_until
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
UAC_LATE_OFFER = SCENARIO_DIR / "uac_late_offer.xml"
UAC_RTCP_MUX = SCENARIO_DIR / "uac_rtcp_mux.xml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def caller(sipp_callers: Callable[..., SippCaller], stack: Stack, user: str, **kwargs: object) -> SippCaller:
    kwargs.setdefault("service", ROOM)
    kwargs.setdefault("timeout_s", 60)
    return sipp_callers(target_host="127.0.0.1", target_port=stack.sip_port(user), caller=user,
                        caller_name=user.title(), **kwargs)


@pytest.mark.parametrize("scenario", [UAC_LATE_OFFER, UAC_RTCP_MUX], ids=["late-offer", "rtcp-mux-required"])
async def test_talker_is_heard_through_stc(asterisk_lab: str, pki: TestPki,
                                           sipp_callers: Callable[..., SippCaller], scenario: object) -> None:
    """The scenario fails its call unless stc answers as it needs (an offer in the 200 OK for the
    late offer; a=rtcp-mux in the answer for the rtcp-mux phone); its audio must reach a listener."""
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=10000)
        listener.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        talker = caller(sipp_callers, stack, "alice", scenario=scenario, codec=Codec.PCMA, play_audio=True, hold_ms=8000)
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener:
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            await wait_until(lambda: stack.clients["alice"].state.light == "green", 10, "alice green")
            for c in (talker, listener):
                assert await c.wait_async(30) == 0, c.describe()
        heard = [p for p in at_listener.packets() if len(p.payload) > 12 and len(set(p.payload[12:])) > 12]
        at_listener.cleanup()
        assert len(heard) > 50, f"the listener received only {len(heard)} speech packets"
        stats = stack.server.media.stats()
        assert stats.auth_drops == stats.replay_drops == 0
