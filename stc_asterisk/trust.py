"""What the tunnel server trusts right now, as the admin endpoints and metrics see it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


def in_grace(next_update: datetime | None, now: datetime, grace: float) -> bool:
    """Past the CRL's nextUpdate, but within the configured time it is still used."""
    return next_update is not None and grace > 0 and next_update < now <= next_update + timedelta(seconds=grace)


@dataclass(frozen=True)
class TrustStatus:
    """The server certificate's expiry and the CRL in use: when it was issued, when it must be
    replaced, when stc-server last loaded it and whether refreshing it currently fails."""

    certificate_not_after: datetime
    crl_next_update: datetime | None
    crl_last_update: datetime | None
    loaded_at: float  # time.time() of the last successful load
    refresh_error: str | None = None
    refresh_failures: int = 0
    fail_closed_after: float = 0.0  # seconds past nextUpdate during which the old CRL is still used

    def fail_closed_at(self) -> float | None:
        """The time.time() from which new clients are refused for want of a current CRL."""
        if self.crl_next_update is None:
            return None
        return self.crl_next_update.timestamp() + self.fail_closed_after

    def failed_closed(self, now: float) -> bool:
        moment = self.fail_closed_at()
        return moment is not None and now >= moment

    def crl_current(self, now: float) -> bool:
        """Not failed closed: the CRL (or the grace after its nextUpdate) still covers `now`."""
        return not self.failed_closed(now)
