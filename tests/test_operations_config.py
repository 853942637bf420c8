"""The [admin], [audit] and CRL settings of stc-server, read from TOML like any others."""

from __future__ import annotations

from pathlib import Path

import pytest

from stc_asterisk.config import ServerConfig
from stc_wire.config import ConfigError, load_config


SECRETS = '[asterisk]\nami_secret = "a"\nari_password = "b"\n'


def load(tmp_path: Path, text: str) -> ServerConfig:
    path = tmp_path / "server.toml"
    path.write_text(SECRETS + text)
    return load_config(ServerConfig, path)


def test_defaults_are_loopback_admin_and_no_audit(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert (config.admin.enabled, config.admin.host, config.admin.port) == (True, "127.0.0.1", 9477)
    assert config.audit.path is None and config.tunnel.crl_url == "" and config.tunnel.crl_fail_closed_after == 0


def test_operations_settings_are_read(tmp_path: Path) -> None:
    config = load(tmp_path, '[admin]\nport = 0\n[audit]\npath = "state/audit.jsonl"\nsign_interval = 5\n'
                            '[tunnel]\ncrl_url = "https://pki.example.org/ca.crl"\ncrl_fail_closed_after = 86400\n')
    assert config.admin.port == 0
    assert config.audit.path == tmp_path / "state" / "audit.jsonl"  # relative to the file, like every path
    assert config.audit.sign_interval == 5
    assert config.tunnel.crl_url == "https://pki.example.org/ca.crl" and config.tunnel.crl_fail_closed_after == 86400


@pytest.mark.parametrize("text, key", [
    ('[admin]\nport = 70000\n', "admin.port"),
    ('[audit]\nsign_interval = 0\n', "audit.sign_interval"),
    ('[tunnel]\ncrl_url = "ftp://pki.example.org/ca.crl"\n', "tunnel.crl_url"),
    ('[tunnel]\ncrl_fail_closed_after = -1\n', "tunnel.crl_fail_closed_after"),
])
def test_bad_values_are_refused_with_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, text)


async def test_a_busy_admin_port_names_the_setting(tmp_path: Path) -> None:
    import socket

    from stack import server_config
    from stc_asterisk.app import ServerApp
    from tests.certs import make_test_pki

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = server_config(make_test_pki(tmp_path / "pki"))
        config.asterisk.watch_conferences = False
        config.admin.port = busy.getsockname()[1]
        app = ServerApp(config)
        try:
            with pytest.raises(OSError, match=r"change \[admin\] port"):
                await app.start()
        finally:
            await app.close()
