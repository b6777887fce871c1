# shellcheck shell=bash
# Scenario C's mail store: a private Dovecot serving LMTP on a free loopback port,
# one fresh instance per measured run of Tern or Postfix, storing every message for
# user@localhost in the Maildir RUNDIR/dovecot/mail/localhost/user/ (as nobody).
# Dovecot is stock apart from what a private instance needs: its own base_dir,
# state_dir and log file, a passwd-file userdb with the one user, no SSL.
#
#   dovecot_start RUNDIR   start it; sets DOVECOT_PORT; non-zero on failure
#   dovecot_delivered      messages Dovecot has stored so far
#   dovecot_stop           stop it (the master stops its own processes)

DOVECOT_PID=
DOVECOT_PORT=
DOVECOT_DIR=

dovecot_start() { # RUNDIR
    local d=$1/dovecot
    DOVECOT_DIR=$d
    free_port
    DOVECOT_PORT=$FREE_PORT
    mkdir -p "$d/mail" "$d/home"
    chmod 755 "$1" "$d"
    chown nobody:nogroup "$d/mail" "$d/home"
    printf 'user@localhost:::::::\n' >"$d/passwd"
    cat >"$d/dovecot.conf" <<EOF
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = no
protocols = lmtp
listen = 127.0.0.1
default_internal_user = nobody
default_internal_group = nogroup
default_login_user = nobody
mail_uid = nobody
mail_gid = nogroup
mail_location = maildir:$d/mail/%d/%n
passdb {
  driver = passwd-file
  args = $d/passwd
}
userdb {
  driver = passwd-file
  args = $d/passwd
  default_fields = home=$d/home/%d/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $DOVECOT_PORT
  }
}
EOF
    /usr/sbin/dovecot -F -c "$d/dovecot.conf" >"$d/dovecot.out" 2>&1 &
    DOVECOT_PID=$!
    local i line
    for ((i = 0; i < 150; i++)); do
        kill -0 "$DOVECOT_PID" 2>/dev/null || break
        if { exec 3<>"/dev/tcp/127.0.0.1/$DOVECOT_PORT"; } 2>/dev/null; then
            read -r -t 5 line <&3
            exec 3>&- 3<&-
            [[ $line == 220* ]] && return 0
        fi
        sleep 0.2
    done
    log "dovecot: LMTP not answering on 127.0.0.1:$DOVECOT_PORT; its log:"
    tail -n 20 "$d/dovecot.log" "$d/dovecot.out" >&2
    dovecot_stop
    return 1
}

dovecot_delivered() {
    count_maildir_new "$DOVECOT_DIR/mail/localhost"
}

dovecot_stop() {
    [[ -n $DOVECOT_PID ]] || return 0
    stop_pid "$DOVECOT_PID" dovecot 30
    DOVECOT_PID=
}
