"""The window's first-start page: with no settings file yet, the user uploads the PKCS#12 file
their administrator gave them (and, if it does not carry it, the CA's certificate) and types the
server's address. `first_start_settings` checks all of it as the settings form does
(stc_client/settings.py), keeps the files beside the settings file, private to the user (0600 in
a 0700 folder), writes the settings file, and returns the config the client then connects with.

The files are named `identity.p12` and `ca.pem` in the settings file's folder; the settings
refer to them relatively, so the folder can be moved as a whole.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from .config import ClientConfig
from .settings import FieldError, SettingsRejected, save_settings, validate_settings

PKCS12_NAME = "identity.p12"
CA_NAME = "ca.pem"
MAX_FILE = 64 * 1024  # a PKCS#12 file is a few KiB; a CA bundle for one CA, less


def _section(form: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = form.get(name)
    return value if isinstance(value, Mapping) else {}


def _upload(errors: list[FieldError], ident: Mapping[str, Any], key: str, field: str, what: str,
            *, required: bool) -> tuple[str, bytes] | None:
    """An uploaded file, {"name": ..., "data": base64}: (name, bytes), or None with the error noted."""
    upload = ident.get(key)
    if upload is None or upload == "":
        if required:
            errors.append(FieldError(field, f"choose your {what}"))
        return None
    name, data = (upload.get("name"), upload.get("data")) if isinstance(upload, Mapping) else (None, None)
    if not isinstance(name, str) or not isinstance(data, str):
        errors.append(FieldError(field, f"the {what} did not arrive as a file"))
        return None
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        errors.append(FieldError(field, f"the {what} {name!r} did not arrive intact; choose it again"))
        return None
    if not raw:
        errors.append(FieldError(field, f"the {what} {name!r} is empty"))
        return None
    if len(raw) > MAX_FILE:
        errors.append(FieldError(field, f"{name!r} is {len(raw)} bytes: too big for a {what} (at most {MAX_FILE})"))
        return None
    return os.path.basename(name.replace("\\", "/")) or what, raw


def _ca_from_pkcs12(data: bytes, passphrase: str) -> bytes | None:
    """The CA certificates a PKCS#12 file carries beside its own (stc-pki puts the CA there), as PEM."""
    try:
        _key, _cert, extra = pkcs12.load_key_and_certificates(data, passphrase.encode("utf-8") if passphrase else None)
    except ValueError:
        return None  # the check of the file itself says why
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in extra or ()) or None


def _write_private(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    with os.fdopen(os.open(path, flags, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def first_start_settings(form: Mapping[str, Any], *, config_path: Path, now: datetime | None = None) -> ClientConfig:
    """Check the first-start form, keep its files and write `config_path`; SettingsRejected (and
    nothing kept) if anything is wrong, field by field.

    form: {"server": {"host", "port", "name"},
           "identity": {"pkcs12_file": {"name", "data"}, "pkcs12_passphrase", "ca_bundle_file": {"name", "data"} | null},
           "sip": {"listen_port"}}
    """
    if not isinstance(form, Mapping):
        raise SettingsRejected([FieldError("form", "settings must be a JSON object")])
    if config_path.exists():
        raise SettingsRejected([FieldError("file", f"stc-client is set up already ({config_path}): "
                                                   "change its settings below instead")])
    errors: list[FieldError] = []
    ident = _section(form, "identity")
    p12 = _upload(errors, ident, "pkcs12_file", "identity.pkcs12", "PKCS#12 file (.p12)", required=True)
    ca = _upload(errors, ident, "ca_bundle_file", "identity.ca_bundle", "CA certificate file", required=False)
    passphrase = ident.get("pkcs12_passphrase") or ""
    if not isinstance(passphrase, str):
        errors.append(FieldError("identity.pkcs12_passphrase", "must be text"))
        passphrase = ""
    ca_pem = ca[1] if ca is not None else None
    if ca_pem is None and p12 is not None:
        ca_pem = _ca_from_pkcs12(p12[1], passphrase)
        if ca_pem is None and _opens(p12[1], passphrase):
            errors.append(FieldError("identity.ca_bundle", f"{p12[0]!r} does not carry the CA's certificate: "
                                                           "choose the CA certificate file (PEM) too"))
    folder = config_path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".first-start-", dir=folder))  # 0700
    except OSError as exc:
        raise SettingsRejected([FieldError("file", f"cannot write in {folder}: {exc.strerror}")]) from None
    try:
        staged: dict[str, tuple[bytes, str]] = {}  # file name: (bytes, how the user knows it)
        if p12 is not None:
            staged[PKCS12_NAME] = (p12[1], repr(p12[0]))
        if ca_pem is not None:
            staged[CA_NAME] = (ca_pem, repr(ca[0]) if ca is not None else f"the CA certificate in {p12[0] if p12 else ''!r}")
        for name, (data, _shown) in staged.items():
            _write_private(staging / name, data)
        names = {str(staging / name): shown for name, (_data, shown) in staged.items()}
        staged_form = {
            "server": dict(_section(form, "server")), "sip": dict(_section(form, "sip")),
            "identity": {"kind": "pkcs12", "pkcs12_passphrase": passphrase,
                         "pkcs12": str(staging / PKCS12_NAME) if PKCS12_NAME in staged else "",
                         "ca_bundle": str(staging / CA_NAME) if CA_NAME in staged else ""},
        }
        try:
            change = validate_settings(staged_form, config_dir=folder, now=now)
        except SettingsRejected as exc:
            errors.extend(_own_words(e, names) for e in exc.errors if not _already(errors, e))
            raise SettingsRejected(_without_staged_path_errors(errors)) from None
        if errors:
            raise SettingsRejected(errors)
        for name in (PKCS12_NAME, CA_NAME):
            os.replace(staging / name, folder / name)
        return save_settings(config_path, dataclasses.replace(change, pkcs12=PKCS12_NAME, ca_bundle=CA_NAME))
    except OSError as exc:
        raise SettingsRejected([FieldError("file", f"cannot write in {folder}: {exc.strerror}")]) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _opens(data: bytes, passphrase: str) -> bool:
    try:
        pkcs12.load_key_and_certificates(data, passphrase.encode("utf-8") if passphrase else None)
    except ValueError:
        return False
    return True


def _own_words(error: FieldError, names: dict[str, str]) -> FieldError:
    """The settings check names the staged copy; the user knows the file by the name they chose."""
    message = error.message
    for staged, shown in names.items():
        message = message.replace(staged, shown)
    return FieldError(error.field, message)


def _already(errors: list[FieldError], error: FieldError) -> bool:
    return any(e.field == error.field for e in errors)


def _without_staged_path_errors(errors: list[FieldError]) -> list[FieldError]:
    """'the path is empty' for a file that was not uploaded repeats what the upload check said."""
    return [e for e in errors if "path is empty" not in e.message]


__all__ = ["CA_NAME", "MAX_FILE", "PKCS12_NAME", "first_start_settings"]
