#!/usr/bin/env bash
# Edge benchmark: TLS handshakes, HTTPS keep-alive, HTTP/2 and TCP proxying of flynn-router
# against nginx and HAProxy (and against no proxy at all for TCP), in one run.
#
#   benches/edge.sh                         # from the repo root (or anywhere)
#   DURATION=30s ROUNDS=3 BENCHES="tls-handshake h2" benches/edge.sh
#
# What runs (all on loopback, each on its own 127.0.0.x address and a free port, state in a
# temporary dir, everything killed on exit):
#   backend  127.0.0.2  nginx, 1 worker, `return 200 "ok\n"` (as in load.sh), for the HTTP benches;
#                       an iperf3 server for the TCP bench; and a TLS listener that logs whether each
#                       handshake was resumed, to check the handshake client (below) before measuring
#   nginx    127.0.0.3  1 worker: `listen ssl http2` proxying to the backend with upstream keepalive,
#                       and the `stream` module (libnginx-mod-stream) proxying TCP to iperf3
#   haproxy  127.0.0.4  nbthread 1: a `mode http` frontend, `ssl crt ... alpn h2,http/1.1`,
#                       http-reuse always, and a `mode tcp` frontend to iperf3
#   ours     127.0.0.5  flynn-router --threads 1, reading a real etcd (127.0.0.6) that holds an HTTP
#                       route (bench.test → the backend) and a TCP route (a port of --tcp-ports on
#                       127.0.0.5 → iperf3), written with etcdctl; HTTPS with --default-cert/-key
# All three serve the same certificate and key, made here with openssl: RSA 2048 by default
# (KEY=p256 for ECDSA P-256), for bench.test. Clients negotiate TLS 1.3 (X25519), and send SNI
# bench.test. The HTTP proxies add the request headers ours does, as in load.sh.
#
# The benches (BENCHES), each against nginx, haproxy and ours in rotation, ROUNDS times, with a
# warm-up before each measured run:
#   tls-handshake  ab (apache2-utils), CONNS concurrent, HTTP/1.0: one new connection and one full
#                  TLS handshake per request. Not wrk: with `Connection: close` wrk reuses its TLS
#                  session on every reconnect (resumed handshakes, no certificate signature). ab
#                  never offers a session; that is checked before measuring against the backend's
#                  logging listener (every handshake full, one request per connection), and every
#                  run shows TCP connections accepted per request (≈ 1.00). ab is a costly client
#                  (about 450 us of CPU a handshake with OpenSSL 3.0, as much as nginx with RSA), so
#                  core 1 may be the limit: `proxy CPU us/handshake` is the fair column.
#   https          wrk over TLS, keep-alive: req/s, p50, p99 (a wrk script connects to the target's
#                  address while the URL keeps bench.test for SNI and Host).
#   h2             h2load -c H2_CONNS -m H2_STREAMS: HTTP/2 negotiated by ALPN (checked in every
#                  run); req/s, mean and max request time (h2load gives no percentiles). -c50 -m10
#                  is 500 requests in flight: nginx (keepalive 1024) and ours (a 1024-connection
#                  pool) keep that many idle backend connections, as HAProxy does; the TCP
#                  accepts/req column shows whether any proxy still opened backend connections.
#   h2c            the same h2load load in clear text with prior knowledge (nginx `listen http2`
#                  without ssl, HAProxy `bind proto h2`, ours `--h2c` on its HTTP listener).
#   tcp            iperf3, one stream, client → server, direct and through each proxy's TCP
#                  proxying (no splicing: each proxy's defaults): MB/s (10^6 bytes) and the
#                  proxy's CPU.
#
# CPU pinning as in load.sh: proxies on core PROXY_CPU (0), the load generator and the backend
# (nginx, iperf3) and etcd on CLIENT_CPU (1); PIN=0 turns it off. proxy CPU % comes from
# /proc/PID/stat (100 = one core), core busy % from /proc/stat; `others %` is the CPU of what is
# not part of the benchmark (a run with more than OTHERS_MAX % is done again, RETRIES times at
# most). `direct` (TCP only) runs iperf3's two ends on one core: a rough ceiling.
#
# Env: DURATION (10s), WARMUP (2s) (whole seconds: ab and iperf3 take seconds), CONNS (50),
#      H2_CONNS (CONNS), H2_STREAMS (10), WRK_THREADS (1), ROUNDS (2),
#      BENCHES ("tls-handshake https h2 h2c tcp"), TARGETS ("direct nginx haproxy ours"), KEY (rsa2048),
#      PROXY_CPU (0), CLIENT_CPU (1), PIN (1), WAIT_IDLE (0), IDLE_BUSY (10), OTHERS_MAX (15),
#      RETRIES (2), CARGO_TARGET_DIR (target), NO_BUILD (0), ROUTER_BIN (as in load.sh).
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
H2_CONNS=${H2_CONNS:-$CONNS}
H2_STREAMS=${H2_STREAMS:-10}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-2}
BENCHES=${BENCHES:-"tls-handshake https h2 h2c tcp"}
TARGETS=${TARGETS:-"direct nginx haproxy ours"}
KEY=${KEY:-rsa2048}
SNI=bench.test
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH=edge.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

# "10s", "10" or "1m" → whole seconds.
secs() {
    if [[ $1 =~ ^([0-9]+)s?$ ]]; then
        echo "${BASH_REMATCH[1]}"
    elif [[ $1 =~ ^([0-9]+)m$ ]]; then
        echo $((BASH_REMATCH[1] * 60))
    else
        bench_die "durations are whole seconds (10s, 1m), not '$1'"
    fi
}
DUR_S=$(secs "$DURATION")
WARMUP_S=$(secs "$WARMUP")
((DUR_S > 0 && WARMUP_S > 0)) || bench_die "DURATION and WARMUP must be at least 1s"
for bench in $BENCHES; do
    case $bench in
        tls-handshake) need_tools ab ;;
        https) need_tools wrk ;;
        h2 | h2c) need_tools h2load ;;
        tcp)
            need_tools iperf3
            [[ -f $STREAM_MODULE ]] || bench_die "no $STREAM_MODULE (Debian: libnginx-mod-stream)"
            ;;
        *) bench_die "unknown bench '$bench' (tls-handshake https h2 h2c tcp)" ;;
    esac
done
need_tools nginx haproxy etcd etcdctl openssl curl taskset ss
router_bin
bench_workdir flynn-edge.XXXXXX

BACKEND=127.0.0.2:$(free_port)
PROBE=127.0.0.2:$(free_port)
IPERF_PORT=$(free_port)
IPERF=127.0.0.2:$IPERF_PORT
NGINX_TLS=127.0.0.3:$(free_port)
NGINX_TCP=127.0.0.3:$(free_port)
NGINX_H2C=127.0.0.3:$(free_port)
HAPROXY_TLS=127.0.0.4:$(free_port)
HAPROXY_TCP=127.0.0.4:$(free_port)
HAPROXY_H2C=127.0.0.4:$(free_port)
OURS_HTTP=127.0.0.5:$(free_port)
OURS_TLS=127.0.0.5:$(free_port)
OURS_ADMIN=127.0.0.5:$(free_port)
OURS_TCP_PORT=$(free_port)
OURS_TCP=127.0.0.5:$OURS_TCP_PORT
ETCD=127.0.0.6:$(free_port)
ETCD_PEER=127.0.0.6:$(free_port)

# --- certificate -----------------------------------------------------------------------------
mkdir -p "$WORK/tls"
CERT=$WORK/tls/cert.pem
CERT_KEY=$WORK/tls/key.pem
case $KEY in
    rsa2048) newkey=(-newkey rsa:2048) ;;
    p256) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    *) bench_die "KEY is rsa2048 or p256, not '$KEY'" ;;
esac
openssl req -x509 "${newkey[@]}" -nodes -keyout "$CERT_KEY" -out "$CERT" -days 30 \
    -subj "/CN=$SNI" -addext "subjectAltName=DNS:$SNI" >"$WORK/tls/openssl.log" 2>&1 ||
    { cat "$WORK/tls/openssl.log" >&2; exit 1; }
cat "$CERT" "$CERT_KEY" >"$WORK/tls/haproxy.pem"

# --- backend: nginx (HTTP, and the TLS probe) and iperf3 ----------------------------------------
nginx_conf "$WORK/backend" "server {
        listen $BACKEND;
        $NGINX_OK
    }
    server {
        listen $PROBE ssl;
        ssl_certificate $CERT;
        ssl_certificate_key $CERT_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        access_log $WORK/backend/probe.log probe;
        $NGINX_OK
    }" "log_format probe '\$ssl_session_reused \$ssl_protocol \$ssl_server_name \$connection_requests';"
start_nginx "$CLIENT_CPU" "$WORK/backend"
BACKEND_PID=$STARTED

if [[ " $BENCHES " == *" tcp "* ]]; then
    start_pinned "$CLIENT_CPU" "$WORK/iperf3.log" iperf3 -s -B 127.0.0.2 -p "$IPERF_PORT"
    IPERF_PID=$STARTED
fi

# --- nginx: HTTPS + HTTP/2 reverse proxy, and stream (TCP) --------------------------------------
stream_conf=""
if [[ " $BENCHES " == *" tcp "* ]]; then
    stream_conf="load_module $STREAM_MODULE;
stream {
    server { listen $NGINX_TCP; proxy_pass $IPERF; }
}"
fi
nginx_conf "$WORK/nginx" "server {
        listen $NGINX_TLS ssl http2;
        server_name $SNI;
        ssl_certificate $CERT;
        ssl_certificate_key $CERT_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        $(nginx_proxy_location)
    }
    server {
        listen $NGINX_H2C http2;
        server_name $SNI;
        $(nginx_proxy_location)
    }" "$(nginx_upstream "$BACKEND")" "$stream_conf"
start_nginx "$PROXY_CPU" "$WORK/nginx"
NGINX_PID=$STARTED

# --- HAProxy -----------------------------------------------------------------------------------
mkdir -p "$WORK/haproxy"
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
$(haproxy_head)

frontend fe_tls
    mode http
    bind $HAPROXY_TLS ssl crt $WORK/tls/haproxy.pem alpn h2,http/1.1 prefer-client-ciphers
    timeout http-keep-alive 60s
    option http-keep-alive
$(haproxy_forwarding https)
    default_backend be_http

backend be_http
    mode http
    http-reuse always
    server s1 $BACKEND

frontend fe_h2c
    mode http
    bind $HAPROXY_H2C proto h2
    timeout http-keep-alive 60s
    option http-keep-alive
$(haproxy_forwarding http)
    default_backend be_http

frontend fe_tcp
    mode tcp
    bind $HAPROXY_TCP
    default_backend be_tcp

backend be_tcp
    mode tcp
    server s1 $IPERF
EOF
start_pinned "$PROXY_CPU" "$WORK/haproxy/log" haproxy -db -f "$WORK/haproxy/haproxy.cfg"
HAPROXY_PID=$STARTED

# --- etcd and our router ---------------------------------------------------------------------
start_etcd "$ETCD" "$ETCD_PEER"
put_http_route "$ETCD" "$SNI" "$BACKEND"
put_tcp_route "$ETCD" tcp-bench "$OURS_TCP_PORT" "$IPERF"

(pin "$PROXY_CPU" "$ROUTER_BIN" --store "etcd://$ETCD" --http-addr "$OURS_HTTP" \
    --https-addr "$OURS_TLS" --admin-addr "$OURS_ADMIN" --threads 1 --log warn --h2c \
    --default-cert "$CERT" --default-key "$CERT_KEY" \
    --tcp-ip 127.0.0.5 --tcp-ports "$OURS_TCP_PORT-$OURS_TCP_PORT" \
    --upgrade-sock "$WORK/upgrade.sock" >"$WORK/router.log" 2>&1) &
OURS_PID=$!
PIDS+=("$OURS_PID")

# --- targets -------------------------------------------------------------------------------------
tls_addr() {
    case $1 in
        nginx) echo "$NGINX_TLS" ;;
        haproxy) echo "$HAPROXY_TLS" ;;
        ours) echo "$OURS_TLS" ;;
        *) bench_die "unknown target $1" ;;
    esac
}

# Where a target takes HTTP/2 in clear text with prior knowledge (h2c).
h2c_addr() {
    case $1 in
        nginx) echo "$NGINX_H2C" ;;
        haproxy) echo "$HAPROXY_H2C" ;;
        ours) echo "$OURS_HTTP" ;;
        *) bench_die "unknown target $1" ;;
    esac
}

tcp_addr() {
    case $1 in
        direct) echo "$IPERF" ;;
        nginx) echo "$NGINX_TCP" ;;
        haproxy) echo "$HAPROXY_TCP" ;;
        ours) echo "$OURS_TCP" ;;
        *) bench_die "unknown target $1" ;;
    esac
}

# Whether a bench is run against a target: no proxy (direct) only for TCP.
applies() { # applies BENCH TARGET
    [[ $2 != direct || $1 == tcp ]]
}

# curl over TLS to ADDR with SNI and Host bench.test.
curl_tls() { # curl_tls ADDR [CURL-ARG...]
    local addr=$1
    shift
    curl -sk --resolve "$SNI:${addr##*:}:${addr%:*}" "$@" "https://$SNI:${addr##*:}/"
}

# --- checks: every target answers before anything is measured -----------------------------------
wait_200 "http://$BACKEND/"
wait_200 "http://$OURS_ADMIN/health" || { tail -20 "$WORK/router.log" >&2; exit 1; }
http_targets=""
for target in $TARGETS; do
    [[ $target == direct ]] || http_targets+=" $target"
done
if [[ " $BENCHES " == *" tls-handshake "* || " $BENCHES " == *" https "* || " $BENCHES " == *" h2 "* ]]; then
    for target in $http_targets; do
        addr=$(tls_addr "$target")
        wait_200 "https://$SNI:${addr##*:}/" "$SNI" -k --resolve "$SNI:${addr##*:}:${addr%:*}" ||
            { tail -n 5 "$WORK/router.log" "$WORK/nginx/error.log" "$WORK/haproxy/log" >&2; exit 1; }
        body=$(curl_tls "$addr" --http1.1)
        [[ $body == ok ]] || bench_die "$target ($addr) answered '$body' over HTTPS, not ok"
        version=$(curl_tls "$addr" --http2 -o /dev/null -w '%{http_version}')
        [[ $version == 2 ]] || bench_die "$target ($addr) did not negotiate HTTP/2 (got HTTP/$version)"
    done
fi

if [[ " $BENCHES " == *" h2c "* ]]; then
    for target in $http_targets; do
        addr=$(h2c_addr "$target")
        version=$(curl -s --http2-prior-knowledge -H "Host: $SNI" -o /dev/null -w '%{http_version} %{http_code}' "http://$addr/")
        [[ $version == "2 200" ]] || bench_die "$target ($addr) did not answer 200 over h2c (got HTTP/$version)"
    done
fi

if [[ " $BENCHES " == *" tls-handshake "* ]]; then
    # ab against the backend's probe listener, which logs per request whether the TLS session was
    # resumed and how many requests its connection carried: all must be full, one each.
    ab -q -r -n 500 -c 10 -H "Host: $SNI" "https://$PROBE/" >"$WORK/ab-check.txt" 2>&1 || true
    sleep 0.2
    read -r probe_reqs probe_full probe_single probe_sni probe_proto < <(awk -v sni="$SNI" '
        { n++; if ($1 == ".") f++; if ($4 == 1) s++; if ($3 == sni) k++; p = $2 }
        END { print n + 0, f + 0, s + 0, k + 0, p == "" ? "-" : p }' "$WORK/backend/probe.log")
    HANDSHAKE_CHECK="ab check against a logging nginx: $probe_reqs requests, $probe_full full handshakes ($((probe_reqs - probe_full)) resumed), $probe_single on a connection of their own, SNI $SNI on $probe_sni, $probe_proto"
    echo "$HANDSHAKE_CHECK" >&2
    if ((probe_reqs != 500 || probe_full != 500 || probe_single != 500 || probe_sni != 500)); then
        cat "$WORK/ab-check.txt" >&2
        bench_die "ab does not make one full TLS handshake per request here; no tls-handshake bench"
    fi
fi

if [[ " $BENCHES " == *" tcp "* ]]; then
    for _ in $(seq 100); do
        curl -s "http://$OURS_ADMIN/metrics" | grep -q '^flynn_router_tcp_listeners 1$' && break
        sleep 0.1
    done
    for target in $TARGETS; do
        addr=$(tcp_addr "$target")
        iperf3 -c "${addr%:*}" -p "${addr##*:}" -n 10M >"$WORK/iperf3-check.txt" 2>&1 ||
            { cat "$WORK/iperf3-check.txt" >&2; bench_die "iperf3 through $target ($addr) failed"; }
    done
fi

# --- measuring -----------------------------------------------------------------------------------
# Each run_BENCH TARGET OUT does a warm-up, then the measured run between sample_begin and
# sample_end, and sets rate lat1 lat2 per_req errors tls (per_req: TCP connections accepted per
# request; tls: what was negotiated, no spaces).

ab_run() { # ab_run TARGET SECONDS OUT
    local addr
    addr=$(tls_addr "$1")
    # -n only bounds ab's per-request table; the run ends after SECONDS.
    pinned "$CLIENT_CPU" ab -q -r -c "$CONNS" -t "$2" -n $(($2 * 50000)) -e "$3.csv" \
        -H "Host: $SNI" "https://$addr/" >"$3" 2>&1 || true
}

run_tls-handshake() {
    local target=$1 out=$2 done
    ab_run "$target" "$WARMUP_S" "$WORK/warmup"
    sample_begin "$(target_pid "$target")" "$BACKEND_PID"
    ab_run "$target" "$DUR_S" "$out"
    sample_end
    rate=$(awk '/^Requests per second:/ { print $4 }' "$out")
    done=$(awk '/^Complete requests:/ { print $3 }' "$out")
    [[ -n $rate && -n $done ]] || { cat "$out" >&2; bench_die "ab against $target printed no result"; }
    ((done < DUR_S * 50000)) || echo "$BENCH: warning: ab stopped at its request limit" >&2
    lat1=$(awk -F, '$1 == 50 { print $2 * 1000 }' "$out.csv")
    lat2=$(awk -F, '$1 == 99 { print $2 * 1000 }' "$out.csv")
    errors=$(awk '/^Failed requests:/ { f = $3 } /^Non-2xx responses:/ { n = $3 } END { print f + n }' "$out")
    per_req=$(awk -v a="$accepted" -v d="$done" 'BEGIN { printf "%.2f", d ? a / d : 0 }')
    tls=$(awk -F': *' '/^SSL\/TLS Protocol:/ { split($2, p, ","); v = p[1] "/" p[2] }
        /^Server Temp Key:/ { split($2, k, " "); x = k[1] } END { print v "/" x }' "$out")
}

wrk_run() { # wrk_run TARGET DURATION OUT
    local addr
    addr=$(tls_addr "$1")
    EDGE_IP=${addr%:*} pinned "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"$2" --latency \
        -s "$WORK/connect.lua" "https://$SNI:${addr##*:}/" >"$3"
}

run_https() {
    local target=$1 out=$2 non2xx done
    wrk_run "$target" "$WARMUP" /dev/null
    sample_begin "$(target_pid "$target")" "$BACKEND_PID"
    wrk_run "$target" "$DURATION" "$out"
    sample_end
    rate=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    done=$(awk '/ requests in / { print $1 }' "$out")
    lat1=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
    lat2=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    errors=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$out")
    errors=$((${errors:-0} + ${non2xx:-0}))
    per_req=$(awk -v a="$accepted" -v d="$done" 'BEGIN { printf "%.2f", d ? a / d : 0 }')
    tls=-
}

h2load_run() { # h2load_run TARGET SECONDS OUT [h2c]: over TLS, or h2c with prior knowledge
    local addr scheme=https
    if [[ ${4:-} == h2c ]]; then
        addr=$(h2c_addr "$1") scheme=http
    else
        addr=$(tls_addr "$1")
    fi
    pinned "$CLIENT_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$2" \
        --connect-to="$addr" "$scheme://$SNI:${addr##*:}/" >"$3" 2>&1 || true
}

run_h2() { # run_h2 TARGET OUT [h2c]
    local target=$1 out=$2 proto=${3:-h2} done
    h2load_run "$target" "$WARMUP_S" "$WORK/warmup" "$proto"
    sample_begin "$(target_pid "$target")" "$BACKEND_PID"
    h2load_run "$target" "$DUR_S" "$out" "$proto"
    sample_end
    grep -q "^Application protocol: $proto\$" "$out" ||
        { cat "$out" >&2; bench_die "h2load did not negotiate $proto with $target"; }
    rate=$(awk '/^finished in/ { print $4 }' "$out")
    done=$(awk '/^requests:/ { print $6 }' "$out")
    [[ -n $rate && -n $done ]] || { cat "$out" >&2; bench_die "h2load against $target printed no result"; }
    # time for request: min max mean sd +/-sd
    lat1=$(to_us "$(awk '/^time for request:/ { print $6 }' "$out")")
    lat2=$(to_us "$(awk '/^time for request:/ { print $5 }' "$out")")
    # failed counts network errors, timeouts and 4xx/5xx; 3xx is a success to h2load, not to us.
    errors=$(awk '/^requests:/ { f = $10 } /^status codes:/ { s = $5 } END { print f + s }' "$out")
    per_req=$(awk -v a="$accepted" -v d="$done" 'BEGIN { printf "%.2f", d ? a / d : 0 }')
    tls=$(awk -F': *' '/^TLS Protocol:/ { v = $2 } /^Cipher:/ { c = $2 } /^Server Temp Key:/ { split($2, k, " "); x = k[1] }
        END { print v "/" c "/" x }' "$out")
}

run_h2c() {
    run_h2 "$1" "$2" h2c
}

iperf3_run() { # iperf3_run TARGET SECONDS OUT: 0 when iperf3 succeeded
    local addr
    addr=$(tcp_addr "$1")
    pinned "$CLIENT_CPU" iperf3 -c "${addr%:*}" -p "${addr##*:}" -t "$2" -J >"$3" 2>&1
}

run_tcp() {
    local target=$1 out=$2 status=0
    iperf3_run "$target" "$WARMUP_S" "$WORK/warmup" || true
    sample_begin "$(target_pid "$target")" "${IPERF_PID:-}"
    iperf3_run "$target" "$DUR_S" "$out" || status=$?
    sample_end
    # What the server received, from iperf3's JSON (one key a line): end.sum_received.
    rate=$(awk '/"sum_received"/ { s = 1 } s && /"bits_per_second"/ { gsub(/[ \t,]/, ""); split($0, v, ":"); print v[2] / 8 / 1e6; exit }' "$out")
    errors=0
    if [[ $status != 0 || -z $rate ]]; then
        errors=1
        rate=0
        echo "$BENCH: warning: iperf3 through $target failed: $(grep -m1 '"error"' "$out" || tail -1 "$out")" >&2
    fi
    lat1=- lat2=- per_req=- tls=-
}

cat >"$WORK/connect.lua" <<'EOF'
-- wrk connects to EDGE_IP instead of resolving the URL's host, which stays the SNI name and Host.
local ip = os.getenv("EDGE_IP")
wrk.resolve = function(host, service)
    wrk.addrs = wrk.lookup(ip, service)
end
EOF

RESULTS="$WORK/results"
: >"$RESULTS"

# A measured run (see quiet_run), its result recorded and printed.
measure() { # measure BENCH ROUND TARGET
    local bench=$1 round=$2 target=$3 rate lat1 lat2 per_req errors tls
    local proxy_cpu core0 core1 others accepted elapsed
    quiet_run "$bench $target" "run_$bench" "$target" "$WORK/$bench-$round-$target.txt"
    echo "$bench $round $target $rate $lat1 $lat2 $per_req $proxy_cpu $core0 $core1 $errors $others $tls" >>"$RESULTS"
    printf '  %-13s round %s %-8s %10.0f %s  proxy %4s%%  others %3s%%  errors %s\n' \
        "$bench" "$round" "$target" "$rate" "$(unit "$bench")" "$proxy_cpu" "$others" "$errors" >&2
}

unit() {
    case $1 in
        tls-handshake) echo "handshakes/s" ;;
        tcp) echo "MB/s" ;;
        *) echo "req/s" ;;
    esac
}

echo "$DURATION runs (warm-up $WARMUP), $ROUNDS round(s), benches: $BENCHES; key $KEY; pinning: PIN=$PIN proxies→core $PROXY_CPU, clients+backends→core $CLIENT_CPU" >&2
for bench in $BENCHES; do
    for round in $(seq "$ROUNDS"); do
        for target in $TARGETS; do
            if applies "$bench" "$target"; then
                measure "$bench" "$round" "$target"
            fi
        done
    done
done

# --- report ----------------------------------------------------------------------------------------
# table BENCH TITLE RATE-LABEL LAT1-LABEL LAT2-LABEL CPU-UNIT [COMPARED-LAT (2)]: the runs of one
# bench, then the mean per target. LAT labels "" for none; COMPARED-LAT is the latency column
# (1 or 2) that gets a "vs nginx" ratio.
table() {
    local bench=$1 title=$2 rl=$3 l1=$4 l2=$5 cl=$6 cmp=${7:-2}
    echo
    echo "## $title"
    echo
    awk -v bench="$bench" -v order="$TARGETS" -v rounds="$ROUNDS" -v rl="$rl" -v l1="$l1" -v l2="$l2" \
        -v cl="$cl" -v cmp="$cmp" -v c0="core$PROXY_CPU busy %" -v c1="core$CLIENT_CPU busy %" '
        # Cells go into R[row, col] (row 0: the labels), printed by flush with columns as wide as
        # their widest cell; A[col] is "l" or "r" (alignment).
        function cell(v) { R[nr, ++nc] = v }
        function col(label, align) { R[0, ++nc] = label; A[nc] = align }
        function flush(    r, c, w, s, d, dash) {
            for (c = 1; c <= nc0; c++) {
                w[c] = 0
                for (r = 0; r <= nr; r++) if (length(R[r, c]) > w[c]) w[c] = length(R[r, c])
            }
            for (r = 0; r <= nr; r++) {
                s = "|"
                for (c = 1; c <= nc0; c++)
                    s = s sprintf(" %" (A[c] == "l" || r == 0 ? "-" : "") w[c] "s |", R[r, c])
                print s
                if (r == 0) {
                    d = "|"
                    for (c = 1; c <= nc0; c++) {
                        dash = sprintf("%" (w[c] + 1) "s", ""); gsub(/ /, "-", dash)
                        d = d dash (A[c] == "l" ? "-|" : ":|")
                    }
                    print d
                }
            }
            split("", R); split("", A); nr = 0
        }
        function ms(v) { return v == "-" ? "-" : sprintf("%.3f", v / 1000) }
        function ratio(v, base) { return (v == "-" || base == "-" || base <= 0) ? "-" : sprintf("%.2f", v / base) }
        $1 == bench { lines[++n] = $0 }
        END {
            if (!n) { print "(no runs)"; exit }
            lat = l1 != ""
            tls = bench == "tls-handshake" || bench == "h2"
            conns = bench != "tcp"
            nc = 0
            col("round", "r"); col("target", "l"); col(rl, "r")
            if (lat) { col(l1, "r"); col(l2, "r") }
            if (conns) col("TCP accepts/req", "r")
            col("proxy CPU %", "r"); col("proxy CPU " cl, "r"); col(c0, "r"); col(c1, "r")
            col("errors", "r"); col("others %", "r")
            if (tls) col("TLS", "l")
            nc0 = nc
            for (j = 1; j <= n; j++) {
                split(lines[j], f, " ")
                t = f[3]; r = f[4]; cpu = f[8]
                pu = (cpu == "-" || r <= 0) ? "-" : cpu / 100 / r * 1e6
                nr++; nc = 0
                cell(f[2]); cell(t); cell(sprintf("%.0f", r))
                if (lat) { cell(ms(f[5])); cell(ms(f[6])) }
                if (conns) cell(f[7])
                cell(cpu); cell(pu == "-" ? "-" : sprintf("%.1f", pu)); cell(f[9]); cell(f[10]); cell(f[11]); cell(f[12])
                if (tls) cell(f[13])
                cnt[t]++; sr[t] += r; s1[t] += f[5]; s2[t] += f[6]
                if (pu == "-") nocpu[t] = 1; else { scpu[t] += cpu; spu[t] += pu }
            }
            flush()
            print ""
            print "Mean over " rounds " round(s):"
            print ""
            lc = cmp == 1 ? l1 : l2
            nc = 0
            col("target", "l"); col(rl, "r")
            if (lat) { col(l1, "r"); col(l2, "r") }
            col("proxy CPU %", "r"); col("proxy CPU " cl, "r"); col(rl " vs nginx", "r")
            if (lat) col(lc " vs nginx", "r")
            col("CPU " cl " vs nginx", "r")
            nc0 = nc
            base_r = ("nginx" in cnt) ? sr["nginx"] / cnt["nginx"] : "-"
            base_l = ("nginx" in cnt && lat) ? (cmp == 1 ? s1["nginx"] : s2["nginx"]) / cnt["nginx"] : "-"
            base_c = ("nginx" in cnt && !("nginx" in nocpu)) ? spu["nginx"] / cnt["nginx"] : "-"
            split(order, T, " ")
            for (i = 1; i in T; i++) {
                t = T[i]
                if (!(t in cnt)) continue
                m = cnt[t]; r = sr[t] / m
                pu = (t in nocpu) ? "-" : spu[t] / m
                nr++; nc = 0
                cell(t); cell(sprintf("%.0f", r))
                if (lat) { cell(ms(s1[t] / m)); cell(ms(s2[t] / m)) }
                cell((t in nocpu) ? "-" : sprintf("%.0f", scpu[t] / m)); cell(pu == "-" ? "-" : sprintf("%.1f", pu))
                cell(ratio(r, base_r))
                if (lat) cell(ratio((cmp == 1 ? s1[t] : s2[t]) / m, base_l))
                cell(ratio(pu, base_c))
            }
            flush()
        }' "$RESULTS"
}

echo
echo "# Edge: benches/edge.sh ($(date -u +%Y-%m-%d), $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)); $KEY certificate, SNI $SNI, response \"ok\\n\""
for bench in $BENCHES; do
    case $bench in
        tls-handshake)
            table tls-handshake "TLS handshakes: ab -c$CONNS -t$DUR_S, a new connection and a full handshake per request" \
                "handshakes/s" "p50 (ms)" "p99 (ms)" "us/handshake"
            echo
            echo "${HANDSHAKE_CHECK}."
            ;;
        https)
            table https "HTTPS keep-alive: wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency" \
                "req/s" "p50 (ms)" "p99 (ms)" "us/req"
            ;;
        h2)
            table h2 "HTTP/2 over TLS: h2load -c$H2_CONNS -m$H2_STREAMS -D$DUR_S" \
                "req/s" "mean (ms)" "max (ms)" "us/req" 1
            ;;
        h2c)
            table h2c "HTTP/2 in clear text (h2c, prior knowledge): h2load -c$H2_CONNS -m$H2_STREAMS -D$DUR_S" \
                "req/s" "mean (ms)" "max (ms)" "us/req" 1
            ;;
        tcp)
            table tcp "TCP: iperf3 -t$DUR_S, one stream, client → server" "MB/s" "" "" "us/MB"
            ;;
    esac
done
