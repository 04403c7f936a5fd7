#!/usr/bin/env bash
# Memory of idle kept-alive client connections: what N browsers or mobile clients that each made
# one request and keep their connection open cost each proxy.
#
#   benches/idle.sh                      # N=5000
#   N=10000 benches/idle.sh
#   MODE=slow N=500 benches/idle.sh      # slowloris: N connections trickling a header byte a second
#
# nginx (1 worker, upstream keepalive), HAProxy (nbthread 1) and flynn-router (--threads 1, a
# real etcd, HTTP/1.1 fast path; ours_pingora: --h1-fast-path false) in front of one nginx
# backend, as in load.sh. For each target: N connections, one `GET /` each (answered `ok`),
# all left open; then the growth of the proxy's resident memory (VmRSS of its processes, nginx's
# worker included) divided by N. Kernel socket buffers are not in it (they are the same for all).
# `ours_https`: the same over TLS 1.3 to our HTTPS listener (its generated self-signed
# certificate), for what TLS adds per connection (no nginx/HAProxy counterpart here).
# Also: the proxy's open descriptors with the connections open, and its RSS 5 s after they all
# closed (does a flood's memory go back?).
#
# MODE=slow: each connection sends `GET / HTTP/1.1` and a Host line, then one more header byte
# a second, never finishing its head (slowloris). After 20 s: how many of them the proxy still
# holds open, its descriptors and RSS. Each proxy keeps its own request-head deadline: nginx's
# client_header_timeout (60 s default), HAProxy's timeout http-request (unset: timeout client,
# 60 s here, per chunk), ours --header-timeout (10 s).
#
# Env: N (5000; at most the open-file limit less a margin), TARGETS ("nginx haproxy ours_pingora
#      ours ours_https"), ROUTER_BIN, NO_BUILD, CARGO_TARGET_DIR.
set -euo pipefail

N=${N:-5000}
MODE=${MODE:-idle}
SLOW_FOR=${SLOW_FOR:-20}
if [[ ${MODE:-idle} == slow ]]; then
    TARGETS=${TARGETS:-"nginx haproxy ours_pingora ours"}
else
    TARGETS=${TARGETS:-"nginx haproxy ours_pingora ours ours_https"}
fi
BENCH=idle.sh PIN=0 PROXY_CPU=0 CLIENT_CPU=1 WAIT_IDLE=0 IDLE_BUSY=10
HOST_HEADER=bench.test

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

need_tools nginx haproxy etcd etcdctl curl python3
router_bin
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) > N + 100)) || bench_die "N=$N needs more open files than $(ulimit -n)"
bench_workdir flynn-idle.XXXXXX

BACKEND=127.0.0.2:$(free_port)
nginx_conf "$WORK/backend" "server {
        listen $BACKEND;
        $NGINX_OK
    }"
start_nginx "$CLIENT_CPU" "$WORK/backend"

NGINX=127.0.0.3:$(free_port)
nginx_conf "$WORK/nginx" "server {
        listen $NGINX;
        keepalive_timeout 300s;
        $(nginx_proxy_location)
    }" "$(nginx_upstream "$BACKEND")" "worker_rlimit_nofile $((N + 1000));"
sed -i "s/worker_connections 4096/worker_connections $((N + 1000))/" "$WORK/nginx/nginx.conf"
start_nginx "$PROXY_CPU" "$WORK/nginx"
NGINX_PID=$STARTED

HAPROXY=127.0.0.4:$(free_port)
start_haproxy_http "$HAPROXY" "$BACKEND" 300s $((N + 1000))

ETCD=127.0.0.6:$(free_port)
start_etcd "$ETCD" "127.0.0.6:$(free_port)"
put_http_route "$ETCD" "$HOST_HEADER" "$BACKEND"
OURS=127.0.0.5:$(free_port)
start_router ours "$OURS" "127.0.0.5:$(free_port)" FLYNN_NO_HTTPS=true
OURS_PID=$STARTED
# Its own process, so that one target's freed memory does not serve the next.
OURS_HTTPS=127.0.0.9:$(free_port)
start_router ours-https "127.0.0.9:$(free_port)" "127.0.0.9:$(free_port)" \
    FLYNN_HTTPS_ADDR="$OURS_HTTPS"
OURS_HTTPS_PID=$STARTED
OURS_PINGORA=127.0.0.8:$(free_port)
start_router ours-pingora "$OURS_PINGORA" "127.0.0.8:$(free_port)" \
    FLYNN_NO_HTTPS=true FLYNN_H1_FAST_PATH=false
OURS_PINGORA_PID=$STARTED
for addr in "$NGINX" "$HAPROXY" "$OURS" "$OURS_PINGORA"; do
    wait_200 "http://$addr/" "$HOST_HEADER"
done

fds() { # fds PID: descriptors open in the process and its children
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)))
    done
    echo "$total"
}

if [[ $MODE == slow ]]; then
    echo "| target       | slow connections | still open at ${SLOW_FOR} s | fds | RSS before (MiB) | RSS at ${SLOW_FOR} s (MiB) |"
    echo "|--------------|-----------------:|------------------:|----:|-----------------:|------------------:|"
else
    echo "| target       | idle connections | fds | RSS before (MiB) | RSS after (MiB) | KiB per connection | RSS 5 s after close (MiB) |"
    echo "|--------------|-----------------:|----:|-----------------:|----------------:|-------------------:|--------------------------:|"
fi
for target in $TARGETS; do
    case $target in
        nginx) addr=$NGINX ;;
        haproxy) addr=$HAPROXY ;;
        ours) addr=$OURS ;;
        ours_pingora) addr=$OURS_PINGORA ;;
        ours_https) addr=$OURS_HTTPS ;;
        *) bench_die "unknown target $target" ;;
    esac
    pid=$(target_pid "$target")
    before=$(rss_kib "$pid")
    # The connections stay open while python sleeps; it is killed after the reading.
    python3 - "$addr" "$N" "$HOST_HEADER" "$target" "$MODE" >"$WORK/client-$target.log" 2>&1 <<'PY' &
import select, socket, ssl, sys, time
host, port = sys.argv[1].rsplit(":", 1)
n, name, tls = int(sys.argv[2]), sys.argv[3], sys.argv[4].endswith("_https")
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
conns = []
if sys.argv[5] == "slow":
    for _ in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n".encode())
        conns.append(s)
    print("open", flush=True)
    while True:
        time.sleep(1)
        for s in list(conns):
            try:
                if select.select([s], [], [], 0)[0] or s.send(b"X") != 1:
                    raise OSError("answered or closed")
            except OSError:
                conns.remove(s)
                s.close()
        print("still", len(conns), flush=True)
for _ in range(n):
    s = socket.create_connection((host, int(port)))
    if tls:
        s = ctx.wrap_socket(s, server_hostname=name)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    got = b""
    while not got.endswith(b"ok\n"):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        got += chunk
    conns.append(s)
print("open", flush=True)
time.sleep(3600)
PY
    client=$!
    for _ in $(seq 600); do
        grep -q open "$WORK/client-$target.log" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || bench_die "$target: $(cat "$WORK/client-$target.log")"
        sleep 0.1
    done
    if [[ $MODE == slow ]]; then
        sleep "$SLOW_FOR"
        after=$(rss_kib "$pid")
        open_fds=$(fds "$pid")
        still=$(grep still "$WORK/client-$target.log" | tail -1 | awk '{ print $2 }')
        kill "$client" 2>/dev/null || true
        wait "$client" 2>/dev/null || true
        awk -v t="$target" -v n="$N" -v s="${still:-?}" -v f="$open_fds" -v b="$before" -v a="$after" \
            'BEGIN { printf "| %-12s | %16d | %17s | %3d | %16.1f | %17.1f |\n", t, n, s, f, b / 1024, a / 1024 }'
        sleep 2
        continue
    fi
    # Idle connections may give memory back after a while (ours after 1 s): measured after 5.
    sleep 5
    after=$(rss_kib "$pid")
    open_fds=$(fds "$pid")
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    sleep 5
    closed=$(rss_kib "$pid")
    awk -v t="$target" -v n="$N" -v f="$open_fds" -v b="$before" -v a="$after" -v c="$closed" \
        'BEGIN { printf "| %-12s | %16d | %3d | %16.1f | %15.1f | %18.1f | %25.1f |\n", t, n, f, b / 1024, a / 1024, (a - b) / n, c / 1024 }'
    sleep 2
done
