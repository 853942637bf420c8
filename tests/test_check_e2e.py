"""`stc-server check` against the lab's real Asterisk: passes as configured, and names the problem
for a dialplan without the admission AGI and for wrong AMI credentials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asterisk_lab import AMI_PORT, AMI_USER, ARI_URL, ARI_USER, FASTAGI_PORT, asterisk_rx, lab_secret
from stc_asterisk.check import run_checks
from stc_asterisk.config import AsteriskSettings, ServerConfig

pytestmark = pytest.mark.asterisk


def lab_settings(**changes: object) -> ServerConfig:
    values: dict[str, object] = dict(ami_port=AMI_PORT, ami_user=AMI_USER, ami_secret=lab_secret("ami-secret"),
                                     ari_url=ARI_URL, ari_user=ARI_USER, ari_password=lab_secret("ari-password"),
                                     fastagi_port=FASTAGI_PORT)
    values.update(changes)
    return ServerConfig(asterisk=AsteriskSettings(**values))  # type: ignore[arg-type]


def test_check_passes_on_the_lab(asterisk_lab: str, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f'[asterisk]\nami_user = "{AMI_USER}"\nami_secret = "{lab_secret("ami-secret")}"\nari_url = "{ARI_URL}"\n'
                      f'ari_user = "{ARI_USER}"\nari_password = "{lab_secret("ari-password")}"\nfastagi_port = {FASTAGI_PORT}\n')
    done = subprocess.run([sys.executable, "-m", "stc_asterisk.cli", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for name in ("AMI login", "modules", "PJSIP endpoint", "dialplan", "ARI login", "ARI application", "FastAGI"):
        assert any(line.startswith(f"ok   {name}:") for line in lines), (name, done.stdout)
    assert "Asterisk reaches 127.0.0.1:4573" in done.stdout  # the AGI really came in from Asterisk
    assert "stc-check" not in asterisk_rx("dialplan show")  # the throw-away context is gone


async def test_check_names_a_dialplan_without_the_agi(asterisk_lab: str) -> None:
    assert "stc-admit" in asterisk_rx("dialplan show _10XX@stc-conference")
    asterisk_rx("dialplan remove extension _10XX@stc-conference 4")  # the AGI(agi://.../stc-admit) step
    try:
        assert "stc-admit" not in asterisk_rx("dialplan show _10XX@stc-conference")
        results = {r.name: r for r in await run_checks(lab_settings(), config_name="/etc/stc/server.toml")}
    finally:
        asterisk_rx("dialplan reload")
    dialplan = results["dialplan"]
    assert not dialplan.ok
    assert "extension _10XX: ConfBridge (priority 7) is not preceded by AGI(agi://127.0.0.1:4573/stc-admit" in dialplan.detail
    assert "/etc/asterisk/extensions.conf, context [stc-conference]" in dialplan.detail
    assert all(r.ok for name, r in results.items() if name != "dialplan"), [r.line() for r in results.values()]


async def test_check_names_wrong_ami_credentials(asterisk_lab: str) -> None:
    results = {r.name: r for r in await run_checks(lab_settings(ami_secret="not-the-secret"),
                                                   config_name="/etc/stc/server.toml")}
    ami = results["AMI login"]
    assert not ami.ok
    assert "refused user 'stc'" in ami.detail and "ami_user/ami_secret in /etc/stc/server.toml" in ami.detail
    assert "/etc/asterisk/manager.conf" in ami.detail
    assert results["ARI login"].ok  # the rest still runs and says what it can
