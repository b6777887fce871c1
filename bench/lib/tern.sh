# shellcheck shell=bash
# Tern under test: one fresh server (fresh data_dir) per measured run.
#
# Interface shared by every server module (tern, postfix, sink):
#   <srv>_start SCENARIO RUNDIR   start it; sets <SRV>_PORT; non-zero on failure
#   <srv>_delivered               (servers that store mail) messages delivered so far
#   <srv>_stop                    stop it and everything it started
# Scenario A: accept for local domain "localhost", deliver every recipient to
# its own Maildir.
# Scenario B: relay every message for remote.test (allowed from 127.0.0.0/8 by
# the default [relay] networks) to the downstream smtp-sink on
# 127.0.0.1:DOWNSTREAM_PORT through [relay.routes]; "localhost" stays the only
# local domain. Delivered = lines with status="delivered" in tern.log (one per
# recipient the downstream server answered 250 to).
# Scenario C: as A, but "localhost" is delivered over LMTP (delivery = "lmtp") to
# the run's Dovecot on 127.0.0.1:DOVECOT_PORT. Delivered = messages Dovecot stored.
# BENCH_TERN_OUTBOUND_CONNS, when set, overrides [outbound] max_connections_per_host
# (in C, the limit of LMTP connections at once).
#
# [admin]: on, on a free loopback port, for "tern" and "before" (as by default, but
# not on 8025, where a system Tern may listen); off (listen = "") for "noadmin";
# on and /metrics scraped every second by curl from start to stop for "scraped".
# TERN_ADMIN (on | off) says which; the scraped module sets it.

TERN_PID=
TERN_PORT=
TERN_RUN=
TERN_SCENARIO=
TERN_ADMIN=on
TERN_CPU_START=0
TERN_ADMIN_PORT=

tern_write_config() { # SCENARIO RUNDIR PORT
    local scenario=$1 run=$2 port=$3
    case $scenario in
    A)
        cat >"$run/tern.toml" <<EOF
hostname = "tern-bench.localhost"
data_dir = "$run/data"

[[listen]]
addr = "127.0.0.1:$port"
mode = "smtp"

[local]
domains = ["localhost"]
mail_root = "$run/mail"
accept_unknown = true

[limits]
max_message_size = 52428800
EOF
        ;;
    B)
        cat >"$run/tern.toml" <<EOF
hostname = "tern-bench.localhost"
data_dir = "$run/data"

[[listen]]
addr = "127.0.0.1:$port"
mode = "smtp"

[local]
domains = ["localhost"]
mail_root = "$run/mail"

[limits]
max_message_size = 52428800
EOF
        # By MX through a private DNS server (sts.sh), or straight to the smtp-sink.
        if [[ -n ${TERN_MX_CONFIG:-} ]]; then
            printf '\n%s\n' "$TERN_MX_CONFIG" >>"$run/tern.toml"
        else
            printf '\n[relay.routes]\n"remote.test" = "127.0.0.1:%s"\n' "$DOWNSTREAM_PORT" >>"$run/tern.toml"
        fi
        ;;
    C)
        cat >"$run/tern.toml" <<EOF
hostname = "tern-bench.localhost"
data_dir = "$run/data"

[[listen]]
addr = "127.0.0.1:$port"
mode = "smtp"

[local]
domains = ["localhost"]
accept_unknown = true
delivery = "lmtp"
lmtp = "127.0.0.1:$DOVECOT_PORT"

[limits]
max_message_size = 52428800
EOF
        ;;
    *)
        log "tern: scenario $scenario is not implemented"
        return 1
        ;;
    esac
    # An older build without the operations layer knows no [admin] section.
    if ! "$TERN_BIN" config default 2>/dev/null | grep -q '\[admin\]'; then
        :
    elif [[ $TERN_ADMIN == off ]]; then
        printf '\n[admin]\nlisten = ""\n' >>"$run/tern.toml"
    else
        free_port
        TERN_ADMIN_PORT=$FREE_PORT
        printf '\n[admin]\nlisten = "127.0.0.1:%s"\n' "$TERN_ADMIN_PORT" >>"$run/tern.toml"
    fi
    if [[ $scenario != A && -n ${BENCH_TERN_OUTBOUND_CONNS:-} && -z ${TERN_MX_CONFIG:-} ]]; then
        printf '\n[outbound]\nmax_connections_per_host = %s\n' "$BENCH_TERN_OUTBOUND_CONNS" >>"$run/tern.toml"
    fi
}

tern_start() { # SCENARIO RUNDIR
    local scenario=$1 run=$2
    TERN_RUN=$run
    TERN_SCENARIO=$scenario
    free_port
    TERN_PORT=$FREE_PORT
    mkdir -p "$run"
    tern_write_config "$scenario" "$run" "$TERN_PORT" || return 1
    if ! "$TERN_BIN" config check --config "$run/tern.toml" >"$run/config-check.log" 2>&1; then
        log "tern: config check failed:"
        sed 's/^/    /' "$run/config-check.log" >&2
        return 1
    fi
    "$TERN_BIN" serve --config "$run/tern.toml" >"$run/tern.out" 2>"$run/tern.log" &
    TERN_PID=$!
    if ! smtp_ready "$TERN_PORT" 30 "$TERN_PID"; then
        log "tern: not answering EHLO on 127.0.0.1:$TERN_PORT; last log lines:"
        tail -n 20 "$run/tern.log" >&2
        tern_stop
        return 1
    fi
    TERN_CPU_START=$(tern_cpu_ms)
}

tern_delivered() {
    case $TERN_SCENARIO in
    # The delivery line says status=sent; builds before it said status="delivered".
    B) echo $(($(count_lines ' status=sent ' "$TERN_RUN/tern.log") + $(count_lines 'status="delivered"' "$TERN_RUN/tern.log"))) ;;
    C) dovecot_delivered ;;
    *) count_maildir_new "$TERN_RUN/mail" ;;
    esac
}

# Peak resident set size so far (VmHWM), in MiB.
tern_peak_rss() {
    [[ -n $TERN_PID && -r /proc/$TERN_PID/status ]] || { echo "-"; return; }
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$TERN_PID/status"
}

# CPU time the server has used so far (user and system), in ms; tern_cpu_used: since
# it was ready (what starting costs, a self-signed certificate say, left out).
tern_cpu_ms() {
    [[ -n $TERN_PID && -r /proc/$TERN_PID/stat ]] || { echo "-"; return; }
    # After "pid (comm) ", utime and stime are the 12th and 13th fields.
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.0f", ($12 + $13) * 1000 / hz }' "/proc/$TERN_PID/stat"
}

tern_cpu_used() {
    local now
    now=$(tern_cpu_ms)
    [[ $now =~ ^[0-9]+$ && $TERN_CPU_START =~ ^[0-9]+$ ]] || { echo "-"; return; }
    echo $((now - TERN_CPU_START))
}

tern_stop() {
    [[ -n $TERN_PID ]] || return 0
    stop_pid "$TERN_PID" tern 30
    if [[ $STOP_RC != 0 ]]; then
        log "warning: tern exited with status $STOP_RC after SIGTERM (expected 0)"
    fi
    TERN_PID=
}

# The same Tern module for an older build (TERN_BEFORE_BIN), measured as server
# "before". One Tern runs at a time, so the two share the module's state.
BEFORE_PORT=
before_start() {
    local saved=$TERN_BIN rc
    TERN_BIN=$TERN_BEFORE_BIN
    tern_start "$@"
    rc=$?
    TERN_BIN=$saved
    BEFORE_PORT=$TERN_PORT
    return $rc
}
before_delivered() { tern_delivered; }
before_stop() { tern_stop; }

# Tern with the admin layer off: [admin] listen = "".
NOADMIN_PORT=
noadmin_start() {
    local rc
    TERN_ADMIN=off
    tern_start "$@"
    rc=$?
    TERN_ADMIN=on
    NOADMIN_PORT=$TERN_PORT
    return $rc
}
noadmin_delivered() { tern_delivered; }
noadmin_stop() { tern_stop; }

# Tern with the admin layer on and /metrics scraped every second by curl (with the
# bearer token) for the whole run, as Prometheus would; each answer's status goes
# to scrapes.log. The loop is bounded (an hour) and ends with the server.
SCRAPED_PORT=
SCRAPER_PID=
scraped_start() {
    local run=$2 token
    tern_start "$@" || return 1
    SCRAPED_PORT=$TERN_PORT
    token=$(cat "$run/data/admin.token") || { tern_stop; return 1; }
    (
        for ((i = 0; i < 3600; i++)); do
            curl -s -o /dev/null -w '%{http_code}\n' --max-time 5 -H "Authorization: Bearer $token" \
                "http://127.0.0.1:$TERN_ADMIN_PORT/metrics"
            sleep 1
        done
    ) >"$run/scrapes.log" 2>&1 &
    SCRAPER_PID=$!
}
scraped_delivered() { tern_delivered; }
# Scrapes answered 200 so far.
scraped_scrapes() { count_lines 200 "$TERN_RUN/scrapes.log"; }
scraped_stop() {
    if [[ -n $SCRAPER_PID ]]; then
        kill "$SCRAPER_PID" 2>/dev/null
        wait "$SCRAPER_PID" 2>/dev/null
        SCRAPER_PID=
    fi
    tern_stop
}
