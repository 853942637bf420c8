"""A PKI folder on disk: the CA, the server and user certificates, the CRL, an index.

Layout under the root (the `--dir` of `stc-pki`):
    ca.pem  ca.key  crl.pem  server.pem  server.key  index.json
    users/NAME.pem  users/NAME.key  users/NAME.p12

`index.json` lists every certificate issued here (serial in lowercase hex,
subject, name, file names, revoked) so that `revoke alice` works by name and
the CRL can be re-issued from it at any time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509

from . import files
from .pki import (
    DEFAULT_CRL_LIFETIME,
    CertificateAuthority,
    IpAddress,
    KeyKind,
    PkiError,
    Validity,
    cert_pem,
    crl_pem,
    generate_key,
    key_pem,
    load_certificate,
    load_private_key,
    user_p12,
)

log = logging.getLogger(__name__)

INDEX_VERSION = 1
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

EntryKind = Literal["server", "user", "external"]


@dataclass(frozen=True)
class IndexEntry:
    """One issued (or, for kind 'external', only revoked) certificate."""

    serial: int
    name: str
    kind: EntryKind
    subject: str
    not_after: datetime
    cert: str | None = None  # file names relative to the PKI root
    key: str | None = None
    p12: str | None = None
    revoked: bool = False
    revoked_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["serial"] = f"{self.serial:x}"
        d["not_after"] = self.not_after.isoformat()
        d["revoked_at"] = self.revoked_at.isoformat() if self.revoked_at else None
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IndexEntry:
        return cls(
            serial=int(d["serial"], 16),
            name=str(d["name"]),
            kind=d["kind"],
            subject=str(d["subject"]),
            not_after=datetime.fromisoformat(d["not_after"]),
            cert=d.get("cert"),
            key=d.get("key"),
            p12=d.get("p12"),
            revoked=bool(d.get("revoked", False)),
            revoked_at=datetime.fromisoformat(d["revoked_at"]) if d.get("revoked_at") else None,
        )


@dataclass(frozen=True)
class Issued:
    """What one issuance wrote."""

    entry: IndexEntry
    cert: x509.Certificate
    paths: tuple[Path, ...]


def check_user_name(name: str) -> str:
    if not _USER_NAME.match(name):
        raise PkiError(
            f"user name {name!r} must be 1-64 ASCII letters, digits, '.', '_' or '-' (it names files), "
            "starting with a letter or digit; put the person's full name in --display-name"
        )
    return name


class PkiDirectory:
    """Operations on one PKI folder. `ca_passphrase` opens an encrypted CA key."""

    def __init__(self, root: Path, *, ca_passphrase: bytes | None = None) -> None:
        self.root = root
        self.ca_passphrase = ca_passphrase

    # -- paths -----------------------------------------------------------
    @property
    def ca_cert_path(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        return self.root / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.root / "crl.pem"

    @property
    def server_cert_path(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key_path(self) -> Path:
        return self.root / "server.key"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def user_paths(self, name: str) -> tuple[Path, Path, Path]:
        """(certificate, key, PKCS#12) of user `name`."""
        base = self.root / "users" / check_user_name(name)
        return base.with_suffix(".pem"), base.with_suffix(".key"), base.with_suffix(".p12")

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # -- the CA ----------------------------------------------------------
    def has_ca(self) -> bool:
        return self.ca_cert_path.exists()

    def load_ca(self) -> CertificateAuthority:
        if not self.ca_cert_path.exists():
            raise PkiError(f"no CA in {self.root}: run `stc-pki --dir {self.root} init-ca` first")
        cert = load_certificate(files.read_bytes(self.ca_cert_path, what="CA certificate"), what=str(self.ca_cert_path))
        key_data = files.read_bytes(self.ca_key_path, what="CA key")
        key = load_private_key(key_data, self.ca_passphrase, what=f"CA key {self.ca_key_path}")
        return CertificateAuthority.from_existing(cert, key)

    def init_ca(
        self,
        *,
        now: datetime,
        common_name: str = "stc demo CA",
        organization: str | None = None,
        days: int = 3650,
        key_kind: KeyKind = "ec-p256",
    ) -> CertificateAuthority:
        """Make a new CA here (its key encrypted if a CA passphrase is set) and an empty CRL."""
        files.refuse_existing(self.ca_cert_path, self.ca_key_path)
        ca = CertificateAuthority.create(
            common_name=common_name,
            organization=organization,
            validity=Validity.for_days(days, now=now),
            key=generate_key(key_kind),
        )
        files.write_secret(self.ca_key_path, key_pem(ca.key, self.ca_passphrase))
        files.write_public(self.ca_cert_path, cert_pem(ca.cert))
        self.write_crl(now=now, ca=ca)
        log.info("made CA %s in %s", ca.cert.subject.rfc4514_string(), self.root)
        return ca

    def adopt_ca(self, cert_file: Path, key_file: Path, *, now: datetime) -> CertificateAuthority:
        """Use an existing CA: check it, then copy its files here as they are (encrypted key stays so)."""
        files.refuse_existing(self.ca_cert_path, self.ca_key_path)
        cert_data = files.read_bytes(cert_file, what="CA certificate")
        key_data = files.read_bytes(key_file, what="CA key")
        cert = load_certificate(cert_data, what=str(cert_file))
        ca = CertificateAuthority.from_existing(cert, load_private_key(key_data, self.ca_passphrase, what=str(key_file)))
        files.write_secret(self.ca_key_path, key_data)
        files.write_public(self.ca_cert_path, cert_pem(cert))
        self.write_crl(now=now, ca=ca)
        return ca

    # -- issuing ---------------------------------------------------------
    def issue_server(
        self,
        *,
        now: datetime,
        dns_names: Sequence[str],
        ip_addresses: Sequence[IpAddress] = (),
        days: int = 825,
        key_passphrase: bytes | None = None,
        key_kind: KeyKind = "ec-p256",
    ) -> Issued:
        files.refuse_existing(self.server_cert_path, self.server_key_path)
        ca = self.load_ca()
        key = generate_key(key_kind)
        cert = ca.issue_server(
            key.public_key(), dns_names=dns_names, ip_addresses=ip_addresses, validity=Validity.for_days(days, now=now)
        )
        files.write_secret(self.server_key_path, key_pem(key, key_passphrase))
        files.write_public(self.server_cert_path, cert_pem(cert))
        entry = IndexEntry(
            serial=cert.serial_number,
            name="server",
            kind="server",
            subject=cert.subject.rfc4514_string(),
            not_after=cert.not_valid_after_utc,
            cert=self._rel(self.server_cert_path),
            key=self._rel(self.server_key_path),
        )
        self._add_entry(entry)
        return Issued(entry, cert, (self.server_cert_path, self.server_key_path))

    def issue_user(
        self,
        name: str,
        *,
        now: datetime,
        display_name: str,
        sip_uris: Sequence[str] = (),
        emails: Sequence[str] = (),
        organization: str | None = None,
        org_unit: str | None = None,
        days: int = 365,
        p12_passphrase: bytes | None = None,
        key_passphrase: bytes | None = None,
        key_kind: KeyKind = "ec-p256",
    ) -> Issued:
        cert_path, key_path, p12_path = self.user_paths(name)
        files.refuse_existing(cert_path, key_path, *([p12_path] if p12_passphrase else []))
        ca = self.load_ca()
        key = generate_key(key_kind)
        cert = ca.issue_user(
            key.public_key(),
            display_name=display_name,
            sip_uris=sip_uris,
            emails=emails,
            organization=organization,
            org_unit=org_unit,
            validity=Validity.for_days(days, now=now),
        )
        written = [key_path, cert_path]
        files.write_secret(key_path, key_pem(key, key_passphrase))
        files.write_public(cert_path, cert_pem(cert))
        if p12_passphrase:
            files.write_secret(p12_path, user_p12(name, key, cert, ca.cert, p12_passphrase))
            written.append(p12_path)
        entry = IndexEntry(
            serial=cert.serial_number,
            name=name,
            kind="user",
            subject=cert.subject.rfc4514_string(),
            not_after=cert.not_valid_after_utc,
            cert=self._rel(cert_path),
            key=self._rel(key_path),
            p12=self._rel(p12_path) if p12_passphrase else None,
        )
        self._add_entry(entry)
        return Issued(entry, cert, tuple(written))

    # -- revocation ------------------------------------------------------
    def revoke(self, *, now: datetime, name: str | None = None, serial: int | None = None) -> list[IndexEntry]:
        """Mark the certificate(s) named `name`, or the one with `serial`, revoked; re-issue the CRL."""
        if (name is None) == (serial is None):
            raise PkiError("revoke needs either a name or a serial")
        ca = self.load_ca()
        entries = self.entries()
        if name is not None:
            hits = [i for i, e in enumerate(entries) if e.name == name and not e.revoked]
            if not hits:
                if any(e.name == name for e in entries):
                    raise PkiError(f"{name!r} is already revoked")
                raise PkiError(f"no certificate named {name!r} in {self.root} (see `stc-pki list`)")
        else:
            assert serial is not None  # one of the two, checked above
            hits = [i for i, e in enumerate(entries) if e.serial == serial]
            if hits and all(entries[i].revoked for i in hits):
                raise PkiError(f"serial {serial:x} is already revoked")
            if not hits:
                # Issued elsewhere by the same CA (an adopted CA): still revocable.
                entries.append(
                    IndexEntry(serial=serial, name=f"serial-{serial:x}", kind="external", subject="", not_after=now)
                )
                hits = [len(entries) - 1]
        revoked = []
        for i in hits:
            entries[i] = replace(entries[i], revoked=True, revoked_at=now)
            revoked.append(entries[i])
        self._save_entries(entries)
        self.write_crl(now=now, ca=ca)
        for e in revoked:
            log.info("revoked %s (serial %x)", e.name, e.serial)
        return revoked

    def write_crl(
        self, *, now: datetime, lifetime: timedelta = DEFAULT_CRL_LIFETIME, ca: CertificateAuthority | None = None
    ) -> x509.CertificateRevocationList:
        """(Re-)issue crl.pem from the index, replacing the old one in one rename."""
        ca = ca if ca is not None else self.load_ca()
        index = self._load_index()
        number = int(index.get("crl_number", 0)) + 1
        revoked = [(e.serial, e.revoked_at or now) for e in self._entries_of(index) if e.revoked]
        crl = ca.issue_crl(revoked, now=now, lifetime=lifetime, crl_number=number)
        files.replace_atomically(self.crl_path, crl_pem(crl))
        index["crl_number"] = number
        self._save_index(index)
        return crl

    # -- the index -------------------------------------------------------
    def entries(self) -> list[IndexEntry]:
        return self._entries_of(self._load_index())

    def _entries_of(self, index: dict[str, Any]) -> list[IndexEntry]:
        try:
            return [IndexEntry.from_json(d) for d in index["certificates"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PkiError(f"{self.index_path} is damaged ({exc!r}); fix or remove it") from None

    def _load_index(self) -> dict[str, Any]:
        if not self.index_path.exists():
            return {"version": INDEX_VERSION, "crl_number": 0, "certificates": []}
        try:
            index = json.loads(files.read_bytes(self.index_path, what="index"))
        except ValueError:
            raise PkiError(f"{self.index_path} is not valid JSON; fix or remove it") from None
        if not isinstance(index, dict) or index.get("version") != INDEX_VERSION:
            raise PkiError(f"{self.index_path}: unknown index format (expected version {INDEX_VERSION})")
        return index

    def _save_index(self, index: dict[str, Any]) -> None:
        files.replace_atomically(self.index_path, (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode())

    def _save_entries(self, entries: list[IndexEntry]) -> None:
        index = self._load_index()
        index["certificates"] = [e.to_json() for e in entries]
        self._save_index(index)

    def _add_entry(self, entry: IndexEntry) -> None:
        self._save_entries([*self.entries(), entry])
