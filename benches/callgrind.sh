#!/usr/bin/env bash
# Instructions per request of flynn-router, counted by callgrind: deterministic where wrk's req/s
# on this VM is not, so it is what tells two builds apart.
#
#   benches/callgrind.sh                         # the release router, fast path on
#   benches/callgrind.sh --h1-fast-path false    # any extra flags go to the router
#
# Starts an nginx backend (`return 200 "ok\n"`) and etcd with one route to it, the router under
# valgrind (`--threads 1`), warms it up with wrk, zeroes the counters, runs wrk (HTTP/1.1
# keep-alive, 10 connections) for DURATION, dumps the counters and prints the total divided by
# the requests wrk counted, then the top functions by their own instructions.
# Note: valgrind counts every byte of a `rep movsb` copy as an instruction (memcpy is
# overweighted about threefold against perf), and the kernel's side is not counted at all.
#
# Env: DURATION (20s), ROUTER_BIN (default target/release/flynn-router, built unless NO_BUILD=1),
#      TOP (25: how many functions to list).
set -euo pipefail

DURATION=${DURATION:-20s}
TOP=${TOP:-25}
BENCH=callgrind.sh PIN=0 PROXY_CPU=0 CLIENT_CPU=1 WAIT_IDLE=0 IDLE_BUSY=10

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

need_tools nginx etcd etcdctl wrk curl valgrind callgrind_control callgrind_annotate
router_bin
bench_workdir flynn-callgrind.XXXXXX

BACKEND=127.0.0.2:$(free_port)
nginx_conf "$WORK/backend" "server {
        listen $BACKEND;
        location / { return 200 \"ok\n\"; }
    }"
start_nginx "$CLIENT_CPU" "$WORK/backend"
ETCD=127.0.0.6:$(free_port)
start_etcd "$ETCD" "127.0.0.6:$(free_port)"
put_http_route "$ETCD" bench.test "$BACKEND"

OURS=127.0.0.5:$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$ROUTER_BIN" \
    --store "etcd://$ETCD" --http-addr "$OURS" --admin-addr "127.0.0.5:$(free_port)" \
    --no-https --threads 1 --log warn "$@" >"$WORK/router.log" 2>&1 &
ROUTER_PID=$!
PIDS+=("$ROUTER_PID")
# Under valgrind the router takes a while to start.
for _ in $(seq 300); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' "http://$OURS/" || true) == 200 ]] && break
    sleep 0.2
done

wrk -t1 -c10 -d3s -H 'Host: bench.test' "http://$OURS/" >/dev/null
callgrind_control -z "$ROUTER_PID" >/dev/null
requests=$(wrk -t1 -c10 -d"$DURATION" -H 'Host: bench.test' "http://$OURS/" |
    awk '/requests in/ { print $1 } /Non-2xx/ { print "non-2xx responses" > "/dev/stderr" }')
callgrind_control -d "$ROUTER_PID" >/dev/null
sleep 1
out=$(ls -t "$WORK"/cg.out* | head -1)
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "flynn-router $*: $((total / requests)) instructions per request ($requests requests)"
echo
callgrind_annotate --inclusive=no --threshold=100 "$out" 2>/dev/null |
    sed -n '/file:function/,$p' | sed -n '3,$p' |
    # Thread and task entry points, listed with everything under them: not what is wanted here.
    awk '{ share = $2; gsub(/[()%]/, "", share); if (share + 0 < 50) print }' |
    head -"$TOP" | cut -c1-160
