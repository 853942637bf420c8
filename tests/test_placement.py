"""Rendezvous placement of rooms on Asterisk nodes (stc_asterisk.placement), and the
`[[asterisk.nodes]]` settings it places them over: pure, in memory."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stc_asterisk.config import ServerConfig
from stc_asterisk.placement import home, ranking
from stc_wire.config import ConfigError, load_config

ROOMS = [str(1000 + n) for n in range(3000)]


def placed(nodes: list[str], **kwargs: object) -> dict[str, str]:
    return {room: home(room, nodes, **kwargs) for room in ROOMS}  # type: ignore[arg-type]


def test_one_node_takes_every_room_and_no_node_is_an_error() -> None:
    assert set(placed(["asterisk"]).values()) == {"asterisk"}
    with pytest.raises(ValueError, match="no Asterisk nodes"):
        home("1000", [])


def test_every_server_places_a_room_the_same_way_whatever_the_order_of_its_list() -> None:
    assert placed(["a", "b", "c"]) == placed(["c", "a", "b"]) == placed(["b", "c", "a"])
    assert ranking("1000", ["a", "b", "c"]) == ranking("1000", ["c", "b", "a"])


def test_rooms_spread_evenly() -> None:
    counts = Counter(placed(["ast-a", "ast-b", "ast-c"]).values())
    assert all(800 < counts[n] < 1200 for n in ("ast-a", "ast-b", "ast-c")), counts


def test_adding_a_node_moves_only_the_rooms_it_takes_about_a_quarter() -> None:
    before, after = placed(["a", "b", "c"]), placed(["a", "b", "c", "d"])
    moved = [room for room in ROOMS if before[room] != after[room]]
    assert all(after[room] == "d" for room in moved)
    assert 600 < len(moved) < 900, len(moved)


def test_removing_a_node_moves_only_its_own_rooms_to_their_second_choice() -> None:
    before, after = placed(["a", "b", "c", "d"]), placed(["a", "b", "d"])
    for room in ROOMS:
        if before[room] != "c":
            assert after[room] == before[room]
        else:
            assert after[room] == ranking(room, ["a", "b", "c", "d"])[1]


def test_a_down_node_is_passed_over_and_the_other_nodes_rooms_stay() -> None:
    nodes = ["a", "b", "c"]
    before = placed(nodes)
    after = placed(nodes, is_up=lambda node: node != "b")
    for room in ROOMS:
        assert after[room] == (before[room] if before[room] != "b" else ranking(room, nodes)[1])
    assert placed(nodes, is_up=lambda node: False) == before  # none up: the first choice, to fail there


def test_a_live_room_stays_on_its_node_so_it_is_never_split() -> None:
    room = "1000"
    first, second = ranking(room, ["a", "b"])
    # It moved to its second choice while the first was down; the first is back: new calls still
    # go where the conference is, until it has ended there.
    assert home(room, ["a", "b"], holds=lambda node: node == second) == second
    assert home(room, ["a", "b"]) == first
    # A node holding it that is down does not count.
    assert home(room, ["a", "b"], is_up=lambda node: node != second, holds=lambda node: node == second) == first


# -- [[asterisk.nodes]] -------------------------------------------------------------

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(text, encoding="utf-8")
    return path


NODE = '[[asterisk.nodes]]\nname = "{name}"\nsip_host = "{host}"\nari_url = "http://{host}:8088"\nami_host = "{host}"\n'


def test_the_single_asterisk_settings_are_a_one_node_list(tmp_path: Path) -> None:
    config = load_config(ServerConfig, write(tmp_path, '[asterisk]\nsip_host = "10.0.0.5"\nari_password = "p"\n'
                                                       'ami_secret = "s"\n'))
    [node] = config.asterisk.node_list()
    assert (node.name, node.sip_address, node.ari_password, node.ami_secret) == ("asterisk", ("10.0.0.5", 5080), "p", "s")
    assert config.asterisk.fastagi_sources() == ("10.0.0.5", "127.0.0.1", "::1")


def test_several_nodes_each_with_its_own_addresses_and_secrets(tmp_path: Path) -> None:
    (tmp_path / "b-ari").write_text("b-ari-secret\n")
    text = (NODE.format(name="ast-a", host="10.0.0.1") + 'ari_password = "a-ari"\nami_secret = "a-ami"\n'
            + NODE.format(name="ast-b", host="10.0.0.2") + 'ari_password_file = "b-ari"\nami_secret = "b-ami"\n'
            + "sip_port = 5090\n")
    config = load_config(ServerConfig, write(tmp_path, text))
    a, b = config.asterisk.node_list()
    assert (a.name, a.sip_address, a.ari_url, a.ami_host, a.ari_password) == (
        "ast-a", ("10.0.0.1", 5080), "http://10.0.0.1:8088", "10.0.0.1", "a-ari")
    assert (b.name, b.sip_address, b.ari_password, b.ami_secret) == ("ast-b", ("10.0.0.2", 5090), "b-ari-secret", "b-ami")
    # FastAGI is the server's: one listener, served to every node.
    assert config.asterisk.fastagi_sources() == ("10.0.0.1", "10.0.0.2", "127.0.0.1", "::1")


@pytest.mark.parametrize(("text", "error"), [
    (NODE.format(name="a", host="h") + 'ari_password = "x"\nami_secret = "y"\n' + NODE.format(name="a", host="i")
     + 'ari_password = "x"\nami_secret = "y"\n', r"asterisk\.nodes: node names must differ"),
    ('[[asterisk.nodes]]\nsip_host = "h"\nari_password = "x"\nami_secret = "y"\n',
     r"asterisk\.nodes\[0\]\.name: every Asterisk node needs a name"),
    (NODE.format(name="a", host="h") + 'ami_secret = "y"\n', r"asterisk\.nodes\[0\] \(a\)\.ari_password: no ARI password"),
    ('[asterisk]\nsip_host = "10.0.0.9"\n' + NODE.format(name="a", host="h") + 'ari_password = "x"\nami_secret = "y"\n',
     r"asterisk\.sip_host: with \[\[asterisk\.nodes\]\], give these in each node"),
    ('[[asterisk.nodes]]\nname = "a"\nari_password = "x"\nami_secret = "y"\nari_url = "ftp://h"\n',
     r"asterisk\.nodes\[0\]\.ari_url: 'ftp://h' is not an http\(s\) URL"),
])
def test_node_settings_that_cannot_work_are_refused_by_name(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_config(ServerConfig, write(tmp_path, text))


async def test_stc_server_check_runs_every_check_once_per_node() -> None:
    from stack import free_tcp_port
    from stc_asterisk.check import run_checks
    from stc_asterisk.config import AsteriskNode

    config = ServerConfig()
    config.asterisk.nodes = tuple(
        AsteriskNode(name=name, ari_url=f"http://127.0.0.1:{free_tcp_port('127.0.0.1')}", ari_password="p",
                     ami_port=free_tcp_port("127.0.0.1"), ami_secret="s")
        for name in ("ast-a", "ast-b"))
    results = await run_checks(config, timeout=2)
    by_node = {node: [r for r in results if r.name.startswith(f"{node}: ")] for node in ("ast-a", "ast-b")}
    assert len(by_node["ast-a"]) == len(by_node["ast-b"]) > 0 and len(results) == 2 * len(by_node["ast-a"])
    for node, found in by_node.items():  # nothing listens there: each node's own ports were tried
        ami = next(r for r in found if r.name == f"{node}: AMI login")
        port = next(n.ami_port for n in config.asterisk.nodes if n.name == node)
        assert not ami.ok and str(port) in ami.detail, ami
