# shellcheck shell=bash
# Shared functions for bench/run: logging, timing, ports, process control.
# Sourced by bench/run; expects BENCH_TMP to be set before the functions that
# create files are used.

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

now() { date +%s.%N; }

# calc EXPR: floating-point arithmetic through awk, e.g. calc "3 / 2".
calc() { awk "BEGIN { printf \"%.6f\", ($1) }"; }

# fmt_rate COUNT SECONDS -> integer msg/s, or "-" when not measurable.
fmt_rate() {
    awk -v n="$1" -v s="$2" 'BEGIN { if (s > 0 && n > 0) printf "%.0f", n / s; else printf "-" }'
}

# fmt_ratio A B -> A/B with two decimals, or "-".
fmt_ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "-" }'
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port: sets FREE_PORT to a loopback TCP port below the ephemeral range that
# nothing listens on and that this run has not handed out yet.
BENCH_PORTS_USED=" "
FREE_PORT=
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ $BENCH_PORTS_USED == *" $p "* ]] && continue
        if ! port_in_use "$p"; then
            BENCH_PORTS_USED+="$p "
            FREE_PORT=$p
            return 0
        fi
    done
    die "no free loopback port found"
}

# smtp_ready PORT TIMEOUT_S [PID]: wait until 127.0.0.1:PORT greets with 220 and
# answers EHLO with 250. Fails early if PID (when given) has exited.
smtp_ready() {
    local port=$1 limit=$2 pid=${3:-} deadline line ok
    deadline=$(($(date +%s) + limit))
    while (($(date +%s) < deadline)); do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
            ok=0
            if read -r -t 5 line <&3 && [[ $line == 220* ]]; then
                printf 'EHLO bench.localhost\r\n' >&3
                local n
                for ((n = 0; n < 50; n++)); do
                    read -r -t 5 line <&3 || break
                    if [[ $line == 250\ * ]]; then ok=1; break; fi
                    [[ $line == 250-* ]] || break
                done
                printf 'QUIT\r\n' >&3
                read -r -t 2 line <&3 || true
            fi
            exec 3>&- 3<&-
            ((ok)) && return 0
        fi
        sleep 0.2
    done
    return 1
}

# stop_pid PID NAME TIMEOUT_S: SIGTERM, wait up to TIMEOUT_S, then SIGKILL.
# PID must be a child of this shell. Sets STOP_RC to the exit status or "killed".
STOP_RC=
stop_pid() {
    local pid=$1 name=$2 limit=$3 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < limit * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "warning: $name (pid $pid) still running ${limit}s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null
            STOP_RC=killed
            return 0
        fi
    fi
    wait "$pid" 2>/dev/null
    STOP_RC=$?
}

# count_lines FIXED_STRING FILE: number of lines of FILE containing FIXED_STRING
# (0 when the file does not exist yet).
count_lines() {
    local n
    n=$(grep -c -F -e "$1" "$2" 2>/dev/null)
    echo "${n:-0}"
}

# count_maildir_new ROOT: number of messages in every */new/ directory under ROOT.
count_maildir_new() {
    local root=$1
    [[ -d $root ]] || { echo 0; return; }
    find "$root" -path '*/new/*' -type f 2>/dev/null | wc -l
}

# wait_count FUNC TARGET TIMEOUT_S STALL_S: poll FUNC (prints a number) until it
# reaches TARGET, the time is up, or the number has not moved for STALL_S seconds.
# Prints the last count; returns 0 if TARGET was reached.
wait_count() {
    local fn=$1 target=$2 limit=$3 stall=$4 end n=0 last=-1 moved
    end=$((SECONDS + limit))
    moved=$SECONDS
    while :; do
        n=$("$fn")
        ((n >= target)) && { echo "$n"; return 0; }
        ((n != last)) && { last=$n; moved=$SECONDS; }
        ((SECONDS >= end || SECONDS - moved >= stall)) && break
        sleep 0.2
    done
    echo "$n"
    return 1
}

# run_source PORT SESSIONS COUNT SIZE LOGFILE [RCPT]: drive the load, bounded in
# time; RCPT defaults to user@localhost. Returns smtp-source's exit status (124/137
# when it had to be stopped). It runs in the background so that a signal to this
# script is handled at once.
SOURCE_PID=
run_source() {
    local port=$1 sessions=$2 count=$3 size=$4 logf=$5 rcpt=${6:-user@localhost} rc
    timeout --kill-after=5 "$BENCH_SOURCE_TIMEOUT" \
        /usr/sbin/smtp-source -s "$sessions" -m "$count" -l "$size" \
        -f bench@localhost -t "$rcpt" "127.0.0.1:$port" >"$logf" 2>&1 &
    SOURCE_PID=$!
    wait "$SOURCE_PID"
    rc=$?
    SOURCE_PID=
    return "$rc"
}

source_stop() {
    [[ -n $SOURCE_PID ]] || return 0
    stop_pid "$SOURCE_PID" smtp-source 10
    SOURCE_PID=
}
