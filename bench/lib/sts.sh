# shellcheck shell=bash
# Scenario B over TLS, without and with MTA-STS (BENCH_STS=1). smtp-sink cannot do
# STARTTLS, so both relay to a downstream Tern that offers it with a certificate for
# mx.remote.test from a test CA made with openssl (Maildir delivery: the same cost for
# both). The relaying Tern finds the downstream by MX, asked of a private DNS server
# (tests/support/dns_server.py, Python with dnslib) on loopback:
#   tlsrelay  [outbound] mta_sts = false: opportunistic STARTTLS
#   sts       [outbound] mta_sts = true: the enforce policy of remote.test, served over
#             HTTPS (Python, the test CA) on 127.0.0.71:443, fetched once and cached;
#             every connection needs a certificate verified for the MX name
# Delivered = the relaying Tern's delivery lines with status=sent. Everything (CA,
# DNS, policy server, downstream) is made fresh for each run and stopped with it.

STS_DIR=
STS_DNS_PID=
STS_HTTPS_PID=
STS_DOWN_PID=
STS_IP=127.0.0.71

STS_HTTPS_SERVER='
import http.server, ssl, sys
cert, key, body = sys.argv[1], sys.argv[2], sys.argv[3]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = body.encode()
        self.send_response(200 if self.path == "/.well-known/mta-sts.txt" else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("127.0.0.71", 443), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
'

# sts_issue NAME: a certificate for NAME from the run's CA.
sts_issue() {
    local d=$STS_DIR name=$1
    printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$name" >"$d/$name.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$d/$name.key" -out "$d/$name.csr" >/dev/null 2>&1 &&
        openssl x509 -req -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
            -in "$d/$name.csr" -out "$d/$name.pem" -extfile "$d/$name.ext" >/dev/null 2>&1
}

# sts_wait_ready FILE PID: until FILE has a line "ready" (30 s at most).
sts_wait_ready() {
    local i
    for ((i = 0; i < 300; i++)); do
        grep -qx ready "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# sts_env_start RUNDIR: CA, downstream Tern, DNS server and policy server; sets
# TERN_MX_CONFIG, the relaying Tern's [dns] and [outbound] sections (mta_sts off).
sts_env_start() {
    STS_DIR=$1/sts
    local d=$STS_DIR down_port dns_port
    mkdir -p "$d"
    if ! python3 -c 'import dnslib' 2>/dev/null; then
        python3 -m pip install --quiet dnslib 2>/dev/null ||
            python3 -m pip install --quiet --break-system-packages dnslib || return 1
    fi
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/ca.key" -out "$d/ca.pem" \
        -days 2 -subj "/CN=Tern bench CA" -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1 || return 1
    sts_issue mx.remote.test && sts_issue mta-sts.remote.test || return 1

    free_port
    down_port=$FREE_PORT
    cat >"$d/down.toml" <<EOF
hostname = "mx.remote.test"
data_dir = "$d/down-data"

[[listen]]
addr = "127.0.0.1:$down_port"
mode = "smtp"

[local]
domains = ["remote.test"]
mail_root = "$d/down-mail"
accept_unknown = true

[tls]
cert = "$d/mx.remote.test.pem"
key = "$d/mx.remote.test.key"

[admin]
listen = ""

[limits]
max_message_size = 52428800
EOF
    "$TERN_BIN" serve --config "$d/down.toml" >"$d/down.out" 2>"$d/down.log" &
    STS_DOWN_PID=$!
    if ! smtp_ready "$down_port" 30 "$STS_DOWN_PID"; then
        log "sts: the downstream Tern does not answer on 127.0.0.1:$down_port"
        tail -n 20 "$d/down.log" >&2
        return 1
    fi

    free_port
    dns_port=$FREE_PORT
    cat >"$d/zone.json" <<EOF
{"remote.test.": [["MX", 10, "mx.remote.test."]],
 "mx.remote.test.": [["A", "127.0.0.1"]],
 "_mta-sts.remote.test.": [["TXT", "v=STSv1; id=bench1;"]],
 "mta-sts.remote.test.": [["A", "$STS_IP"]]}
EOF
    python3 "$ROOT/tests/support/dns_server.py" "$dns_port" "$d/zone.json" 3600 >"$d/dns.out" 2>"$d/dns.log" &
    STS_DNS_PID=$!
    sts_wait_ready "$d/dns.out" "$STS_DNS_PID" || { log "sts: the DNS server did not start"; return 1; }

    python3 -c "$STS_HTTPS_SERVER" "$d/mta-sts.remote.test.pem" "$d/mta-sts.remote.test.key" \
        "$(printf 'version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 86400\r\n')" \
        >"$d/https.out" 2>"$d/https.log" &
    STS_HTTPS_PID=$!
    sts_wait_ready "$d/https.out" "$STS_HTTPS_PID" || { log "sts: the policy server did not start on $STS_IP:443"; return 1; }

    TERN_MX_CONFIG=$(printf '[dns]\nnameservers = ["127.0.0.1:%s"]\n\n[outbound]\nport = %s\nallow_loopback_mx = true\nca_file = "%s"\nmta_sts = false\n' \
        "$dns_port" "$down_port" "$d/ca.pem")
    [[ -n ${BENCH_TERN_OUTBOUND_CONNS:-} ]] && TERN_MX_CONFIG+=$'\n'"max_connections_per_host = $BENCH_TERN_OUTBOUND_CONNS"
    return 0
}

sts_env_stop() {
    local pid
    for pid in "$STS_HTTPS_PID" "$STS_DNS_PID"; do
        [[ -n $pid ]] && stop_pid "$pid" "sts helper" 10
    done
    [[ -n $STS_DOWN_PID ]] && stop_pid "$STS_DOWN_PID" "downstream tern" 30
    STS_HTTPS_PID= STS_DNS_PID= STS_DOWN_PID= TERN_MX_CONFIG=
}

# sts_relay_start SCENARIO RUNDIR MTA_STS(true|false)
sts_relay_start() {
    local sc=$1 run=$2 rc
    [[ $sc == B ]] || { log "$3: scenario B only"; return 1; }
    sts_env_start "$run" || { sts_env_stop; return 1; }
    TERN_MX_CONFIG=${TERN_MX_CONFIG/mta_sts = false/mta_sts = $3}
    tern_start "$sc" "$run"
    rc=$?
    ((rc == 0)) || sts_env_stop
    return $rc
}

TLSRELAY_PORT=
tlsrelay_start() {
    sts_relay_start "$1" "$2" false || return 1
    TLSRELAY_PORT=$TERN_PORT
}
tlsrelay_delivered() { tern_delivered; }
tlsrelay_stop() {
    tern_stop
    sts_env_stop
}

STS_PORT=
sts_start() {
    sts_relay_start "$1" "$2" true || return 1
    STS_PORT=$TERN_PORT
}
sts_delivered() { tern_delivered; }
sts_stop() {
    tern_stop
    sts_env_stop
}
