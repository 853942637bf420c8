"""Mutation fuzzing of every parser that takes bytes from a peer: none may raise anything but its own error.

    .venv/bin/python bench/fuzz.py [N] [--only NAME ...] [--seed S]

N inputs per parser (default 10^6): valid samples mutated (bit flips, byte and token insertions,
deletions, duplications, splices, truncation) plus plain random bytes. Each parser's own error
class is the expected refusal; anything else is reported with the input that raised it, and the
exit status is 1. tests/test_fuzz.py runs the same targets under hypothesis.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from panoramisk.message import Message as AmiMessage

from stc_asterisk.ami import message_fields
from stc_asterisk.conference import ConferenceState
from stc_asterisk.fastagi.protocol import AgiError, AgiReplyParser, AgiRequestParser
from stc_wire.framing import Frame, FrameDecoder, FrameType, FramingError
from stc_wire.messages import Close, Hello, MediaAnswer, MediaOffer, MessageError, Ping, RosterUpdate, SipMessage, decode_message, encode_message
from stc_wire.identity import PeerIdentity
from stc_wire.roster import (
    Roster,
    RosterEntry,
    RosterError,
    RosterRejected,
    RosterSigner,
    RosterVerifier,
    SignedRoster,
    identity_json,
)
from stc_wire.roster_sync import (
    RosterOutOfStep,
    RosterPublisher,
    RosterReceiver,
    message_kind,
    parse_resync_request,
    resync_request,
    sign_talking,
)
from stc_wire.sdp import SdpError, SessionDescription
from stc_wire.sip import SipParseError, parse_message

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "sip"


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], object]  # raises `expected` for input it refuses
    expected: tuple[type[BaseException], ...]
    seeds: tuple[bytes, ...]
    tokens: tuple[bytes, ...]


# -- parsers, as the shells call them ---------------------------------------------------------------

def sip(data: bytes) -> object:
    return parse_message(data)


def sdp(data: bytes) -> object:
    return SessionDescription.from_bytes(data)


def frames(data: bytes) -> object:
    """The tunnel's read path: frames, then each frame's message."""
    decoder = FrameDecoder()
    out = []
    for i in range(0, len(data), 7):  # fed in pieces, as TCP delivers it
        for frame in decoder.feed(data[i:i + 7]):
            out.append(decode_message(frame))
    decoder.check_eof()
    return out


def messages(data: bytes) -> object:
    """A frame's payload under every frame type (the first byte picks it)."""
    types = list(FrameType)
    kind = types[data[0] % len(types)] if data else FrameType.HELLO
    return decode_message(Frame(kind, data[1:]))


def agi_request(data: bytes) -> object:
    parser = AgiRequestParser()
    request = None
    for line in data.splitlines(keepends=True):
        request = parser.feed(line)
        if request is not None:
            return request
    return request


def agi_reply(data: bytes) -> object:
    parser = AgiReplyParser()
    for line in data.decode("utf-8", errors="replace").splitlines():
        reply = parser.feed_line(line + "\n")
        if reply is not None:
            return reply
    return None


def ami(data: bytes) -> object:
    """What the AMI client does with Asterisk's bytes: panoramisk's message split, then our event handling."""
    state = ConferenceState()
    text = data.decode("utf-8", errors="replace")
    for block in text.split("\r\n\r\n"):
        message = AmiMessage.from_line(block.strip())
        if message is not None:
            state.apply_ami(message_fields(message))
    return state


def roster(data: bytes) -> object:
    return Roster.from_bytes(data)


def signed_roster(data: bytes) -> object:
    """The envelope, then the roster inside it (as a client reads it once the signature is checked)."""
    return SignedRoster.from_bytes(data).unverified_roster()


# -- seeds ------------------------------------------------------------------------------------------

def _sip_samples() -> tuple[bytes, ...]:
    return tuple(p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for p in sorted(DATA.glob("*.sip")))


def _sdp_samples() -> tuple[bytes, ...]:
    bodies = [s.split(b"\r\n\r\n", 1)[1] for s in _sip_samples() if b"\r\n\r\nv=0" in s]
    return tuple(bodies) or (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                             b"m=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",)


def _rosters() -> tuple[Roster, SignedRoster]:
    entries = (
        RosterEntry("1714557600.1", "1000", identity_json(PeerIdentity(
            display_name="Zoë", subject="CN=Zoë,O=ACME", organization="ACME", org_unit="Ops", sip_uris=("sip:zoe@example.org",),
            emails=("zoe@example.org",), issuer="CN=stc test CA", serial=0xABCDEF, fingerprint_sha256="ab" * 32,
            not_before=datetime(2026, 1, 1, tzinfo=timezone.utc), not_after=datetime(2027, 1, 1, tzinfo=timezone.utc))),
                    "PJSIP/stc-1", None, "2026-05-01T10:00:00+0000", True),
        RosterEntry("1714557600.3", "1000", None, "Local/9999@x-1;1", '"Spy" <666>', "2026-05-01T10:00:05+0000"),
    )
    r = Roster("stc-server-1", "1000", 7, "2026-05-01T10:00:06Z", entries=entries)
    return r, RosterSigner(generate_private_key(SECP256R1())).sign(r)


_UPDATE_KEY = generate_private_key(SECP256R1())


def _roster_updates() -> tuple[bytes, tuple[bytes, ...]]:
    """A full compact roster v7 (the held one), then a delta v8 against it, a talking update of v8, a resync request."""
    r, _ = _rosters()
    publisher = RosterPublisher(RosterSigner(_UPDATE_KEY))
    held = publisher.publish(r).full
    later = publisher.publish(Roster(r.server_id, r.room, 8, r.issued_at, entries=r.entries[:1]))
    talking = sign_talking(RosterSigner(_UPDATE_KEY), server_id=r.server_id, room=r.room, version=8, seq=1,
                           issued_at=r.issued_at, talking=[r.entries[0].channel_id])
    return held, (later.delta or b"", later.full, talking, resync_request(r.room, 7))


_HELD, _UPDATE_SAMPLES = _roster_updates()


def roster_update(data: bytes) -> object:
    """A client holding roster v7 takes a ROSTER frame: a roster or talking update, or (the server) a resync request."""
    receiver = RosterReceiver(RosterVerifier(_UPDATE_KEY.public_key()))
    receiver.accept(_HELD)
    kind = message_kind(data)
    if kind == "talking":
        return receiver.accept_talking(data)
    if kind == "resync":
        return parse_resync_request(data)
    return receiver.accept(data)


def _frame_samples(signed: SignedRoster) -> tuple[bytes, ...]:
    msgs = [Hello((1,), ("sip", "srtp"), "stc-client/0.1"), Ping(b"x"), Close(1000, "bye"), SipMessage(_sip_samples()[0]),
            MediaOffer("s1", "c1@h", ("AES_CM_128_HMAC_SHA1_80",), bytes(32)),
            MediaAnswer("s1", "AES_CM_128_HMAC_SHA1_80", bytes(32), 40000, 40001), RosterUpdate(signed.to_bytes())]
    encoded = [encode_message(m) for m in msgs]
    return (b"".join(encoded), *encoded)


AGI_HEADER = b"".join(f"agi_{k}: {v}\n".encode() for k, v in {
    "network": "yes", "network_script": "stc-admit", "request": "agi://127.0.0.1:4573/stc-admit,1000",
    "channel": "PJSIP/alice-00000001", "uniqueid": "1714557600.1", "callerid": "alice", "extension": "1000",
    "arg_1": "1000"}.items()) + b"\n"
AGI_REPLIES = (b"200 result=1 (value)\n", b"200 result=0\n", b"510 Invalid or unknown command\n",
               b"520-Invalid command syntax.  Proper usage follows:\nUsage: x\n520 End of proper usage.\n", b"511 dead\n",
               b"HANGUP\n")
AMI_EVENTS = (
    b"Event: ConfbridgeJoin\r\nPrivilege: call,all\r\nChannel: PJSIP/stc-00000001\r\nUniqueid: 1714557600.1\r\n"
    b"Conference: 1000\r\nCallerIDNum: alice\r\nCallerIDName: Alice\r\n\r\n",
    b"Event: ConfbridgeTalking\r\nChannel: PJSIP/stc-00000001\r\nUniqueid: 1714557600.1\r\nConference: 1000\r\n"
    b"TalkingStatus: on\r\n\r\nEvent: ConfbridgeLeave\r\nUniqueid: 1714557600.1\r\nConference: 1000\r\n\r\n",
    b"Response: Success\r\nActionID: 1\r\nMessage: ok\r\n\r\n",
)


def targets() -> list[Target]:
    r, signed = _rosters()
    sip_tokens = (b"\r\n", b"\r\n\r\n", b": ", b";tag=", b";branch=z9hG4bK", b"Content-Length: ", b"Via: SIP/2.0/UDP ",
                  b"CSeq: ", b"INVITE", b"SIP/2.0", b"<sip:", b">", b"@", b"\x00", b"\xff", b"99999999999", b"-1", b" ",
                  b"\t", b",", b"\"", b"\\", b"%00", b"[::1]", b"Max-Forwards: ", b"Call-ID: ", b"To: ", b"From: ")
    sdp_tokens = (b"\r\n", b"v=0", b"m=audio ", b"c=IN IP4 ", b"c=IN IP6 ", b"a=rtcp:", b"a=rtpmap:", b"RTP/AVP",
                  b"RTP/SAVP", b"65536", b"0", b"-1", b"/", b" ", b"\x00", b"::", b"a=sendonly", b"o=- ", b"t=0 0", b"224.0.0.1")
    json_tokens = (b"{", b"}", b"[", b"]", b"\"", b":", b",", b"null", b"true", b"1e999", b"-0", b"\"\\u0000\"",
                   b"\"entries\"", b"\"identity\"", b"\"version\"", b"NaN", b"\xff")
    return [
        Target("sip", sip, (SipParseError,), _sip_samples(), sip_tokens),
        Target("sdp", sdp, (SdpError,), _sdp_samples(), sdp_tokens),
        Target("frames", frames, (FramingError, MessageError), _frame_samples(signed), json_tokens + (b"\x00\x00\x00\x00",)),
        Target("messages", messages, (MessageError,), tuple(b"\x01" + f[5:] for f in _frame_samples(signed)[1:]) +
               tuple(bytes([i]) + f[5:] for i, f in enumerate(_frame_samples(signed)[1:])), json_tokens),
        Target("agi-request", agi_request, (AgiError,), (AGI_HEADER,), (b"agi_", b": ", b"\n", b"\r\n", b"\x00", b"\xff")),
        Target("agi-reply", agi_reply, (AgiError,), AGI_REPLIES, (b"200 ", b"result=", b"(", b")", b"-", b"\n", b"520", b" endpos=")),
        Target("ami", ami, (), AMI_EVENTS, (b"\r\n", b"\r\n\r\n", b": ", b"Event: ", b"Uniqueid: ", b"Conference: ",
                                            b"TalkingStatus: ", b"Response: Follows", b"\x00", b"\xff")),
        Target("roster", roster, (RosterError,), (r.canonical_bytes(),), json_tokens),
        Target("signed-roster", signed_roster, (RosterRejected, RosterError), (signed.to_bytes(),), json_tokens + (b"\x00\x01",)),
        Target("roster-update", roster_update, (RosterRejected, RosterOutOfStep, RosterError), _UPDATE_SAMPLES,
               json_tokens + (b"\"base\"", b"\"added\"", b"\"removed\"", b"\"changed\"", b"\"identities\"", b"\"talking\"",
                              b"\"seq\"", b"STCD", b"STCT", b"STCQ")),
    ]


# -- mutation ---------------------------------------------------------------------------------------

def mutate(rng: random.Random, seeds: tuple[bytes, ...], tokens: tuple[bytes, ...]) -> bytes:
    if rng.random() < 0.03:
        return rng.randbytes(rng.randrange(0, 64))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 1, 2, 3, 5, 10))):
        op = rng.randrange(8)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a bit
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert a token
            data[pos:pos] = rng.choice(tokens)
        elif op == 2 and data:  # delete a run
            del data[pos:pos + rng.randrange(1, 16)]
        elif op == 3:  # a random byte
            data[pos:pos] = bytes([rng.randrange(256)])
        elif op == 4 and data:  # duplicate a run
            start = rng.randrange(len(data))
            data[pos:pos] = data[start:start + rng.randrange(1, 64)]
        elif op == 5:  # splice in part of another seed
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            data[pos:pos] = other[start:start + rng.randrange(1, 128)]
        elif op == 6:  # truncate
            del data[pos:]
        elif op == 7 and data:  # overwrite a byte with an interesting one
            data[min(pos, len(data) - 1)] = rng.choice((0, 0x0A, 0x0D, 0x20, 0x3A, 0x7F, 0x80, 0xFF))
    return bytes(data)


@dataclass
class Finding:
    target: str
    data: bytes
    error: str


def check(target: Target, data: bytes) -> Finding | None:
    """None if the parser accepted `data` or refused it with its own error."""
    try:
        target.run(data)
    except target.expected:
        return None
    except Exception:
        return Finding(target.name, data, traceback.format_exc(limit=-3))
    return None


def fuzz(target: Target, count: int, seed: int, findings_limit: int = 5) -> list[Finding]:
    rng = random.Random(seed)
    found: list[Finding] = []
    kinds: set[str] = set()
    for data in target.seeds:  # the seeds themselves must parse
        finding = check(target, data)
        if finding is not None:
            found.append(finding)
    for _ in range(count):
        finding = check(target, mutate(rng, target.seeds, target.tokens))
        if finding is not None:
            kind = finding.error.strip().splitlines()[-1].split(":")[0]
            if kind not in kinds:  # one example of each exception type is enough
                kinds.add(kind)
                found.append(finding)
                if len(found) >= findings_limit:
                    break
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("count", nargs="?", type=int, default=1_000_000, help="inputs per parser (default 10^6)")
    parser.add_argument("--only", nargs="*", help="parser names (default: all)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    chosen = [t for t in targets() if not args.only or t.name in args.only]
    failed = False
    for target in chosen:
        started = time.perf_counter()
        found = fuzz(target, args.count, args.seed)
        elapsed = time.perf_counter() - started
        print(f"{target.name:14} {args.count:>9} inputs in {elapsed:7.1f} s: "
              f"{'OK' if not found else f'{len(found)} unexpected exception(s)'}", flush=True)
        for finding in found:
            failed = True
            print(f"  input {finding.data[:300]!r}{'...' if len(finding.data) > 300 else ''}\n"
                  + "".join(f"    {line}\n" for line in finding.error.rstrip().splitlines()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
