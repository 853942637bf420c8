"""One wan port for every call's SRTP/SRTCP: which call a datagram is for, by its source address.

Single-port SFUs do it this way: a source address already bound to a call goes straight to that
call's path (RTP or RTCP by the packet type, RFC 5761 section 4). A source nobody knows is bound
only by a packet that authenticates under some call's keys, so a spoofed source never steers a
call's media (a forged packet fails SRTP; a replayed one fails the replay check). Which keys to
try is bounded per packet (`max_tries`): first the call whose SSRC it carries (SSRCs are in
clear and learnt from authentic packets: a NAT rebinding is found at once), then calls not yet
latched, then latched ones (a rebinding under an SSRC not learnt yet), each in turn across
packets so every call is reached. A refused packet is counted, never forwarded. Pure: the
relay's socket shell feeds `handle(datagram, source)`.
"""

from __future__ import annotations

import logging

from .rtp import Address, InboundPath, RelayStats
from .srtp import SrtpDropped

__all__ = ["SourceDemux"]

logger = logging.getLogger(__name__)

_RTP, _RTCP = 0, 1
_MIN_SRTP = 12 + 4  # a header and the shortest tag: anything shorter cannot authenticate


def is_rtcp(packet: bytes) -> bool:
    """RFC 5761 section 4: RTCP packet types 192-223 in the second byte, RTP payload types never."""
    return len(packet) > 1 and 192 <= packet[1] <= 223


class _Entry:
    """One call as the demultiplexer sees it."""

    __slots__ = ("key", "paths", "sources", "ssrcs")

    def __init__(self, key: str, rtp_in: InboundPath, rtcp_in: InboundPath) -> None:
        self.key = key
        self.paths = (rtp_in, rtcp_in)
        self.sources: list[Address | None] = [None, None]  # where its RTP / RTCP last came from
        self.ssrcs: set[int] = set()


class SourceDemux:
    """Datagrams of one shared socket to their calls' inbound paths.

    `stats` counts what belongs to no call: `unknown_source_drops` (refused: authenticated under
    none of the keys tried) and `malformed_drops` (too short or not RTP/RTCP version 2).
    """

    def __init__(self, *, max_tries: int = 8) -> None:
        if max_tries < 2:
            raise ValueError("max_tries must be at least 2")
        self.max_tries = max_tries
        self.stats = RelayStats()
        self.tries = 0  # unprotect attempts spent on unknown sources (a bound on work under flood)
        self._by_source: dict[Address, _Entry] = {}
        self._by_ssrc: dict[int, _Entry] = {}
        self._entries: dict[str, _Entry] = {}
        self._all: list[_Entry] = []
        self._pending: tuple[list[_Entry], list[_Entry]] = ([], [])  # not latched yet, per kind
        self._turn = [0, 0, 0]  # where the next rotation starts: pending RTP, pending RTCP, all

    def add(self, key: str, rtp_in: InboundPath, rtcp_in: InboundPath) -> None:
        if key in self._entries:
            raise ValueError(f"call {key!r} is already in the demultiplexer")
        entry = _Entry(key, rtp_in, rtcp_in)
        self._entries[key] = entry
        self._all.append(entry)
        self._pending[_RTP].append(entry)
        self._pending[_RTCP].append(entry)

    def remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for source in entry.sources:
            if source is not None and self._by_source.get(source) is entry:
                del self._by_source[source]
        for ssrc in entry.ssrcs:
            if self._by_ssrc.get(ssrc) is entry:
                del self._by_ssrc[ssrc]
        for entries in (self._all, *self._pending):
            if entry in entries:
                entries.remove(entry)

    @property
    def bound_sources(self) -> int:
        return len(self._by_source)

    def handle(self, data: bytes, source: Address) -> None:
        source = source[:2]  # IPv6 sources carry flow info and scope id as well
        entry = self._by_source.get(source)
        kind = _RTCP if len(data) > 1 and 192 <= data[1] <= 223 else _RTP
        if entry is not None:
            entry.paths[kind].handle(data, source)
            return
        if len(data) < _MIN_SRTP or data[0] & 0xC0 != 0x80:
            self.stats.malformed_drops += 1
            return
        ssrc = int.from_bytes(data[4:8] if kind == _RTCP else data[8:12], "big")
        for candidate in self._candidates(ssrc, kind):
            path = candidate.paths[kind]
            unprotect = path.unprotect
            if unprotect is None:
                continue
            self.tries += 1
            try:
                plain = unprotect(data)
            except SrtpDropped:
                continue
            self._bind(candidate, kind, source, ssrc)
            path.deliver(plain, len(data), source)
            return
        self.stats.unknown_source_drops += 1

    def _candidates(self, ssrc: int, kind: int) -> list[_Entry]:
        """At most `max_tries` calls to try, the likeliest first, different ones next time."""
        chosen: list[_Entry] = []
        known = self._by_ssrc.get(ssrc)
        if known is not None:
            chosen.append(known)
        budget = self.max_tries - len(chosen)
        for turn, entries, share in ((kind, self._pending[kind], (budget + 1) // 2), (2, self._all, budget)):
            if not entries:
                continue
            start = self._turn[turn] % len(entries)
            taken = 0
            for i in range(len(entries)):
                if taken >= share or len(chosen) >= self.max_tries:
                    break
                entry = entries[(start + i) % len(entries)]
                if entry not in chosen:
                    chosen.append(entry)
                    taken += 1
            self._turn[turn] = start + taken
        return chosen

    def _bind(self, entry: _Entry, kind: int, source: Address, ssrc: int) -> None:
        old = entry.sources[kind]
        if old is not None and old != entry.sources[1 - kind] and self._by_source.get(old) is entry:
            del self._by_source[old]  # rebinding: the old address may be someone else's soon
        entry.sources[kind] = source
        self._by_source[source] = entry
        entry.ssrcs.add(ssrc)
        self._by_ssrc[ssrc] = entry
        pending = self._pending[kind]
        if entry in pending:
            pending.remove(entry)
        logger.info("single port: call %s %s from %s:%s", entry.key, "RTCP" if kind else "RTP", source[0], source[1])
