"""Changing stc-client's settings from its window: check everything, then save atomically.

`validate_settings` turns the settings form (JSON from the page) into a
`SettingsChange` or raises `SettingsRejected` listing every problem, each
tied to a form field, before anything is touched. `save_settings` rewrites
the TOML file in one rename: the keys the form owns are replaced, every other
key and section the user had is kept (comments are not: tomllib drops them).
The new file is loaded with the real config loader before it replaces the old
one, so a file the client could not start with is never written.

Checked: files exist and are readable; the certificate and key are PEM and
the key belongs to the certificate (or the PKCS#12 file opens with its
passphrase and holds both); the certificate is valid now, lists clientAuth and
has a subjectAltName (the server refuses it otherwise); the CA bundle holds
PEM certificates; ports are 1-65535.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from stc_wire.config import ConfigError, load_config, port_ok

from .config import ClientConfig, IdentitySettings

IdentityKind = Literal["pem", "pkcs12"]
_HOST_RE = re.compile(r"^[A-Za-z0-9._:\-\[\]]{1,253}$")


@dataclass(frozen=True)
class FieldError:
    """One problem, tied to a form field such as 'identity.cert' ('file' for the config file)."""

    field: str
    message: str


class SettingsRejected(Exception):
    """The settings were not saved; `errors` says why, field by field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = tuple(errors)


@dataclass(frozen=True)
class SettingsChange:
    """Checked settings, paths as the user typed them (relative ones are relative to the config file)."""

    server_host: str
    server_port: int
    server_name: str
    identity_kind: IdentityKind
    cert: str  # PEM mode
    key: str  # PEM mode
    pkcs12: str  # PKCS#12 mode
    pkcs12_passphrase: str  # PKCS#12 mode
    ca_bundle: str
    sip_listen_port: int


# -- reading certificates ---------------------------------------------------------


@dataclass(frozen=True)
class LoadedIdentity:
    cert: x509.Certificate
    key: Any  # a cryptography private key; never logged


def read_pkcs12(path: Path, passphrase: str) -> LoadedIdentity:
    """Open a PKCS#12 file; ValueError with a sentence if it cannot be used."""
    data = path.read_bytes()
    try:
        key, cert, _extra = pkcs12.load_key_and_certificates(data, passphrase.encode("utf-8") if passphrase else None)
    except ValueError:
        raise ValueError(f"{path} does not open: wrong passphrase, or not a PKCS#12 file") from None
    if cert is None or key is None:
        raise ValueError(f"{path} must hold both a certificate and its private key")
    return LoadedIdentity(cert, key)


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_readable(errors: list[FieldError], field: str, raw: str, base: Path, what: str) -> Path | None:
    if not raw.strip():
        errors.append(FieldError(field, f"the {what} path is empty"))
        return None
    path = resolve_path(raw, base)
    if not path.exists():
        errors.append(FieldError(field, f"{what} not found: {path}"))
        return None
    if not path.is_file():
        errors.append(FieldError(field, f"{what} {path} is not a file"))
        return None
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        errors.append(FieldError(field, f"cannot read {what} {path}: {exc.strerror}"))
        return None
    return path


def _check_user_cert(errors: list[FieldError], field: str, cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        errors.append(FieldError(field, f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M}Z "
                                        "(or this computer's clock is behind)"))
    elif now > cert.not_valid_after_utc:
        errors.append(FieldError(field, f"the certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z"))
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        ekus = None
    if ekus is None or ExtendedKeyUsageOID.CLIENT_AUTH not in ekus:
        errors.append(FieldError(field, "the certificate is not for client authentication (no clientAuth in its "
                                        "extendedKeyUsage): the server will refuse it"))
    try:
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        errors.append(FieldError(field, "the certificate has no subjectAltName (sip: URI or e-mail): the server will refuse it"))


def _check_pem_identity(errors: list[FieldError], cert_raw: str, key_raw: str, base: Path, now: datetime) -> None:
    cert_path = _check_readable(errors, "identity.cert", cert_raw, base, "certificate")
    key_path = _check_readable(errors, "identity.key", key_raw, base, "key")
    cert = key = None
    if cert_path is not None:
        try:
            cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        except ValueError:
            errors.append(FieldError("identity.cert", f"{cert_path} is not a PEM certificate"))
    if key_path is not None:
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        except TypeError:
            errors.append(FieldError("identity.key", f"{key_path} is encrypted; stc-client needs an unencrypted key "
                                                     "file, or a PKCS#12 file with its passphrase"))
        except ValueError:
            errors.append(FieldError("identity.key", f"{key_path} is not a PEM private key"))
    if cert is not None:
        _check_user_cert(errors, "identity.cert", cert, now)
    if cert is not None and key is not None and _public_der(cert.public_key()) != _public_der(key.public_key()):
        errors.append(FieldError("identity.key", f"this key does not belong to the certificate {cert_path}"))


def _check_pkcs12_identity(errors: list[FieldError], raw: str, passphrase: str, base: Path, now: datetime) -> None:
    path = _check_readable(errors, "identity.pkcs12", raw, base, "PKCS#12 file")
    if path is None:
        return
    try:
        loaded = read_pkcs12(path, passphrase)
    except ValueError as exc:
        errors.append(FieldError("identity.pkcs12_passphrase" if "passphrase" in str(exc) else "identity.pkcs12", str(exc)))
        return
    _check_user_cert(errors, "identity.pkcs12", loaded.cert, now)
    if _public_der(loaded.cert.public_key()) != _public_der(loaded.key.public_key()):
        errors.append(FieldError("identity.pkcs12", "the key in this PKCS#12 file does not belong to its certificate"))


def _check_ca_bundle(errors: list[FieldError], raw: str, base: Path) -> None:
    path = _check_readable(errors, "identity.ca_bundle", raw, base, "CA bundle")
    if path is None:
        return
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError:
        errors.append(FieldError("identity.ca_bundle", f"{path} holds no PEM certificate"))


# -- the form -------------------------------------------------------------------


def resolve_path(raw: str, base: Path) -> Path:
    """A path typed in the form, as the config loader will read it (relative to the config's folder)."""
    path = Path(raw.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _section(form: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = form.get(name)
    return value if isinstance(value, Mapping) else {}


def _text(errors: list[FieldError], section: Mapping[str, Any], field: str, key: str) -> str:
    value = section.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        errors.append(FieldError(field, "must be text"))
        return ""
    return value.strip()


def _port(errors: list[FieldError], section: Mapping[str, Any], field: str, key: str) -> int:
    value = section.get(key)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not port_ok(value):
        errors.append(FieldError(field, f"{value!r} is not a port number (1-65535)"))
        return 0
    return value


def _host(errors: list[FieldError], value: str, field: str, *, required: bool) -> None:
    if any(e.field == field for e in errors):
        return  # already refused (not text): one message per field
    if not value:
        if required:
            errors.append(FieldError(field, "the server's host name or address is empty"))
        return
    if not _HOST_RE.match(value):
        errors.append(FieldError(field, f"{value!r} is not a host name or IP address"))


def validate_settings(
    form: Mapping[str, Any],
    *,
    config_dir: Path,
    current: ClientConfig | None = None,
    now: datetime | None = None,
) -> SettingsChange:
    """Check the settings form; SettingsRejected lists every problem. Nothing is written here.

    form: {"server": {"host", "port", "name"},
           "identity": {"kind": "pem"|"pkcs12", "cert", "key", "pkcs12", "pkcs12_passphrase", "ca_bundle"},
           "sip": {"listen_port"}}
    An empty or missing pkcs12_passphrase keeps the one saved in `current`.
    """
    now = now or datetime.now(timezone.utc)
    errors: list[FieldError] = []
    if not isinstance(form, Mapping):
        raise SettingsRejected([FieldError("form", "settings must be a JSON object")])
    server, ident, sip = _section(form, "server"), _section(form, "identity"), _section(form, "sip")

    host = _text(errors, server, "server.host", "host")
    _host(errors, host, "server.host", required=True)
    port = _port(errors, server, "server.port", "port")
    name = _text(errors, server, "server.name", "name")
    _host(errors, name, "server.name", required=False)
    sip_port = _port(errors, sip, "sip.listen_port", "listen_port")

    kind = ident.get("kind", "pem")
    cert = _text(errors, ident, "identity.cert", "cert")
    key = _text(errors, ident, "identity.key", "key")
    p12 = _text(errors, ident, "identity.pkcs12", "pkcs12")
    passphrase = ident.get("pkcs12_passphrase") or ""
    if not isinstance(passphrase, str):
        errors.append(FieldError("identity.pkcs12_passphrase", "must be text"))
        passphrase = ""
    if not passphrase and current is not None:
        passphrase = getattr(current.identity, "pkcs12_passphrase", "") or ""
    ca_bundle = _text(errors, ident, "identity.ca_bundle", "ca_bundle")

    if kind == "pem":
        _check_pem_identity(errors, cert, key, config_dir, now)
    elif kind == "pkcs12":
        if not _supports_pkcs12():
            errors.append(FieldError("identity.pkcs12", "this stc-client cannot use PKCS#12 files yet"))
        else:
            _check_pkcs12_identity(errors, p12, passphrase, config_dir, now)
    else:
        errors.append(FieldError("identity.kind", f"{kind!r} is not 'pem' or 'pkcs12'"))
    _check_ca_bundle(errors, ca_bundle, config_dir)

    if errors:
        raise SettingsRejected(errors)
    return SettingsChange(
        server_host=host, server_port=port, server_name=name,
        identity_kind=kind, cert=cert, key=key, pkcs12=p12, pkcs12_passphrase=passphrase,
        ca_bundle=ca_bundle, sip_listen_port=sip_port,
    )


def _supports_pkcs12() -> bool:
    names = {f.name for f in dataclasses.fields(IdentitySettings)}
    return {"pkcs12", "pkcs12_passphrase"} <= names


def settings_form(config: ClientConfig) -> dict[str, Any]:
    """The current settings in the form's shape, for the page. The passphrase itself is never sent."""
    ident = config.identity
    p12 = getattr(ident, "pkcs12", None)
    return {
        "server": {"host": config.server.host, "port": config.server.port, "name": config.server.name},
        "identity": {
            "kind": "pkcs12" if p12 else "pem",
            "cert": str(ident.cert),
            "key": str(ident.key),
            "pkcs12": str(p12) if p12 else "",
            "pkcs12_passphrase_saved": bool(getattr(ident, "pkcs12_passphrase", "")),
            "ca_bundle": str(ident.ca_bundle),
        },
        "sip": {"listen_port": config.sip.listen_port},
        "pkcs12_supported": _supports_pkcs12(),
    }


# -- saving ---------------------------------------------------------------------


def updated_document(doc: dict[str, Any], change: SettingsChange) -> dict[str, Any]:
    """`doc` (a parsed TOML file) with the form's keys replaced; everything else kept."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in doc.items()}
    server = out.setdefault("server", {})
    server["host"] = change.server_host
    server["port"] = change.server_port
    if change.server_name:
        server["name"] = change.server_name
    else:
        server.pop("name", None)
    ident = out.setdefault("identity", {})
    if change.identity_kind == "pem":
        ident["cert"] = change.cert
        ident["key"] = change.key
        ident.pop("pkcs12", None)
        ident.pop("pkcs12_passphrase", None)
    else:
        ident["pkcs12"] = change.pkcs12
        if change.pkcs12_passphrase:
            ident["pkcs12_passphrase"] = change.pkcs12_passphrase
        else:
            ident.pop("pkcs12_passphrase", None)
    ident["ca_bundle"] = change.ca_bundle
    out.setdefault("sip", {})["listen_port"] = change.sip_listen_port
    return out


def save_settings(config_path: Path, change: SettingsChange) -> ClientConfig:
    """Rewrite `config_path` atomically with `change` and return the config as the client will load it.

    SettingsRejected (field 'file') and nothing written if the current file cannot be read or
    the result would not load.
    """
    try:
        old = config_path.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError as exc:
        raise SettingsRejected([FieldError("file", f"cannot read {config_path}: {exc.strerror}")]) from None
    try:
        doc = tomllib.loads(old.decode("utf-8")) if old is not None else {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        message = f"{config_path} is not valid TOML now ({exc}); fix it by hand first"
        raise SettingsRejected([FieldError("file", message)]) from None
    text = dumps_toml(updated_document(doc, change))

    mode = stat.S_IMODE(config_path.stat().st_mode) if old is not None else 0o644
    if change.identity_kind == "pkcs12" and change.pkcs12_passphrase:
        mode &= 0o600  # the file now holds a secret
    tmp = config_path.with_name(f".{config_path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        try:
            config = load_config(ClientConfig, tmp)
        except ConfigError as exc:
            raise SettingsRejected([FieldError("file", f"the new settings would not load: {exc}")]) from None
        os.replace(tmp, config_path)
        _fsync_dir(config_path.parent)
    except OSError as exc:
        raise SettingsRejected([FieldError("file", f"cannot write {config_path}: {exc.strerror}")]) from None
    finally:
        tmp.unlink(missing_ok=True)
    return config


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_current(config_path: Path) -> ClientConfig:
    """The config as it is on disk now (the defaults if the file does not exist yet)."""
    return load_config(ClientConfig, config_path if config_path.exists() else None)


# -- a small TOML writer (tomllib only reads) ---------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dumps_toml(doc: Mapping[str, Any]) -> str:
    """TOML text for what tomllib.loads returns (tables, arrays of tables, scalars, dates)."""
    lines: list[str] = []
    _write_table(lines, doc, ())
    return "\n".join(lines).strip("\n") + "\n"


def _write_table(lines: list[str], table: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for k, v in table.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            lines.append(f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        sub = (*path, k)
        header = ".".join(_key(p) for p in sub)
        if isinstance(v, dict):
            lines.extend(["", f"[{header}]"])
            _write_table(lines, v, sub)
        elif _is_table_array(v):
            for item in v:
                lines.extend(["", f"[[{header}]]"])
                _write_table(lines, item, sub)
