"""Shared pytest fixtures: the real Asterisk lab and SIPp callers.

Tests that need Asterisk take the `asterisk_lab` fixture and carry `@pytest.mark.asterisk`.
They never skip: without root or the lab, they fail with the lab script's message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from asterisk_lab import SIP_HOST, SIP_PORT, lab_start, lab_stop
from sipp import SippCaller


@pytest.fixture(scope="session")
def asterisk_lab() -> Iterator[str]:
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
