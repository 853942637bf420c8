"""The window's per-install secret file: made once, 0600 in a 0700 folder, refused when others can read it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from stc_client.config import ClientConfig
from stc_client.window_secret import WindowSecretError, default_secret_path, load_or_create_secret, read_secret
from stc_wire.config import load_config


def test_made_on_first_start_then_kept(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "stc-client" / "window-secret"
    secret = load_or_create_secret(path)
    assert len(secret) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(path) == secret == read_secret(path)
    assert [p.name for p in path.parent.iterdir()] == ["window-secret"]  # no temporary file left
    assert load_or_create_secret(tmp_path / "other") != secret


def test_a_secret_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "window-secret"
    load_or_create_secret(path)
    path.chmod(0o644)
    with pytest.raises(WindowSecretError, match="can be read by other users"):
        load_or_create_secret(path)
    path.chmod(0o600)
    path.write_text("short\n")
    with pytest.raises(WindowSecretError, match="not one stc-client made"):
        read_secret(path)
    with pytest.raises(WindowSecretError, match="no window secret at"):
        read_secret(tmp_path / "missing")


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    load_or_create_secret(target)
    link = tmp_path / "window-secret"
    link.symlink_to(target)
    with pytest.raises(WindowSecretError, match="cannot read"):
        load_or_create_secret(link)


def test_where_the_settings_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_secret_path() == tmp_path / "xdg" / "stc-client" / "window-secret"
    assert ClientConfig().ui.secret_path == default_secret_path()
    config_file = tmp_path / "c.toml"
    config_file.write_text('[ui]\nsecret_file = "secrets/window"\n')
    assert load_config(ClientConfig, config_file).ui.secret_path == tmp_path / "secrets" / "window"
