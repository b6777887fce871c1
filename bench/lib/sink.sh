# shellcheck shell=bash
# smtp-sink: Postfix's test server that answers every command and stores
# nothing. It marks the upper bound of what the load generator and the loopback
# network deliver on this machine. Identical in every scenario.
#
# Scenario B also uses a second, separate smtp-sink as the downstream server that
# Tern and Postfix relay to (downstream_start / downstream_stop). It stores
# nothing either; the relaying server's log tells what reached it.

SINK_PID=
SINK_PORT=

sink_start() { # SCENARIO RUNDIR
    local run=$2
    mkdir -p "$run"
    free_port
    SINK_PORT=$FREE_PORT
    # -u nobody: smtp-sink refuses to run as root otherwise. Backlog 1000.
    /usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 1000 >"$run/sink.out" 2>"$run/sink.log" &
    SINK_PID=$!
    if ! smtp_ready "$SINK_PORT" 15 "$SINK_PID"; then
        log "smtp-sink: not answering on 127.0.0.1:$SINK_PORT"
        tail -n 20 "$run/sink.log" >&2
        sink_stop
        return 1
    fi
}

sink_stop() {
    [[ -n $SINK_PID ]] || return 0
    stop_pid "$SINK_PID" smtp-sink 10
    SINK_PID=
}

DOWNSTREAM_PID=
DOWNSTREAM_PORT=

downstream_start() { # RUNDIR
    local run=$1
    mkdir -p "$run"
    free_port
    DOWNSTREAM_PORT=$FREE_PORT
    /usr/sbin/smtp-sink -u nobody "127.0.0.1:$DOWNSTREAM_PORT" 1000 \
        >"$run/downstream.out" 2>"$run/downstream.log" &
    DOWNSTREAM_PID=$!
    if ! smtp_ready "$DOWNSTREAM_PORT" 15 "$DOWNSTREAM_PID"; then
        log "downstream smtp-sink: not answering on 127.0.0.1:$DOWNSTREAM_PORT"
        tail -n 20 "$run/downstream.log" >&2
        downstream_stop
        return 1
    fi
}

downstream_stop() {
    [[ -n $DOWNSTREAM_PID ]] || return 0
    stop_pid "$DOWNSTREAM_PID" "downstream smtp-sink" 10
    DOWNSTREAM_PID=
}
