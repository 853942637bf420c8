"""The single-port demultiplexer in memory: real SRTP sessions, no sockets."""

from __future__ import annotations

import os
import struct

import pytest

from stc_wire.demux import SourceDemux, is_rtcp
from stc_wire.rtp import InboundPath, PlainPeer, RelayStats, SecurePeer
from stc_wire.srtp import SrtpProfile, SrtpProtector, SrtpUnprotector

PROFILE = SrtpProfile.AES_CM_128_HMAC_SHA1_80
ASTERISK = ("127.0.0.1", 7000)


class Call:
    """One call's inbound paths with keys, what reached "Asterisk", and a client that protects."""

    def __init__(self, demux: SourceDemux, key: str, ssrc: int) -> None:
        srtp, srtcp = os.urandom(PROFILE.master_length), os.urandom(PROFILE.master_length)
        self.client = SrtpProtector(PROFILE, srtp, srtcp)
        unprotector = SrtpUnprotector(PROFILE, srtp, srtcp)
        self.stats = RelayStats()
        self.delivered: list[tuple[bytes, tuple[str, int]]] = []
        self.rtp_peer = SecurePeer(latching=True, label=f"{key} RTP")
        self.rtcp_peer = SecurePeer(latching=True, label=f"{key} RTCP")
        plain = PlainPeer("127.0.0.1")
        plain.set_from_sdp(*ASTERISK)
        send = lambda packet, address: self.delivered.append((packet, address))  # noqa: E731
        self.rtp_in = InboundPath(send=send, secure_peer=self.rtp_peer, plain_peer=plain, stats=self.stats)
        self.rtcp_in = InboundPath(send=send, secure_peer=self.rtcp_peer, plain_peer=plain, stats=self.stats)
        self.rtp_in.unprotect = unprotector.unprotect_rtp
        self.rtcp_in.unprotect = unprotector.unprotect_rtcp
        self.ssrc = ssrc
        self.seq = 0
        demux.add(key, self.rtp_in, self.rtcp_in)

    def rtp(self) -> bytes:
        self.seq += 1
        return self.client.protect_rtp(struct.pack("!BBHII", 0x80, 8, self.seq, self.seq * 160, self.ssrc) + os.urandom(160))

    def rtcp(self) -> bytes:
        return self.client.protect_rtcp(struct.pack("!BBHI", 0x80, 201, 1, self.ssrc))


def test_a_new_source_is_bound_by_an_authentic_packet_and_rtcp_goes_by_packet_type() -> None:
    demux = SourceDemux()
    a, b = Call(demux, "a", 1), Call(demux, "b", 2)
    demux.handle(b.rtp(), ("10.0.0.2", 5000))
    demux.handle(a.rtp(), ("10.0.0.1", 4000))
    demux.handle(a.rtcp(), ("10.0.0.1", 4001))  # its RTCP from another port of the same client
    assert [packet[1] for packet, _ in a.delivered] == [8, 201] and len(b.delivered) == 1
    assert a.rtp_peer.address == ("10.0.0.1", 4000) and a.rtcp_peer.address == ("10.0.0.1", 4001)
    demux.handle(a.rtcp(), ("10.0.0.1", 4000))  # RFC 5761: RTCP on the RTP source goes to RTCP
    assert a.delivered[-1][0][1] == 201 and a.stats.drops == 0
    assert demux.stats.unknown_source_drops == 0 and demux.bound_sources == 3
    assert is_rtcp(a.rtcp()) and not is_rtcp(a.rtp())


def test_a_spoofed_source_is_refused_counted_and_moves_nothing() -> None:
    demux = SourceDemux()
    a = Call(demux, "a", 1)
    genuine = a.rtp()
    demux.handle(genuine, ("10.0.0.1", 4000))
    forged = bytearray(a.rtp())
    forged[20] ^= 0xFF
    demux.handle(bytes(forged), ("6.6.6.6", 666))  # a forgery under a's SSRC
    demux.handle(genuine, ("6.6.6.6", 666))  # a replay of a's real packet from elsewhere
    demux.handle(b"\x80\x08" + os.urandom(180), ("6.6.6.6", 667))  # noise
    demux.handle(b"\x00" * 10, ("6.6.6.6", 668))  # not even RTP
    assert demux.stats.unknown_source_drops == 3 and demux.stats.malformed_drops == 1
    assert a.rtp_peer.address == ("10.0.0.1", 4000) and len(a.delivered) == 1
    assert demux.bound_sources == 1


def test_a_nat_rebinding_is_relatched_and_the_old_source_freed() -> None:
    demux = SourceDemux()
    a = Call(demux, "a", 1)
    demux.handle(a.rtp(), ("10.0.0.1", 4000))
    demux.handle(a.rtp(), ("10.0.0.1", 4444))  # the NAT gave the client a new port
    assert a.rtp_peer.address == ("10.0.0.1", 4444) and len(a.delivered) == 2
    assert demux.bound_sources == 1  # the old address is no longer a's
    demux.handle(a.rtp(), ("10.0.0.1", 4000))  # and it may come back (authentic again)
    assert a.rtp_peer.address == ("10.0.0.1", 4000)


def test_work_per_unknown_packet_is_bounded_yet_every_pending_call_is_reached() -> None:
    demux = SourceDemux(max_tries=4)
    calls = [Call(demux, f"c{i}", 100 + i) for i in range(40)]
    last = calls[-1]
    for attempt in range(40):
        before = demux.tries
        demux.handle(b"\x80\x08" + os.urandom(180), ("6.6.6.6", 1000 + attempt))
        assert demux.tries - before <= 4
    assert demux.stats.unknown_source_drops == 40
    for _ in range(20):  # the last of 40 pending calls latches within a few packets of its own
        demux.handle(last.rtp(), ("10.0.0.40", 4000))
        if last.delivered:
            break
    assert last.rtp_peer.address == ("10.0.0.40", 4000)
    assert all(not c.delivered for c in calls[:-1])


def test_a_removed_call_forgets_its_sources() -> None:
    demux = SourceDemux()
    a = Call(demux, "a", 1)
    demux.handle(a.rtp(), ("10.0.0.1", 4000))
    demux.remove("a")
    demux.handle(a.rtp(), ("10.0.0.1", 4000))
    assert demux.bound_sources == 0 and demux.stats.unknown_source_drops == 1 and len(a.delivered) == 1
    with pytest.raises(ValueError):
        SourceDemux(max_tries=1)
