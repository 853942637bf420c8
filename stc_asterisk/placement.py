"""Which Asterisk node a room lives on: rendezvous (highest-random-weight) hashing.

Every stc-server computes the same answer from the room and the configured node names alone,
with nothing shared between them. Adding a node moves only the rooms that now rank it first
(about 1/N of them); removing one moves only its own rooms, each to its second choice.

A node that is down is passed over for new calls: the room's next node in its ranking takes
them (every server that sees the same node down picks the same next one). A room that is live
on a node that is up stays there, so it is never split: it goes back to its first choice only
once its conference on the other node has ended.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence


def weight(room: str, node: str) -> int:
    """The room's weight on a node: 64 bits of SHA-256 over both names (unambiguously joined)."""
    digest = hashlib.sha256(f"{len(node)}:{node}|{room}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def ranking(room: str, nodes: Iterable[str]) -> list[str]:
    """The nodes in the room's order of preference (ties, all but impossible, by name)."""
    return sorted(nodes, key=lambda node: (-weight(room, node), node))


def home(room: str, nodes: Sequence[str], is_up: Callable[[str], bool] = lambda node: True,
         holds: Callable[[str], bool] = lambda node: False) -> str:
    """The node `room` lives on: the best-ranked node that is up and already holds the room
    (`holds`: has its conference now), else its first choice that is up, else its first choice."""
    if not nodes:
        raise ValueError("no Asterisk nodes to place a room on")
    ranked = ranking(room, nodes)
    up = [node for node in ranked if is_up(node)]
    return next((node for node in up if holds(node)), up[0] if up else ranked[0])
