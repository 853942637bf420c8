"""What one peer may hold on the server, counted in memory (no I/O here; the shells call in).

Every refusal is counted by reason and logged at most once per interval per reason, with how many
were not logged since, so a flood of bad input costs a few lines, not one line per attempt.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .config import LimitSettings

K = TypeVar("K")
V = TypeVar("V")
Clock = Callable[[], float]


class RefusalLog:
    """Counts refusals by reason; logs the first of each reason, then at most one line per `interval`."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter[logging.Logger], interval: float = 10.0,
                 clock: Clock = time.monotonic) -> None:
        self.counts: Counter[str] = Counter()
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def refuse(self, reason: str, message: str, *args: object, level: int = logging.WARNING) -> bool:
        """Count one refusal; returns True if it was logged."""
        self.counts[reason] += 1
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._quiet[reason] += 1
            return False
        self._last[reason] = now
        quiet = self._quiet.pop(reason, 0)
        if quiet:
            message += f" ({quiet} more {reason} not logged in the last {self._interval:g} s)"
        self._log.log(level, message, *args, stacklevel=2)
        return True


class BoundedDict(OrderedDict[K, V]):
    """A dict that forgets its oldest entries beyond `limit` (memory a peer can fill stays bounded)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
        super().__setitem__(key, value)
        while len(self) > self.limit:
            self.popitem(last=False)


@dataclass(frozen=True)
class OfferLimits:
    calls_per_tunnel: int = 4
    offers_per_call: int = 4
    remembered_calls: int = 64  # refused offers and per-call offer counts kept per tunnel


class OfferGate:
    """Decides whether one tunnel's MEDIA_OFFER may open media: returns None or the refusal reason."""

    def __init__(self, limits: OfferLimits) -> None:
        self.limits = limits
        self._offers: BoundedDict[str, int] = BoundedDict(limits.remembered_calls)

    def check(self, call_id: str, open_calls: int) -> str | None:
        seen = self._offers.get(call_id, 0) + 1
        self._offers[call_id] = seen
        if seen > self.limits.offers_per_call:
            return f"more than {self.limits.offers_per_call} media offers for this call"
        if open_calls >= self.limits.calls_per_tunnel:
            return f"at most {self.limits.calls_per_tunnel} calls at once on one tunnel"
        return None


class TokenBook(Generic[V]):
    """Admission tokens: an unused token expires after `ttl` seconds; a used one lives until released.

    `key` names what the token is for (tunnel and Call-ID), so a retransmitted INVITE gets the
    token it already has instead of a new one.
    """

    def __init__(self, ttl: float, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._grants: dict[str, tuple[str, V]] = {}
        self._by_key: dict[str, str] = {}
        self._unused: OrderedDict[str, float] = OrderedDict()  # token -> expiry, oldest first

    def __len__(self) -> int:
        return len(self._grants)

    def issue(self, key: str, token: str, grant: V) -> str:
        """Record `token` for `key` unless `key` already holds a live one; returns the token to use."""
        self.expire()
        held = self._by_key.get(key)
        if held is not None:
            return held
        self._grants[token] = (key, grant)
        self._by_key[key] = token
        self._unused[token] = self._clock() + self.ttl
        return token

    def token_for(self, key: str) -> str | None:
        """The live token `key` holds, if any."""
        self.expire()
        return self._by_key.get(key)

    def use(self, token: str) -> V | None:
        """The grant of a live token (it no longer expires), or None."""
        self.expire()
        entry = self._grants.get(token)
        if entry is None:
            return None
        self._unused.pop(token, None)
        return entry[1]

    def release(self, token: str) -> None:
        entry = self._grants.pop(token, None)
        self._unused.pop(token, None)
        if entry is not None and self._by_key.get(entry[0]) == token:
            del self._by_key[entry[0]]

    def expire(self) -> int:
        """Forget unused tokens past their time; returns how many."""
        now = self._clock()
        gone = 0
        while self._unused:
            token, deadline = next(iter(self._unused.items()))
            if deadline > now:
                break
            self.release(token)
            gone += 1
        return gone


class SourceGate:
    """Connections in progress (for instance, TLS handshakes), in total and per source address."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total_limit = total
        self.per_source_limit = per_source
        self.total = 0
        self._by_source: Counter[str] = Counter()

    def enter(self, source: str) -> str | None:
        """Count one more from `source`; None, or why not (then nothing was counted)."""
        if self.total >= self.total_limit:
            return f"{self.total} connections already in progress"
        if self._by_source[source] >= self.per_source_limit:
            return f"{self._by_source[source]} connections from {source} already in progress"
        self.total += 1
        self._by_source[source] += 1
        return None

    def leave(self, source: str) -> None:
        if self._by_source[source] <= 0:
            return
        self.total -= 1
        self._by_source[source] -= 1
        if not self._by_source[source]:
            del self._by_source[source]

    def count(self, source: str) -> int:
        return self._by_source.get(source, 0)


class Strikes:
    """Counts bad frames from one peer; `hit()` says when the peer has had too many."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0

    def hit(self) -> bool:
        self.count += 1
        return self.count > self.limit


class TunnelGuard:
    """One tunnel's limits (media offers, malformed SIP) and its refusal log."""

    def __init__(self, settings: LimitSettings, logger: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
        self.offers = OfferGate(OfferLimits(settings.calls_per_tunnel, settings.media_offers_per_call,
                                            settings.remembered_calls))
        self.malformed = Strikes(settings.malformed_sip_per_tunnel)
        self.refusals = RefusalLog(logger, settings.refusal_log_interval)
