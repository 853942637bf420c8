"""Pure rewriting steps that both stc proxies apply to SIP passing through them.

Each side of the tunnel acts as a small stateless proxy towards its local party
(softphone or Asterisk): it puts its own Via on requests it sends there and
takes it off the responses, points Contact at its own socket so in-dialog
requests come back through it, and rewrites SDP so media goes to its relay.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace

from .sdp import AudioEndpoint, SessionDescription, SdpError, audio_endpoint, rewrite_for_relay, with_rtcp_mux
from .sip import (
    BRANCH_MAGIC_COOKIE,
    SipMessage,
    SipRequest,
    SipResponse,
    make_request,
    make_response,
    make_via,
    new_branch,
    new_tag,
    parse_name_addr,
    parse_sip_uri,
    parse_via,
)

SDP_TYPE = "application/sdp"
# Headers a client may never set: the server's per-call admission token travels in them.
PRIVATE_HEADER_PREFIX = "x-stc-"
# On a rejoin INVITE from stc-client: the Call-ID of the leg it replaces (see docs/protocol.md).
REJOINS_HEADER = "X-STC-Rejoins"


def proxy_branch(secret: str, incoming_branch: str | None, method: str) -> str:
    """A branch derived from the incoming one, so a CANCEL or non-2xx ACK matches its INVITE's branch."""
    # ACK and CANCEL share the INVITE's branch (RFC 3261 9.1, 17.1.1.3); other requests don't need to.
    seed = f"{secret}|{incoming_branch or ''}|{'INVITE' if method in ('ACK', 'CANCEL') else method}"
    return BRANCH_MAGIC_COOKIE + "stc" + hashlib.sha256(seed.encode()).hexdigest()[:24]


def push_via(request: SipRequest, host: str, port: int, secret: str, *, transport: str = "UDP") -> None:
    top = request.top_via_branch
    request.prepend("Via", str(make_via(host, port, proxy_branch(secret, top, request.method), transport=transport)))


def pop_own_via(response: SipResponse, host: str, port: int) -> bool:
    """Remove our Via from a response; False if the top Via is not ours (then drop the response)."""
    top = parse_via(response.get_all("Via")[0])
    if top.host != host or top.port != port:
        return False
    response.pop_first_value("Via")
    return True


def point_contact_at(message: SipMessage, host: str, port: int, *, transport: str | None = None) -> None:
    """Contact at our socket; `transport` ("tcp"): the peer must come back over that transport."""
    contact = message.get("Contact")
    if contact is None or contact.strip() == "*":
        return
    name_addr = parse_name_addr(contact).with_host_port(host, port)
    if transport is not None:
        uri = parse_sip_uri(name_addr.uri)
        params = re.sub(r";transport=[^;]*", "", uri.params, flags=re.IGNORECASE) + f";transport={transport}"
        name_addr = name_addr.with_uri(str(replace(uri, params=params)))
    message.set("Contact", str(name_addr))


def strip_private_headers(message: SipMessage) -> int:
    names = {name for name, _ in message.headers if name.lower().startswith(PRIVATE_HEADER_PREFIX)}
    return sum(message.remove(name) for name in names)


def sdp_of(message: SipMessage) -> SessionDescription | None:
    """The message's SDP body, if it has one. Raises SdpError if it claims SDP and is not."""
    if not message.body:
        return None
    content_type = (message.content_type or "").split(";")[0].strip().lower()
    if content_type != SDP_TYPE:
        raise SdpError(f"body of type {content_type or 'unknown'!r} where SDP was expected")
    return SessionDescription.from_bytes(message.body)


def rewrite_sdp(message: SipMessage, host: str, rtp_port: int, rtcp_port: int, *,
                rtcp_mux: bool = False) -> AudioEndpoint | None:
    """Point the message's SDP at our relay; returns where the sender wanted media. RelayRefused propagates.

    `rtcp_mux`: RTCP shares the RTP port on our side, and the SDP says so (a=rtcp-mux).
    """
    sd = sdp_of(message)
    if sd is None:
        return None
    endpoint = audio_endpoint(sd)
    rewritten = rewrite_for_relay(sd, address=host, port=rtp_port, rtcp_port=rtp_port if rtcp_mux else rtcp_port)
    if rtcp_mux:
        rewritten = with_rtcp_mux(rewritten)
    message.set_body(rewritten.to_bytes(), SDP_TYPE)
    return endpoint


def is_initial_invite(message: SipMessage) -> bool:
    return isinstance(message, SipRequest) and message.method == "INVITE" and message.to_tag is None


def request_user(request: SipRequest) -> str:
    """The user part of the Request-URI: the conference room dialled."""
    uri = request.uri
    after_scheme = uri.split(":", 1)[1] if ":" in uri else uri
    return after_scheme.split("@", 1)[0] if "@" in after_scheme else ""


def refuse_unkeyed_sdp(message: SipMessage, *, host: str, port: int, target_uri: str) -> list[SipMessage]:
    """What goes back to the sender of SDP for a dialog we hold no keys for (never passed on):
    a 488 for a request other than ACK; for a 2xx to an INVITE, an ACK and a BYE sent by us
    (`host`:`port` our Via alone, to `target_uri`); nothing for anything else."""
    if isinstance(message, SipRequest):
        if message.method == "ACK":
            return []
        return [make_response(message, 488, to_tag=new_tag(), headers=[("Warning", '399 stc "no media keys for this call"')])]
    assert isinstance(message, SipResponse)
    number, method = message.cseq
    if method != "INVITE" or not 200 <= message.status < 300:
        return []
    requests: list[SipMessage] = []
    for name, cseq in (("ACK", number), ("BYE", number + 1)):
        reason = [("Reason", 'Q.850;cause=88;text="stc holds no media keys for this call"')] if name == "BYE" else []
        request = make_request(name, target_uri, via=str(make_via(host, port, new_branch())),
                               from_=message.get("From") or "", to=message.get("To") or "", call_id=message.call_id,
                               cseq=cseq, headers=reason)
        requests.append(request)
    return requests
