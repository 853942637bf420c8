"""Tests without the Asterisk lab take free ports only: they run while another stc-server holds the lab's."""

from __future__ import annotations

import errno
import socket

import pytest

import asterisk_lab
from asterisk_lab import FASTAGI_PORT
from stack import stc_stack
from tests.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


async def test_a_stack_without_the_lab_starts_while_the_fastagi_port_is_taken(pki: TestPki,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asterisk_lab, "_started_here", False)  # this test never uses the lab
    with socket.socket() as other_server:  # another stc-server on the lab's FastAGI port (or it is taken already)
        other_server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            other_server.bind(("127.0.0.1", FASTAGI_PORT))
            other_server.listen()
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE
        async with stc_stack(pki, ("alice",)) as stack:
            rooms = stack.server.rooms
            assert rooms is not None and rooms.fastagi.port != FASTAGI_PORT
            assert stack.clients["alice"].tunnel is not None
