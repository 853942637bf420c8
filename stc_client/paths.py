"""Where stc-client keeps its user's files on each desktop: the settings file, the window's
secret and an identity imported in the window.

Linux (and other POSIX): $XDG_CONFIG_HOME/stc-client, default ~/.config/stc-client. macOS:
~/Library/Application Support/stc-client (or $XDG_CONFIG_HOME/stc-client when it is set).
Windows: %LOCALAPPDATA%\\stc-client (local, not roaming: it holds key material).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SETTINGS_FILE = "stc-client.toml"


def user_config_dir() -> Path:
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(local) / "stc-client"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if sys.platform == "darwin" and not xdg:
        return Path.home() / "Library" / "Application Support" / "stc-client"
    return Path(xdg or Path.home() / ".config") / "stc-client"


def user_settings_path() -> Path:
    """The settings file stc-client uses when neither --config nor ./stc-client.toml says otherwise."""
    return user_config_dir() / SETTINGS_FILE


__all__ = ["SETTINGS_FILE", "user_config_dir", "user_settings_path"]
