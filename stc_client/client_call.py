"""One call of the softphone's, as stc-client keeps it, and the names its modules share."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from stc_wire import messages as wire
from stc_wire.media_keys import KeyAgreement
from stc_wire.sip import SipRequest
from stc_wire.srtp import SrtpProfile

from .dialog import CallDialog, UpstreamLeg
from .media import ClientCallPorts

Address = tuple[str, int]
DialogKey = tuple[str, str]  # (Call-ID, the softphone's tag)
MEMORY = 256  # ended calls and transactions remembered, at most


@dataclass
class ClientCall:
    call_id: str
    stream_id: str
    room: str
    agreement: KeyAgreement | None
    softphone_tag: str = ""  # the From tag of the softphone's INVITE
    softphone_address: Address = ("", 0)  # where its INVITE came from: everything for it goes there
    softphone_contact: str = ""  # the Request-URI of requests for the softphone
    invite: SipRequest | None = None  # as the softphone sent it (for a BYE on tunnel loss)
    to_header: str = ""
    confirmed: bool = False
    profile: SrtpProfile | None = None
    started: datetime | None = None
    ports: ClientCallPorts | None = None
    max_cseq: int = 0  # highest CSeq of the softphone's own requests in this dialog
    # Requests towards the softphone (Asterisk's, and our liveness probes) share one CSeq space:
    # ours are slotted in by shifting Asterisk's by `cseq_shift`, and their answers shifted back.
    cseq_shift: int = 0
    far_cseq: int = 0  # highest CSeq of Asterisk's requests in this dialog (unshifted)
    shifted: OrderedDict[int, int] = field(default_factory=OrderedDict)  # sent CSeq -> Asterisk's
    probe_cseq: int | None = None  # our OPTIONS in flight
    probe_sent_at: float = 0.0
    alive_at: float = 0.0  # loop time of the softphone's last sign of life (media, SIP)
    media_seen: int = -1  # softphone packets counted at the last check
    rtcp_mux: bool = False  # the softphone offered RTCP on its RTP port (RFC 5761) and got it
    end_reason: str = ""
    dialog: CallDialog = field(default_factory=CallDialog)
    leg: UpstreamLeg | None = None  # after a rejoin: the dialog upstream (None: the softphone's own)
    phone_sdp: bytes = b""  # the softphone's latest SDP (offer or answer): what a rejoin offers
    rejoin: asyncio.Task[None] | None = None
    last_gap: float | None = None  # seconds the last rejoin took, from the loss to the 2xx
    in_room_as: str = ""  # the upstream Call-ID of the leg last answered: what a rejoin replaces
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # a rejoin attempt ended, or the leg was lost

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.softphone_tag)

    @property
    def upstream_call_id(self) -> str:
        """The Call-ID the server and Asterisk know this call by (what media keys are bound to)."""
        return self.leg.call_id if self.leg is not None else self.call_id


SendToServer = Callable[[wire.Message], Awaitable[None]]


def quoted(text: str) -> str:
    """`text` made fit for a quoted SIP header value (a Reason's or a Warning's text)."""
    return "".join(ch for ch in text if ch.isprintable() and ch not in '"\\')[:200]
