"""The Asterisk image's configuration step (docker/asterisk/compose-conf.sh), run on a copy of
asterisk-conf/ with each compose Asterisk service's own build args, without Docker: every node
gets its own `systemname` (so two nodes never give channels the same uniqueid), the name stc's
[[asterisk.nodes]] use, and the shipped asterisk-conf/ (the lab's) keeps none."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "docker/asterisk/compose-conf.sh"
ARG_ORDER = ("ASTERISK_IP", "STC_SERVER_IP", "PBX_SUBNET", "ASTERISK_CONTROL_IP", "STC_SERVER_CONTROL_IP", "SYSTEM_NAME")


def asterisk_build_args(compose: str) -> dict[str, dict[str, str]]:
    """service -> its build args, for every service built from docker/asterisk/Dockerfile."""
    found: dict[str, dict[str, str]] = {}
    for block in re.split(r"^  (?=[A-Za-z][\w-]*:\n)", compose, flags=re.MULTILINE)[1:]:
        name = block.split(":", 1)[0]
        if "dockerfile: docker/asterisk/Dockerfile" not in block:
            continue
        args = re.search(r"^      args:\n((?:        .*\n)+)", block, re.MULTILINE)
        assert args is not None, f"{name}: no build args"
        found[name] = dict(re.findall(r"^        ([A-Z_]+): (\S+)", args.group(1), re.MULTILINE))
    return found


def options_of(asterisk_conf: str) -> dict[str, str]:
    section = asterisk_conf.split("[options]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r"^(\w+)\s*=\s*([^;\s]+)", section, re.MULTILINE))


def configure(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "asterisk-conf", conf)
    return subprocess.run(["sh", str(SCRIPT), str(conf), *args], capture_output=True, text=True, timeout=30)


def test_every_compose_asterisk_node_gets_its_own_systemname(tmp_path: Path) -> None:
    services = asterisk_build_args((REPO / "docker-compose.yml").read_text(encoding="utf-8"))
    assert set(services) == {"asterisk", "asterisk-b"}
    names = {}
    for service, args in services.items():
        done = configure(tmp_path / service, [args[key] for key in ARG_ORDER])
        assert done.returncode == 0, done.stderr
        names[service] = options_of((tmp_path / service / "conf/asterisk.conf").read_text(encoding="utf-8"))["systemname"]
    # Each node is named as docker/config/server*.toml's [[asterisk.nodes]] name it.
    assert names == {"asterisk": "asterisk", "asterisk-b": "asterisk-b"}
    for server_toml in ("server.toml", "server-b.toml"):
        nodes = re.findall(r'^\[\[asterisk\.nodes\]\]\nname = "([^"]+)"', (REPO / "docker/config" / server_toml)
                           .read_text(encoding="utf-8"), re.MULTILINE)
        assert sorted(nodes) == sorted(names.values())


def test_the_shipped_config_the_lab_boots_has_no_systemname() -> None:
    assert "systemname" not in options_of((REPO / "asterisk-conf/asterisk.conf").read_text(encoding="utf-8"))


@pytest.mark.parametrize("bad", ["", "node a", "a#b", "-x", "x" * 41])
def test_a_bad_system_name_fails_the_image_build(tmp_path: Path, bad: str) -> None:
    done = configure(tmp_path, ["10.0.0.10", "10.0.0.20", "10.0.0.0/24", "10.0.1.10", "10.0.1.20", bad])
    assert done.returncode != 0 and "SYSTEM_NAME" in done.stderr
