"""The audit trail: an append-only JSON-lines file nobody can quietly edit.

Every record carries `seq`, `time`, `event`, its fields, `prev` (the SHA-256 of
the record before it) and `hash` (the SHA-256 of its own canonical JSON without
`hash`). Now and then, at rotation and when the server stops, a `chain-signed`
record signs the head (the hash before it) with the server's TLS key. Editing
a line breaks its hash; removing or reordering lines breaks `prev` and `seq`;
rewriting every later hash needs the server's key to sign the new head again.
Rotation starts the next file with a `chain-continued` record linked to the
last hash of the previous file, so the chain runs across files.

`AuditChain` (making records) and `verify_records` (checking them) are pure;
`AuditLog` is the file beside them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from stc_wire.roster import PrivateKey, PublicKey, canonical_json, iso_utc, sign_data, verify_data

log = logging.getLogger(__name__)

GENESIS = "0" * 64
HEAD_CONTEXT = b"stc audit chain head v1\x00"
SIGNED = "chain-signed"
CONTINUED = "chain-continued"
_RESERVED = frozenset({"seq", "time", "event", "prev", "hash"})


class AuditSink(Protocol):
    """What the server's parts call to leave a record (a no-op when auditing is off)."""

    def record(self, event: str, **fields: Any) -> None: ...


class NoAudit:
    def record(self, event: str, **fields: Any) -> None:
        pass


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def head_signed_data(head: str, seq: int) -> bytes:
    """What a chain-signed record's signature covers: the head hash and the seq it ends at."""
    return HEAD_CONTEXT + bytes.fromhex(head) + seq.to_bytes(8, "big")


class AuditChain:
    """Makes chained records; `seq` and `head` are those of the last record made."""

    def __init__(self, *, head: str = GENESIS, seq: int = 0) -> None:
        self.head = head
        self.seq = seq
        self.signed_seq = seq  # the last seq covered by a signature

    def append(self, event: str, time: str, fields: Mapping[str, Any]) -> dict[str, Any]:
        clash = _RESERVED & set(fields)
        if clash:
            raise ValueError(f"audit field name(s) reserved: {', '.join(sorted(clash))}")
        record: dict[str, Any] = {"seq": self.seq + 1, "time": time, "event": event, **fields, "prev": self.head}
        record["hash"] = record_hash(record)
        self.seq, self.head = record["seq"], record["hash"]
        return record

    def sign(self, key: PrivateKey, time: str, signer: str) -> dict[str, Any]:
        """A chain-signed record over the current head."""
        code, signature = sign_data(key, head_signed_data(self.head, self.seq))
        record = self.append(SIGNED, time, {"signed_seq": self.seq, "signer": signer, "alg": code,
                                            "sig": base64.b64encode(signature).decode("ascii")})
        self.signed_seq = self.seq
        return record

    @property
    def unsigned(self) -> int:
        return self.seq - self.signed_seq


# --- verifying ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    file: str
    number: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"


@dataclass(frozen=True)
class Verdict:
    records: int
    signatures: int
    error: str | None = None  # "FILE:LINE: what is wrong" for the first broken record

    @property
    def ok(self) -> bool:
        return self.error is None


def read_lines(paths: Iterable[Path]) -> Iterator[Line]:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for number, text in enumerate(fh, 1):
                yield Line(str(path), number, text.rstrip("\n"))


def verify_records(lines: Iterable[Line], public_key: PublicKey | Sequence[PublicKey] | None, *,
                   allow_unsigned_tail: bool = False) -> Verdict:
    """Check the chain line by line, and each signature with the server's public key (or any of
    several, for a log that spans a change of server key)."""
    keys: tuple[PublicKey, ...] = () if public_key is None else \
        tuple(public_key) if isinstance(public_key, Sequence) else (public_key,)
    head: str | None = None
    seq = 0
    records = signatures = 0
    last: Line | None = None
    unsigned = 0
    for line in lines:
        last = line
        try:
            record = json.loads(line.text)
        except json.JSONDecodeError:
            return Verdict(records, signatures, f"{line.where}: not a JSON record (edited or damaged)")
        if not isinstance(record, dict) or not isinstance(record.get("seq"), int) or not isinstance(record.get("prev"), str):
            return Verdict(records, signatures, f"{line.where}: not an audit record")
        if record.get("hash") != record_hash(record):
            return Verdict(records, signatures, f"{line.where}: record {record['seq']} was edited (its hash does not match it)")
        if head is None:
            if record["prev"] != GENESIS and record.get("event") != CONTINUED:
                return Verdict(records, signatures, f"{line.where}: the start of the log is missing "
                                                    f"(record {record['seq']} follows one not in the files given)")
        elif record["prev"] != head or record["seq"] != seq + 1:
            return Verdict(records, signatures, f"{line.where}: record {record['seq']} does not follow record {seq} "
                                                f"(a line before it was removed, or lines were reordered)")
        if record.get("event") == SIGNED:
            if keys and not any(_signature_ok(record, key) for key in keys):
                return Verdict(records, signatures, f"{line.where}: the signature of record {record['seq']} "
                                                    f"does not verify with the server's key")
            signatures += 1
            unsigned = 0
        else:
            unsigned += 1
        head, seq = record["hash"], record["seq"]
        records += 1
    if last is None:
        return Verdict(0, 0, "no records")
    if unsigned and not allow_unsigned_tail:
        return Verdict(records, signatures, f"{last.file}:{last.number + 1}: the log ends with {unsigned} record(s) no "
                                            f"signature covers (lines removed from its end, or the server is still writing it)")
    return Verdict(records, signatures)


def _signature_ok(record: Mapping[str, Any], public_key: PublicKey) -> bool:
    try:
        signature = base64.b64decode(record["sig"], validate=True)
        data = head_signed_data(record["prev"], int(record["signed_seq"]))
        return record["signed_seq"] == record["seq"] - 1 and verify_data(public_key, int(record["alg"]), data, signature)
    except (KeyError, TypeError, ValueError):
        return False


# --- the file ---------------------------------------------------------------------------------------


class AuditLogError(Exception):
    """The audit file cannot be continued (its last line is not a record)."""


def _now() -> str:
    return iso_utc(datetime.now(timezone.utc))


def _last_record(path: Path) -> dict[str, Any] | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 65536))
        tail = fh.read().splitlines()
    try:
        record = json.loads(tail[-1])
        if isinstance(record, dict) and record.get("hash") == record_hash(record) and isinstance(record.get("seq"), int):
            return record
    except (json.JSONDecodeError, IndexError):
        pass
    raise AuditLogError(f"{path}: its last line is not an audit record; check it with `stc-server audit verify {path}` "
                        f"and move it aside to start a new chain")


class AuditLog:
    """Appends records to `path`, signs the head with `key`, rotates past `rotate_bytes` (0: never)."""

    def __init__(self, path: Path, key: PrivateKey, signer: str, *, rotate_bytes: int = 0) -> None:
        self.path = path
        self._key = key
        self._signer = signer
        self._rotate_bytes = rotate_bytes
        last = _last_record(path)
        self.chain = AuditChain() if last is None else AuditChain(head=last["hash"], seq=last["seq"])
        if last is not None and last.get("event") == SIGNED:
            self.chain.signed_seq = self.chain.seq
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")
        os.chmod(path, 0o640)

    def record(self, event: str, **fields: Any) -> None:
        self._write(self.chain.append(event, _now(), fields))
        if self._rotate_bytes and self._file.tell() >= self._rotate_bytes:
            self.rotate()

    def change_key(self, key: PrivateKey, signer: str) -> None:
        """A reloaded server key: what came before is signed with the old one, the rest with the new."""
        if signer == self._signer:
            return
        self.sign()
        self._key, self._signer = key, signer
        self.record("signer-changed", signer=signer)

    def sign(self) -> None:
        """Sign the head if records were added since the last signature."""
        if self.chain.unsigned:
            self._write(self.chain.sign(self._key, _now(), self._signer))
            os.fsync(self._file.fileno())

    def rotate(self) -> Path:
        self.sign()
        self._file.close()
        moved = self.path.with_name(f"{self.path.name}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}")
        self.path.rename(moved)
        self._file = open(self.path, "a", encoding="utf-8")
        os.chmod(self.path, 0o640)
        self._write(self.chain.append(CONTINUED, _now(), {"previous_file": moved.name}))
        log.info("audit log rotated: %s", moved)
        return moved

    def close(self) -> None:
        if not self._file.closed:
            self.sign()
            self._file.close()

    def _write(self, record: Mapping[str, Any]) -> None:
        self._file.write(canonical_json(record).decode("utf-8") + "\n")
        self._file.flush()
