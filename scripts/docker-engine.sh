#!/usr/bin/env bash
# A Docker engine for the stc compose stack on a Debian/Ubuntu host without systemd.
#
#   scripts/docker-engine.sh install  docker.io (the host's Debian) + the compose v2 and buildx
#                                     plugins (from Debian sid's packages); idempotent
#   scripts/docker-engine.sh start    install, then start dockerd in the background (idempotent;
#                                     an engine that already answers is used as it is)
#   scripts/docker-engine.sh stop     stop the dockerd that `start` started, by its pid; an engine
#                                     this script did not start is left alone
#   scripts/docker-engine.sh status   exit 0 if an engine answers, 3 if not
#   scripts/docker-engine.sh env      print the `export DOCKER_CONFIG=...` that makes `docker compose`
#                                     find the plugins: eval "$(scripts/docker-engine.sh env)"
#
# Environment: STC_DOCKER_DIR (default /var/lib/stc-docker: dockerd.pid, dockerd.log and
# config/cli-plugins/), STC_DOCKER_START_TIMEOUT (seconds, 60), STC_DEBIAN_MIRROR (optional; the
# sid mirror for the plugins, default deb.debian.org).
# Logs go to stderr; `start` and `stop` print one status line on stdout.
set -euo pipefail

STATE_DIR=${STC_DOCKER_DIR:-/var/lib/stc-docker}
STATE_DIR=${STATE_DIR%/}
PID_FILE=$STATE_DIR/dockerd.pid
LOG_FILE=$STATE_DIR/dockerd.log
CLI_CONFIG=$STATE_DIR/config
PLUGIN_DIR=$CLI_CONFIG/cli-plugins
START_TIMEOUT=${STC_DOCKER_START_TIMEOUT:-60}
# dockerd gives running containers 15 s to stop before it exits.
STOP_TIMEOUT=30
SID_MIRROR=${STC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Debian 12 packages neither compose v2 nor buildx; sid's carry them as self-contained binaries
# (libc >= 2.34). Compose v2 builds through buildx.
SID_PLUGIN_PACKAGES=(docker-compose docker-buildx)
MIN_COMPOSE_MAJOR=2

log() { printf 'docker-engine: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (apt-get and dockerd need it); try: sudo $0 ${1:-}"
}

# The docker CLI with our plugin folder; bounded so a wedged daemon cannot hang the caller.
docker_cli() {
    DOCKER_CONFIG=$CLI_CONFIG timeout 20 docker "$@"
}

engine_answers() {
    command -v docker >/dev/null && docker_cli info >/dev/null 2>&1
}

# ---------------------------------------------------------------- install

package_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $status == "install ok installed" ]]
}

ensure_engine_package() {
    if command -v dockerd >/dev/null && command -v docker >/dev/null; then return 0; fi
    command -v apt-get >/dev/null || die "not a Debian/Ubuntu host (no apt-get): install a Docker engine yourself"
    if package_installed docker.io && command -v dockerd >/dev/null; then return 0; fi
    log "installing docker.io (engine, containerd, runc) from the host's Debian"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed on the host"
    # No recommends: apparmor, git and needrestart are not needed to run the stack.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io >&2 ||
        die "apt-get install docker.io failed"
    command -v dockerd >/dev/null || die "dockerd is still missing after installing docker.io"
}

compose_major() {
    local version
    version=$(docker_cli compose version --short 2>/dev/null) || return 1
    version=${version#v}
    [[ $version =~ ^([0-9]+)\. ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

plugins_ready() {
    local major
    [[ -x $PLUGIN_DIR/docker-buildx ]] || docker_cli buildx version >/dev/null 2>&1 || return 1
    major=$(compose_major) || return 1
    ((major >= MIN_COMPOSE_MAJOR))
}

# Download sid's plugin packages with a private apt state (the host's sources stay untouched)
# and unpack their binaries into our DOCKER_CONFIG's cli-plugins folder.
# A subshell, so its EXIT trap removes the download folder however it ends.
install_sid_plugins() (
    local work
    work=$(mktemp -d "${TMPDIR:-/tmp}/stc-docker-plugins.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf -- '$work'" EXIT
    chmod 755 "$work" # apt's unprivileged _apt user must reach the download folder
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
    printf 'deb %s sid main\n' "$SID_MIRROR" >"$work/sources.list"
    local -a apt_opts=(
        -q
        -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
        -o Acquire::Languages=none -o APT::Get::List-Cleanup=false
        # The mirror may serve a dated snapshot whose Release file has "expired".
        -o Acquire::Check-Valid-Until=false
        # Downloads land in a root-only temporary folder: no privilege drop to _apt.
        -o APT::Sandbox::User=root
    )
    log "fetching ${SID_PLUGIN_PACKAGES[*]} from Debian sid ($SID_MIRROR)"
    apt-get "${apt_opts[@]}" update >&2 || die "apt-get update of Debian sid's index failed"
    (cd "$work/debs" && apt-get "${apt_opts[@]}" download "${SID_PLUGIN_PACKAGES[@]}" >&2) ||
        die "apt-get download ${SID_PLUGIN_PACKAGES[*]} from sid failed"
    local deb
    for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
    mkdir -p "$PLUGIN_DIR"
    local plugin
    for plugin in docker-compose docker-buildx; do
        [[ -x $work/root/usr/libexec/docker/cli-plugins/$plugin ]] || die "sid's package has no $plugin plugin binary"
        install -m 755 "$work/root/usr/libexec/docker/cli-plugins/$plugin" "$PLUGIN_DIR/$plugin.new"
        mv -f "$PLUGIN_DIR/$plugin.new" "$PLUGIN_DIR/$plugin"
    done
)

cmd_install() {
    require_root install
    mkdir -p "$STATE_DIR"
    ensure_engine_package
    if ! plugins_ready; then
        local lock_fd
        exec {lock_fd}>"$STATE_DIR/install.lock"
        flock -w 300 "$lock_fd" || die "another install holds $STATE_DIR/install.lock"
        plugins_ready || install_sid_plugins
        exec {lock_fd}>&-
    fi
    local major
    major=$(compose_major) || die "'docker compose version' fails with DOCKER_CONFIG=$CLI_CONFIG"
    ((major >= MIN_COMPOSE_MAJOR)) || die "docker compose v$major found; the stack needs v$MIN_COMPOSE_MAJOR or later"
}

# ---------------------------------------------------------------- start / stop

# Prints the pid of the dockerd this script started and succeeds if it still runs.
our_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/comm ]] || return 1
    [[ $(</proc/"$pid"/comm) == dockerd ]] || return 1
    echo "$pid"
}

cmd_start() {
    cmd_install
    local pid
    if pid=$(our_pid); then
        engine_answers || die "dockerd (pid $pid) runs but does not answer; see $LOG_FILE"
        echo "docker-engine: already running (pid $pid, started by this script)"
        return 0
    fi
    rm -f -- "$PID_FILE"
    if engine_answers; then
        echo "docker-engine: an engine not started by this script answers; using it (stop leaves it alone)"
        return 0
    fi
    if pgrep -x dockerd >/dev/null; then
        die "a dockerd runs but does not answer on the default socket (pids: $(pgrep -x dockerd | tr '\n' ' '))"
    fi
    log "starting dockerd (log: $LOG_FILE)"
    # setsid: its own session, so a Ctrl-C in the caller's terminal does not reach it.
    setsid dockerd </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    local deadline=$((SECONDS + START_TIMEOUT))
    until engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f -- "$PID_FILE"
            tail -n 20 "$LOG_FILE" >&2 || true
            die "dockerd exited during start-up (last lines of $LOG_FILE above)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$LOG_FILE" >&2 || true
            cmd_stop >/dev/null
            die "dockerd did not answer within ${START_TIMEOUT} s"
        fi
        sleep 0.3
    done
    local version
    version=$(docker_cli version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
    echo "docker-engine: started dockerd $version (pid $pid, log $LOG_FILE), compose $(docker_cli compose version --short)"
}

cmd_stop() {
    require_root stop
    local pid deadline
    if ! pid=$(our_pid); then
        rm -f -- "$PID_FILE"
        echo "docker-engine: no dockerd started by this script runs"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while our_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if our_pid >/dev/null; then
        log "dockerd (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
        ! our_pid >/dev/null || die "could not stop dockerd (pid $pid)"
    fi
    rm -f -- "$PID_FILE"
    echo "docker-engine: stopped dockerd (pid $pid)"
}

cmd_status() {
    local pid
    if engine_answers; then
        if pid=$(our_pid); then echo "running (pid $pid, started by this script)"; else echo "running (not started by this script)"; fi
        return 0
    fi
    echo "stopped"
    return 3
}

main() {
    (($#)) || usage
    [[ $STATE_DIR == /?* ]] || die "STC_DOCKER_DIR must be an absolute path other than / (got '$STATE_DIR')"
    case $1 in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) printf 'export DOCKER_CONFIG=%q\n' "$CLI_CONFIG" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$1' (install, start, stop, status, env)" ;;
    esac
}

main "$@"
