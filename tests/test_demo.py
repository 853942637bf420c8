"""The one-command demo, run as a user would: `bash scripts/demo.sh --check`.

It must bring up Asterisk (or use the one this session runs), the stc-server, three stc-clients
and three SIPp phones, get all three callers into room 1000 through stc, and then leave nothing
behind: no demo process, no bound demo port, no demo caller in a shared Asterisk, and an
Asterisk that ran before still running (one it started, stopped).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from asterisk_lab import REPO_DIR, asterisk_rx, lab_running

pytestmark = pytest.mark.asterisk

DEMO_SCRIPT = REPO_DIR / "scripts" / "demo.sh"
LOG_DIR = REPO_DIR / "demo-run" / "logs"
USERS = {"alice": "Alice Adams", "bob": "Bob Brown", "carol": "Carol Chen"}
ROOM = "1000"
# Setup is quick once scripts/setup.sh has run; a first run may also build the lab (slow mirror).
DEMO_TIMEOUT_S = 900

# Every port demo.sh and demo/*.toml bind.
TCP_PORTS = (5443, 8062, 8064, 8066)
UDP_PORTS = (5062, 5063, 5064, 5065, 5066, 5067, *range(6000, 6004), *range(6010, 6014), *range(6020, 6024),
             8881, 8882, 8883)
# What only a demo process has on its command line.
DEMO_MARKERS = ("scripts/demo.sh", "demo/server.toml", "demo/alice.toml", "demo/bob.toml", "demo/carol.toml", "demo/sipp-phone.xml")


def demo_processes() -> list[str]:
    """'pid: command line' of every running process started by the demo."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if any(marker in cmdline for marker in DEMO_MARKERS):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def busy_ports() -> list[str]:
    busy = []
    for kind, ports in ((socket.SOCK_STREAM, TCP_PORTS), (socket.SOCK_DGRAM, UDP_PORTS)):
        for port in ports:
            with socket.socket(socket.AF_INET, kind) as probe:
                if kind == socket.SOCK_STREAM:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError as exc:
                    busy.append(f"{'tcp' if kind == socket.SOCK_STREAM else 'udp'}/{port}: {exc.strerror}")
    return busy


def run_demo_check() -> subprocess.CompletedProcess[str]:
    process = subprocess.Popen(
        ["bash", str(DEMO_SCRIPT), "--check"],
        cwd=REPO_DIR,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the script's trap stop what it started.
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        pytest.fail(f"demo.sh --check still running after {DEMO_TIMEOUT_S} s\nstdout:\n{out}\nstderr:\n{err[-4000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_demo_check_puts_three_callers_in_the_room_and_leaves_nothing_behind(lab_lock: None) -> None:
    assert not demo_processes(), "demo processes run before the test"
    assert not busy_ports(), "demo ports are in use before the test"
    asterisk_was_running = lab_running()

    result = run_demo_check()

    report = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, report
    assert "check passed" in result.stderr, report

    # The printout lists the room as Asterisk saw it: the three demo callers, each a PJSIP
    # channel from the stc-server.
    heading = f"Conference room {ROOM}"
    assert heading in result.stdout, report
    listing = result.stdout.split(heading, 1)[1].split("\n\n", 1)[0]
    members = [line.split() for line in listing.splitlines() if line.strip().startswith("PJSIP/")]
    assert sorted(fields[-1] for fields in members) == sorted(USERS), report

    # They came through stc: the server authenticated each caller by certificate.
    server_log = (LOG_DIR / "server.log").read_text(encoding="utf-8", errors="replace")
    for display_name in USERS.values():
        assert display_name in server_log, f"{display_name} not in the server's log:\n{server_log[-4000:]}"

    # Nothing left behind.
    assert not demo_processes(), report
    assert not busy_ports(), report
    assert lab_running() == asterisk_was_running, "the demo stopped an Asterisk it did not start, or left its own"
    if asterisk_was_running:
        room = asterisk_rx(f"confbridge list {ROOM}")
        assert not [line for line in room.splitlines() if line.startswith("PJSIP/") and line.split()[-1] in USERS], room
