"""`stc-pki`: make and run the demo certificate authority of stc.

    stc-pki [--dir DIR] [--ca-passphrase-file F] COMMAND ...
      init-ca   [--cn CN] [--org O] [--days N] [--key-type T] [--use-ca CERT KEY]
      server    --dns NAME [--dns ...] [--ip ADDR ...] [--days N] [--key-passphrase-file F]
      user NAME --display-name "Full Name" [--org O] [--ou U] [--sip sip:...] [--email ...]
                [--p12-passphrase-file F] [--key-passphrase-file F] [--days N]
      revoke    NAME | --serial HEX
      crl       [--days N]
      list
      demo      [--p12-passphrase-file F]

Every failure the user can fix ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from . import files
from .directory import Issued, PkiDirectory
from .pki import KEY_KINDS, PkiError, parse_ip, utc_now

EXIT_USAGE = 2

DEMO_DOMAIN = "stc.example"
DEMO_USERS: tuple[tuple[str, str], ...] = (
    ("alice", "Alice Adams"),
    ("bob", "Bob Brown"),
    ("carol", "Carol Chen"),
)
DEMO_SERVER_DNS = ("localhost", "stc-server")
DEMO_SERVER_IPS = ("127.0.0.1",)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stc-pki", description="A demo certificate authority for stc.")
    p.add_argument("--dir", type=Path, default=Path("pki"), help="PKI folder (default: ./pki)")
    p.add_argument(
        "--ca-passphrase-file",
        type=Path,
        help="file whose first line is the CA key's passphrase (init-ca: encrypt the new key with it)",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("init-ca", help="make a CA (or adopt an existing one with --use-ca)")
    s.add_argument("--cn", default="stc demo CA", help="CA common name")
    s.add_argument("--org", help="CA organization")
    s.add_argument("--days", type=int, default=3650)
    s.add_argument("--key-type", choices=KEY_KINDS, default="ec-p256")
    s.add_argument("--use-ca", nargs=2, type=Path, metavar=("CERT", "KEY"), help="adopt this CA (PEM files)")

    s = sub.add_parser("server", help="issue the stc-server certificate")
    s.add_argument("--dns", action="append", default=[], required=True, help="DNS name (repeatable)")
    s.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    s.add_argument("--days", type=int, default=825)
    s.add_argument("--key-type", choices=KEY_KINDS, default="ec-p256")
    s.add_argument("--key-passphrase-file", type=Path, help="encrypt server.key with this passphrase")

    s = sub.add_parser("user", help="issue a person's certificate")
    s.add_argument("name", help="short name for the files (users/NAME.pem)")
    s.add_argument("--display-name", required=True, help="the person's full name, as shown to others")
    s.add_argument("--org", help="organization (O)")
    s.add_argument("--ou", help="organizational unit (OU)")
    s.add_argument("--sip", action="append", default=[], help="SIP URI sip:user@host (repeatable)")
    s.add_argument("--email", action="append", default=[], help="e-mail address (repeatable)")
    s.add_argument("--days", type=int, default=365)
    s.add_argument("--key-type", choices=KEY_KINDS, default="ec-p256")
    s.add_argument("--p12-passphrase-file", type=Path, help="also write users/NAME.p12 with this passphrase")
    s.add_argument("--key-passphrase-file", type=Path, help="encrypt users/NAME.key with this passphrase")

    s = sub.add_parser("revoke", help="revoke a certificate and re-issue the CRL")
    target = s.add_mutually_exclusive_group(required=True)
    target.add_argument("name", nargs="?", help="user name, or 'server'")
    target.add_argument("--serial", help="serial number in hex")

    s = sub.add_parser("crl", help="re-issue the CRL")
    s.add_argument("--days", type=int, default=7, help="nextUpdate, in days from now (default 7)")

    sub.add_parser("list", help="list issued certificates")

    s = sub.add_parser("demo", help="make the whole demo set (CA, server, alice, bob, carol, CRL); skips what exists")
    s.add_argument("--p12-passphrase-file", type=Path, help="also write a .p12 per user with this passphrase")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # usage errors and --help: argparse has printed its message
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        ca_passphrase = files.read_passphrase(args.ca_passphrase_file) if args.ca_passphrase_file else None
        pki = PkiDirectory(args.dir, ca_passphrase=ca_passphrase)
        return _COMMANDS[args.command](pki, args, utc_now())
    except PkiError as exc:
        print(f"stc-pki: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"stc-pki: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE


def _optional_passphrase(path: Path | None) -> bytes | None:
    return files.read_passphrase(path) if path else None


def _report(issued: Issued) -> None:
    serial = f"{issued.entry.serial:x}"
    print(f"{issued.entry.name}: {issued.entry.subject} (serial {serial})")
    for path in issued.paths:
        print(f"  wrote {path}")


def _init_ca(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    if args.use_ca:
        ca = pki.adopt_ca(args.use_ca[0], args.use_ca[1], now=now)
        print(f"adopted CA {ca.cert.subject.rfc4514_string()}")
    else:
        ca = pki.init_ca(now=now, common_name=args.cn, organization=args.org, days=args.days, key_kind=args.key_type)
        print(f"made CA {ca.cert.subject.rfc4514_string()}")
    for path in (pki.ca_cert_path, pki.ca_key_path, pki.crl_path):
        print(f"  wrote {path}")
    return 0


def _server(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    issued = pki.issue_server(
        now=now,
        dns_names=args.dns,
        ip_addresses=[parse_ip(ip) for ip in args.ip],
        days=args.days,
        key_passphrase=_optional_passphrase(args.key_passphrase_file),
        key_kind=args.key_type,
    )
    _report(issued)
    return 0


def _user(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    if not args.sip and not args.email:
        raise PkiError("give --sip and/or --email: a user certificate names the person by a SIP URI or e-mail")
    issued = pki.issue_user(
        args.name,
        now=now,
        display_name=args.display_name,
        sip_uris=args.sip,
        emails=args.email,
        organization=args.org,
        org_unit=args.ou,
        days=args.days,
        p12_passphrase=_optional_passphrase(args.p12_passphrase_file),
        key_passphrase=_optional_passphrase(args.key_passphrase_file),
        key_kind=args.key_type,
    )
    _report(issued)
    return 0


def _revoke(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    if args.serial is not None:
        try:
            serial = int(args.serial.replace(":", ""), 16)
        except ValueError:
            raise PkiError(f"--serial must be hexadecimal, not {args.serial!r}") from None
        revoked = pki.revoke(now=now, serial=serial)
    else:
        revoked = pki.revoke(now=now, name=args.name)
    for entry in revoked:
        print(f"revoked {entry.name} (serial {entry.serial:x})")
    print(f"  wrote {pki.crl_path}")
    return 0


def _crl(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    if args.days < 1:
        raise PkiError("--days must be at least 1")
    crl = pki.write_crl(now=now, lifetime=timedelta(days=args.days))
    print(f"CRL with {len(crl)} revoked certificate(s), next update {crl.next_update_utc:%Y-%m-%d %H:%M}Z")
    print(f"  wrote {pki.crl_path}")
    return 0


def _list(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    pki.load_ca()  # a clear error when there is nothing here
    for e in pki.entries():
        state = "revoked" if e.revoked else ("expired" if e.not_after < now else "valid")
        print(f"{e.name:<16} {e.kind:<8} {state:<8} until {e.not_after:%Y-%m-%d}  serial {e.serial:x}  {e.subject}")
    return 0


def _demo(pki: PkiDirectory, args: argparse.Namespace, now: datetime) -> int:
    p12_passphrase = _optional_passphrase(args.p12_passphrase_file)
    if pki.has_ca():
        pki.load_ca()
        print(f"CA exists: {pki.ca_cert_path}")
    else:
        ca = pki.init_ca(now=now)
        print(f"made CA {ca.cert.subject.rfc4514_string()}")
        for path in (pki.ca_cert_path, pki.ca_key_path, pki.crl_path):
            print(f"  wrote {path}")
    if pki.server_cert_path.exists():
        print(f"server exists: {pki.server_cert_path}")
    else:
        _report(
            pki.issue_server(
                now=now, dns_names=DEMO_SERVER_DNS, ip_addresses=[parse_ip(ip) for ip in DEMO_SERVER_IPS]
            )
        )
    for name, display_name in DEMO_USERS:
        if pki.user_paths(name)[0].exists():
            print(f"{name} exists: {pki.user_paths(name)[0]}")
            continue
        _report(
            pki.issue_user(
                name,
                now=now,
                display_name=display_name,
                sip_uris=[f"sip:{name}@{DEMO_DOMAIN}"],
                emails=[f"{name}@{DEMO_DOMAIN}"],
                organization="stc demo",
                p12_passphrase=p12_passphrase,
            )
        )
    if not pki.crl_path.exists():
        pki.write_crl(now=now)
        print(f"CRL:\n  wrote {pki.crl_path}")
    return 0


_COMMANDS = {
    "init-ca": _init_ca,
    "server": _server,
    "user": _user,
    "revoke": _revoke,
    "crl": _crl,
    "list": _list,
    "demo": _demo,
}

if __name__ == "__main__":
    sys.exit(main())
