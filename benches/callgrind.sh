#!/usr/bin/env bash
# Instructions per request of flynn-router, counted by callgrind: deterministic where wrk's req/s
# on this VM is not, so it is what tells two builds apart.
#
#   benches/callgrind.sh                         # the release router, fast path on
#   benches/callgrind.sh --h1-fast-path false    # any extra flags go to the router
#   CLIENT=h2c benches/callgrind.sh              # HTTP/2 with prior knowledge (h2load), not wrk
#
# Starts an nginx backend (`return 200 "ok\n"`) and etcd with one route to it, the router under
# valgrind (`--threads 1`), warms it up, zeroes the counters, runs the load for DURATION, dumps
# the counters and prints the total divided by the requests answered, then the top functions by
# their own instructions. The load: wrk, HTTP/1.1 keep-alive, 10 connections; with CLIENT=h2c,
# h2load, 10 HTTP/2 connections of 10 streams each (the router started with --h2c).
# Note: valgrind counts every byte of a `rep movsb` copy as an instruction (memcpy is
# overweighted about threefold against perf), and the kernel's side is not counted at all.
#
# Env: DURATION (20s), ROUTER_BIN (default target/release/flynn-router, built unless NO_BUILD=1),
#      TOP (25: how many functions to list), CLIENT (wrk, or h2c), OUT (a path to keep the
#      callgrind output at, for callgrind_annotate --inclusive=yes or kcachegrind).
set -euo pipefail

DURATION=${DURATION:-20s}
TOP=${TOP:-25}
CLIENT=${CLIENT:-wrk}
BENCH=callgrind.sh PIN=0 PROXY_CPU=0 CLIENT_CPU=1 WAIT_IDLE=0 IDLE_BUSY=10

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

need_tools nginx etcd etcdctl wrk curl valgrind callgrind_control callgrind_annotate
case $CLIENT in
    wrk) ;;
    h2c) need_tools h2load; set -- --h2c "$@" ;;
    *) bench_die "CLIENT is wrk or h2c, not $CLIENT" ;;
esac
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

load() { # load SECONDS: prints the requests answered
    if [[ $CLIENT == h2c ]]; then
        h2load -t1 -c10 -m10 -D"$1" --connect-to="$OURS" "http://bench.test:${OURS##*:}/" |
            awk '/^requests:/ { print $8 } /^status codes:/ && $5 + $7 + $9 { print "non-2xx responses" > "/dev/stderr" }'
    else
        wrk -t1 -c10 -d"$1"s -H 'Host: bench.test' "http://$OURS/" |
            awk '/requests in/ { print $1 } /Non-2xx/ { print "non-2xx responses" > "/dev/stderr" }'
    fi
}
load 3 >/dev/null
callgrind_control -z "$ROUTER_PID" >/dev/null
requests=$(load "${DURATION%s}")
callgrind_control -d "$ROUTER_PID" >/dev/null
sleep 1
out=$(ls -t "$WORK"/cg.out* | head -1)
total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
[[ -z ${OUT:-} ]] || cp "$out" "$OUT"
echo "flynn-router $*: $((total / requests)) instructions per request ($requests requests)"
echo
callgrind_annotate --inclusive=no --threshold=100 "$out" 2>/dev/null |
    sed -n '/file:function/,$p' | sed -n '3,$p' |
    # Thread and task entry points, listed with everything under them: not what is wanted here.
    awk '{ share = $2; gsub(/[()%]/, "", share); if (share + 0 < 50) print }' |
    head -"$TOP" | cut -c1-160
