# shellcheck shell=bash
# smtp-sink: Postfix's test server that answers every command and stores
# nothing. It marks the upper bound of what the load generator and the loopback
# network deliver on this machine. Identical in every scenario.

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
