"""A thin ARI client (REST + events websocket) on aiohttp."""

from .client import AriClient, AriCounters, AriError

__all__ = ["AriClient", "AriCounters", "AriError"]
