# shellcheck shell=bash
# Postfix as the reference: a private, stock instance per measured run, with its
# own config_directory, queue_directory and data_directory under RUNDIR. The
# system instance (/etc/postfix) is neither used nor touched.
#
# Scenario A: smtpd on a free loopback port; every message for user@localhost is
# delivered by virtual(8) to the Maildir RUNDIR/pf/mail/localhost/user/.
# virtual(8) refuses regexp substitution ($1) in virtual_mailbox_maps, so the map
# lists the bench recipient explicitly (texthash, no postmap needed).
#
# Scenario B: no local or virtual delivery at all (mydestination empty); every
# message, from clients in mynetworks (127.0.0.0/8), goes to
# relayhost = [127.0.0.1]:DOWNSTREAM_PORT, the downstream smtp-sink. Delivered =
# lines with status=sent in the instance's maillog.
#
# Scenario C: as A, but virtual_transport = lmtp:inet:127.0.0.1:DOVECOT_PORT hands
# every message for user@localhost to the run's Dovecot over LMTP (lmtp(8), with
# its default connection cache and destination concurrency). Delivered = messages
# Dovecot stored.
#
# Everything else is left at Postfix's defaults (compatibility_level 3.6), including
# in_flow_delay, which slows smtpd down when the queue manager falls behind.

PF_DIR=
POSTFIX_PORT=
PF_MASTER_PID=
PF_SCENARIO=

postfix_configure() { # SCENARIO DIR PORT
    local scenario=$1 d=$2 port=$3
    local -a scenario_conf
    case $scenario in
    A)
        scenario_conf=(
            "virtual_mailbox_domains = localhost"
            "virtual_mailbox_base = $d/mail"
            "virtual_mailbox_maps = texthash:$d/etc/vmailbox"
            "virtual_uid_maps = static:$(id -u nobody)"
            "virtual_gid_maps = static:$(id -g nobody)"
        )
        ;;
    B)
        scenario_conf=("relayhost = [127.0.0.1]:$DOWNSTREAM_PORT")
        ;;
    C)
        scenario_conf=(
            "virtual_mailbox_domains = localhost"
            "virtual_mailbox_maps = texthash:$d/etc/vmailbox"
            "virtual_transport = lmtp:inet:127.0.0.1:$DOVECOT_PORT"
        )
        ;;
    *)
        log "postfix: scenario $scenario is not implemented"
        return 1
        ;;
    esac
    # The tree must be reachable by the postfix user and by the mailbox owner.
    mkdir -p "$d/etc" "$d/queue" "$d/data" "$d/mail"
    chmod 755 "$d" "$d/etc" "$d/queue" "$d/mail"
    chown postfix:postfix "$d/data"
    chown nobody:nogroup "$d/mail"
    cp /etc/postfix/master.cf "$d/etc/master.cf"
    [[ -f /etc/postfix/dynamicmaps.cf ]] && cp /etc/postfix/dynamicmaps.cf "$d/etc/"
    : >"$d/etc/main.cf"
    printf 'user@localhost localhost/user/\n' >"$d/etc/vmailbox"
    postconf -c "$d/etc" -e \
        "compatibility_level = 3.6" \
        "queue_directory = $d/queue" \
        "data_directory = $d/data" \
        "maillog_file = $d/maillog" \
        "maillog_file_prefixes = $d" \
        "myhostname = postfix-bench.localhost" \
        "mydomain = localhost" \
        "mydestination =" \
        "inet_interfaces = 127.0.0.1" \
        "inet_protocols = ipv4" \
        "mynetworks = 127.0.0.0/8" \
        "alias_maps =" \
        "alias_database =" \
        "${scenario_conf[@]}" || return 1
    # No port 25 listener and no chroot (the chroot jail would need a copy of /etc);
    # smtpd listens on the chosen loopback port instead.
    postconf -c "$d/etc" -M# smtp/inet || return 1
    postconf -c "$d/etc" -F '*/*/chroot = n' || return 1
    printf '127.0.0.1:%s inet n - n - - smtpd\n' "$port" >>"$d/etc/master.cf"
}

postfix_start() { # SCENARIO RUNDIR
    local scenario=$1 run=$2 d
    d=$run/pf
    PF_DIR=$d
    PF_SCENARIO=$scenario
    free_port
    POSTFIX_PORT=$FREE_PORT
    PF_MASTER_PID=
    postfix_configure "$scenario" "$d" "$POSTFIX_PORT" || { log "postfix: configuration failed"; return 1; }
    if ! timeout 60 postfix -c "$d/etc" check; then
        log "postfix: 'postfix -c $d/etc check' failed"
        [[ -f $d/maillog ]] && tail -n 20 "$d/maillog" >&2
        return 1
    fi
    if ! timeout 60 postfix -c "$d/etc" start; then
        log "postfix: 'postfix -c $d/etc start' failed"
        [[ -f $d/maillog ]] && tail -n 20 "$d/maillog" >&2
        postfix_stop
        return 1
    fi
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $d/queue/pid/master.pid ]] && break
        sleep 0.1
    done
    PF_MASTER_PID=$(tr -d ' \n' <"$d/queue/pid/master.pid" 2>/dev/null)
    if ! smtp_ready "$POSTFIX_PORT" 30 "$PF_MASTER_PID"; then
        log "postfix: not answering EHLO on 127.0.0.1:$POSTFIX_PORT"
        [[ -f $d/maillog ]] && tail -n 20 "$d/maillog" >&2
        postfix_stop
        return 1
    fi
}

postfix_delivered() {
    case $PF_SCENARIO in
    B) count_lines 'status=sent' "$PF_DIR/maillog" ;;
    C) dovecot_delivered ;;
    *) count_maildir_new "$PF_DIR/mail/localhost" ;;
    esac
}

# pids of processes belonging to the instance: the master and every Postfix daemon
# (they all run with the instance's queue directory as working directory).
postfix_pids() {
    local p cwd
    for p in /proc/[0-9]*; do
        cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
        if [[ $cwd == "$PF_DIR/queue" || $cwd == "$PF_DIR/queue/"* ]]; then
            echo "${p#/proc/}"
        fi
    done
    [[ -n $PF_MASTER_PID ]] && kill -0 "$PF_MASTER_PID" 2>/dev/null && echo "$PF_MASTER_PID"
}

postfix_stop() {
    [[ -n $PF_DIR && -d $PF_DIR/etc ]] || return 0
    local i left
    timeout 60 postfix -c "$PF_DIR/etc" stop >/dev/null 2>&1
    for ((i = 0; i < 200; i++)); do
        left=$(postfix_pids | sort -u)
        [[ -z $left ]] && break
        sleep 0.1
    done
    if [[ -n $left ]]; then
        log "warning: postfix instance $PF_DIR did not stop in 20 s; aborting it"
        timeout 30 postfix -c "$PF_DIR/etc" abort >/dev/null 2>&1
        sleep 1
        left=$(postfix_pids | sort -u)
        if [[ -n $left ]]; then
            log "warning: killing leftover postfix processes: ${left//$'\n'/ }"
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null
        fi
    fi
    PF_DIR=
    PF_MASTER_PID=
}
