"""The window's per-install secret: whoever holds it is the user, as far as the window is concerned.

Made on the client's first start and kept in a file only its user can read (0600, by default
$XDG_CONFIG_HOME/stc-client/window-secret; on macOS and Windows in the folder stc_client/paths.py
names, which on Windows is private to its user by the profile's ACL). The address the client prints for its user carries
it (as Jupyter's does); `stc-client status` reads it from the file. Other local users and web
pages cannot read the file, so they cannot talk to the window.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import sys
import tempfile
from pathlib import Path

from .paths import user_config_dir

FILE_NAME = "window-secret"
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


class WindowSecretError(Exception):
    """The secret file cannot be read, made or trusted; the message names the file and what to do."""


if sys.platform == "win32":
    _OPEN_FLAGS = os.O_RDONLY | os.O_BINARY  # Windows has no O_NOFOLLOW
else:
    _OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW


def default_secret_path() -> Path:
    return user_config_dir() / FILE_NAME


def readable_by_others(mode: int) -> bool:
    """Group or other bits set. Windows keeps who may read a file in its ACL, not in these bits
    (os.stat always reports 0o666 or 0o444 there), so they say nothing there."""
    return sys.platform != "win32" and bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def read_secret(path: Path) -> str:
    """The secret in `path`; WindowSecretError if it is missing, unreadable, malformed or readable by others."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise WindowSecretError(f"no window secret at {path}: stc-client makes it on its first start") from None
    except OSError as exc:
        raise WindowSecretError(f"cannot read the window secret {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if readable_by_others(info.st_mode):
            raise WindowSecretError(f"the window secret {path} can be read by other users: "
                                    f"remove it (stc-client makes a new one) or `chmod 600` it")
        text = f.read(1024).decode("ascii", errors="replace").strip()
    if not _SECRET_RE.match(text):
        raise WindowSecretError(f"the window secret {path} is not one stc-client made: remove it (a new one is made)")
    return text


def load_or_create_secret(path: Path) -> str:
    """The secret in `path`, made (0600, in a 0700 folder) if there is none yet."""
    if path.exists() or path.is_symlink():
        return read_secret(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".window-secret-", dir=path.parent)  # 0600
    except OSError as exc:
        raise WindowSecretError(f"cannot make the window secret {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a secret another client made meanwhile
        except FileExistsError:
            pass
        except OSError as exc:
            raise WindowSecretError(f"cannot make the window secret {path}: {exc.strerror or exc}") from None
    finally:
        os.unlink(tmp)
    return read_secret(path)


__all__ = ["WindowSecretError", "default_secret_path", "load_or_create_secret", "read_secret"]
