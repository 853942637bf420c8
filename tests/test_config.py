"""Typed TOML settings: refusals name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from stc_asterisk.config import ServerConfig
from stc_client.config import ClientConfig
from stc_wire.config import ConfigError, load_config


# stc-server has no built-in ARI/AMI secrets: every server file below gives some.
SECRETS = '[asterisk]\nari_password = "test-ari"\nami_secret = "test-ami"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stc.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_local_demo(tmp_path: Path) -> None:
    server = load_config(ServerConfig, write(tmp_path, SECRETS))
    client = load_config(ClientConfig, None)
    assert server.tunnel.listen_port == client.server.port == 5443
    assert client.sip.listen_host == "127.0.0.1" and client.sip.listen_port == 5060
    assert server.asterisk.sip_port == 5080


def test_values_and_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, '[tunnel]\nlisten_port = 6000\ncert = "certs/s.pem"\nkeepalive_interval = 5\n' + SECRETS)
    config = load_config(ServerConfig, path)
    assert config.tunnel.listen_port == 6000
    assert config.tunnel.cert == tmp_path / "certs/s.pem"
    assert config.tunnel.keepalive_interval == 5.0
    assert config.tunnel.key == tmp_path / "pki/server.key"  # defaults resolve next to the file too


def test_trusted_server_certificates_resolve_next_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[tunnel]\ntrusted_servers = ["pki/server-2.pem", "/etc/stc/server-3.pem"]\n' + SECRETS)
    assert load_config(ServerConfig, path).tunnel.trusted_servers == (tmp_path / "pki/server-2.pem",
                                                                       Path("/etc/stc/server-3.pem"))
    assert load_config(ServerConfig, write(tmp_path, SECRETS)).tunnel.trusted_servers == ()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[tunnel]\nlisten_prot = 1\n", "unknown key 'tunnel.listen_prot'"),
        ("[tunel]\n", "unknown key 'tunel'"),
        ('[tunnel]\nlisten_port = "5443"\n', "'tunnel.listen_port' must be int"),
        ("[tunnel]\nlisten_port = 70000\n", "tunnel.listen_port: 70000 is not a TCP port"),
        ("[tunnel]\nkeepalive_interval = 50\n", "tunnel.keepalive_timeout"),
        ("[tunnel]\ncert = 3\n", "'tunnel.cert' must be a path"),
        ("tunnel = 3\n", "'tunnel' must be a table"),
        ('log_level = "LOUD"\n', "log_level"),
        ("[tunnel\n", "not valid TOML"),
        ("[media]\nsingle_port = 70000\n", "single_port: 70000 is not a UDP port"),
    ],
)
def test_bad_settings_name_key_and_file(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text + SECRETS)
    with pytest.raises(ConfigError) as err:
        load_config(ServerConfig, path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ClientConfig, tmp_path / "nope.toml")


def test_client_expected_name_defaults_to_host(tmp_path: Path) -> None:
    config = load_config(ClientConfig, write(tmp_path, '[server]\nhost = "pbx.example"\n'))
    assert config.server.expected_name == "pbx.example"
    config = load_config(ClientConfig, write(tmp_path, '[server]\nhost = "10.0.0.1"\nname = "pbx.example"\n'))
    assert config.server.expected_name == "pbx.example"


def test_cli_refuses_bad_config_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stc_asterisk.cli import main

    path = write(tmp_path, "[asterisk]\nsip_prt = 1\n")
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "asterisk.sip_prt" in err and str(path) in err


def test_single_port_is_off_by_default_and_read_from_media(tmp_path: Path) -> None:
    assert load_config(ServerConfig, write(tmp_path, SECRETS)).media.single_port == 0
    assert load_config(ServerConfig, write(tmp_path, "[media]\nsingle_port = 40000\n" + SECRETS)).media.single_port == 40000


def test_the_server_has_no_built_in_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stc_asterisk.cli import main

    with pytest.raises(ConfigError, match=r"asterisk\.ari_password: no ARI password set; give ari_password_file"):
        load_config(ServerConfig, None)
    path = write(tmp_path, '[asterisk]\nari_password = "a"\n')
    with pytest.raises(ConfigError, match=r"asterisk\.ami_secret: no AMI secret set"):
        load_config(ServerConfig, path)
    with pytest.raises(SystemExit) as exc:  # and stc-server does not start
        main(["--config", str(path)])
    assert exc.value.code == 2 and "asterisk.ami_secret: no AMI secret set" in capsys.readouterr().err
    # Without watching rooms it needs neither.
    assert load_config(ServerConfig, write(tmp_path, "[asterisk]\nwatch_conferences = false\n")).asterisk.ami_secret == ""


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ari").write_text("ari-from-file\n")
    (tmp_path / "secrets" / "ami").write_text("ami-from-file\n")
    path = write(tmp_path, '[asterisk]\nari_password_file = "secrets/ari"\nami_secret_file = "secrets/ami"\n')
    config = load_config(ServerConfig, path)
    assert (config.asterisk.ari_password, config.asterisk.ami_secret) == ("ari-from-file", "ami-from-file")

    path = write(tmp_path, '[asterisk]\nari_password_file = "secrets/none"\nami_secret = "x"\n')
    with pytest.raises(ConfigError, match=r"asterisk\.ari_password_file: cannot read the ARI password from .*secrets/none"):
        load_config(ServerConfig, path)
    (tmp_path / "secrets" / "empty").write_text("\n")
    path = write(tmp_path, '[asterisk]\nari_password = "x"\nami_secret_file = "secrets/empty"\n')
    with pytest.raises(ConfigError, match=r"asterisk\.ami_secret_file: .*empty"):
        load_config(ServerConfig, path)
    path = write(tmp_path, '[asterisk]\nari_password = "x"\nari_password_file = "secrets/ari"\nami_secret = "y"\n')
    with pytest.raises(ConfigError, match=r"asterisk\.ari_password: set ari_password or ari_password_file, not both"):
        load_config(ServerConfig, path)
