"""An RTP translator in front of every outbound SRTP session, so no (SSRC, index) is protected twice.

SRTP's keystream (AES-CM) and nonce (AES-GCM) are functions of the SSRC and the packet index
(ROC || SEQ). A local sender that repeats a sequence number (a looping pcap, a restarted
softphone, a new SSRC that starts where an old one was) would make a naive relay encrypt two
payloads under one keystream: a two-time pad, and under GCM the loss of the authentication key.
So the relays never protect what the local side sent as it is: every outbound stream of a call
leaves under one SSRC of the relay's own choosing, with an index that only grows. A forward
step in the input's sequence keeps its size (the receiver still sees losses); anything else (a
repeat, a step back, a jump, another input SSRC) is a restart: the index moves on by one, the
timestamp continues from the last one sent, and the marker bit tells the receiver that a new
talkspurt begins. RTCP from the same sender gets the same SSRC and timestamp offset, so SR/RR
keep describing the stream the receiver actually gets.

The outbound libsrtp sessions refuse repeats as well (stc_wire.srtp): this class makes them
never happen, libsrtp makes sure of it.
"""

from __future__ import annotations

import secrets
import struct

from .srtp import DropReason, SrtpDropped, SrtpProtector

__all__ = ["OutboundTranslator", "SrtpSender", "rewrite_rtcp_sender"]

_M32 = 0xFFFFFFFF
# Forward steps up to this many packets keep their size (about 20 s at 50 packets/s); a bigger
# one is a restart. Well below 2^15, so libsrtp's index estimation never guesses a wrong ROC.
MAX_FORWARD_STEP = 1000
_DEFAULT_TS_STEP = 160  # 20 ms at 8 kHz, until the stream shows its own step

_SR, _RR, _SDES, _BYE = 200, 201, 202, 203
_HEADER = struct.Struct("!BBHII")  # V/P/X/CC, M/PT, sequence, timestamp, SSRC


def _malformed(what: str) -> SrtpDropped:
    return SrtpDropped(DropReason.MALFORMED, what)


class OutboundTranslator:
    """Rewrites one direction's plain RTP/RTCP so its output stream's index strictly increases.

    `ssrc` is the output SSRC (random by default); `first_seq` where the output index starts.
    """

    __slots__ = ("ssrc", "_ssrc_bytes", "index", "_in_ssrc", "_in_seq", "_in_ts", "_ts_offset",
                 "_last_out_ts", "_ts_step", "restarts")

    def __init__(self, ssrc: int | None = None, first_seq: int | None = None) -> None:
        self.ssrc = secrets.randbits(32) if ssrc is None else ssrc & _M32
        self._ssrc_bytes = self.ssrc.to_bytes(4, "big")
        # Start low in the first 2^15 so the first ROC wrap is far away and unambiguous.
        self.index = (secrets.randbits(15) if first_seq is None else first_seq) - 1  # last index sent
        self._in_ssrc = -1  # no input yet
        self._in_seq = 0
        self._in_ts = 0
        self._ts_offset = 0
        self._last_out_ts = 0
        self._ts_step = _DEFAULT_TS_STEP
        self.restarts = 0  # inputs that were not a plain forward step (for tests and counters)

    def rtp(self, packet: bytes) -> bytes:
        """The packet as it leaves: our SSRC, the next index, the timestamp on our time line."""
        return self.rtp_header(packet) + packet[12:]

    def rtp_header(self, packet: bytes) -> bytes:
        """Only the 12 header bytes `rtp` would put in front of `packet[12:]` (the hot path
        writes them straight into libsrtp's buffer). Advances the stream like `rtp`."""
        if len(packet) < 12 or packet[0] & 0xC0 != 0x80:
            raise _malformed("not an RTP version 2 packet")
        first, second, seq, ts, ssrc = _HEADER.unpack_from(packet)
        marker = 0
        if ssrc == self._in_ssrc:
            step = (seq - self._in_seq) & 0xFFFF
            if 0 < step <= MAX_FORWARD_STEP:
                self.index += step
                if step == 1:
                    ts_step = (ts - self._in_ts) & _M32
                    if 0 < ts_step < 0x10000:
                        self._ts_step = ts_step
            else:
                marker = self._restart(ts)
        elif self._in_ssrc < 0:
            self.index += 1
            self._ts_offset = 0  # the first input keeps its time line
        else:
            marker = self._restart(ts)
        self._in_ssrc, self._in_seq, self._in_ts = ssrc, seq, ts
        out_ts = (ts + self._ts_offset) & _M32
        self._last_out_ts = out_ts
        return _HEADER.pack(first, second | marker, self.index & 0xFFFF, out_ts, self.ssrc)

    def _restart(self, ts: int) -> int:
        self.restarts += 1
        self.index += 1
        self._ts_offset = (self._last_out_ts + self._ts_step - ts) & _M32
        return 0x80

    def rtcp(self, packet: bytes) -> bytes:
        """RTCP from the same sender, its SSRCs and SR timestamp on the output stream."""
        return rewrite_rtcp_sender(packet, self._ssrc_bytes, self._ts_offset)


def rewrite_rtcp_sender(packet: bytes, ssrc: bytes, ts_offset: int) -> bytes:
    """A compound RTCP packet with every sender SSRC replaced by `ssrc` and SR's RTP time shifted.

    Sender SSRCs: the first word after the header of every packet type, every SDES chunk and
    every BYE source. Report blocks (about the streams this sender receives) are left alone.
    Raises SrtpDropped(MALFORMED) for anything that does not parse as RTCP.
    """
    out = bytearray(packet)
    offset = 0
    size = len(out)
    if size < 8:
        raise _malformed("RTCP shorter than a header and SSRC")
    while offset < size:
        if size - offset < 4 or out[offset] & 0xC0 != 0x80:
            raise _malformed("not an RTCP version 2 packet")
        count = out[offset] & 0x1F
        kind = out[offset + 1]
        length = (int.from_bytes(out[offset + 2:offset + 4], "big") + 1) * 4
        end = offset + length
        if end > size:
            raise _malformed("RTCP length runs past the datagram")
        body = offset + 4
        if kind == _SDES:
            body = _rewrite_sdes(out, body, end, count, ssrc)
        elif kind == _BYE:
            if body + 4 * count > end:
                raise _malformed("RTCP BYE shorter than its source count")
            for i in range(count):
                out[body + 4 * i:body + 4 * i + 4] = ssrc
        elif length >= 8:
            out[body:body + 4] = ssrc
            if kind == _SR:
                if length < 28:
                    raise _malformed("RTCP SR shorter than its sender info")
                ts = (int.from_bytes(out[offset + 16:offset + 20], "big") + ts_offset) & _M32
                out[offset + 16:offset + 20] = ts.to_bytes(4, "big")
        offset = end
    return bytes(out)


def _rewrite_sdes(out: bytearray, position: int, end: int, chunks: int, ssrc: bytes) -> int:
    for _ in range(chunks):
        if position + 4 > end:
            raise _malformed("RTCP SDES chunk past its packet")
        out[position:position + 4] = ssrc
        position += 4
        while True:  # items until a zero type, then padding to the next 32-bit boundary
            if position >= end:  # some senders end the last chunk with the packet
                return position
            if out[position] == 0:
                position += 1
                position += (-position) % 4  # chunks are 32-bit aligned
                break
            if position + 2 > end or position + 2 + out[position + 1] > end:
                raise _malformed("RTCP SDES item past its packet")
            position += 2 + out[position + 1]
    return position


class SrtpSender:
    """One direction's outbound SRTP/SRTCP: the translator, then libsrtp (which refuses repeats)."""

    __slots__ = ("translator", "protector", "protect_rtp")

    def __init__(self, protector: SrtpProtector, translator: OutboundTranslator | None = None) -> None:
        self.protector = protector
        self.translator = translator = translator or OutboundTranslator()
        # One closure per packet instead of three method layers: the translated header goes
        # straight into libsrtp's buffer in front of the payload.
        with_header = protector.protect_rtp_with_header
        rtp_header = translator.rtp_header
        if with_header is not None:
            def protect_rtp(packet: bytes) -> bytes:
                return with_header(rtp_header(packet), packet)  # type: ignore[misc]
        else:  # pragma: no cover - pylibsrtp without the direct path
            protect, rtp = protector.protect_rtp, translator.rtp

            def protect_rtp(packet: bytes) -> bytes:
                return protect(rtp(packet))
        self.protect_rtp = protect_rtp

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self.protector.protect_rtcp(self.translator.rtcp(packet))
