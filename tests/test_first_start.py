"""The first-start import (stc_client/first_start.py) and its route, the settings-file lookup and
the browser opening of `stc-client`, without a browser: every refusal names its field, nothing is
kept from a refused import, and what is kept is private to the user."""

from __future__ import annotations

import base64
import json
import stat
import tomllib
import webbrowser
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stc_client import cli, desktop
from stc_client.config import ClientConfig
from stc_client.first_start import CA_NAME, PKCS12_NAME, first_start_settings
from stc_client.settings import SettingsRejected
from stc_client.state import ClientState
from stc_client.ui import UiServer
from stc_pki.pki import user_p12
from tests.certs import TestPki, make_test_pki

PASSPHRASE = "correct horse"
SECRET = "first-start-secret-0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def p12_bytes(pki: TestPki, user: str = "carol", *, with_ca: bool = True) -> bytes:
    files = pki.users[user]
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    if with_ca:
        ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        return user_p12(user, key, cert, ca, PASSPHRASE.encode())  # type: ignore[arg-type]
    return serialization.pkcs12.serialize_key_and_certificates(
        user.encode(), key, cert, None, serialization.BestAvailableEncryption(PASSPHRASE.encode()))  # type: ignore[arg-type]


def upload(name: str, data: bytes) -> dict[str, str]:
    return {"name": name, "data": base64.b64encode(data).decode()}


def form(pki: TestPki, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "server": {"host": "stc.example.org", "port": "5443", "name": ""},
        "identity": {"pkcs12_file": upload("carol.p12", p12_bytes(pki)), "pkcs12_passphrase": PASSPHRASE,
                     "ca_bundle_file": None},
        "sip": {"listen_port": "5060"},
    }
    for key, value in changes.items():
        section, field = key.split("__")
        doc[section][field] = value
    return doc


def refused(config_path: Path, doc: Any) -> dict[str, str]:
    with pytest.raises(SettingsRejected) as err:
        first_start_settings(doc, config_path=config_path)
    assert not config_path.exists()
    folder = config_path.parent
    assert not folder.exists() or [p.name for p in folder.iterdir()] == [], "a refused import left files behind"
    return {e.field: e.message for e in err.value.errors}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return tmp_path / "profile" / "stc-client" / "stc-client.toml"


def test_import_keeps_the_files_private_and_the_settings_load(pki: TestPki, config_path: Path) -> None:
    config = first_start_settings(form(pki), config_path=config_path)
    folder = config_path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (config_path.name, PKCS12_NAME, CA_NAME):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert sorted(p.name for p in folder.iterdir()) == sorted([config_path.name, PKCS12_NAME, CA_NAME])
    assert config.identity.pkcs12 == folder / PKCS12_NAME and config.identity.ca_bundle == folder / CA_NAME
    assert config.identity.pkcs12_passphrase == PASSPHRASE
    assert (config.server.host, config.server.port, config.sip.listen_port) == ("stc.example.org", 5443, 5060)
    # The CA came out of the .p12 file (stc-pki puts it there).
    assert x509.load_pem_x509_certificates((folder / CA_NAME).read_bytes()) == [x509.load_pem_x509_certificate(pki.ca.read_bytes())]
    doc = tomllib.loads(config_path.read_text(encoding="utf-8"))
    assert doc["identity"] == {"pkcs12": PKCS12_NAME, "pkcs12_passphrase": PASSPHRASE, "ca_bundle": CA_NAME}


def test_a_p12_without_its_ca_needs_the_ca_file(pki: TestPki, config_path: Path) -> None:
    bare = upload("carol.pfx", p12_bytes(pki, with_ca=False))
    errors = refused(config_path, form(pki, identity__pkcs12_file=bare))
    assert errors == {"identity.ca_bundle": "'carol.pfx' does not carry the CA's certificate: choose the CA certificate file (PEM) too"}
    config = first_start_settings(form(pki, identity__pkcs12_file=bare,
                                       identity__ca_bundle_file=upload("ca.crt", pki.ca.read_bytes())), config_path=config_path)
    assert config.identity.ca_bundle.read_bytes() == pki.ca.read_bytes()


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"identity__pkcs12_file": None}, "identity.pkcs12", "choose your PKCS#12 file"),
    ({"identity__pkcs12_file": {"name": "x.p12", "data": "not base64!"}}, "identity.pkcs12", "did not arrive intact"),
    ({"identity__pkcs12_file": "x.p12"}, "identity.pkcs12", "did not arrive as a file"),
    ({"identity__pkcs12_file": upload("empty.p12", b"")}, "identity.pkcs12", "'empty.p12' is empty"),
    ({"identity__pkcs12_file": upload("big.p12", b"x" * 70_000)}, "identity.pkcs12", "too big"),
    # As the settings form says it: a file that does not open is a wrong passphrase or not PKCS#12.
    ({"identity__pkcs12_file": upload("notes.txt", b"hello")}, "identity.pkcs12_passphrase", "'notes.txt' does not open"),
    ({"identity__pkcs12_passphrase": "wrong"}, "identity.pkcs12_passphrase", "'carol.p12' does not open: wrong passphrase"),
    ({"identity__ca_bundle_file": upload("ca.pem", b"no certificate here")}, "identity.ca_bundle", "'ca.pem' holds no PEM certificate"),
    ({"server__host": ""}, "server.host", "host name or address is empty"),
    ({"server__host": "bad host/"}, "server.host", "is not a host name"),
    ({"server__port": "70000"}, "server.port", "not a port number"),
    ({"sip__listen_port": "0"}, "sip.listen_port", "not a port number"),
])
def test_bad_input_is_refused_field_by_field(pki: TestPki, config_path: Path, changes: dict[str, Any], field: str,
                                            words: str) -> None:
    errors = refused(config_path, form(pki, **changes))
    assert field in errors and words in errors[field], errors
    assert all(".first-start-" not in message for message in errors.values()), errors  # the user's names, not ours


def test_an_expired_certificate_is_refused(pki: TestPki, config_path: Path) -> None:
    errors = refused(config_path, form(pki, identity__pkcs12_file=upload("old.p12", p12_bytes(pki, "expired"))))
    assert "expired" in errors["identity.pkcs12"]


def test_no_second_first_start(pki: TestPki, config_path: Path) -> None:
    first_start_settings(form(pki), config_path=config_path)
    before = config_path.read_bytes()
    with pytest.raises(SettingsRejected) as err:
        first_start_settings(form(pki, server__host="elsewhere.example.org"), config_path=config_path)
    assert err.value.errors[0].field == "file" and "set up already" in err.value.errors[0].message
    assert config_path.read_bytes() == before


@pytest.fixture
async def window(config_path: Path) -> AsyncIterator[tuple[UiServer, list[ClientConfig]]]:
    applied: list[ClientConfig] = []

    async def apply(config: ClientConfig) -> None:
        applied.append(config)

    ui = UiServer(ClientState(), config_path, port=0, apply_settings=apply, secret=SECRET)
    await ui.start()
    yield ui, applied
    await ui.close()


async def test_the_route_imports_once_and_only_for_its_user(pki: TestPki, config_path: Path,
                                                            window: tuple[UiServer, list[ClientConfig]]) -> None:
    ui, applied = window
    url = f"{ui.base_url}api/first-start"
    auth = {"Authorization": f"token {SECRET}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{ui.base_url}api/settings", headers=auth) as res:
            assert (await res.json())["first_start"] is True
        async with http.post(url, json=form(pki)) as res:
            assert res.status == 403  # no secret
        async with http.post(url, data=json.dumps(form(pki)), headers={**auth, "Content-Type": "text/plain"}) as res:
            assert res.status == 415  # what a foreign page could send without a preflight
        assert not config_path.exists() and applied == []
        async with http.post(url, json=form(pki), headers=auth) as res:
            body = await res.json()
            assert res.status == 200 and body["ok"] and body["settings"]["identity"]["kind"] == "pkcs12"
            assert body["settings"]["identity"]["pkcs12_passphrase_saved"] is True and PASSPHRASE not in json.dumps(body)
        [config] = applied
        assert config.server.host == "stc.example.org"
        async with http.get(f"{ui.base_url}api/settings", headers=auth) as res:
            assert (await res.json())["first_start"] is False
        async with http.post(url, json=form(pki), headers=auth) as res:
            assert res.status == 400 and (await res.json())["errors"][0]["field"] == "file"
    assert len(applied) == 1


# -- which settings file, and the browser --------------------------------------------------------


def test_settings_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert cli.settings_path(Path("given.toml")) == Path("given.toml")
    assert cli.settings_path(None) == tmp_path / "xdg" / "stc-client" / "stc-client.toml"
    (tmp_path / "stc-client.toml").write_text("", encoding="utf-8")  # as before: ./stc-client.toml wins
    assert cli.settings_path(None) == Path("stc-client.toml")


def test_an_explicit_config_must_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        cli.main(["--config", str(tmp_path / "missing.toml"), "status"])
    assert exit.value.code == 2 and "config file not found" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "platform", "expected"), [
    ({}, "linux", False),  # a server's console: no text browser takes the terminal
    ({"DISPLAY": ":0"}, "linux", True),
    ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", True),
    ({}, "win32", True),
    ({}, "darwin", True),
])
def test_a_desktop_is_needed_to_open_a_browser(env: dict[str, str], platform: str, expected: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("sys.platform", platform)
    assert desktop.has_desktop() is expected


async def test_the_browser_gets_a_private_forwarding_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    monkeypatch.setenv("BROWSER", "stc-test-browser")
    url = "http://127.0.0.1:8765/?token=" + "s" * 43
    assert await desktop.open_in_browser(url, tmp_path / "conf")
    [uri] = opened
    page = tmp_path / "conf" / desktop.OPENER_NAME
    assert uri == page.as_uri()
    assert stat.S_IMODE(page.stat().st_mode) == 0o600 and f'content="0;url={url}"' in page.read_text(encoding="utf-8")
    # No browser on this desktop: said, not fatal.
    monkeypatch.setattr(webbrowser, "open", lambda url: False)
    assert not await desktop.open_in_browser(url, tmp_path / "conf")
