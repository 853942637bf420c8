"""Writing PKI files: secrets are created 0600 from the first byte, never chmod-ed later."""

from __future__ import annotations

import os
from pathlib import Path

from .pki import PkiError

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644


def write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Create `path` with `mode` and write `data`; refuse to replace an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path} already exists; not overwriting it") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def write_secret(path: Path, data: bytes) -> None:
    write_new(path, data, mode=SECRET_MODE)


def write_public(path: Path, data: bytes) -> None:
    write_new(path, data, mode=PUBLIC_MODE)


def replace_atomically(path: Path, data: bytes, *, mode: int = PUBLIC_MODE) -> None:
    """Replace `path` in one rename, so a server reloading it never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_existing(*paths: Path) -> None:
    """Check every target first, so an issuance never leaves half its files behind."""
    for path in paths:
        if path.exists():
            raise PkiError(f"{path} already exists; not overwriting it")


def read_bytes(path: Path, *, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror}") from None


def read_passphrase(path: Path) -> bytes:
    """The first line of a passphrase file, without its line ending."""
    data = read_bytes(path, what="passphrase file")
    line = data.splitlines()[0] if data else b""
    if not line:
        raise PkiError(f"passphrase file {path} is empty")
    return line
