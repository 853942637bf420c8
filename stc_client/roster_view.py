"""The client's side of rosters on one tunnel: verify roster and talking updates, resync when out of step.

The server sends each client deltas against the roster version it last sent it
(stc_wire.roster_sync). When one does not fit what this client holds (a push it ignored while
between calls, or one it refused), the client asks for the full roster; at most once a second
per room, so a server that keeps sending what does not verify cannot make it loop.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Collection

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from stc_wire.roster import Roster, RosterRejected, RosterVerifier
from stc_wire.roster_sync import (
    RosterOutOfStep,
    RosterReceiver,
    TalkingUpdate,
    message_kind,
    peek_update,
    resync_request,
)

RESYNC_SPACING = 1.0  # seconds between two resync requests for one room


@dataclass(frozen=True)
class Received:
    """What one ROSTER frame gave: a roster to show (and the talking update it came from, if it
    was one), a refusal to show, and/or a resync request to send to the server."""

    roster: Roster | None = None
    talking: TalkingUpdate | None = None
    rejected: RosterRejected | None = None
    resync: bytes | None = None


class ClientRosters:
    def __init__(self, certificate: x509.Certificate, *, max_age: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # server_id is what the server puts in every roster: its certificate's SHA-256.
        server_id = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
        self.receiver = RosterReceiver(RosterVerifier.from_certificate(certificate, server_id=server_id,
                                                                        max_age=max_age))
        self._clock = clock
        self._asked: dict[str, float] = {}
        self.out_of_step = 0  # updates that did not fit what this client held (each answered by a resync)

    def receive(self, data: bytes, *, rooms: Collection[str]) -> Received:
        """Check one ROSTER frame for the rooms our calls are in."""
        kind = message_kind(data)
        try:
            if kind == "roster":
                return Received(roster=self.receiver.accept(data, rooms=rooms))
            if kind == "talking":
                update, roster = self.receiver.accept_talking(data, rooms=rooms)
                return Received(roster=roster, talking=update)
            raise RosterRejected("malformed", f"not a roster or talking update ({bytes(data[:4])!r})")
        except RosterOutOfStep as gap:
            self.out_of_step += 1
            return Received(resync=self._ask(gap.room, gap.have))
        except RosterRejected as exc:
            peeked = peek_update(data) if kind == "roster" else None
            if peeked is None or peeked[0] not in rooms:
                return Received(rejected=exc)
            room, version, base = peeked
            if base is None and exc.reason == "stale-version" and version == self.receiver.held_version(room):
                return Received()  # the answer to a resync we did not need after all: we hold that version
            # A delta that does not verify may be built on a copy that went wrong: get the whole roster
            # (never for a full roster, which would only fail again).
            wanted = base is not None and exc.reason in ("bad-signature", "malformed")
            return Received(rejected=exc, resync=self._ask(room, self.receiver.held_version(room)) if wanted else None)

    def _ask(self, room: str | None, have: int | None) -> bytes | None:
        if room is None:
            return None
        now = self._clock()
        if now - self._asked.get(room, float("-inf")) < RESYNC_SPACING:
            return None
        self._asked[room] = now
        return resync_request(room, have)
