"""The stc-client window (a local web page): see server.py."""

from .server import STATIC_DIR, UiServer, is_loopback

__all__ = ["STATIC_DIR", "UiServer", "is_loopback"]
