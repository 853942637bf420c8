"""The admission binding: a server's signed word that a call belongs to a certificate.

Pure code. stc-server signs a `Binding` with its TLS certificate's private key and puts it in
the INVITE it relays to Asterisk (`X-STC-Token`). `stc-admit` verifies it, then stores on the
Asterisk channel the same binding signed again with the channel's uniqueid in it
(`STC_BINDING`). Any stc-server of the deployment that trusts the signer's certificate can read
that variable back through ARI and learn who is on the channel, with no shared memory: a
restarted server, or another server following the same Asterisk, builds the same roster.

Text form (what goes in the SIP header and the channel variable): base64url without padding of

    format u8 (=1) | algorithm u8 | signer u8[8] | payload length u16 | payload | signature

`signer` is the first 8 bytes of SHA-256 over the signing server's certificate (DER): the
verifier picks the key by it. The signature covers `b"stc-binding-v1\\0"` followed by
everything before the signature, so it cannot be taken for a roster signature or moved to
another signer. The payload is canonical JSON (see stc_wire.roster.canonical_json):

    {"ch": channel uniqueid (only once bound to a channel), "cid": SIP Call-ID,
     "exp": unix seconds, "id": [identity fields, IDENTITY_FIELDS order], "n": nonce, "room": room}

Two uses, two checks:
- a token (no "ch"): accepted by `verify_token` until `exp`: the window in which stc-admit
  must see the INVITE. The Call-ID and room are checked against the channel by stc-admit.
- a channel binding ("ch" set): accepted by `verify_channel` only for that channel uniqueid,
  that Call-ID and that room, for the life of the channel (it is signed only after a token
  passed its expiry check, so `exp` is not checked again). A value copied onto another
  channel names the wrong uniqueid and Call-ID; an edited one fails the signature.

Size: the SIP header must pass PJSIP and `${PJSIP_HEADER(read,...)}` (4096 bytes by default),
and `SET VARIABLE STC_BINDING "..."` must fit Asterisk's AGI command line (AGI_BUF_LEN 2048).
`MAX_BINDING_CHARS` keeps a binding under both; a P-256 binding is about 700 characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stc_wire.identity import PeerIdentity
from stc_wire.roster import (
    PrivateKey,
    PublicKey,
    algorithm_for,
    canonical_json,
    sign_data,
    verify_data,
)

BINDING_FORMAT = 1
SIGNATURE_CONTEXT = b"stc-binding-v1\x00"
# Under AGI_BUF_LEN (2048) with `SET VARIABLE STC_BINDING "..."` around it.
MAX_BINDING_CHARS = 1900
SIGNER_ID_BYTES = 8
_HEAD = struct.Struct(">BB8sH")
# PeerIdentity.to_json() keys, in the order the payload's "id" list carries them.
IDENTITY_FIELDS = ("display_name", "subject", "organization", "org_unit", "sip_uris", "emails", "issuer", "serial",
                   "fingerprint_sha256", "not_before", "not_after")
_PAYLOAD_KEYS = {"cid", "exp", "id", "n", "room"}
_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

RejectReason = Literal["malformed", "too-long", "unknown-signer", "bad-signature", "expired", "not-a-token",
                       "not-channel-bound", "wrong-channel", "wrong-call", "wrong-room"]


class BindingRejected(Exception):
    """A binding is refused. `reason` is a short code; str() is for people (and never shows the value)."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason: RejectReason = reason
        self.message = message


@dataclass(frozen=True)
class Binding:
    """What a server vouches for: this certificate may be on this call, in this room."""

    identity: PeerIdentity
    room: str
    call_id: str  # the SIP Call-ID of the INVITE towards Asterisk
    expires: int  # unix seconds: stc-admit must see the token by then
    nonce: str  # random: two bindings never look alike
    channel: str | None = None  # the Asterisk channel uniqueid, once stc-admit bound it

    def __post_init__(self) -> None:
        for name in ("room", "call_id", "nonce"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"binding {name} must be a non-empty string")
        if isinstance(self.expires, bool) or not isinstance(self.expires, int) or self.expires < 0:
            raise ValueError("binding expires must be a non-negative integer")
        if self.channel is not None and (not isinstance(self.channel, str) or not self.channel):
            raise ValueError("binding channel must be a non-empty string or None")
        if not isinstance(self.identity, PeerIdentity):
            raise ValueError("binding identity must be a PeerIdentity")

    @classmethod
    def new(cls, identity: PeerIdentity, room: str, call_id: str, *, now: float, ttl: float) -> "Binding":
        """A fresh token binding (random nonce) valid for `ttl` seconds from `now`."""
        return cls(identity, room, call_id, int(now + ttl), secrets.token_urlsafe(12))

    def for_channel(self, channel: str) -> "Binding":
        """The same binding, bound to Asterisk channel `channel` (what stc-admit stores)."""
        return Binding(self.identity, self.room, self.call_id, self.expires, self.nonce, channel)

    def payload(self) -> bytes:
        identity = self.identity.to_json()
        obj: dict[str, Any] = {"cid": self.call_id, "exp": self.expires, "n": self.nonce, "room": self.room,
                               "id": [identity[key] for key in IDENTITY_FIELDS]}
        if self.channel is not None:
            obj["ch"] = self.channel
        return canonical_json(obj)

    @classmethod
    def from_payload(cls, payload: bytes) -> "Binding":
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"payload is not UTF-8 JSON: {exc}") from None
        if not isinstance(obj, dict) or set(obj) - {"ch"} != _PAYLOAD_KEYS:
            raise ValueError("payload keys are not those of a binding")
        fields = obj["id"]
        if not isinstance(fields, list) or len(fields) != len(IDENTITY_FIELDS):
            raise ValueError(f"identity must be a list of {len(IDENTITY_FIELDS)} fields")
        identity = PeerIdentity.from_json(dict(zip(IDENTITY_FIELDS, fields)))
        return cls(identity, obj["room"], obj["cid"], obj["exp"], obj["n"], obj.get("ch"))


def signer_id(certificate: x509.Certificate) -> bytes:
    """The 8 bytes that name a signing server in its bindings."""
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest()[:SIGNER_ID_BYTES]


def _signed_data(head: bytes, payload: bytes) -> bytes:
    return SIGNATURE_CONTEXT + head + payload


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or any(ch not in _B64URL for ch in text):
        raise BindingRejected("malformed", "not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise BindingRejected("malformed", "not base64url") from None



class BindingSigner:
    """Signs bindings with the server's TLS key (EC P-256/P-384, RSA >= 2048, Ed25519)."""

    def __init__(self, private_key: PrivateKey, certificate: x509.Certificate) -> None:
        self._algorithm = algorithm_for(private_key)
        if _spki(private_key.public_key()) != _spki(certificate.public_key()):
            raise ValueError("the binding key does not belong to the certificate")
        self._key = private_key
        self.signer = signer_id(certificate)

    def sign(self, binding: Binding) -> str:
        payload = binding.payload()
        if len(payload) > 0xFFFF:
            raise BindingRejected("too-long", f"payload of {len(payload)} bytes")
        head = _HEAD.pack(BINDING_FORMAT, self._algorithm.code, self.signer, len(payload))
        _, signature = sign_data(self._key, _signed_data(head, payload))
        text = _b64encode(head + payload + signature)
        if len(text) > MAX_BINDING_CHARS:
            raise BindingRejected("too-long", f"{len(text)} characters, at most {MAX_BINDING_CHARS} fit Asterisk")
        return text


class BindingVerifier:
    """Checks bindings against the certificates of the deployment's servers (this one's included)."""

    def __init__(self, certificates: Iterable[x509.Certificate]) -> None:
        self._keys: dict[bytes, PublicKey] = {}
        for certificate in certificates:
            key = certificate.public_key()
            if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
                raise ValueError(f"unsupported server key type {type(key).__name__}")
            algorithm_for(key)  # refuse an unusable key now
            self._keys[signer_id(certificate)] = key
        if not self._keys:
            raise ValueError("a binding verifier needs at least one server certificate")

    def open(self, text: str) -> Binding:
        """The binding if its signature verifies with a trusted server's key (nothing else checked)."""
        if not isinstance(text, str) or len(text) > MAX_BINDING_CHARS:
            raise BindingRejected("too-long" if isinstance(text, str) else "malformed",
                                  f"more than {MAX_BINDING_CHARS} characters")
        data = _b64decode(text)
        if len(data) < _HEAD.size:
            raise BindingRejected("malformed", f"only {len(data)} bytes")
        fmt, algorithm, signer, length = _HEAD.unpack_from(data)
        if fmt != BINDING_FORMAT:
            raise BindingRejected("malformed", f"unsupported format {fmt}")
        end = _HEAD.size + length
        if end >= len(data):
            raise BindingRejected("malformed", "payload length runs past the end")
        key = self._keys.get(signer)
        if key is None:
            raise BindingRejected("unknown-signer", f"signed by server {signer.hex()}, not a trusted one")
        if algorithm != algorithm_for(key).code:
            raise BindingRejected("bad-signature", "the algorithm does not match the signer's key")
        payload = data[_HEAD.size:end]
        if not verify_data(key, algorithm, _signed_data(data[:_HEAD.size], payload), data[end:]):
            raise BindingRejected("bad-signature", "the signature does not verify")
        try:
            return Binding.from_payload(payload)
        except ValueError as exc:  # signed by a trusted server, yet not a binding we understand
            raise BindingRejected("malformed", str(exc)) from None

    def verify_token(self, text: str, *, now: float) -> Binding:
        """An `X-STC-Token` value: signed, not yet bound to a channel, not expired at `now`."""
        binding = self.open(text)
        if binding.channel is not None:
            raise BindingRejected("not-a-token", "a channel binding is not an admission token")
        if now > binding.expires:
            raise BindingRejected("expired", f"expired {now - binding.expires:.0f} s ago")
        return binding

    def verify_channel(self, text: str, *, channel: str, call_id: str, room: str | None = None) -> Binding:
        """An `STC_BINDING` value read from channel `channel`, whose SIP Call-ID is `call_id`,
        in ConfBridge `room` (None: not checked)."""
        binding = self.open(text)
        if binding.channel is None:
            raise BindingRejected("not-channel-bound", "an admission token is not a channel binding")
        if binding.channel != channel:
            raise BindingRejected("wrong-channel", f"bound to channel {binding.channel}, found on {channel}")
        if binding.call_id != call_id:
            raise BindingRejected("wrong-call", "the channel's SIP Call-ID is not the one admitted")
        if room is not None and binding.room != room:
            raise BindingRejected("wrong-room", f"admitted to room {binding.room!r}, found in {room!r}")
        return binding


def _spki(key: PublicKey | Any) -> bytes:
    return bytes(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
