"""The desktop install path: the wheel that `pipx install` takes is built from the source tree,
installs into a fresh virtual environment with its `stc-client` command, and carries the window
(page, script, style) and the first-start page, outside the source tree.

The wheel's dependencies are not fetched again: the fresh environment sees this test run's own
third-party packages through a .pth line (which does not bring the editable stc along), so the
stc that runs is the wheel's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stc_wire", "stc_asterisk", "stc_client", "stc_pki")


def run(*args: str | Path, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BROWSER", "DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_wheel_installs_stc_client_with_its_window(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("stc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("stc_client/ui/static/index.html", "stc_client/ui/static/app.js", "stc_client/ui/static/app.css",
                    "stc_client/first_start.py", "stc_client/desktop.py", "stc_wire/tls.py"):
        assert shipped in names, shipped
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "stc-client = stc_client.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "stc-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")

    where = run(python, "-c", "import stc_client.ui as ui; print(ui.STATIC_DIR)", cwd=tmp_path).strip()
    static = Path(where)
    assert static.is_relative_to(venv), f"stc_client came from {where}, not from the wheel"
    assert 'id="first-start"' in (static / "index.html").read_text(encoding="utf-8")
    stc_client = venv / ("Scripts/stc-client.exe" if sys.platform == "win32" else "bin/stc-client")
    usage = run(stc_client, "--help", cwd=tmp_path)
    assert "--no-browser" in usage and "first-start" in usage
