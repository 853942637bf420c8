#!/usr/bin/env bash
# The stc Asterisk lab: a real, unmodified Asterisk 22 (Debian sid) in a chroot on a
# Debian/Ubuntu host, sharing the host's network namespace (127.0.0.1 both ways).
#
#   scripts/asterisk-lab.sh setup    install host tools, build the sid root with asterisk (idempotent)
#   scripts/asterisk-lab.sh start    setup, install the stc config, boot Asterisk, check its modules
#   scripts/asterisk-lab.sh stop     stop Asterisk (idempotent)
#   scripts/asterisk-lab.sh check    setup + start + module check + stop
#   scripts/asterisk-lab.sh status   exit 0 if Asterisk runs, 3 if not
#   scripts/asterisk-lab.sh rx CMD   run `asterisk -rx CMD` inside the root
#   scripts/asterisk-lab.sh secrets DIR   copy the running lab's ARI password and AMI secret to
#                                    DIR/ari-password and DIR/ami-secret (0600), for stc-server
#
# The ARI password and AMI secret are made at the first `start` of a lab root (nothing secret is
# in the repository) and kept in ROOT/var/lib/stc-lab-secrets/, so a restart keeps them; every
# start copies them to ROOT/etc/stc-asterisk/stc-secrets/, which asterisk-conf's manager.conf
# and ari.conf #include.
#
# Environment: STC_LAB_ROOT (default /var/lib/stc-lab/sid, outside the repo so every clone
# reuses it), STC_ASTERISK_CONF (a config dir to use instead of asterisk-conf/; keep its
# asterisk.conf directories and the ports, which this script relies on),
# STC_DEBIAN_MIRROR (optional; default: debootstrap's own), STC_LAB_BOOT_TIMEOUT (seconds, 30).
# Logs go to stderr; `start` prints one status line on stdout.
set -euo pipefail
# shellcheck source=scripts/lib/sid-root.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/sid-root.sh"

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAB_ROOT=${STC_LAB_ROOT:-/var/lib/stc-lab/sid}
LAB_ROOT=${LAB_ROOT%/}
CONF_SRC=${STC_ASTERISK_CONF:-$REPO_DIR/asterisk-conf}
DEBIAN_MIRROR=${STC_DEBIAN_MIRROR:-}
BOOT_TIMEOUT=${STC_LAB_BOOT_TIMEOUT:-30}
STOP_TIMEOUT=10

# Paths as Asterisk sees them inside the root (they match asterisk-conf/asterisk.conf).
CONF_DIR_IN_ROOT=/etc/stc-asterisk
AST_CONF_IN_ROOT=$CONF_DIR_IN_ROOT/asterisk.conf
# ROOT/var/run is an absolute symlink to /run: from the host, look under ROOT/run.
RUN_DIR=$LAB_ROOT/run/asterisk
PID_FILE=$RUN_DIR/asterisk.pid
CTL_SOCKET=$RUN_DIR/asterisk.ctl
MESSAGES_LOG=$LAB_ROOT/var/log/asterisk/messages.log
START_LOG=$LAB_ROOT/var/log/asterisk/stc-lab-start.log

SIP_UDP_PORT=5080
# Under the config dir: the ARI password and AMI secret made at start (see make_secrets).
SECRETS_SUBDIR=stc-secrets
AMI_TCP_PORT=5038
HTTP_TCP_PORT=8088

# iproute2 gives `ss`, which the port checks use.
HOST_PACKAGES=(sip-tester tcpdump tshark debootstrap iproute2)
ROOT_APT_CONF=etc/apt/apt.conf.d/99stc-lab-no-valid-until
MIN_ASTERISK_MAJOR=22

# Every module stc relies on; `start` fails naming any that is not Running.
REQUIRED_MODULES=(
    chan_pjsip res_pjsip res_pjsip_session res_pjsip_pubsub res_pjsip_sdp_rtp
    res_pjsip_endpoint_identifier_ip res_pjsip_header_funcs res_pjsip_nat res_pjproject
    res_rtp_asterisk codec_ulaw codec_alaw codec_opus_open_source codec_g722
    app_confbridge bridge_softmix res_timing_timerfd
    res_agi pbx_config
    res_http_websocket res_websocket_client res_stasis res_ari res_ari_model
    res_ari_applications res_ari_asterisk res_ari_bridges res_ari_channels res_ari_events
)

log() { printf 'asterisk-lab: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap, chroot and apt-get need it); try: sudo $0 ${1:-}"
}

# Run a command inside the root with a clean environment (nothing of the caller's leaks in).
in_root() {
    local root=$1
    shift
    local -a env_args=(PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root)
    local var
    for var in http_proxy https_proxy no_proxy; do
        if [[ -n ${!var:-} ]]; then env_args+=("$var=${!var}"); fi
    done
    chroot "$root" /usr/bin/env -i "${env_args[@]}" "$@"
}

# `asterisk -rx CMD` inside the root; bounded so a wedged Asterisk cannot hang the caller.
ast_rx() {
    timeout 15 chroot "$LAB_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        /usr/sbin/asterisk -C "$AST_CONF_IN_ROOT" -rx "$1"
}

# ---------------------------------------------------------------- setup

package_installed() {
    local status
    status=$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) || return 1
    [[ $status == "install ok installed" ]]
}

ensure_host_packages() {
    local -a missing=()
    local pkg
    for pkg in "${HOST_PACKAGES[@]}"; do
        if ! command -v dpkg-query >/dev/null || ! package_installed "$pkg"; then missing+=("$pkg"); fi
    done
    if ((${#missing[@]} == 0)); then return 0; fi
    command -v apt-get >/dev/null && command -v debconf-set-selections >/dev/null ||
        die "not a Debian/Ubuntu host (no apt-get): install ${missing[*]} yourself"
    log "installing host packages: ${missing[*]}"
    # tshark would otherwise ask whether non-root users may capture.
    echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || die "apt-get update failed on the host"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed on the host"
    command -v debootstrap >/dev/null || die "debootstrap is still not available after installing it"
    command -v sipp >/dev/null || die "sipp is still not available after installing sip-tester"
}

# The fixes every fresh sid root needs (see docs: asterisk-lab pitfalls 1-4).
prepare_root() {
    local root=$1
    sid_root_basics "$root" "$ROOT_APT_CONF" "stc lab"
    # minbase has no /etc/hosts; localhost must resolve inside.
    cp /etc/hosts "$root/etc/hosts"
    if [[ ! -s $root/etc/resolv.conf ]]; then cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true; fi
}

install_asterisk_in_root() {
    local root=$1
    log "installing asterisk inside $root"
    in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 ||
        die "apt-get update failed inside $root"
    in_root "$root" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends asterisk >&2 ||
        die "apt-get install asterisk failed inside $root"
    in_root "$root" apt-get clean >&2 || true
}

root_ready() {
    [[ -x $LAB_ROOT/usr/sbin/asterisk && -f $LAB_ROOT/$ROOT_APT_CONF && -x $LAB_ROOT/usr/sbin/policy-rc.d ]]
}

asterisk_major() {
    local version
    version=$(in_root "$LAB_ROOT" /usr/sbin/asterisk -V) || die "asterisk -V failed inside $LAB_ROOT"
    [[ $version =~ ^Asterisk\ ([0-9]+)\. ]] || die "cannot read the Asterisk version from '$version'"
    echo "${BASH_REMATCH[1]}"
}

build_root() {
    local parent partial
    parent=$(dirname "$LAB_ROOT")
    command -v debootstrap >/dev/null || die "debootstrap is not available (apt-get install debootstrap)"
    # Stale half-built roots of killed runs (we hold the lock, so none is in progress).
    for partial in "$LAB_ROOT".partial.*; do
        if [[ -d $partial ]]; then
            log "removing the half-built root $partial"
            safe_remove_tree "$partial"
        fi
    done
    partial=$(mktemp -d "$LAB_ROOT.partial.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "safe_remove_tree '$partial'" EXIT
    chmod 755 "$partial"
    log "debootstrap --variant=minbase sid into $partial (about 30 s)"
    # shellcheck disable=SC2086  # an empty mirror means debootstrap's default
    debootstrap --variant=minbase sid "$partial" $DEBIAN_MIRROR >&2 ||
        die "debootstrap failed (see above; $partial will be removed)"
    prepare_root "$partial"
    install_asterisk_in_root "$partial"
    # Only a complete root ever gets the final name.
    mv -T "$partial" "$LAB_ROOT"
    trap - EXIT
    log "root ready: $LAB_ROOT"
}

cmd_setup() {
    require_root setup
    ensure_host_packages
    mkdir -p "$(dirname "$LAB_ROOT")"
    if ! root_ready; then
        local lock_fd
        exec {lock_fd}>"$LAB_ROOT.lock"
        flock -w 900 "$lock_fd" || die "another setup holds $LAB_ROOT.lock"
        if ! root_ready; then
            if [[ -d $LAB_ROOT ]]; then
                # An existing root made elsewhere: fix it in place rather than rebuild it.
                [[ -x $LAB_ROOT/usr/bin/apt-get ]] || die "$LAB_ROOT exists but is not a Debian root; remove it or set STC_LAB_ROOT"
                log "completing the existing root $LAB_ROOT"
                prepare_root "$LAB_ROOT"
                install_asterisk_in_root "$LAB_ROOT"
            else
                build_root
            fi
        fi
        exec {lock_fd}>&-
    fi
    local major
    major=$(asterisk_major)
    ((major >= MIN_ASTERISK_MAJOR)) || die "Asterisk $major in $LAB_ROOT; stc needs $MIN_ASTERISK_MAJOR or later"
}

# ---------------------------------------------------------------- start / stop

# Prints the pid of the lab's Asterisk and succeeds if it runs.
running_pid() {
    local pid state
    [[ -f $PID_FILE ]] || return 1
    pid=$(<"$PID_FILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/stat ]] || return 1
    state=$(</proc/"$pid"/stat)
    state=${state##*) }
    [[ ${state%% *} != Z ]] || return 1 # a zombie nobody reaped is gone for us
    [[ $(</proc/"$pid"/comm) == asterisk ]] || return 1
    echo "$pid"
}

# "udp 5080" -> the listener line(s) from ss, empty if the port is free.
port_listeners() {
    local proto=$1 port=$2 flag
    [[ $proto == udp ]] && flag=-Hlnpu || flag=-Hlnpt
    ss "$flag" "sport = :$port"
}

check_ports_free() {
    local -a busy=()
    local spec listeners proto port what
    for spec in "udp $SIP_UDP_PORT SIP" "tcp $AMI_TCP_PORT AMI" "tcp $HTTP_TCP_PORT HTTP/ARI"; do
        read -r proto port what <<<"$spec"
        listeners=$(port_listeners "$proto" "$port")
        if [[ -n $listeners ]]; then busy+=("$what $proto/$port is in use: ${listeners//$'\n'/; }"); fi
    done
    if ((${#busy[@]})); then
        local line
        for line in "${busy[@]}"; do log "$line"; done
        die "cannot start Asterisk: port(s) in use (another Asterisk or lab running? '$0 stop')"
    fi
}

check_ports_listening() {
    local spec listeners proto port what
    for spec in "udp $SIP_UDP_PORT SIP" "tcp $AMI_TCP_PORT AMI" "tcp $HTTP_TCP_PORT HTTP/ARI"; do
        read -r proto port what <<<"$spec"
        listeners=$(port_listeners "$proto" "$port")
        [[ $listeners == *asterisk* ]] || die "Asterisk booted but does not listen on $what $proto/$port"
    done
}

# make_secrets DIR: the lab's ARI password and AMI secret into DIR (made on the lab's first
# start), unless the config dir brought its own.
make_secrets() {
    local dir=$1 store=$LAB_ROOT/var/lib/stc-lab-secrets ari ami
    [[ -f $dir/ari-password.conf && -f $dir/ami-secret.conf ]] && return 0
    (
        umask 077
        if [[ ! -s $store/ari-password || ! -s $store/ami-secret ]]; then
            mkdir -p "$store"
            head -c 24 /dev/urandom | base64 | tr '+/' '-_' >"$store/ari-password"
            head -c 24 /dev/urandom | base64 | tr '+/' '-_' >"$store/ami-secret"
            log "made a new ARI password and AMI secret in $store"
        fi
        ari=$(<"$store/ari-password")
        ami=$(<"$store/ami-secret")
        mkdir -p "$dir"
        printf '%s\n' "$ari" >"$dir/ari-password"
        printf '%s\n' "$ami" >"$dir/ami-secret"
        printf '; from scripts/asterisk-lab.sh start; #included by ari.conf [stc]\npassword = %s\n' "$ari" >"$dir/ari-password.conf"
        printf '; from scripts/asterisk-lab.sh start; #included by manager.conf [stc]\nsecret = %s\n' "$ami" >"$dir/ami-secret.conf"
    )
}

cmd_secrets() {
    local out=${1:-} src=$LAB_ROOT$CONF_DIR_IN_ROOT/$SECRETS_SUBDIR
    [[ -n $out ]] || die "usage: $0 secrets DIR"
    running_pid >/dev/null || die "Asterisk is not running (start it with '$0 start')"
    [[ -f $src/ari-password && -f $src/ami-secret ]] ||
        die "the running Asterisk has no generated secrets in $src (started by an older asterisk-lab.sh? stop and start it)"
    (
        umask 077
        mkdir -p "$out"
        cp "$src/ari-password" "$src/ami-secret" "$out"/
    )
}

install_conf() {
    [[ -f $CONF_SRC/asterisk.conf ]] || die "no asterisk.conf in the config dir $CONF_SRC"
    local dest=$LAB_ROOT$CONF_DIR_IN_ROOT
    rm -rf -- "$dest"
    mkdir -p "$dest"
    cp -a "$CONF_SRC"/. "$dest"/
    make_secrets "$dest/$SECRETS_SUBDIR"
    mkdir -p "$RUN_DIR" "$LAB_ROOT/var/log/asterisk" "$LAB_ROOT/var/lib/asterisk" "$LAB_ROOT/var/spool/asterisk"
}

tail_messages() {
    if [[ -f $MESSAGES_LOG ]]; then
        log "last lines of $MESSAGES_LOG:"
        tail -n 20 "$MESSAGES_LOG" >&2 || true
    fi
    if [[ -s $START_LOG ]]; then
        log "output of the asterisk command:"
        tail -n 20 "$START_LOG" >&2 || true
    fi
}

wait_fully_booted() {
    local deadline=$((SECONDS + BOOT_TIMEOUT)) out
    while ((SECONDS < deadline)); do
        # Capture, then match: `cmd | grep -q` under pipefail fails at random (SIGPIPE).
        if out=$(ast_rx 'core waitfullybooted' 2>&1) && [[ $out == *"fully booted"* ]]; then
            return 0
        fi
        if [[ -f $PID_FILE ]] && ! running_pid >/dev/null; then
            tail_messages
            die "Asterisk exited during boot"
        fi
        sleep 0.2
    done
    tail_messages
    die "Asterisk did not finish booting within ${BOOT_TIMEOUT} s"
}

check_modules() {
    local table module line
    local -a missing=()
    table=$(ast_rx 'module show') || die "'module show' failed"
    for module in "${REQUIRED_MODULES[@]}"; do
        line=$(grep -E "^${module}\.so[[:space:]]" <<<"$table" || true)
        if [[ -z $line ]]; then
            missing+=("$module (not loaded)")
        elif [[ $line != *" Running"* ]]; then
            missing+=("$module (${line##*  })")
        fi
    done
    local settings
    settings=$(ast_rx 'manager show settings') || die "'manager show settings' failed"
    [[ $settings =~ Manager\ \(AMI\):[[:space:]]+Yes ]] || missing+=("manager (AMI disabled)")
    if ((${#missing[@]})); then
        die "modules stc needs are not Running: ${missing[*]}"
    fi
}

cmd_start() {
    cmd_setup
    local pid
    if pid=$(running_pid); then
        die "Asterisk already runs in $LAB_ROOT (pid $pid): run '$0 stop' first"
    fi
    check_ports_free
    install_conf
    rm -f -- "$PID_FILE" "$CTL_SOCKET"
    log "starting Asterisk in $LAB_ROOT with $CONF_SRC"
    # Asterisk daemonizes; its output goes to a file so a caller capturing ours never waits on it.
    if ! chroot "$LAB_ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
        /usr/sbin/asterisk -C "$AST_CONF_IN_ROOT" </dev/null >"$START_LOG" 2>&1; then
        tail_messages
        die "asterisk failed to start"
    fi
    # From here on a failed check must not leave a half-checked Asterisk running.
    trap cmd_stop EXIT
    wait_fully_booted
    check_modules
    check_ports_listening
    local version sipp_version
    version=$(ast_rx 'core show version')
    version=${version%% built by*}
    sipp_version=$(sipp -v 2>&1 || true)
    [[ $sipp_version =~ (SIPp\ v[^ -]+) ]] && sipp_version=${BASH_REMATCH[1]} || sipp_version="SIPp ?"
    pid=$(running_pid) || die "Asterisk vanished after boot"
    trap - EXIT
    echo "asterisk-lab: ${version} up with ${sipp_version} (pid $pid, root $LAB_ROOT): SIP udp/127.0.0.1:$SIP_UDP_PORT, AMI tcp/127.0.0.1:$AMI_TCP_PORT, HTTP/ARI tcp/127.0.0.1:$HTTP_TCP_PORT"
}

cmd_stop() {
    require_root stop
    local pid deadline
    if ! pid=$(running_pid); then
        rm -f -- "$PID_FILE" "$CTL_SOCKET"
        log "Asterisk is not running"
        return 0
    fi
    ast_rx 'core stop now' >/dev/null 2>&1 || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while running_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    if running_pid >/dev/null; then
        log "Asterisk (pid $pid) ignored 'core stop now'; sending SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + 3))
        while running_pid >/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    fi
    if running_pid >/dev/null; then
        log "Asterisk (pid $pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
        ! running_pid >/dev/null || die "could not stop Asterisk (pid $pid)"
    fi
    rm -f -- "$PID_FILE" "$CTL_SOCKET"
    log "Asterisk stopped (pid $pid)"
}

cmd_check() {
    local t0=$SECONDS
    cmd_setup
    log "setup ok after $((SECONDS - t0)) s"
    cmd_start
    cmd_stop
    log "check ok in $((SECONDS - t0)) s"
}

cmd_status() {
    local pid
    if pid=$(running_pid); then
        echo "running (pid $pid, root $LAB_ROOT)"
        return 0
    fi
    echo "stopped (root $LAB_ROOT)"
    return 3
}

main() {
    (($#)) || usage
    [[ $LAB_ROOT == /?* ]] || die "STC_LAB_ROOT must be an absolute path other than / (got '$LAB_ROOT')"
    local cmd=$1
    shift
    case $cmd in
    setup) cmd_setup ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    check) cmd_check ;;
    status) cmd_status ;;
    secrets) cmd_secrets "$@" ;;
    rx)
        (($#)) || die "usage: $0 rx 'CLI COMMAND'"
        running_pid >/dev/null || die "Asterisk is not running (start it with '$0 start')"
        ast_rx "$*"
        ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand '$cmd' (setup, start, stop, check, status, rx, secrets)" ;;
    esac
}

main "$@"
