#!/usr/bin/env bash
# The one-command demo of stc on a Debian/Ubuntu host (run as root): three people in one secure
# conference. Each SIPp softphone talks plain SIP/RTP to its own stc-client, which tunnels it over
# mutual-TLS to the stc-server as SIP + SRTP; the server relays it to the lab's real Asterisk 22,
# where everyone meets in ConfBridge room 1000. Alice talks (a PCMA recording), Bob and Carol listen.
#
#   scripts/demo.sh           set up, bring everything up, print what runs where, keep running
#                             until Ctrl-C (or SIGTERM), then stop everything it started
#   scripts/demo.sh --check   the same, but tear down as soon as all three are in the room and
#                             every client shows a secure call; exit 0 only if all went well
#
# Files: demo/*.toml (settings), demo/sipp-phone.xml (the softphones), demo-run/pki (the demo
# PKI, made once), demo-run/logs (one log per process, overwritten by each run).
# An Asterisk that already runs (the test suite's, say) is used and left running; one the demo
# started is stopped at the end.
# Environment: STC_DEMO_TIMEOUT (seconds to wait for each stage, default 30).
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

PROG=scripts/demo.sh
RUN_DIR=$REPO_DIR/demo-run
PKI_DIR=$RUN_DIR/pki
LOG_DIR=$RUN_DIR/logs
LOCK_FILE=$RUN_DIR/demo.lock
PID_FILE=$RUN_DIR/demo.pids # "pid starttime name" of every process started, for a run killed hard
BIN=$REPO_DIR/.venv/bin
PHONE_SCENARIO=$REPO_DIR/demo/sipp-phone.xml
TIMEOUT=${STC_DEMO_TIMEOUT:-30}
STOP_TIMEOUT=5

ROOM=1000
TUNNEL_PORT=5443 # demo/server.toml
ASTERISK_SIP_PORT=5080
USERS=(alice bob carol)
declare -A DISPLAY=([alice]=Alice [bob]=Bob [carol]=Carol)
# demo/NAME.toml: the client's SIP port (for the softphone) and window port (for `status`).
declare -A CLIENT_SIP_PORT=([alice]=5062 [bob]=5064 [carol]=5066)
declare -A CLIENT_UI_PORT=([alice]=8062 [bob]=8064 [carol]=8066)
# The softphones: SIP, RTP (SIPp binds the port and port+2; port+1/+3 kept free for RTCP) and
# SIPp's control socket (kept on loopback). All below the kernel's ephemeral range and outside
# Asterisk's RTP range (10000-10999), so nothing else picks them by chance.
declare -A PHONE_SIP_PORT=([alice]=5063 [bob]=5065 [carol]=5067)
declare -A PHONE_MEDIA_PORT=([alice]=6000 [bob]=6010 [carol]=6020)
declare -A PHONE_CONTROL_PORT=([alice]=8881 [bob]=8882 [carol]=8883)
declare -A PHONE_CODEC=([alice]=PCMA [bob]=PCMA [carol]=PCMU)
declare -A CODEC_PT=([PCMA]=8 [PCMU]=0)
TALKER=alice

MODE=run
STARTED_ASTERISK=0
LOCK_FD=
SLEEP_PID=
declare -a PROC_NAMES=() PROC_PIDS=()
declare -A PROC_LOG=()
declare -A PHONE_EXIT=() # how each phone's sipp ended, when it ended by itself

say() { printf '== %s\n' "$*" >&2; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    warn "error: $*"
    exit 1
}

usage() {
    # The header comment, up to the first line that is not one.
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}" >&2
    exit "$1"
}

# ---------------------------------------------------------------- processes

# Fields 3 (state) and 22 (start time) of /proc/PID/stat; the command name may hold spaces.
proc_field() {
    local stat
    { stat=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
    stat=${stat##*) }
    local -a fields
    read -r -a fields <<<"$stat"
    echo "${fields[$2 - 3]}"
}

alive() {
    local state
    state=$(proc_field "$1" 3) || return 1
    [[ $state != Z ]]
}

# start_process NAME LOG CMD...: in its own session (a terminal's Ctrl-C reaches only this script,
# which then stops everything in order), stdin closed, output to LOG, without the lock's fd.
start_process() {
    local name=$1 log=$2
    shift 2
    setsid "$@" </dev/null >"$log" 2>&1 {LOCK_FD}>&- &
    local pid=$!
    PROC_NAMES+=("$name")
    PROC_PIDS+=("$pid")
    PROC_LOG[$name]=$log
    echo "$pid $(proc_field "$pid" 22 || echo 0) $name" >>"$PID_FILE"
}

pid_of() {
    local i
    for i in "${!PROC_NAMES[@]}"; do
        if [[ ${PROC_NAMES[$i]} == "$1" ]]; then
            echo "${PROC_PIDS[$i]}"
            return 0
        fi
    done
    return 1
}

# stop_processes NAME...: SIGTERM to each one's process group (its session), SIGKILL to any still
# running after STOP_TIMEOUT; reaps them all.
stop_processes() {
    local name pid deadline
    local -a pids=()
    for name in "$@"; do
        pid=$(pid_of "$name") || continue
        pids+=("$pid")
        if alive "$pid"; then kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "${pids[@]}"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    done
    for pid in "${pids[@]}"; do
        if alive "$pid"; then
            warn "pid $pid ignored SIGTERM for $STOP_TIMEOUT s; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

# Processes a previous run left behind when it was killed without its clean-up (SIGKILL):
# only those whose pid and start time match what that run recorded.
stop_leftovers() {
    [[ -s $PID_FILE ]] || return 0
    local pid start name
    while read -r pid start name; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if [[ $name == asterisk ]]; then
            # The lab's Asterisk that run started: this run takes it over, and stops it at the end.
            if [[ $(proc_field "$pid" 22 2>/dev/null) == "$start" ]] && alive "$pid"; then
                warn "the lab's Asterisk (pid $pid) was started by an earlier demo: this one will stop it"
                STARTED_ASTERISK=1
                echo "$pid $start asterisk" >>"$PID_FILE.new"
            fi
            continue
        fi
        if [[ $(proc_field "$pid" 22 2>/dev/null) == "$start" ]]; then
            warn "stopping $name (pid $pid), left running by an earlier demo"
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            local deadline=$((SECONDS + STOP_TIMEOUT))
            while [[ $(proc_field "$pid" 22 2>/dev/null) == "$start" ]] && alive "$pid" && ((SECONDS < deadline)); do
                sleep 0.1
            done
            if alive "$pid" && [[ $(proc_field "$pid" 22 2>/dev/null) == "$start" ]]; then
                kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    done <"$PID_FILE"
    if [[ -f $PID_FILE.new ]]; then mv -f -- "$PID_FILE.new" "$PID_FILE"; else : >"$PID_FILE"; fi
}

show_log() {
    local name=$1 log=${PROC_LOG[$1]:-}
    if [[ -n $log && -s $log ]]; then
        warn "last lines of $log:"
        tail -n 15 "$log" | sed 's/^/    /' >&2
    fi
}

# Fails naming the first started process that is no longer running.
check_all_alive() {
    local i
    for i in "${!PROC_NAMES[@]}"; do
        if ! alive "${PROC_PIDS[$i]}"; then
            local code=0
            wait "${PROC_PIDS[$i]}" 2>/dev/null || code=$?
            show_log "${PROC_NAMES[$i]}"
            die "${PROC_NAMES[$i]} (pid ${PROC_PIDS[$i]}) exited with code $code"
        fi
    done
}

# scripts/asterisk-lab.sh, without the lock's fd: the Asterisk it starts must not hold the lock.
lab() {
    if [[ -n $LOCK_FD ]]; then
        bash "$REPO_DIR/scripts/asterisk-lab.sh" "$@" {LOCK_FD}>&-
    else
        bash "$REPO_DIR/scripts/asterisk-lab.sh" "$@"
    fi
}

# ---------------------------------------------------------------- ports

# "tcp 5443" -> listeners from ss, empty if free.
listeners() {
    local flag
    [[ $1 == udp ]] && flag=-Hlnpu || flag=-Hlnpt
    ss "$flag" "sport = :$2"
}

# Every port the demo binds, as "proto port what".
demo_ports() {
    local user p
    echo "tcp $TUNNEL_PORT stc-server tunnel"
    for user in "${USERS[@]}"; do
        echo "udp ${CLIENT_SIP_PORT[$user]} stc-client $user SIP"
        echo "tcp ${CLIENT_UI_PORT[$user]} stc-client $user window"
        echo "udp ${PHONE_SIP_PORT[$user]} SIPp $user SIP"
        for p in 0 1 2 3; do echo "udp $((PHONE_MEDIA_PORT[$user] + p)) SIPp $user media"; done
        echo "udp ${PHONE_CONTROL_PORT[$user]} SIPp $user control"
    done
}

# Prints "what proto/port: listener" for each demo port in use; fails if any is.
busy_ports() {
    local proto port what found=1 out
    while read -r proto port what; do
        out=$(listeners "$proto" "$port")
        if [[ -n $out ]]; then
            echo "$what $proto/$port: ${out//$'\n'/; }"
            found=0
        fi
    done < <(demo_ports)
    return $found
}

wait_listening() {
    local proto=$1 port=$2 name=$3 deadline=$((SECONDS + TIMEOUT))
    while [[ -z $(listeners "$proto" "$port") ]]; do
        check_all_alive
        ((SECONDS < deadline)) || die "$name does not listen on $proto/$port after $TIMEOUT s"
        sleep 0.1
    done
}

# ---------------------------------------------------------------- Asterisk and the clients

# The room's member lines from `confbridge list ROOM` (empty when there is no such room).
room_listing() {
    lab rx "confbridge list $ROOM" 2>/dev/null || true
}

# The demo's callers present in a listing (CallerID is the From user the softphone sent).
demo_members() {
    local listing=$1 user
    for user in "${USERS[@]}"; do
        if grep -Eq "^PJSIP/\S+ .*[[:space:]]$user\$" <<<"$listing"; then echo "$user"; fi
    done
}

demo_channels() {
    local listing=$1 user
    for user in "${USERS[@]}"; do
        grep -E "^PJSIP/\S+ .*[[:space:]]$user\$" <<<"$listing" | awk '{print $1}' || true
    done
}

# The address of the client's window as the client printed it (it carries the window's secret).
window_url() {
    grep -o "client window at http://127.0.0.1:${CLIENT_UI_PORT[$1]}/?token=[A-Za-z0-9_-]*" \
        "${PROC_LOG["stc-client $1"]}" | tail -n 1 | sed 's/^client window at //' || true
}

# The client's status light (red/yellow/green) as its window reports it, or "down".
client_light() {
    local json
    json=$("$BIN/stc-client" --config "demo/$1.toml" status --json 2>/dev/null) || {
        echo down
        return 0
    }
    "$BIN/python" -c 'import json, sys; print(json.load(sys.stdin).get("light", "?"))' <<<"$json"
}

# wait_lights "yellow green" WHAT: every client's light is one of these within TIMEOUT.
wait_lights() {
    local wanted=" $1 " what=$2 deadline=$((SECONDS + TIMEOUT)) user light pending
    while :; do
        check_all_alive
        pending=()
        for user in "${USERS[@]}"; do
            light=$(client_light "$user")
            [[ $wanted == *" $light "* ]] || pending+=("$user: $light")
        done
        ((${#pending[@]})) || return 0
        if ((SECONDS >= deadline)); then
            for user in "${USERS[@]}"; do show_log "stc-client $user"; done
            die "$what: not every client got there within $TIMEOUT s (${pending[*]})"
        fi
        sleep 0.3
    done
}

ensure_pki() {
    local user missing=0 f
    for f in ca.pem crl.pem server.pem server.key; do [[ -f $PKI_DIR/$f ]] || missing=1; done
    for user in "${USERS[@]}"; do
        [[ -f $PKI_DIR/users/$user.pem && -f $PKI_DIR/users/$user.key ]] || missing=1
    done
    if ((missing)); then
        say "demo PKI in ${PKI_DIR#"$REPO_DIR"/} (CA, server for localhost/127.0.0.1, alice, bob, carol, CRL)"
        "$BIN/stc-pki" --dir "$PKI_DIR" demo >&2 || die "stc-pki demo failed"
    else
        say "demo PKI: ${PKI_DIR#"$REPO_DIR"/} exists"
    fi
    # The server refuses clients once the CRL is past its next update (7 days): re-sign it, with
    # whatever revocations it holds, so a PKI made last month still works.
    "$BIN/stc-pki" --dir "$PKI_DIR" crl >/dev/null || die "stc-pki crl failed"
}

# Records the running lab Asterisk in PID_FILE as the demo's own.
record_asterisk() {
    local line pid
    line=$(lab status 2>/dev/null) || return 0
    [[ $line =~ \(pid\ ([0-9]+) ]] || return 0
    pid=${BASH_REMATCH[1]}
    echo "$pid $(proc_field "$pid" 22 || echo 0) asterisk" >>"$PID_FILE"
}

start_asterisk() {
    if ((STARTED_ASTERISK)) && lab status >/dev/null 2>&1; then
        say "Asterisk: using the lab's Asterisk an earlier demo started (stopped at the end)"
        return 0
    fi
    STARTED_ASTERISK=0
    if lab status >/dev/null 2>&1; then
        say "Asterisk: the lab's Asterisk already runs; using it (and leaving it running)"
        return 0
    fi
    say "Asterisk: starting the lab's Asterisk"
    local out
    if out=$(lab start 2>"$LOG_DIR/asterisk-lab.log"); then
        STARTED_ASTERISK=1
        record_asterisk
        say "${out#asterisk-lab: }"
    elif lab status >/dev/null 2>&1; then
        # Someone else (a test session) started it in the meantime.
        say "Asterisk: started by someone else meanwhile; using it (and leaving it running)"
    else
        tail -n 20 "$LOG_DIR/asterisk-lab.log" >&2 || true
        die "could not start the lab's Asterisk (log: ${LOG_DIR#"$REPO_DIR"/}/asterisk-lab.log)"
    fi
}

start_phone() {
    local user=$1 log=$LOG_DIR/sipp-$user
    local codec=${PHONE_CODEC[$user]}
    local -a cmd=(
        sipp "127.0.0.1:${CLIENT_SIP_PORT[$user]}"
        -sf "$PHONE_SCENARIO"
        -nostdin -m 1
        -i 127.0.0.1 -p "${PHONE_SIP_PORT[$user]}" -bind_local
        -mi 127.0.0.1 -mp "${PHONE_MEDIA_PORT[$user]}"
        -ci 127.0.0.1 -cp "${PHONE_CONTROL_PORT[$user]}"
        -s "$ROOM" -aa
        -key caller "$user" -key caller_name "${DISPLAY[$user]}"
        -key codec_pt "${CODEC_PT[$codec]}" -key codec_name "$codec"
        -trace_msg -message_file "$log-messages.log"
        -trace_err -error_file "$log-errors.log"
    )
    [[ $user == "$TALKER" ]] && cmd+=(-set play_audio 1)
    # --check never runs long; the interactive demo runs until stopped.
    [[ $MODE == check ]] && cmd+=(-timeout "$((4 * TIMEOUT))s" -timeout_error)
    rm -f -- "$log-messages.log" "$log-errors.log"
    start_process "SIPp $user" "$log.log" "${cmd[@]}"
}

wait_for_room() {
    local deadline=$((SECONDS + TIMEOUT)) listing members
    while :; do
        check_all_alive
        listing=$(room_listing)
        members=$(demo_members "$listing")
        if [[ $(wc -w <<<"$members") -eq ${#USERS[@]} ]]; then
            ROOM_LISTING=$listing
            return 0
        fi
        if ((SECONDS >= deadline)); then
            printf '%s\n' "$listing" >&2
            die "room $ROOM has $(wc -w <<<"$members") of the ${#USERS[@]} demo callers after $TIMEOUT s (${members//$'\n'/ })"
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------- the printout

rel() { echo "${1#"$REPO_DIR"/}"; }

print_summary() {
    local user ast_line
    ast_line=$(lab rx 'core show version' 2>/dev/null || echo "Asterisk ?")
    ast_line=${ast_line%% built by*}
    local owner="already running: left running at the end"
    ((STARTED_ASTERISK)) && owner="started by the demo: stopped at the end"
    cat <<EOF

================================ stc demo: up ================================
Processes (logs in $(rel "$LOG_DIR")/):
  Asterisk      $ast_line ($owner)
                SIP udp/127.0.0.1:$ASTERISK_SIP_PORT, AMI tcp/127.0.0.1:5038, ARI tcp/127.0.0.1:8088
                log: $(rel "$LOG_DIR")/asterisk-lab.log and the lab's /var/log/asterisk/messages.log
  stc-server    pid $(pid_of stc-server)   tunnel tcp/127.0.0.1:$TUNNEL_PORT (TLS 1.3, client certificates)
                config demo/server.toml, log $(rel "${PROC_LOG[stc-server]}")
EOF
    for user in "${USERS[@]}"; do
        printf '  stc-client    %-6s pid %-7s SIP udp/127.0.0.1:%s  window %s\n' \
            "$user" "$(pid_of "stc-client $user")" "${CLIENT_SIP_PORT[$user]}" "$(window_url "$user")"
        printf '                config demo/%s.toml, cert %s, log %s\n' \
            "$user" "$(rel "$PKI_DIR")/users/$user.pem" "$(rel "${PROC_LOG["stc-client $user"]}")"
    done
    for user in "${USERS[@]}"; do
        local role="listens"
        [[ $user == "$TALKER" ]] && role="talks (plays g711a.pcap every 8 s)"
        printf '  SIPp phone    %-6s pid %-7s SIP udp/127.0.0.1:%s -> client :%s, RTP :%s, %s, %s\n' \
            "$user" "$(pid_of "SIPp $user")" "${PHONE_SIP_PORT[$user]}" "${CLIENT_SIP_PORT[$user]}" \
            "${PHONE_MEDIA_PORT[$user]}" "${PHONE_CODEC[$user]}" "$role"
        printf '                log %s (SIP messages: %s)\n' "$(rel "${PROC_LOG["SIPp $user"]}")" \
            "$(rel "$LOG_DIR")/sipp-$user-messages.log"
    done
    cat <<EOF

Conference room $ROOM (bash scripts/asterisk-lab.sh rx 'confbridge list $ROOM'):
$(sed 's/^/  /' <<<"$ROOM_LISTING")
EOF
    print_rosters
    cat <<EOF

Look closer:
  .venv/bin/stc-client --config demo/alice.toml status     what Alice's client shows (also bob, carol)
  .venv/bin/stc-client --config demo/alice.toml check      open a tunnel as Alice once and report
  bash scripts/asterisk-lab.sh rx 'confbridge list $ROOM'  the room as Asterisk sees it
  tail -f $(rel "$LOG_DIR")/server.log                  the server's view of tunnels and calls
==============================================================================
EOF
}

# >>> rosters: the place for each participant's signed roster (its own issue).
# For now: what each client's window reports (`stc-client status`: light, call, and the roster
# table when the client holds one). The roster change puts the roster each participant received
# here, and checks it in --check mode (three authenticated entries, one version everywhere).
print_rosters() {
    local user
    echo
    echo "What each participant's stc-client shows (stc-client --config demo/NAME.toml status):"
    for user in "${USERS[@]}"; do
        echo "  -- $user"
        "$BIN/stc-client" --config "demo/$user.toml" status 2>&1 | sed 's/^/     /' || true
    done
}
# <<< rosters

# ---------------------------------------------------------------- tear-down

hang_up_demo_calls() {
    # Asterisk hangs up the demo's channels: each BYE travels server -> tunnel -> client -> phone,
    # and the phones end their call themselves. Only the demo's own channels are touched.
    lab status >/dev/null 2>&1 || return 0
    local channel
    while read -r channel; do
        [[ -n $channel ]] && lab rx "confbridge kick $ROOM $channel" >/dev/null 2>&1 || true
    done < <(demo_channels "$(room_listing)")
    local deadline=$((SECONDS + STOP_TIMEOUT)) user pid busy
    while :; do
        busy=0
        for user in "${USERS[@]}"; do
            pid=$(pid_of "SIPp $user") || continue
            if alive "$pid"; then
                busy=1
            elif [[ -z ${PHONE_EXIT[$user]:-} ]]; then
                PHONE_EXIT[$user]=0
                wait "$pid" 2>/dev/null || PHONE_EXIT[$user]=$?
            fi
        done
        ((busy)) && ((SECONDS < deadline)) || break
        sleep 0.1
    done
    # SIPp exits 0 once its one call ended well (it answered the BYE).
    for user in "${USERS[@]}"; do
        pid_of "SIPp $user" >/dev/null || continue
        if [[ ${PHONE_EXIT[$user]:-} != 0 ]]; then
            warn "SIPp $user did not end its call cleanly on Asterisk's hang-up (${PHONE_EXIT[$user]:+exit ${PHONE_EXIT[$user]}}${PHONE_EXIT[$user]:-still running}); see ${LOG_DIR#"$REPO_DIR"/}/sipp-$user*.log"
            return 1
        fi
    done
}

on_exit() {
    local status=$? clean=1
    trap '' INT TERM
    set +e
    [[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null && wait "$SLEEP_PID" 2>/dev/null
    if ((${#PROC_PIDS[@]})) || ((STARTED_ASTERISK)); then
        say "stopping the demo"
        # In --check mode a call that does not end cleanly is a failure; a stopped demo just ends.
        if ! hang_up_demo_calls && [[ $MODE == check ]]; then status=1; fi
        stop_processes "${USERS[@]/#/SIPp }"
        stop_processes "${USERS[@]/#/stc-client }"
        stop_processes stc-server
        if ((STARTED_ASTERISK)); then
            lab stop 2>>"$LOG_DIR/asterisk-lab.log" || { warn "could not stop the lab's Asterisk"; clean=0; }
        else
            # A shared Asterisk must not keep the demo's callers (the server's BYEs end them).
            local deadline=$((SECONDS + 10)) left
            while left=$(demo_members "$(room_listing)") && [[ -n $left ]] && ((SECONDS < deadline)); do sleep 0.2; done
            if [[ -n $left ]]; then
                warn "room $ROOM still holds the demo's callers: ${left//$'\n'/ }"
                clean=0
            fi
        fi
        local busy
        if busy=$(busy_ports); then
            warn "ports still in use after the demo stopped:"
            sed 's/^/    /' <<<"$busy" >&2
            clean=0
        fi
        : >"$PID_FILE"
        if ((clean)); then
            say "stopped: every process the demo started has ended, its ports are free"
        else
            status=1
        fi
    fi
    exit "$status"
}

# ---------------------------------------------------------------- main

main() {
    case ${1:-} in
    "") MODE=run ;;
    --check) MODE=check ;;
    -h | --help) usage 0 ;;
    *)
        warn "unknown argument '$1'"
        usage 2
        ;;
    esac
    [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "STC_DEMO_TIMEOUT must be a whole number of seconds (got '$TIMEOUT')"
    [[ $(id -u) -eq 0 ]] || die "run as root (the Asterisk lab needs debootstrap and chroot)"

    bash scripts/setup.sh "$PROG"

    mkdir -p "$RUN_DIR" "$LOG_DIR"
    exec {LOCK_FD}>"$LOCK_FILE"
    flock -n "$LOCK_FD" || die "another $PROG is running (it holds $(rel "$LOCK_FILE"))"
    stop_leftovers

    local busy
    if busy=$(busy_ports); then
        sed 's/^/    /' <<<"$busy" >&2
        die "ports the demo needs are in use (see above): stop what holds them"
    fi

    ensure_pki

    trap on_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    start_asterisk
    # stc-server has no built-in ARI/AMI secrets: the running lab's (demo/server.toml reads them).
    lab secrets "$RUN_DIR/pbx-secrets" || die "cannot read the lab Asterisk's ARI/AMI secrets"

    say "stc-server (demo/server.toml)"
    start_process stc-server "$LOG_DIR/server.log" "$BIN/stc-server" --config demo/server.toml
    wait_listening tcp "$TUNNEL_PORT" stc-server

    local user
    say "stc-clients: ${USERS[*]}"
    # Three windows for one demo: the summary prints their addresses instead of opening browsers.
    for user in "${USERS[@]}"; do
        start_process "stc-client $user" "$LOG_DIR/client-$user.log" "$BIN/stc-client" --config "demo/$user.toml" --no-browser
    done
    for user in "${USERS[@]}"; do wait_listening udp "${CLIENT_SIP_PORT[$user]}" "stc-client $user"; done
    wait_lights "yellow green" "tunnels up"

    say "SIPp phones dial room $ROOM"
    for user in "${USERS[@]}"; do start_phone "$user"; done
    wait_for_room
    wait_lights "green" "secure calls"

    print_summary
    if [[ $MODE == check ]]; then
        say "check passed: ${#USERS[@]} callers in room $ROOM through stc, every client in a secure call"
        return 0
    fi
    say "running; Ctrl-C stops everything"
    # From here on, being stopped is how the demo ends, not a failure.
    trap 'exit 0' INT TERM
    while :; do
        sleep 1 &
        SLEEP_PID=$!
        wait "$SLEEP_PID" || true
        SLEEP_PID=
        check_all_alive
    done
}

ROOM_LISTING=
main "$@"
