"""The compose stack's `cluster` profile, for real: two Asterisk nodes, two stc-servers, four
participants in two rooms that live on different nodes.

- Room 1000 (alice, bob, carol, through stc-server) lives on asterisk-b and room 1002 (dave,
  through stc-server-b) on asterisk, as rendezvous hashing over the node names places them, and
  each room's conference is on its node only.
- Every window lists exactly its own room's participants, from their certificates; each server
  follows both nodes (its log has the rosters of the room none of its clients is in).
- Killing one Asterisk node (asterisk, room 1002): dave is told (his roster's state is unknown),
  and room 1000 on the other node is untouched (same channels in its bridge, every window green
  with the same three names the whole time).

The engine, base image and helpers are tests/test_compose.py's; the images are the default
profile's (asterisk-b is the Asterisk image built with its own addresses: only the small
configuration layer differs). Never skipped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

from stc_asterisk.placement import home
from test_compose import BASE_SCRIPT, BASE_TIMEOUT_S, BUILD_TIMEOUT_S, COMPOSE_FILE, Engine, _run, _window_status, engine

logger = logging.getLogger(__name__)
pytestmark = pytest.mark.compose

__all__ = ["engine"]  # the fixture, shared with tests/test_compose.py

PROJECT = "stc-cluster-test"
PROFILE = ("--profile", "cluster")
NODES = ["asterisk", "asterisk-b"]  # docker/config/server.toml's [[asterisk.nodes]]
# participant -> (certificate name, window port, room, the server it tunnels to)
PARTICIPANTS = {
    "alice": ("Alice Adams", 8081, "1000", "stc-server"),
    "bob": ("Bob Brown", 8082, "1000", "stc-server"),
    "carol": ("Carol Chen", 8083, "1000", "stc-server"),
    "dave": ("Dave Davis", 8084, "1002", "stc-server-b"),
}
ROOMS = {room: sorted(name for name, _, r, _ in PARTICIPANTS.values() if r == room) for room in ("1000", "1002")}
UP_WAIT_S = 240
GREEN_WAIT_S = 90.0
ASTERISK_RX = ("asterisk", "-C", "/etc/stc-asterisk/asterisk.conf", "-rx")


def compose_cmd(*args: str) -> list[str]:
    return ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *PROFILE, *args]


@dataclass
class Cluster:
    env: dict[str, str]
    window_secrets: dict[str, str]

    def compose(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return _run(compose_cmd(*args), timeout=timeout, env=self.env, check=check).stdout

    def status(self, participant: str) -> dict[str, object]:
        return _window_status(PARTICIPANTS[participant][1], self.window_secrets[participant])

    def bridge(self, node: str, room: str) -> list[str]:
        """The callers (SIPp's From user) in `room`'s ConfBridge on `node`; [] if it has none."""
        out = self.compose("exec", "-T", node, *ASTERISK_RX, f"confbridge list {room}", check=False)
        return sorted(re.findall(r"^PJSIP/\S+\s+.*\s(\S+)\s*$", out, re.MULTILINE))

    def channel_ids(self, node: str) -> list[str]:
        """The uniqueids of `node`'s channels (the last field of `core show channels concise`)."""
        out = self.compose("exec", "-T", node, *ASTERISK_RX, "core show channels concise")
        return [line.rsplit("!", 1)[-1].strip() for line in out.splitlines() if "!" in line]


def window_secrets(env: dict[str, str]) -> dict[str, str]:
    found = {}
    for participant, (_, port, _, _) in PARTICIPANTS.items():
        log = _run(compose_cmd("logs", "--no-color", f"{participant}-client"), timeout=60, env=env).stdout
        tokens = re.findall(rf"client window at http://127\.0\.0\.1:{port}/\?token=([A-Za-z0-9_-]+)", log)
        if tokens:
            found[participant] = tokens[-1]
    return found


def names(status: dict[str, object]) -> list[str]:
    rows = status["participants"]
    assert isinstance(rows, list)
    return sorted(row["display_name"] for row in rows)


def in_room(cluster: Cluster, participant: str) -> bool:
    """Green, in its room, with exactly that room's participants, all authenticated."""
    try:
        status = cluster.status(participant)
    except OSError:
        return False
    room = PARTICIPANTS[participant][2]
    call, rows = status["call"], status["participants"]
    return (status["light"] == "green" and isinstance(call, dict) and call["room"] == room
            and names(status) == ROOMS[room] and isinstance(rows, list) and all(r["authenticated"] for r in rows))


@pytest.fixture(scope="module")
def cluster(engine: Engine) -> Iterator[Cluster]:
    env = engine.env
    _run(["bash", str(BASE_SCRIPT)], timeout=BASE_TIMEOUT_S, env=env)
    _run(compose_cmd("down", "-v", "--remove-orphans"), timeout=120, env=env)
    t0 = time.monotonic()
    _run(compose_cmd("build"), timeout=BUILD_TIMEOUT_S, env=env)
    build_s = time.monotonic() - t0
    up = _run(compose_cmd("up", "-d", "--wait", "--wait-timeout", str(UP_WAIT_S)), timeout=UP_WAIT_S + 60, env=env,
              check=False)
    logger.info("cluster: build %.0f s, up %.0f s", build_s, time.monotonic() - t0 - build_s)
    started = Cluster(env, {})
    try:
        assert up.returncode == 0, f"docker compose --profile cluster up --wait failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        deadline = time.monotonic() + GREEN_WAIT_S
        while time.monotonic() < deadline:
            started.window_secrets = window_secrets(env)
            if len(started.window_secrets) == len(PARTICIPANTS) and all(in_room(started, p) for p in PARTICIPANTS):
                break
            time.sleep(1)
        yield started
    finally:
        logs = _run(compose_cmd("logs", "--no-color", "--tail", "60"), timeout=60, env=env, check=False)
        logger.info("cluster logs at the end:\n%s", logs.stdout[-30000:])
        _run(compose_cmd("down", "-v", "--remove-orphans"), timeout=180, env=env, check=False)
        _run(["docker", "image", "prune", "-f", "--filter", "label=io.stc.image"], timeout=120, env=env, check=False)


def test_the_two_rooms_live_on_different_nodes_and_every_roster_holds_exactly_its_room(cluster: Cluster) -> None:
    # Where rendezvous hashing puts them (every server computes the same).
    assert home("1000", NODES) == "asterisk-b" and home("1002", NODES) == "asterisk"
    rows = [json.loads(line) for line in cluster.compose("ps", "-a", "--format", "json").splitlines() if line.strip()]
    unhealthy = {r["Service"]: r["Status"] for r in rows if r["Service"] != "pki" and r.get("Health") != "healthy"}
    assert not unhealthy, unhealthy

    assert cluster.bridge("asterisk-b", "1000") == ["alice", "bob", "carol"]
    assert cluster.bridge("asterisk", "1002") == ["dave"]
    assert cluster.bridge("asterisk", "1000") == [] and cluster.bridge("asterisk-b", "1002") == []
    # Each node's channel uniqueids start with its own systemname: two nodes never share one.
    for node in NODES:
        ids = cluster.channel_ids(node)
        assert ids and all(re.fullmatch(rf"{re.escape(node)}-\d+\.\d+", i) for i in ids), (node, ids)

    for participant, (own_name, _, room, _) in PARTICIPANTS.items():
        status = cluster.status(participant)
        assert in_room(cluster, participant), (participant, status["light"], status["call"], status["participants"])
        assert [r["display_name"] for r in status["participants"] if r["is_me"]] == [own_name]  # type: ignore[union-attr]

    # Clients on both servers; each server follows both nodes: it builds the roster of the room
    # none of its own clients is in.
    for server, rooms_of_others in (("stc-server", "1000"), ("stc-server-b", "1002")):
        log = cluster.compose("logs", "--no-color", server)
        connected = set(re.findall(r"client connected from \S+: CN=([^,]+),", log))
        assert connected == {n for n, _, _, s in PARTICIPANTS.values() if s == server}, log[-3000:]
    for server in ("stc-server", "stc-server-b"):
        log = cluster.compose("logs", "--no-color", server)
        for room in ROOMS:
            assert re.search(rf"room {room} roster v\d+: {len(ROOMS[room])} participant\(s\), 0 unauthenticated", log), \
                (server, room, log[-3000:])


def phones_never_hung_up(cluster: Cluster, participants: Iterable[str]) -> None:
    """Each SIPp softphone still runs its one call and never received a BYE (its message log)."""
    for participant in participants:
        state = cluster.compose("ps", "--format", "{{.State}}", f"{participant}-phone").strip()
        assert state == "running", (participant, state)
        messages = cluster.compose("exec", "-T", f"{participant}-phone", "cat", "/tmp/sipp-messages.log", check=False)
        assert not re.search(r"^BYE sip:", messages, re.MULTILINE), (participant, messages[-3000:])


def reconnects(status: dict[str, object]) -> int:
    """How many times the window's call history says the call lost its way and reconnected."""
    history = status["history"]
    assert isinstance(history, list)
    return sum(1 for entry in history if entry["kind"] == "reconnecting")


def wait_in_room(cluster: Cluster, participants: Iterable[str], seconds: float) -> float:
    """Seconds until every one of `participants` is green in its room with its full roster."""
    t0 = time.monotonic()
    waiting = set(participants)
    while waiting and time.monotonic() - t0 < seconds:
        waiting = {p for p in waiting if not in_room(cluster, p)}
        if waiting:
            time.sleep(0.5)
    assert not waiting, {p: cluster.status(p) for p in waiting}
    return time.monotonic() - t0


def test_killing_one_asterisk_node_leaves_the_other_nodes_room_untouched(cluster: Cluster) -> None:
    before = cluster.compose("exec", "-T", "asterisk-b", *ASTERISK_RX, "confbridge list 1000")
    channels = sorted(re.findall(r"^(PJSIP/\S+)", before, re.MULTILINE))
    assert len(channels) == 3, before
    reconnects_before = reconnects(cluster.status("dave"))
    cluster.compose("kill", "asterisk")  # room 1002's node; not restarted (killed by hand)

    # Dave is told (his window goes yellow, "reconnecting", and its history says so: the rejoin
    # can be over before a poll sees the yellow light), and his call rejoins room 1002 on the node
    # that is left (placement passes over a node that is down), with no action by his softphone.
    deadline = time.monotonic() + 30
    told = False
    while time.monotonic() < deadline and not told:
        status = cluster.status("dave")
        told = status["light"] == "yellow" or reconnects(status) > reconnects_before
        # Meanwhile room 1000 stays as it was, every second.
        for participant in ("alice", "bob", "carol"):
            assert in_room(cluster, participant), (participant, cluster.status(participant))
        time.sleep(0.5)
    assert told, cluster.status("dave")
    gap = wait_in_room(cluster, ["dave"], 30)
    logger.info("dave back in room 1002 %.1f s after he was told", gap)
    assert cluster.bridge("asterisk-b", "1002") == ["dave"]
    for _ in range(5):  # and room 1000 for a while after
        for participant in ("alice", "bob", "carol"):
            assert in_room(cluster, participant), (participant, cluster.status(participant))
        time.sleep(1)
    after = cluster.compose("exec", "-T", "asterisk-b", *ASTERISK_RX, "confbridge list 1000")
    assert sorted(re.findall(r"^(PJSIP/\S+)", after, re.MULTILINE)) == channels, after
    phones_never_hung_up(cluster, PARTICIPANTS)


def test_killing_one_stc_server_moves_its_clients_to_the_other_with_their_calls_up(cluster: Cluster) -> None:
    """alice, bob and carol tunnel to stc-server and list stc-server-b in `[server] hosts`."""
    movers = [p for p, (_, _, _, server) in PARTICIPANTS.items() if server == "stc-server"]
    cluster.compose("kill", "stc-server")  # not restarted (killed by hand)
    t0 = time.monotonic()
    back = wait_in_room(cluster, movers, 10)
    logger.info("alice, bob and carol back in room 1000 through stc-server-b %.1f s after the kill", back)
    log = cluster.compose("logs", "--no-color", "stc-server-b")
    connected = set(re.findall(r"client connected from \S+: CN=([^,]+),", log))
    assert {PARTICIPANTS[p][0] for p in movers} <= connected, log[-3000:]
    assert cluster.bridge("asterisk-b", "1000") == ["alice", "bob", "carol"]
    assert in_room(cluster, "dave"), cluster.status("dave")
    phones_never_hung_up(cluster, PARTICIPANTS)
    assert time.monotonic() - t0 < 60
