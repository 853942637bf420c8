"""The outbound RTP translator: no (SSRC, index) is ever protected twice, whatever the local side sends."""

from __future__ import annotations

import os
import struct

import pytest

from stc_wire.rtp import OutboundPath, PlainPeer, RelayStats, SecurePeer
from stc_wire.srtp import DropReason, SrtpDropped, SrtpProfile, SrtpProtector, SrtpUnprotector
from stc_wire.translator import MAX_FORWARD_STEP, OutboundTranslator, SrtpSender, rewrite_rtcp_sender


def rtp(seq: int, ts: int, ssrc: int, payload: bytes = b"\xd5" * 160, pt: int = 8) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def header(packet: bytes) -> tuple[int, int, int, int]:
    """(marker, seq, ts, ssrc)"""
    _, b1, seq, ts, ssrc = struct.unpack("!BBHII", packet[:12])
    return b1 >> 7, seq, ts, ssrc


def looping_sender(rounds: int, per_round: int = 50, ssrc: int = 0x1234) -> list[bytes]:
    """What SIPp's looping pcap does: the same sequence numbers every round, other payloads."""
    return [rtp(1000 + i, 8000 + 160 * i, ssrc, payload=bytes([r]) * 160)
            for r in range(rounds) for i in range(per_round)]


def extended(seqs: list[int]) -> list[int]:
    """Sequence numbers unrolled across wraps, as a receiver's ROC does."""
    out: list[int] = []
    roc = 0
    last = None
    for seq in seqs:
        if last is not None and seq < last and last - seq > 0x8000:
            roc += 1
        out.append(roc * 0x10000 + seq)
        last = seq
    return out


def test_a_looping_sender_leaves_with_strictly_growing_indexes() -> None:
    translator = OutboundTranslator(ssrc=0xABCDEF01, first_seq=65500)  # wraps during the run
    out = [header(translator.rtp(p)) for p in looping_sender(rounds=4)]
    assert {ssrc for _, _, _, ssrc in out} == {0xABCDEF01}
    indexes = extended([seq for _, seq, _, _ in out])
    assert indexes == list(range(indexes[0], indexes[0] + 200))  # one step per packet, no repeat
    # timestamps go on across each restart; the marker bit flags the new talkspurt
    stamps = [ts for _, _, ts, _ in out]
    assert all((b - a) % 2**32 == 160 for a, b in zip(stamps, stamps[1:]))
    markers = [i for i, (m, _, _, _) in enumerate(out) if m]
    assert markers == [50, 100, 150]
    assert translator.restarts == 3


def test_forward_gaps_are_kept_and_payload_untouched() -> None:
    translator = OutboundTranslator(ssrc=7, first_seq=10)
    first = translator.rtp(rtp(500, 0, 99, payload=b"abc"))
    after_gap = translator.rtp(rtp(503, 480, 99, payload=b"xyz"))
    assert header(first)[1:3] == (10, 0) and header(after_gap)[1:3] == (13, 480)
    assert after_gap[12:] == b"xyz" and header(after_gap)[0] == 0


@pytest.mark.parametrize("second", [
    rtp(100, 16000, 0x55),  # another SSRC
    rtp(99, 16000, 0x44),  # a step back
    rtp(100 + MAX_FORWARD_STEP + 1, 16000, 0x44),  # a jump too far forward
    rtp(100, 16000, 0x44),  # the same packet again
])
def test_anything_but_a_forward_step_is_a_restart(second: bytes) -> None:
    translator = OutboundTranslator(ssrc=1, first_seq=0)
    translator.rtp(rtp(100, 8000, 0x44))
    marker, seq, ts, ssrc = header(translator.rtp(second))
    assert (marker, seq, ts, ssrc) == (1, 1, 8160, 1)


def test_malformed_rtp_is_a_counted_drop() -> None:
    translator = OutboundTranslator()
    for bad in (b"", b"\x80" * 11, b"\x40" + bytes(20)):
        with pytest.raises(SrtpDropped) as raised:
            translator.rtp(bad)
        assert raised.value.reason is DropReason.MALFORMED


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_srtp_sender_never_reuses_keystream_and_the_receiver_takes_every_round(profile: SrtpProfile) -> None:
    master = os.urandom(profile.master_length)
    rtcp_master = os.urandom(profile.master_length)
    sender = SrtpSender(SrtpProtector(profile, master, rtcp_master))
    receiver = SrtpUnprotector(profile, master, rtcp_master)
    sent = looping_sender(rounds=5)
    wire = [sender.protect_rtp(p) for p in sent]
    seen = {(ssrc, idx) for idx, (_, _, _, ssrc) in
            zip(extended([header(w)[1] for w in wire]), (header(w) for w in wire))}
    assert len(seen) == len(wire)  # no (SSRC, index) twice on the wire
    plain = [receiver.unprotect_rtp(w) for w in wire]  # no replay drop: every round is heard
    assert [p[12:] for p in plain] == [p[12:] for p in sent]


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_outbound_sessions_refuse_a_repeat_themselves(profile: SrtpProfile) -> None:
    protector = SrtpProtector(profile, os.urandom(profile.master_length), os.urandom(profile.master_length))
    protector.protect_rtp(rtp(1, 0, 5, b"first"))
    with pytest.raises(SrtpDropped) as raised:
        protector.protect_rtp(rtp(1, 0, 5, b"other"))
    assert raised.value.reason is DropReason.REPLAY


def test_a_refused_repeat_is_counted_and_never_sent() -> None:
    profile = SrtpProfile.AES_CM_128_HMAC_SHA1_80
    protector = SrtpProtector(profile, os.urandom(30), os.urandom(30))
    sent: list[bytes] = []
    stats = RelayStats()
    path = OutboundPath(send=lambda p, a: sent.append(p), secure_peer=SecurePeer(latching=False, label="t", address=("h", 1)),
                        plain_peer=PlainPeer("127.0.0.1"), stats=stats)
    path.protect = protector.protect_rtp  # no translator: the libsrtp guard alone
    path.handle(rtp(1, 0, 5), ("127.0.0.1", 4000))
    path.handle(rtp(1, 0, 5, b"again"), ("127.0.0.1", 4000))
    assert len(sent) == 1 and stats.repeats_refused == 1 and stats.outbound_packets == 1


def sr(ssrc: int, rtp_ts: int) -> bytes:
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, 1, 2, rtp_ts, 10, 1000)


def rr_with_block(ssrc: int, about: int) -> bytes:
    return struct.pack("!BBHI", 0x81, 201, 7, ssrc) + struct.pack("!I", about) + bytes(20)


def sdes(ssrc: int, cname: bytes) -> bytes:
    chunk = struct.pack("!I", ssrc) + bytes([1, len(cname)]) + cname + b"\x00"
    chunk += bytes(-len(chunk) % 4)
    return struct.pack("!BBH", 0x81, 202, len(chunk) // 4) + chunk


def bye(*ssrcs: int) -> bytes:
    return struct.pack("!BBH", 0x80 | len(ssrcs), 203, len(ssrcs)) + b"".join(struct.pack("!I", s) for s in ssrcs)


def test_rtcp_sender_ssrcs_and_sr_time_follow_the_rtp_stream() -> None:
    translator = OutboundTranslator(ssrc=0xCAFE, first_seq=0)
    translator.rtp(rtp(1, 1000, 0x44))
    translator.rtp(rtp(2, 1160, 0x44))
    translator.rtp(rtp(1, 1000, 0x44))  # restart: timestamp offset now 320
    compound = sr(0x44, 5000) + rr_with_block(0x44, about=0x77) + sdes(0x44, b"alice@host") + bye(0x44)
    out = translator.rtcp(compound)
    assert len(out) == len(compound)
    assert struct.unpack("!I", out[4:8])[0] == 0xCAFE
    assert struct.unpack("!I", out[16:20])[0] == 5320
    rr = out[28:]
    assert struct.unpack("!II", rr[4:12]) == (0xCAFE, 0x77)  # the report block is about the far side: kept
    sd = rr[32:]
    assert struct.unpack("!I", sd[4:8])[0] == 0xCAFE and b"alice@host" in sd
    by = sd[len(sdes(0x44, b"alice@host")):]
    assert struct.unpack("!I", by[4:8])[0] == 0xCAFE


@pytest.mark.parametrize("bad", [
    b"",
    b"\x80\xc9\x00",
    b"\x80\xc9\x00\x05" + bytes(4),  # length runs past the datagram
    b"\x40\xc9\x00\x01" + bytes(4),  # version 1
    struct.pack("!BBHI", 0x80, 200, 1, 5),  # SR without sender info
    struct.pack("!BBH", 0x83, 203, 1) + bytes(4),  # BYE shorter than its count
    struct.pack("!BBHI", 0x81, 202, 2, 5) + b"\x01\x09ab",  # SDES item past its packet
])
def test_malformed_rtcp_is_refused(bad: bytes) -> None:
    with pytest.raises(SrtpDropped) as raised:
        rewrite_rtcp_sender(bad, b"\x00\x00\x00\x01", 0)
    assert raised.value.reason is DropReason.MALFORMED
