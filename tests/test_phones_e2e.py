"""What other softphones do, through stc against real Asterisk 22: a late offer (INVITE without
SDP) and a phone that requires rtcp-mux (RFC 5761), each heard at a listener."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from asterisk_lab import AmiClient, event_is
from capture import Capture
from sipp import SCENARIO_DIR, Codec, SippCaller
from stack import room_caller, stc_stack, wait_until
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
ROOM = "1000"
UAC_LATE_OFFER = SCENARIO_DIR / "uac_late_offer.xml"
UAC_RTCP_MUX = SCENARIO_DIR / "uac_rtcp_mux.xml"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


caller = room_caller


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


async def test_ipv6_tunnel_srtp_and_softphone(asterisk_lab: str, pki: TestPki,
                                              sipp_callers: Callable[..., SippCaller]) -> None:
    """Tunnel and SRTP over IPv6 (::1), and a softphone speaking IPv6 SIP with `c=IN IP6 ::1` SDP;
    Asterisk's side stays IPv4. The talker is heard by an IPv4 listener."""
    async with stc_stack(pki, listen_host="::1", wan_host="::1") as stack, AmiClient() as ami:
        alice = await stack.add_client("alice", server_host="::1", sip_host="::1")
        await stack.add_client("bob", server_host="::1")
        assert alice.tunnel is not None
        since = ami.mark()
        listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=10000)
        listener.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        talker = sipp_callers(target_host="::1", target_port=stack.sip_port("alice"), caller="alice",
                              caller_name="Alice", service=ROOM, codec=Codec.PCMA, play_audio=True,
                              hold_ms=8000, local_ip="::1", timeout_s=60)
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener, \
                Capture("ip6 and host ::1", interface="lo") as on_v6:
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            for c in (talker, listener):
                assert await c.wait_async(30) == 0, c.describe()
        heard = [p for p in at_listener.packets() if len(p.payload) > 12 and len(set(p.payload[12:])) > 12]
        v6_frames = on_v6.path.stat().st_size
        at_listener.cleanup()
        on_v6.cleanup()
        assert len(heard) > 50, f"the listener received only {len(heard)} speech packets"
        assert v6_frames > 100_000, "the tunnel and SRTP did not run over IPv6"
        assert stack.server.media.stats().inbound_packets > 100


async def test_sip_over_tcp_on_the_clients_listener(asterisk_lab: str, pki: TestPki,
                                                     sipp_callers: Callable[..., SippCaller]) -> None:
    """A softphone that speaks SIP over TCP (SIPp -t t1) to stc-client: the call, its audio and
    its BYE work as over UDP; Asterisk's side stays UDP."""
    async with stc_stack(pki, ("alice", "bob")) as stack, AmiClient() as ami:
        since = ami.mark()
        listener = caller(sipp_callers, stack, "bob", codec=Codec.PCMA, hold_ms=10000)
        listener.start()
        await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 1, timeout=20, since=since)
        talker = caller(sipp_callers, stack, "alice", codec=Codec.PCMA, play_audio=True, hold_ms=8000,
                        extra_args=("-t", "t1"))
        with Capture(f"udp and dst host 127.0.0.1 and dst port {listener.media_port}") as at_listener, \
                Capture(f"tcp and port {stack.sip_port('alice')}") as sip_tcp:
            talker.start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=ROOM), 2, timeout=20, since=since)
            assert [c for c in stack.clients["alice"].softphone.calls.values()
                    if c.softphone_address in stack.clients["alice"].softphone._tcp]  # noqa: SLF001
            for c in (talker, listener):
                assert await c.wait_async(30) == 0, c.describe()
        heard = [p for p in at_listener.packets() if len(p.payload) > 12 and len(set(p.payload[12:])) > 12]
        tcp_sip = b"".join(p.payload for p in sip_tcp.packets())
        at_listener.cleanup()
        sip_tcp.cleanup()
        assert b"INVITE sip:" in tcp_sip and b"SIP/2.0 200 OK" in tcp_sip and b"BYE sip:" in tcp_sip
        assert b"SIP/2.0/TCP" in tcp_sip and b"transport=tcp" in tcp_sip  # our Contact brings it back over TCP
        assert len(heard) > 50, f"the listener received only {len(heard)} speech packets"
        await wait_until(lambda: not stack.clients["alice"].softphone._tcp, 5, "TCP connection closed")  # noqa: SLF001
