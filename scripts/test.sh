#!/usr/bin/env bash
# The one command that sets everything up on a fresh Debian/Ubuntu host and runs every test:
# system packages, the virtual environment, the real Asterisk 22 lab (scripts/setup.sh), then
# pytest (nothing skipped). Run as root (the lab uses debootstrap and chroot). Extra arguments
# go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh scripts/test.sh

# The browser tests drive Debian's Chromium through Playwright (never a downloaded browser).
if ! command -v chromium >/dev/null; then
    printf '== %s\n' "installing chromium for the browser tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

# A real softphone beside SIPp (tests/test_baresip_e2e.py): Debian's baresip, headless.
if ! command -v baresip >/dev/null; then
    printf '== %s\n' "installing baresip-core for the softphone tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends baresip-core >/dev/null
fi

# tests/test_service_units.py checks the systemd units with systemd-analyze.
if ! command -v systemd-analyze >/dev/null; then
    printf '== %s\n' "installing systemd (systemd-analyze) for the unit file checks" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

printf '== %s\n' "static checks (ruff, mypy)" >&2
.venv/bin/ruff check --quiet stc_wire stc_asterisk stc_client stc_pki tests bench
.venv/bin/mypy --no-error-summary
# The client side must also type-check as Windows and macOS code: nothing Linux-only on its way.
for platform in win32 darwin; do
    .venv/bin/mypy --no-error-summary --platform "$platform" stc_client stc_wire stc_pki
done

printf '== %s\n' "tests" >&2
mkdir -p artifacts
exec .venv/bin/python -m pytest -p no:cacheprovider -rs "$@"
