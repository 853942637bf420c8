"""Several Asterisk nodes ([[asterisk.nodes]]) against the real lab Asterisk 22.

The lab runs one Asterisk, so the server is given two nodes: "lab" (the lab Asterisk) and a
node that is down (nothing answers its SIP, ARI or AMI ports). Two rooms are picked so that one
ranks the lab node first and the other ranks the down node first. Both must work, on the lab
node: a room whose first choice is down goes to its second choice, with the same admission
(one FastAGI for every node) and the same rosters, and the down node disturbs neither. The
two-Asterisk picture (rooms on different nodes, one node killed) is the compose `cluster`
profile's test (tests/test_compose_cluster.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
import pytest

from asterisk_lab import SIP_HOST, SIP_PORT, AmiClient, event_is
from sipp import UAC_WAIT_BYE, SippCaller, free_udp_port
from stack import Stack, free_tcp_port, room_caller, server_config, wait_until
from stc_asterisk.app import ServerApp
from stc_asterisk.config import AsteriskNode
from stc_asterisk.placement import ranking
from stc_client.app import ClientApp
from stc_wire.roster import Roster
from tests.certs import TestPki, make_test_pki

pytestmark = pytest.mark.asterisk
LAB, DOWN = "lab", "down"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def rooms_by_first_choice() -> dict[str, str]:
    """A room of the lab dialplan (10XX) that ranks each node first."""
    found: dict[str, str] = {}
    for n in range(100):
        room = f"10{n:02d}"
        found.setdefault(ranking(room, [LAB, DOWN])[0], room)
    return found


def names(roster: Roster | None) -> list[str]:
    return [] if roster is None else sorted(e.identity["display_name"] if e.identity else "UNAUTHENTICATED"
                                            for e in roster.entries)


def two_node_server(pki: TestPki) -> ServerApp:
    config = server_config(pki)
    lab = config.asterisk
    config.asterisk.nodes = (
        AsteriskNode(name=LAB, sip_host=SIP_HOST, sip_port=SIP_PORT, ari_url=lab.ari_url, ari_user=lab.ari_user,
                     ari_password=lab.ari_password, ari_app=lab.ari_app, ami_host=lab.ami_host, ami_port=lab.ami_port,
                     ami_user=lab.ami_user, ami_secret=lab.ami_secret),
        # Nothing listens on these: a node that is down from the start.
        AsteriskNode(name=DOWN, sip_host="127.0.0.1", sip_port=free_udp_port(), ari_url=f"http://127.0.0.1:{free_tcp_port('127.0.0.1')}",
                     ari_password="none", ami_host="127.0.0.1", ami_port=free_tcp_port("127.0.0.1"), ami_secret="none"),
    )
    return ServerApp(config)


async def test_rooms_of_a_down_node_go_to_their_second_choice_and_the_down_node_disturbs_no_one(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    first_choice = rooms_by_first_choice()
    lab_room, moved_room = first_choice[LAB], first_choice[DOWN]
    server = two_node_server(pki)
    await server.start()
    stack = Stack(pki, server)
    try:
        assert set(server.nodes) == {LAB, DOWN}
        await wait_until(lambda: server.nodes[LAB].ari.connected and server.nodes[LAB].ami.up, 30, "the lab node followed")
        assert not server.nodes[DOWN].ari.connected
        # Placement: the room whose first choice is down lives on the lab node, like the other.
        assert server.room_node(lab_room).name == server.room_node(moved_room).name == LAB

        rooms = {"alice": moved_room, "bob": moved_room, "carol": lab_room}
        for user in rooms:
            await stack.add_client(user)
        async with AmiClient() as ami:
            since = ami.mark()
            for user, room in rooms.items():
                room_caller(sipp_callers, stack, user, service=room, scenario=UAC_WAIT_BYE, timeout_s=90).start()
            for room, count in ((moved_room, 2), (lab_room, 1)):
                await ami.wait_for_count(event_is("ConfbridgeJoin", Conference=room), count, timeout=30, since=since)

        expected = {moved_room: ["Alice", "Bob"], lab_room: ["Carol"]}

        def rosters_right() -> bool:
            for user, room in rooms.items():
                client: ClientApp = stack.clients[user]
                roster = client.rosters[-1] if client.rosters else None
                if roster is None or roster.room != room or roster.state != "ok" or names(roster) != expected[room]:
                    return False
            return True

        await wait_until(rosters_right, 15, "each room's roster holds exactly its participants")
        assert all(not c.rosters[-1].unauthenticated for c in stack.clients.values())

        # The operator sees which node is down; the server stays ready (one node up is enough).
        assert server.admin is not None
        async with aiohttp.ClientSession() as http:
            async with http.get(server.admin.url + "/metrics") as response:
                metrics = await response.text()
            async with http.get(server.admin.url + "/readyz") as response:
                assert response.status == 200, await response.text()
        assert f'stc_asterisk_node_up{{api="ari",node="{LAB}"}} 1.0' in metrics
        assert f'stc_asterisk_node_up{{api="ari",node="{DOWN}"}} 0.0' in metrics
        assert "stc_asterisk_ari_up 0.0" in metrics  # not every node is up
        await asyncio.sleep(1)
        assert rosters_right()  # nothing the down node's reconnect attempts did changed a roster
    finally:
        for client in stack.clients.values():
            await client.close()
        await server.close()


def on(server: ServerApp, user: str) -> bool:
    """`user`'s tunnel is on `server`."""
    assert server.tunnels is not None
    return any(peer.identity.display_name == user.title() for peer in server.tunnels.peers.values())


async def test_two_servers_on_one_node_give_everyone_the_same_roster(
        asterisk_lab: str, pki: TestPki, sipp_callers: Callable[..., SippCaller]) -> None:
    """Two stc-servers (as two processes of one machine would run: one tunnel port, the dialplan's
    one FastAGI port, both with reuse_port) follow the same Asterisk. Alice reaches one, Bob the
    other; both see Alice and Bob. ARI hands an application's events to one websocket only, so
    this fails if the two registered the same application name."""
    servers = []
    port = free_tcp_port()
    for _ in range(2):
        config = server_config(pki, listen_port=port)
        config.tunnel.reuse_port = True
        server = ServerApp(config)
        await server.start()
        servers.append(server)
    stacks = [Stack(pki, server) for server in servers]
    try:
        assert servers[0].rooms is not None and servers[1].rooms is not None
        assert servers[0].rooms.ari.app != servers[1].rooms.ari.app
        await wait_until(lambda: all(s.rooms is not None and s.rooms.ari.connected for s in servers), 30, "ARI followed")
        # The kernel picks the process: reconnect until each client is on the server meant for it.
        for stack, user in zip(stacks, ("alice", "bob")):
            for _ in range(30):
                client = await stack.add_client(user)
                await wait_until(lambda: any(on(s, user) for s in servers), 10, "the tunnel registered")
                if on(stack.server, user):
                    break
                await client.close()
                del stack.clients[user]
                await wait_until(lambda: not any(on(s, user) for s in servers), 10, "the tunnel gone")
            else:
                pytest.fail(f"{user} never reached its server")
        async with AmiClient() as ami:
            since = ami.mark()
            for stack, user in zip(stacks, ("alice", "bob")):
                room_caller(sipp_callers, stack, user, scenario=UAC_WAIT_BYE, timeout_s=90).start()
            await ami.wait_for_count(event_is("ConfbridgeJoin", Conference="1000"), 2, timeout=30, since=since)

        def everyone_sees_both() -> bool:
            clients = [c for stack in stacks for c in stack.clients.values()]
            return all(c.rosters and c.rosters[-1].state == "ok" and names(c.rosters[-1]) == ["Alice", "Bob"]
                       for c in clients)

        await wait_until(everyone_sees_both, 15, "Alice and Bob on both rosters, from both servers")
        server_ids = {c.rosters[-1].server_id for stack in stacks for c in stack.clients.values()}
        assert len(server_ids) == 1  # one certificate for both processes: one signer
    finally:
        for stack in stacks:
            for client in stack.clients.values():
                await client.close()
            await stack.server.close()
