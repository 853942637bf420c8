"""The systemd units in packaging/systemd pass `systemd-analyze verify` (no warning either), with
ExecStart pointed at this checkout's real programs (verify checks that the command exists)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[1] / "packaging" / "systemd"
BIN = Path(sys.executable).parent


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: apt-get install systemd (scripts/test.sh does it)"
    return found


@pytest.mark.parametrize("unit, installed, user", [
    ("stc-server.service", "/opt/stc/bin/stc-server", False),
    ("stc-client.service", "%h/.local/bin/stc-client", True),
])
def test_the_unit_verifies(unit: str, installed: str, user: bool, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    assert installed in text
    (tmp_path / unit).write_text(text.replace(installed, str(BIN / installed.rsplit("/", 1)[1])))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}  # a user manager needs one, even to verify
    result = subprocess.run([analyze(), *(["--user"] if user else []), "verify", str(tmp_path / unit)],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stdout + result.stderr


def test_the_server_unit_is_hardened() -> None:
    lines = set((UNITS / "stc-server.service").read_text().splitlines())
    for required in ("User=stc", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "CapabilityBoundingSet=",
                     "ReadOnlyPaths=/etc/stc", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert required in lines, required
