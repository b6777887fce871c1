# shellcheck shell=bash
# Tern cluster nodes on a throwaway PostgreSQL (scenario D): a fresh database
# cluster (initdb + pg_ctl, as nobody, on a free loopback port, defaults otherwise:
# fsync and synchronous_commit on) per measured run, `tern cluster init`, then the
# nodes, each with its own data_dir and listener and the same [cluster] database.
# They relay remote.test to the run's downstream smtp-sink as Tern does in scenario B.
#
# Servers:
#   pg1  one node; smtp-source against it as usual
#   pg3  three nodes; the load split across three smtp-source processes run in
#        parallel, one per node (sessions and messages divided as evenly as they go)
# Delivered = lines with status=sent in all the nodes' logs. Commits per message =
# the growth of pg_stat_database.xact_commit for the database between the start of
# the load and the stop of the nodes (their backends flush their counters as they
# end), over the messages sent: acceptance, delivery results, heartbeats and the
# bench's own few queries included.

PG_BIN=
PG_DIR=
PG_PORT=
PG_XACT_START=
CL_PIDS=()
CL_PORTS=()
CL_RUN=
CL_COMMITS=

# Debian's newest /usr/lib/postgresql/<version>/bin, else the directory of initdb
# on PATH.
pg_bin_dir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $d && -x $d/initdb && -x $d/pg_ctl ]]; then
        echo "$d"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
    else
        return 1
    fi
}

# psql beside initdb, else the one on PATH.
pg_psql_path() {
    if [[ -x $PG_BIN/psql ]]; then echo "$PG_BIN/psql"; else command -v psql; fi
}

pg_as() { runuser -u nobody -- "$@"; }

pg_start() { # RUNDIR
    PG_DIR=$1/pg
    PG_BIN=$(pg_bin_dir) || { log "postgres: initdb and pg_ctl not found"; return 1; }
    mkdir -p "$PG_DIR"
    chown nobody "$PG_DIR"
    free_port
    PG_PORT=$FREE_PORT
    if ! pg_as "$PG_BIN/initdb" -D "$PG_DIR/data" -U tern --auth=trust -E UTF8 --no-locale \
        >"$PG_DIR/initdb.log" 2>&1; then
        log "postgres: initdb failed:"
        tail -n 20 "$PG_DIR/initdb.log" >&2
        return 1
    fi
    printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nmax_connections = 200\n" \
        "$PG_PORT" "$PG_DIR" >>"$PG_DIR/data/postgresql.conf"
    [[ -z ${BENCH_PG_CONF:-} ]] || printf '%s\n' "$BENCH_PG_CONF" >>"$PG_DIR/data/postgresql.conf"
    if ! pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start \
        >"$PG_DIR/pg_ctl.log" 2>&1; then
        log "postgres: pg_ctl start failed:"
        tail -n 20 "$PG_DIR/postgres.log" >&2
        PG_DIR=
        return 1
    fi
}

pg_value() { # SQL
    timeout 30 "$(pg_psql_path)" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
        -U tern -d postgres -c "$1"
}

pg_xact_commit() { pg_value "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'"; }

pg_stop() {
    [[ -n $PG_DIR && -f $PG_DIR/data/postmaster.pid ]] || { PG_DIR=; return 0; }
    pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -w -t 30 -m fast stop >/dev/null 2>&1 ||
        pg_as "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -w -t 30 -m immediate stop >/dev/null 2>&1
    PG_DIR=
}

cluster_node_config() { # RUNDIR NAME PORT
    local run=$1 name=$2 port=$3
    mkdir -p "$run/$name"
    cat >"$run/$name/tern.toml" <<EOF
hostname = "$name.tern-bench.localhost"
data_dir = "$run/$name/data"

[[listen]]
addr = "127.0.0.1:$port"
mode = "smtp"

[local]
domains = ["localhost"]
mail_root = "$run/$name/mail"

[limits]
max_message_size = 52428800

[relay.routes]
"remote.test" = "127.0.0.1:$DOWNSTREAM_PORT"

[admin]
listen = ""

[cluster]
database = "postgres://tern@127.0.0.1:$PG_PORT/postgres?sslmode=disable"
node = "$name"
lease = "2m"
EOF
    if [[ -n ${BENCH_TERN_OUTBOUND_CONNS:-} ]]; then
        printf '\n[outbound]\nmax_connections_per_host = %s\n' "$BENCH_TERN_OUTBOUND_CONNS" >>"$run/$name/tern.toml"
    fi
}

cluster_start() { # NODES RUNDIR
    local nodes=$1 run=$2 i name
    CL_RUN=$run
    CL_PIDS=()
    CL_PORTS=()
    CL_COMMITS=
    mkdir -p "$run"
    pg_start "$run" || return 1
    for ((i = 1; i <= nodes; i++)); do
        name=node$i
        free_port
        CL_PORTS+=("$FREE_PORT")
        cluster_node_config "$run" "$name" "$FREE_PORT"
        if ((i == 1)) && ! "$TERN_BIN" cluster init --config "$run/$name/tern.toml" >"$run/init.log" 2>&1; then
            log "tern: cluster init failed:"
            sed 's/^/    /' "$run/init.log" >&2
            cluster_stop
            return 1
        fi
    done
    for ((i = 1; i <= nodes; i++)); do
        name=node$i
        "$TERN_BIN" serve --config "$run/$name/tern.toml" >"$run/$name/tern.out" 2>"$run/$name/tern.log" &
        CL_PIDS+=($!)
    done
    for ((i = 0; i < nodes; i++)); do
        if ! smtp_ready "${CL_PORTS[i]}" 60 "${CL_PIDS[i]}"; then
            log "tern: node$((i + 1)) not answering EHLO on 127.0.0.1:${CL_PORTS[i]}; last log lines:"
            tail -n 20 "$run/node$((i + 1))/tern.log" >&2
            cluster_stop
            return 1
        fi
    done
}

# Just before the load: the database's commit counter.
cluster_before_load() { PG_XACT_START=$(pg_xact_commit); }

cluster_delivered() {
    local n=0 i
    for ((i = 1; i <= ${#CL_PIDS[@]}; i++)); do
        n=$((n + $(count_lines ' status=sent ' "$CL_RUN/node$i/tern.log")))
    done
    echo "$n"
}

# Stops the nodes (SIGTERM), reads the commits since the load began into
# CL_COMMITS once the counter has settled (bounded), then stops PostgreSQL.
cluster_stop() {
    local pid i x last=
    for pid in "${CL_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${CL_PIDS[@]}"; do
        stop_pid "$pid" "tern node" 30
        [[ $STOP_RC == 0 ]] || log "warning: a tern node exited with status $STOP_RC after SIGTERM (expected 0)"
    done
    CL_PIDS=()
    if [[ -n $PG_DIR && -n $PG_XACT_START ]]; then
        # Ended backends report their counters asynchronously: read until two reads agree.
        for ((i = 0; i < 20; i++)); do
            x=$(pg_xact_commit) || break
            [[ $x == "$last" ]] && break
            last=$x
            sleep 0.5
        done
        [[ $last =~ ^[0-9]+$ ]] && CL_COMMITS=$((last - PG_XACT_START))
    fi
    PG_XACT_START=
    pg_stop
}

# cluster_commits_per_msg COUNT
cluster_commits_per_msg() {
    awk -v c="${CL_COMMITS:-}" -v n="$1" 'BEGIN { if (c ~ /^[0-9]+$/ && n > 0) printf "%.3f", c / n; else print "-" }'
}

# pg3's load: SESSIONS and COUNT split across one smtp-source per node, in
# parallel, each bounded like run_source. Fails if any of them failed.
cluster_source() { # SESSIONS COUNT SIZE LOGFILE RCPT
    local sess=$1 count=$2 size=$3 logf=$4 rcpt=$5 n=${#CL_PORTS[@]} i s m rc=0
    local -a pids=()
    for ((i = 0; i < n; i++)); do
        s=$((sess / n + (i < sess % n ? 1 : 0)))
        m=$((count / n + (i < count % n ? 1 : 0)))
        ((s > 0)) || s=1
        timeout --kill-after=5 "$BENCH_SOURCE_TIMEOUT" \
            /usr/sbin/smtp-source -s "$s" -m "$m" -l "$size" \
            -f bench@localhost -t "$rcpt" "127.0.0.1:${CL_PORTS[i]}" >"$logf.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[i]}" || rc=$?
    done
    cat "$logf".* >"$logf" 2>/dev/null
    return "$rc"
}

PG1_PORT=
pg1_start() { cluster_start 1 "$2" && PG1_PORT=${CL_PORTS[0]}; }
pg1_before_load() { cluster_before_load; }
pg1_delivered() { cluster_delivered; }
pg1_stop() { cluster_stop; }

PG3_PORT=
pg3_start() { cluster_start 3 "$2" && PG3_PORT=${CL_PORTS[0]}; }
pg3_before_load() { cluster_before_load; }
pg3_source() { cluster_source "$@"; }
pg3_delivered() { cluster_delivered; }
pg3_stop() { cluster_stop; }
