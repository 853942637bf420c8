"""The window's per-install secret: whoever holds it is the user, as far as the window is concerned.

Made on the client's first start and kept in a file only its user can read (0600, by default
$XDG_CONFIG_HOME/stc-client/window-secret). The address the client prints for its user carries
it (as Jupyter's does); `stc-client status` reads it from the file. Other local users and web
pages cannot read the file, so they cannot talk to the window.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

FILE_NAME = "window-secret"
_SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{32,256}$")


class WindowSecretError(Exception):
    """The secret file cannot be read, made or trusted; the message names the file and what to do."""


def default_secret_path() -> Path:
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "stc-client" / FILE_NAME


def read_secret(path: Path) -> str:
    """The secret in `path`; WindowSecretError if it is missing, unreadable, malformed or readable by others."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise WindowSecretError(f"no window secret at {path}: stc-client makes it on its first start") from None
    except OSError as exc:
        raise WindowSecretError(f"cannot read the window secret {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
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
