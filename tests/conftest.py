"""Shared pytest fixtures: the real Asterisk lab and SIPp callers.

Tests that need Asterisk take the `asterisk_lab` fixture and carry `@pytest.mark.asterisk`.
They never skip: without root or the lab, they fail with the lab script's message.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from asterisk_lab import SIP_HOST, SIP_PORT, lab_start, lab_stop
from sipp import SippCaller


LAB_LOCK = Path("/run/lock/stc-asterisk-lab.lock")


@pytest.fixture(scope="session")
def lab_lock() -> Iterator[None]:
    """The lab has fixed ports and one root: a test session holds an exclusive lock on it, so a
    second test run (or a benchmark) on the same machine waits instead of colliding."""
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LAB_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="session")
def asterisk_lab(lab_lock: None) -> Iterator[str]:
    """Asterisk 22 booted with asterisk-conf/ for the whole session (set up on first use),
    stopped at the end even when tests fail. Yields the lab's status line."""
    status = lab_start()
    try:
        yield status
    finally:
        lab_stop()


@pytest.fixture
def sipp_callers() -> Iterator[Callable[..., SippCaller]]:
    """A factory of SippCaller (aimed at the lab's SIP port unless told otherwise); every
    caller it made is killed and its traces removed when the test ends."""
    made: list[SippCaller] = []

    def make(**kwargs: Any) -> SippCaller:
        kwargs.setdefault("target_host", SIP_HOST)
        kwargs.setdefault("target_port", SIP_PORT)
        caller = SippCaller(**kwargs)
        made.append(caller)
        return caller

    yield make
    for caller in made:
        caller.close()
