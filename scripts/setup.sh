#!/usr/bin/env bash
# What scripts/test.sh and scripts/demo.sh both need on a fresh Debian/Ubuntu host: Python 3.11+
# with venv, the project's virtual environment (.venv, installed editable with the test extras)
# and the real Asterisk 22 lab (scripts/asterisk-lab.sh setup). Idempotent: a second run only checks.
#
#   scripts/setup.sh [CALLER]    CALLER names the script in error messages (default: scripts/setup.sh)
#
# Run as root (the lab uses debootstrap and chroot). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CALLER=${1:-scripts/setup.sh}
say() { printf '== %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { echo "$CALLER: run as root (the Asterisk lab needs debootstrap and chroot)" >&2; exit 1; }

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

if [ ! -x .venv/bin/python ]; then
    say "virtual environment (.venv) with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
fi
# Every time: quick when nothing changed, and picks up a changed pyproject.toml. pip's and the
# build backend's chatter (setuptools' notice about editable installs, index locations) goes to a
# log that is shown only if the install fails.
say "installing stc into .venv (editable, with the test tools)"
pip_log=$(mktemp)
if ! .venv/bin/pip install -q -e '.[test]' >"$pip_log" 2>&1; then
    cat "$pip_log" >&2
    rm -f "$pip_log"
    echo "$CALLER: pip install -e '.[test]' failed (output above)" >&2
    exit 1
fi
rm -f "$pip_log"

say "Asterisk lab (Debian sid root with Asterisk 22, SIPp, tshark)"
bash scripts/asterisk-lab.sh setup
