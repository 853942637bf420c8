#!/usr/bin/env bash
# Make the local base image for the stc images when no registry is reachable:
# `debootstrap --variant=minbase sid` into a temporary root, then `docker import` it.
#
#   scripts/docker-base.sh          make the image unless it exists (idempotent)
#   scripts/docker-base.sh --force  make it again (replaces the tag)
#
# Build the stack on it with: docker compose build --build-arg BASE_IMAGE=stc-base:sid
# Environment: STC_BASE_IMAGE (default stc-base:sid), STC_DEBIAN_MIRROR (optional; default:
# debootstrap's own), STC_BASE_WORKDIR (where the temporary root is made; default /var/tmp).
# Needs root and a running engine (scripts/docker-engine.sh start). Logs go to stderr; the
# image name goes to stdout.
set -euo pipefail
# shellcheck source=scripts/lib/sid-root.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sid-root.sh"

IMAGE=${STC_BASE_IMAGE:-stc-base:sid}
DEBIAN_MIRROR=${STC_DEBIAN_MIRROR:-}
WORKDIR=${STC_BASE_WORKDIR:-/var/tmp}
WORKDIR=${WORKDIR%/}
# The same fixes as scripts/asterisk-lab.sh's root (docs: the lab's pitfalls 1 and 2).
ROOT_APT_CONF=etc/apt/apt.conf.d/99stc-no-valid-until
ROOT_DPKG_CONF=etc/dpkg/dpkg.cfg.d/99stc-slim

log() { printf 'docker-base: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap needs it); try: sudo $0"
[[ $# -eq 0 || $1 == --force ]] || die "usage: $0 [--force]"
FORCE=${1:-}

docker info >/dev/null 2>&1 || die "no Docker engine answers; start one with scripts/docker-engine.sh start"

image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

if [[ -z $FORCE ]] && image_exists; then
    log "$IMAGE exists; nothing to do (--force makes it again)"
    echo "$IMAGE"
    exit 0
fi

if ! command -v debootstrap >/dev/null; then
    command -v apt-get >/dev/null || die "no debootstrap and no apt-get: install debootstrap yourself"
    log "installing debootstrap on the host"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2 ||
        die "apt-get install debootstrap failed"
fi

# What every image built on this base needs, and what the official slim image does.
prepare_root() {
    local root=$1
    sid_root_basics "$root" "$ROOT_APT_CONF" "stc base image"
    # Like debian:*-slim: no manuals, documentation or translations in later installs.
    cat >"$root/$ROOT_DPKG_CONF" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
    # Docker provides /etc/hosts, /etc/resolv.conf and /etc/hostname at run time.
    rm -f "$root/etc/hostname"
    rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/*.bin "${root:?}"/var/cache/apt/archives/*.deb
}

mkdir -p "$WORKDIR"
exec {lock_fd}>"$WORKDIR/stc-base.lock"
flock -w 900 "$lock_fd" || die "another run holds $WORKDIR/stc-base.lock"
if [[ -z $FORCE ]] && image_exists; then
    log "$IMAGE was made meanwhile"
    echo "$IMAGE"
    exit 0
fi
# Stale roots of killed runs (we hold the lock, so none is in progress).
for stale in "$WORKDIR"/stc-base-root.*; do
    if [[ -d $stale ]]; then
        log "removing the half-built root $stale"
        safe_remove_tree "$stale"
    fi
done

root=$(mktemp -d "$WORKDIR/stc-base-root.XXXXXX")
# shellcheck disable=SC2064  # expand now: the path is fixed
trap "safe_remove_tree '$root'" EXIT
chmod 755 "$root"
t0=$SECONDS
log "debootstrap --variant=minbase sid into $root (about 30 s)"
# shellcheck disable=SC2086  # an empty mirror means debootstrap's default
debootstrap --variant=minbase sid "$root" $DEBIAN_MIRROR >&2 || die "debootstrap failed (see above)"
prepare_root "$root"
log "importing $root as $IMAGE"
tar --numeric-owner -C "$root" -c . |
    docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
        --message "stc base: debootstrap --variant=minbase sid" - "$IMAGE" >/dev/null ||
    die "docker import failed"
log "$IMAGE made in $((SECONDS - t0)) s"
echo "$IMAGE"
