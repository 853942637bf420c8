"""Requests of our own towards the softphone: liveness probes, and the CSeq shift that makes room for them.

A confirmed call whose softphone falls silent (no media, no SIP) gets an in-dialog OPTIONS; one
that sends nothing and answers nothing for `softphone_timeout` seconds is hung up. Requests towards
the softphone (Asterisk's, our probes and BYEs) share one CSeq space: ours are slotted in by
shifting Asterisk's by `cseq_shift`. `SoftphoneLiveness` is a part of `SoftphoneProxy`, which holds
the state it uses and the methods named under TYPE_CHECKING below.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from stc_wire.sip import Header, SipRequest, SipResponse, make_request, make_via, new_branch

from .client_call import Address, ClientCall, DialogKey
from .client_call import quoted as _quoted
from .media import ClientMedia

log = logging.getLogger(__name__)


class SoftphoneLiveness:
    """The liveness methods of SoftphoneProxy; the attributes below are its state, set in its __init__."""

    host: str
    port: int
    media: ClientMedia
    softphone_timeout: float
    calls: dict[DialogKey, ClientCall]

    if TYPE_CHECKING:  # the rest of SoftphoneProxy's (softphone.py)
        def _find(self, call_id: str, *tags: str | None) -> ClientCall | None: ...
        def _end_call(self, call: ClientCall, why: str) -> None: ...
        async def _hang_up_towards_server(self, call: ClientCall, why: str) -> None: ...
        def _to_softphone(self, data: bytes, addr: Address) -> None: ...
        def _via_transport(self, addr: Address) -> str: ...

    async def _watch_softphones(self) -> None:
        """Probe a confirmed call's softphone once it falls silent; hang up the ones that are gone."""
        timeout = self.softphone_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(timeout / 10, 3.0))
            now = loop.time()
            for call in list(self.calls.values()):
                if not call.confirmed:
                    continue
                try:
                    stats = self.media.stats(call.stream_id)
                except KeyError:
                    continue
                seen = stats.outbound_packets  # RTP and RTCP the softphone sent
                if seen != call.media_seen:
                    call.media_seen = seen
                    call.alive_at = now
                silent = now - call.alive_at
                if silent >= timeout:
                    log.warning("call %s: the softphone sent nothing and answered no OPTIONS for %.0f s: "
                                "hanging up", call.call_id, silent)
                    await self._hang_up_towards_server(call, "softphone gone")
                    self._end_call(call, f"your softphone stopped answering for {silent:.0f} s")
                elif silent >= timeout / 3 and (call.probe_cseq is None or now - call.probe_sent_at >= timeout / 6):
                    self._probe(call, now)

    def _probe(self, call: ClientCall, now: float) -> None:
        """An in-dialog OPTIONS to the softphone; its answer is a sign of life."""
        call.cseq_shift += 1
        call.probe_cseq = probe_cseq = call.far_cseq + call.cseq_shift
        call.probe_sent_at = now
        probe = self._request_to_softphone(call, "OPTIONS", probe_cseq)
        self._to_softphone(probe.to_bytes(), call.softphone_address)

    async def _own_response(self, response: SipResponse) -> None:
        """The softphone's answer to our probe: alive, unless it no longer knows the dialog."""
        call = self._find(response.call_id, response.to_tag)
        if call is None or response.cseq != (call.probe_cseq, "OPTIONS") or response.status < 200:
            return
        call.probe_cseq = None
        if response.status in (408, 481):
            await self._hang_up_towards_server(call, "softphone lost the call")
            self._end_call(call, f"your softphone no longer knows this call ({response.status})")
        else:
            call.alive_at = asyncio.get_running_loop().time()

    def _shift_cseq(self, call: ClientCall, request: SipRequest) -> None:
        number, method = request.cseq
        if method != "ACK":
            call.far_cseq = max(call.far_cseq, number)
        if call.cseq_shift:
            sent = number + call.cseq_shift
            request.set("CSeq", f"{sent} {method}")
            call.shifted[sent] = number
            while len(call.shifted) > 32:
                call.shifted.popitem(last=False)

    def _bye_to_softphone(self, call: ClientCall, why: str) -> SipRequest:
        assert call.invite is not None
        call.cseq_shift += 1  # a CSeq above any Asterisk sent in this dialog
        return self._request_to_softphone(call, "BYE", call.far_cseq + call.cseq_shift,
                                          [("Reason", f'Q.850;cause=41;text="{_quoted(why)}"')])

    def _request_to_softphone(self, call: ClientCall, method: str, cseq: int,
                              headers: Iterable[Header] = ()) -> SipRequest:
        """A request of ours in the softphone's dialog: we speak for the far end of that dialog."""
        assert call.invite is not None
        via = make_via(self.host, self.port, new_branch(), transport=self._via_transport(call.softphone_address))
        return make_request(method, call.softphone_contact, via=str(via), from_=call.to_header,
                            to=call.invite.get("From") or "", call_id=call.call_id, cseq=cseq, headers=headers)
