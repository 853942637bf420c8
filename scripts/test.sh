#!/usr/bin/env bash
# The one command that sets everything up on a fresh Debian/Ubuntu host and runs every test:
# system packages, the virtual environment, the real Asterisk 22 lab (scripts/setup.sh), then
# pytest (nothing skipped). Run as root (the lab uses debootstrap and chroot). Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh scripts/test.sh

printf '== %s\n' "tests" >&2
mkdir -p artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider -rs "$@"
