"""Settings from the window: checked before saving, saved atomically, other keys kept; refusals touch nothing."""

from __future__ import annotations

import os
import stat
import tomllib
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certs import TestPki, make_test_pki
from stc_client.config import ClientConfig
from stc_client.settings import (
    SettingsRejected,
    dumps_toml,
    load_current,
    save_settings,
    settings_form,
    validate_settings,
)
from stc_pki.pki import user_p12
from stc_wire.config import load_config

USER_TOML = """\
log_level = "DEBUG"

[server]
host = "old.example"
port = 5443
connect_timeout = 4.5

[identity]
cert = "pki/user-alice.pem"
key = "pki/user-alice.key"
ca_bundle = "pki/ca.pem"

[sip]
listen_host = "127.0.0.1"
listen_port = 5060
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("settings") / "pki")


@pytest.fixture
def config_path(pki: TestPki, tmp_path: Path) -> Path:
    # The config sits beside a symlink to the module's PKI folder, so relative paths work.
    (tmp_path / "pki").symlink_to(pki.dir)
    path = tmp_path / "client.toml"
    path.write_text(USER_TOML, encoding="utf-8")
    os.chmod(path, 0o640)
    return path


def form(pki: TestPki, **changes: Any) -> dict[str, Any]:
    """A valid form for alice; `changes` as 'section__key=value' replace single values."""
    f: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": "6443", "name": "stc-server.test"},
        "identity": {"kind": "pem", "cert": str(pki.users["alice"].cert), "key": str(pki.users["alice"].key),
                     "pkcs12": "", "pkcs12_passphrase": None, "ca_bundle": str(pki.ca)},
        "sip": {"listen_port": 5062},
    }
    for name, value in changes.items():
        section, key = name.split("__")
        f[section][key] = value
    return f


def submit(config_path: Path, f: dict[str, Any], now: datetime | None = None) -> ClientConfig:
    change = validate_settings(f, config_dir=config_path.parent, current=load_current(config_path), now=now)
    return save_settings(config_path, change)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_valid_settings_are_saved_and_other_keys_kept(pki: TestPki, config_path: Path) -> None:
    config = submit(config_path, form(pki))
    assert (config.server.host, config.server.port, config.server.name) == ("127.0.0.1", 6443, "stc-server.test")
    assert config.sip.listen_port == 5062
    assert config.identity.cert == pki.users["alice"].cert and config.identity.ca_bundle == pki.ca
    doc = tomllib.loads(config_path.read_text(encoding="utf-8"))
    assert doc["log_level"] == "DEBUG"  # not in the form: kept
    assert doc["server"]["connect_timeout"] == 4.5
    assert doc["sip"]["listen_host"] == "127.0.0.1"
    assert doc["server"]["port"] == 6443 and doc["sip"]["listen_port"] == 5062
    assert load_config(ClientConfig, config_path) == config
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640  # the user's mode stays
    assert leftovers(config_path.parent) == []


def test_relative_paths_are_relative_to_the_config_file(pki: TestPki, config_path: Path, tmp_path: Path) -> None:
    f = form(pki, identity__cert="pki/user-bob.pem", identity__key="pki/user-bob.key", identity__ca_bundle="pki/ca.pem")
    config = submit(config_path, f)
    assert tomllib.loads(config_path.read_text())["identity"]["cert"] == "pki/user-bob.pem"
    assert config.identity.cert == tmp_path / "pki/user-bob.pem"


def test_empty_server_name_removes_the_key(pki: TestPki, config_path: Path) -> None:
    submit(config_path, form(pki))
    config = submit(config_path, form(pki, server__name=""))
    assert "name" not in tomllib.loads(config_path.read_text())["server"]
    assert config.server.expected_name == "127.0.0.1"


def test_a_missing_config_file_is_created(pki: TestPki, tmp_path: Path) -> None:
    path = tmp_path / "new" / "client.toml"
    path.parent.mkdir()
    config = submit(path, form(pki))
    assert config.server.port == 6443 and path.exists()


def _refusals(pki: TestPki) -> list[tuple[str, dict[str, Any], str, str]]:
    users = pki.users

    def as_user(name: str) -> dict[str, Any]:
        return form(pki, identity__cert=str(users[name].cert), identity__key=str(users[name].key))

    return [
        ("missing cert", form(pki, identity__cert=str(pki.dir / "nope.pem")), "identity.cert", "certificate not found"),
        ("cert is a folder", form(pki, identity__cert=str(pki.dir)), "identity.cert", "is not a file"),
        ("empty key path", form(pki, identity__key=""), "identity.key", "path is empty"),
        ("key of someone else", form(pki, identity__key=str(users["bob"].key)), "identity.key", "does not belong"),
        ("key file holds a cert", form(pki, identity__key=str(users["bob"].cert)), "identity.key", "not a PEM private key"),
        ("cert file holds a key", form(pki, identity__cert=str(users["bob"].key)), "identity.cert", "not a PEM certificate"),
        ("expired", as_user("expired"), "identity.cert", "expired at"),
        ("not yet valid", as_user("not_yet_valid"), "identity.cert", "not valid before"),
        ("no clientAuth", as_user("no_client_auth"), "identity.cert", "clientAuth"),
        ("server cert as user", form(pki, identity__cert=str(pki.server.cert), identity__key=str(pki.server.key)),
         "identity.cert", "clientAuth"),
        ("CA bundle is a key", form(pki, identity__ca_bundle=str(pki.ca_key)), "identity.ca_bundle",
         "holds no PEM certificate"),
        ("CA bundle missing", form(pki, identity__ca_bundle=str(pki.dir / "none.pem")), "identity.ca_bundle",
         "CA bundle not found"),
        ("port 0", form(pki, server__port=0), "server.port", "not a port number"),
        ("port too big", form(pki, server__port="70000"), "server.port", "not a port number"),
        ("port not a number", form(pki, server__port="https"), "server.port", "not a port number"),
        ("port boolean", form(pki, server__port=True), "server.port", "not a port number"),
        ("sip port", form(pki, sip__listen_port=-5), "sip.listen_port", "not a port number"),
        ("empty host", form(pki, server__host="  "), "server.host", "empty"),
        ("host with spaces", form(pki, server__host="my server"), "server.host", "not a host name"),
        ("host not text", form(pki, server__host=5), "server.host", "must be text"),
        ("unknown kind", form(pki, identity__kind="jks"), "identity.kind", "not 'pem' or 'pkcs12'"),
    ]


def test_each_refusal_leaves_the_file_byte_identical(pki: TestPki, config_path: Path) -> None:
    before = config_path.read_bytes()
    mtime = config_path.stat().st_mtime_ns
    for name, f, field, needle in _refusals(pki):
        with pytest.raises(SettingsRejected) as err:
            submit(config_path, f)
        fields = {e.field: e.message for e in err.value.errors}
        assert field in fields, f"{name}: {fields}"
        assert needle in fields[field], f"{name}: {fields[field]!r}"
        assert config_path.read_bytes() == before, name
        assert config_path.stat().st_mtime_ns == mtime, name
        assert leftovers(config_path.parent) == [], name


def test_encrypted_key_is_refused_with_a_hint(pki: TestPki, config_path: Path, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.users["alice"].key.read_bytes(), None)
    encrypted = tmp_path / "alice-encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"secret")))
    before = config_path.read_bytes()
    with pytest.raises(SettingsRejected, match="is encrypted.*PKCS#12"):
        submit(config_path, form(pki, identity__key=str(encrypted)))
    assert config_path.read_bytes() == before


def test_every_problem_is_listed_at_once(pki: TestPki, config_path: Path) -> None:
    f = form(pki, server__port="x", sip__listen_port=0, identity__cert=str(pki.dir / "nope.pem"),
             identity__ca_bundle=str(pki.ca_key))
    with pytest.raises(SettingsRejected) as err:
        submit(config_path, f)
    assert {e.field for e in err.value.errors} == {"server.port", "sip.listen_port", "identity.cert", "identity.ca_bundle"}
    assert "server.port: " in str(err.value)


def test_validity_is_judged_at_the_given_time(pki: TestPki, config_path: Path) -> None:
    later = datetime(2100, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(SettingsRejected, match="expired at"):
        submit(config_path, form(pki), now=later)


def test_a_broken_config_file_is_not_overwritten(pki: TestPki, config_path: Path) -> None:
    config_path.write_text("[server\nhost = 1\n")
    before = config_path.read_bytes()
    with pytest.raises(SettingsRejected) as err:
        save_settings(config_path, validate_settings(form(pki), config_dir=config_path.parent))
    assert err.value.errors[0].field == "file" and "not valid TOML" in err.value.errors[0].message
    assert config_path.read_bytes() == before


def test_a_result_the_client_could_not_load_is_not_written(pki: TestPki, config_path: Path) -> None:
    # A key the loader refuses (a typo the user made by hand) would make the new file unusable.
    config_path.write_text(USER_TOML.replace("[sip]", "[sip]\nlisten_hots = 1"))
    before = config_path.read_bytes()
    with pytest.raises(SettingsRejected) as err:
        save_settings(config_path, validate_settings(form(pki), config_dir=config_path.parent))
    assert err.value.errors[0].field == "file" and "listen_hots" in err.value.errors[0].message
    assert config_path.read_bytes() == before
    assert leftovers(config_path.parent) == []


def test_settings_form_shows_current_values(pki: TestPki, config_path: Path) -> None:
    shown = settings_form(load_current(config_path))
    assert shown["server"] == {"host": "old.example", "port": 5443, "name": ""}
    assert shown["identity"]["kind"] == "pem"
    assert shown["identity"]["cert"] == str(config_path.parent / "pki/user-alice.pem")
    assert shown["sip"] == {"listen_port": 5060}


# -- PKCS#12 (needs IdentitySettings.pkcs12 / pkcs12_passphrase) ------------------------------


def _p12(pki: TestPki, name: str, passphrase: bytes, folder: Path) -> Path:
    files = pki.users[name]
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    path = folder / f"{name}.p12"
    path.write_bytes(user_p12(name, key, cert, ca, passphrase))  # type: ignore[arg-type]
    return path


def test_pkcs12_saved_with_its_passphrase_in_a_private_file(pki: TestPki, config_path: Path, tmp_path: Path) -> None:
    p12 = _p12(pki, "carol", b"correct horse", tmp_path)
    config = submit(config_path, form(pki, identity__kind="pkcs12", identity__pkcs12=str(p12),
                                      identity__pkcs12_passphrase="correct horse"))
    assert config.identity.pkcs12 == p12  # type: ignore[attr-defined]
    assert config.identity.pkcs12_passphrase == "correct horse"  # type: ignore[attr-defined]
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o600  # it holds a secret now
    shown = settings_form(config)
    assert shown["identity"]["kind"] == "pkcs12" and shown["identity"]["pkcs12_passphrase_saved"] is True
    assert "correct horse" not in repr(shown)

    # An empty passphrase in the form keeps the saved one; going back to PEM drops both keys.
    again = submit(config_path, form(pki, identity__kind="pkcs12", identity__pkcs12=str(p12), server__port=7000))
    assert again.server.port == 7000 and again.identity.pkcs12_passphrase == "correct horse"  # type: ignore[attr-defined]
    submit(config_path, form(pki))
    ident = tomllib.loads(config_path.read_text())["identity"]
    assert "pkcs12" not in ident and "pkcs12_passphrase" not in ident


def test_pkcs12_wrong_passphrase_is_refused(pki: TestPki, config_path: Path, tmp_path: Path) -> None:
    p12 = _p12(pki, "carol", b"correct horse", tmp_path)
    before = config_path.read_bytes()
    for passphrase in ("battery staple", None):
        with pytest.raises(SettingsRejected) as err:
            submit(config_path, form(pki, identity__kind="pkcs12", identity__pkcs12=str(p12),
                                     identity__pkcs12_passphrase=passphrase))
        (error,) = err.value.errors
        assert error.field == "identity.pkcs12_passphrase" and "wrong passphrase" in error.message
    with pytest.raises(SettingsRejected, match="PKCS#12 file not found"):
        submit(config_path, form(pki, identity__kind="pkcs12", identity__pkcs12=str(tmp_path / "x.p12"),
                                 identity__pkcs12_passphrase="a"))
    expired = _p12(pki, "expired", b"pw", tmp_path)
    with pytest.raises(SettingsRejected, match="expired at"):
        submit(config_path, form(pki, identity__kind="pkcs12", identity__pkcs12=str(expired), identity__pkcs12_passphrase="pw"))
    assert config_path.read_bytes() == before


# -- the TOML writer ------------------------------------------------------------------------


def test_toml_writer_round_trips() -> None:
    doc = {
        "title": 'quotes " and \\ and\nnew line\ttab \x01 control',
        "unicode": "Zoë Ålice-Øster",
        "n": -42, "big": 2**62, "f": 0.1, "inf": float("inf"), "yes": True, "no": False,
        "when": datetime(2026, 5, 1, 10, 0, 0, tzinfo=timezone.utc), "day": date(2026, 5, 1), "at": time(10, 30),
        "list": [1, 2, 3], "mixed": ["a", 1.5, [True]], "inline": [{"a": 1}, "x"],
        "odd key.with dots": "v", "": "empty key",
        "server": {"host": "h", "nested": {"deep": {"x": 1}}, "after": 2},
        "peers": [{"name": "a", "sub": {"k": 1}}, {"name": "b"}],
        "empty": {},
    }
    text = dumps_toml(doc)
    assert tomllib.loads(text) == doc


def test_toml_writer_refuses_what_toml_cannot_hold() -> None:
    with pytest.raises(TypeError, match="cannot write"):
        dumps_toml({"k": object()})


def test_ec_key_check_covers_other_curves(pki: TestPki, config_path: Path, tmp_path: Path) -> None:
    # A key of the right type but a different curve is still not "the" key.
    other = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "p384.key"
    path.write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    with pytest.raises(SettingsRejected, match="does not belong"):
        submit(config_path, form(pki, identity__key=str(path)))
