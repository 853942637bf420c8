#!/usr/bin/env bash
# The one command that sets everything up on a fresh Debian/Ubuntu host and runs every test:
# system packages, the virtual environment, the real Asterisk 22 lab, then pytest (nothing skipped).
# Run as root (the lab uses debootstrap and chroot). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "scripts/test.sh: run as root (the Asterisk lab needs debootstrap and chroot)" >&2; exit 1; }

need_apt=()
PYTHON=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        PYTHON=$(command -v "$candidate"); break
    fi
done
[ -n "$PYTHON" ] || need_apt+=(python3 python3-venv)
command -v git >/dev/null || need_apt+=(git)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    PYTHON=$(command -v python3)
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import stc_wire, pytest' 2>/dev/null; then
    say "virtual environment (.venv) with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[test]'
fi

say "Asterisk lab (Debian sid root with Asterisk 22, SIPp, tshark)"
bash scripts/asterisk-lab.sh setup

say "tests"
mkdir -p artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider -rs "$@"
