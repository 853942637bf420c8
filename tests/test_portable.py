"""The client's Windows and macOS code paths, forced on Linux: a PKCS#12 identity reaching ssl
without memfd, stop signals on a loop without add_signal_handler (Windows' proactor), the window
secret's permission check and the per-desktop settings folder. `mypy --platform win32` and
`--platform darwin` (scripts/test.sh) check that nothing Linux-only is called on the way."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stc_asterisk.config import TunnelSettings
from stc_asterisk.tunnel_server import TunnelServer
from stc_client import paths, window_secret
from stc_client.config import ClientConfig, IdentitySettings, ServerSettings
from stc_client.tunnel_client import open_tunnel
from stc_pki.pki import user_p12
from stc_wire import cli_common, tls
from tests.certs import TestPki, make_test_pki

PASSPHRASE = "correct horse"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def carol_p12(pki: TestPki, folder: Path) -> Path:
    files = pki.users["carol"]
    key = serialization.load_pem_private_key(files.key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    path = folder / "carol.p12"
    path.write_bytes(user_p12("carol", key, cert, ca, PASSPHRASE.encode()))  # type: ignore[arg-type]
    return path


@pytest.fixture
async def server(pki: TestPki) -> AsyncIterator[TunnelServer]:
    srv = TunnelServer(TunnelSettings(listen_host="127.0.0.1", listen_port=0, cert=pki.server.cert, key=pki.server.key,
                                      ca_bundle=pki.ca, crl=pki.crl, handshake_timeout=2.0, hello_timeout=2.0))
    await srv.start()
    yield srv
    await srv.close()


class LoadSpy:
    """What ssl.SSLContext.load_cert_chain was given, looked at while it ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[dict[str, Any]] = []
        real = ssl.SSLContext.load_cert_chain

        def spy(ctx: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
            path = Path(certfile)
            self.calls.append({
                "path": path, "text": path.read_text(encoding="ascii"),
                "file_mode": stat.S_IMODE(path.stat().st_mode),
                "folder_mode": stat.S_IMODE(path.parent.stat().st_mode), "password": password,
            })
            real(ctx, certfile, keyfile, password)

        monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)


def p12_config(pki: TestPki, p12: Path, port: int) -> ClientConfig:
    return ClientConfig(
        server=ServerSettings(host="127.0.0.1", port=port, name="localhost", connect_timeout=5.0),
        identity=IdentitySettings(ca_bundle=pki.ca, pkcs12=p12, pkcs12_passphrase=PASSPHRASE),
    )


async def test_pkcs12_identity_opens_a_tunnel_without_memfd(pki: TestPki, server: TunnelServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The Windows/macOS path: no memfd_create. The key reaches ssl encrypted under a one-time
    password, in a 0600 file in a 0700 folder, and both are gone once ssl has read them."""
    monkeypatch.delattr(os, "memfd_create")
    spy = LoadSpy(monkeypatch)
    tunnel = await open_tunnel(p12_config(pki, carol_p12(pki, tmp_path), server.port))
    try:
        assert tunnel.own_identity is not None and tunnel.own_identity["display_name"] == "Carol"
        [peer] = server.peers.values()
        assert peer.identity.display_name == "Carol"
    finally:
        await tunnel.close()
    [call] = spy.calls
    assert call["file_mode"] == 0o600 and call["folder_mode"] == 0o700
    assert "BEGIN ENCRYPTED PRIVATE KEY" in call["text"] and "BEGIN PRIVATE KEY" not in call["text"]
    assert isinstance(call["password"], bytes) and len(call["password"]) == 32
    assert not call["path"].exists() and not call["path"].parent.exists()


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_pkcs12_context_on_windows_and_macos_never_uses_memfd(pki: TestPki, tmp_path: Path, platform: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    p12 = carol_p12(pki, tmp_path)
    spy = LoadSpy(monkeypatch)

    def no_memfd(*args: object) -> int:
        raise AssertionError("memfd_create called off Linux")

    monkeypatch.setattr(os, "memfd_create", no_memfd, raising=False)
    with monkeypatch.context() as m:
        m.setattr(sys, "platform", platform)
        ctx = tls.client_context(Path("unused"), Path("unused"), pki.ca, pkcs12=p12, pkcs12_passphrase=PASSPHRASE)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    [call] = spy.calls
    assert "BEGIN ENCRYPTED PRIVATE KEY" in call["text"] and not call["path"].parent.exists()


def test_pkcs12_on_linux_stays_in_memory(pki: TestPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Linux path is kept: an anonymous memfd, nothing written to any folder."""
    spy = LoadSpy(monkeypatch)
    tls.client_context(Path("unused"), Path("unused"), pki.ca, pkcs12=carol_p12(pki, tmp_path), pkcs12_passphrase=PASSPHRASE)
    [call] = spy.calls
    assert str(call["path"]).startswith("/proc/self/fd/") and call["password"] is None


def test_pkcs12_wrong_passphrase_is_a_clear_error_on_the_portable_path(pki: TestPki, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "memfd_create")
    with pytest.raises(tls.TlsSetupError, match="cannot load PKCS#12 identity"):
        tls.client_context(Path("unused"), Path("unused"), pki.ca, pkcs12=carol_p12(pki, tmp_path), pkcs12_passphrase="wrong")


# -- stop signals ------------------------------------------------------------------------


def windows_like_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The running loop refuses add_signal_handler, as Windows' proactor loop does."""
    loop = asyncio.get_running_loop()

    def refuse(*args: object) -> None:
        raise NotImplementedError

    monkeypatch.setattr(loop, "add_signal_handler", refuse)
    monkeypatch.setattr(loop, "remove_signal_handler", refuse)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("loop_kind", ["posix", "windows-like"])
async def test_a_stop_signal_stops_cleanly(sig: signal.Signals, loop_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if loop_kind == "windows-like":
        windows_like_loop(monkeypatch)
    before = signal.getsignal(sig)
    events: list[str] = []

    async def start() -> None:
        events.append("started")
        signal.raise_signal(sig)  # as Ctrl+C (or a service manager) would, once running

    async def stop() -> None:
        events.append("stopped")

    async with asyncio.timeout(10):
        await cli_common.run_until_signal(start, stop)
    assert events == ["started", "stopped"]
    assert signal.getsignal(sig) == before  # the handlers are put back


# -- the window's secret and the settings folder -------------------------------------------------


def test_window_secret_mode_bits_are_not_read_on_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows reports 0o666 for every file (its ACL decides): a secret there is not refused for it."""
    path = tmp_path / "window-secret"
    made = window_secret.load_or_create_secret(path)
    path.chmod(0o644)
    with pytest.raises(window_secret.WindowSecretError, match="can be read by other users"):
        window_secret.read_secret(path)
    monkeypatch.setattr(sys, "platform", "win32")
    assert window_secret.read_secret(path) == made


@pytest.mark.parametrize(("platform", "env", "expected"), [
    ("win32", {"LOCALAPPDATA": "C:/Users/u/AppData/Local"}, "C:/Users/u/AppData/Local/stc-client"),
    ("darwin", {}, "HOME/Library/Application Support/stc-client"),
    ("darwin", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/stc-client"),
    ("linux", {}, "HOME/.config/stc-client"),
    ("linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/stc-client"),
])
def test_settings_folder_per_desktop(platform: str, env: dict[str, str], expected: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOCALAPPDATA", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(sys, "platform", platform)
    got = paths.user_config_dir()
    assert got == Path(expected.replace("HOME", str(tmp_path)))
    assert paths.user_settings_path() == got / "stc-client.toml"
    assert window_secret.default_secret_path() == got / "window-secret"
