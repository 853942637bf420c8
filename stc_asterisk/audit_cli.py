"""`stc-server audit verify FILE...` and `stc-server audit show FILE... [--room R] [--since T] [--until T]`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509

from stc_wire.config import ConfigError, load_config
from stc_wire.roster import PublicKey

from .audit import CONTINUED, SIGNED, read_lines, verify_records
from .config import ServerConfig

# Bookkeeping records `show` leaves out unless asked for with --all.
_QUIET = {"roster-pushed", SIGNED, CONTINUED}


def add_parser(sub: Any) -> None:
    audit = sub.add_parser("audit", help="check or read the audit trail ([audit] path)")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = actions.add_parser("verify", help="check the hash chain and the signatures; name the first broken record")
    verify.add_argument("files", type=Path, nargs="+", help="audit files (the current one and its rotated audit.jsonl.<time>)")
    verify.add_argument("--cert", type=Path, action="append", help="a server certificate whose key signed the log "
                        "(default: the config's); repeat it for a log that spans a change of server key")
    verify.add_argument("--config", type=Path, help="stc-server settings whose [tunnel] cert to use")
    verify.add_argument("--open", action="store_true", help="accept unsigned records at the end (a log still being written)")
    show = actions.add_parser("show", help="who was in which room and when")
    show.add_argument("files", type=Path, nargs="+", help="audit files (the current one and its rotated ones)")
    show.add_argument("--room", help="only this room's events")
    show.add_argument("--since", type=_time_arg, help="from this time (ISO 8601, e.g. 2026-12-02 or 2026-12-02T09:00Z)")
    show.add_argument("--until", type=_time_arg, help="up to this time")
    show.add_argument("--all", action="store_true", help="also roster versions and signatures")


def chain_order(paths: list[Path]) -> list[Path]:
    """The files in the order of their first record's seq (a shell glob puts audit.jsonl before its
    rotated audit.jsonl.<time> files); files whose first line does not parse keep their place at the end."""
    def first_seq(path: Path) -> float:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                seq = json.loads(fh.readline()).get("seq")
            return float(seq) if isinstance(seq, int) else float("inf")
        except (OSError, ValueError, AttributeError):
            return float("inf")
    return sorted(paths, key=first_seq)


def run(args: argparse.Namespace) -> int:
    args.files = chain_order(args.files)
    if args.audit_command == "verify":
        return _verify(args)
    return _show(args)


def _time_arg(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _public_keys(args: argparse.Namespace) -> list[PublicKey]:
    cert_paths = args.cert
    if not cert_paths:
        try:
            cert_paths = [load_config(ServerConfig, args.config).tunnel.cert]
        except ConfigError as exc:
            raise SystemExit(f"stc-server audit verify: {exc}") from None
    keys = []
    for path in cert_paths:
        try:
            keys.append(x509.load_pem_x509_certificate(path.read_bytes()).public_key())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"stc-server audit verify: cannot read the server certificate {path}: {exc}") from None
    return keys  # type: ignore[return-value]


def _verify(args: argparse.Namespace) -> int:
    keys = _public_keys(args)
    try:
        verdict = verify_records(read_lines(args.files), keys, allow_unsigned_tail=args.open)
    except OSError as exc:
        print(f"stc-server audit verify: {exc}", file=sys.stderr)
        return 2
    if verdict.ok:
        print(f"audit log intact: {verdict.records} records, {verdict.signatures} signatures verified")
        return 0
    print(f"audit log BROKEN at {verdict.error}", file=sys.stderr)
    print(f"({verdict.records} records before it are intact)", file=sys.stderr)
    return 1


def records_of(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for text in lines:
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            continue  # `verify` names broken lines; `show` reads what it can
        if isinstance(record, dict):
            yield record


def select(records: Iterable[dict[str, Any]], *, room: str | None = None, since: datetime | None = None,
           until: datetime | None = None, everything: bool = False) -> list[dict[str, Any]]:
    """The records `show` prints: a room's events (and, without a room, the tunnels' too), in a time window."""
    chosen = []
    for record in records:
        if not everything and record.get("event") in _QUIET:
            continue
        if room is not None and record.get("room") != room:
            continue
        try:
            moment = datetime.fromisoformat(str(record.get("time", "")).replace("Z", "+00:00"))
        except ValueError:
            continue
        if (since is not None and moment < since) or (until is not None and moment > until):
            continue
        chosen.append(record)
    return chosen


def describe(record: dict[str, Any]) -> str:
    """One line: time, event, room, who, and the rest."""
    who = record.get("display_name") or record.get("subject") or ""
    if record.get("unauthenticated"):
        who = f"UNAUTHENTICATED {record.get('caller_id') or ''}".strip()
    elif not who and record.get("caller_id"):
        who = f"caller {record['caller_id']} (unverified)"
    if record.get("fingerprint"):
        who += f" [{str(record['fingerprint'])[:16]}]"
    shown = {"seq", "time", "event", "room", "prev", "hash", "display_name", "subject", "fingerprint", "unauthenticated",
             "caller_id", "sig"}
    rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in shown)
    room = f"room {record['room']}" if "room" in record else "-"
    return f"{record.get('time')}  {record.get('event', '?'):<16} {room:<10} {who}  {rest}".rstrip()


def _show(args: argparse.Namespace) -> int:
    try:
        lines = [line.text for line in read_lines(args.files)]
    except OSError as exc:
        print(f"stc-server audit show: {exc}", file=sys.stderr)
        return 2
    for record in select(records_of(lines), room=args.room, since=args.since, until=args.until, everything=args.all):
        print(describe(record))
    return 0
