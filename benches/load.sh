#!/usr/bin/env bash
# Load benchmark: flynn-router against nginx and HAProxy, all proxying to the same backend.
#
#   benches/load.sh                         # from the repo root (or anywhere)
#   DURATION=30s CONNS=100 ROUNDS=3 benches/load.sh
#
# What runs (all on loopback, each on its own 127.0.0.x address and a free port, state in a
# temporary dir, everything killed on exit):
#   backend  127.0.0.2  nginx, 1 worker, `return 200 "ok\n"`: the fastest simple backend there is
#                       (no upstream, no file I/O, a 3-byte body), so the proxies are what is measured
#   nginx    127.0.0.3  reverse proxy, 1 worker, upstream keepalive
#   haproxy  127.0.0.4  nbthread 1, http-reuse always
#   pingora  127.0.0.7  bare-pingora (benches/src/bin): pingora's proxy with nothing of ours, one
#                       thread, one fixed backend, no added headers: the floor under ours
#   ours     127.0.0.5  flynn-router --threads 1, reading a real etcd (127.0.0.6) that holds one
#                       route (Host bench.test) and one instance (the backend), written with etcdctl
#   ours_pingora 127.0.0.8  the same router with --h1-fast-path false: every request through
#                       pingora's proxy instead of the router's own HTTP/1.1 loop
# The proxies are configured to do the header work ours does on every request: X-Forwarded-For,
# -Proto, -Port, X-Request-Start and a fresh X-Request-Id.
#
# Then wrk hits direct (the backend itself), nginx, haproxy and ours in rotation, ROUNDS times, with
# a short warm-up before each measured run, and prints req/s, p50, p99 per target and our ratio to
# nginx.
#
# CPU pinning (2-core machine): every proxy is pinned to core PROXY_CPU (0) and the load side (wrk
# and the backend) to core CLIENT_CPU (1). Only one proxy is under load at a time, so each gets a
# whole core to itself and none of them competes with the load generator: the comparison is
# "what one core of proxy does". The columns proxy% (CPU used by the proxy's processes, 100 = one
# core) and core0%/core1% (busy share of each core) show which side was the limit: a proxy near
# 100% with core1 below 100% means the proxy was measured, not wrk. `direct` runs wrk and the
# backend on the same core, so it is only a rough ceiling, not comparable with the proxied rows.
# PIN=0 turns pinning off.
#
# Env: DURATION (10s), WARMUP (2s), CONNS (50), WRK_THREADS (1), ROUNDS (2),
#      TARGETS ("direct nginx haproxy pingora ours_pingora ours"), PROXY_CPU (0), CLIENT_CPU (1), PIN (1),
#      CARGO_TARGET_DIR (target), NO_BUILD (0), ROUTER_BIN (a router binary or wrapper to run
#      instead of building one; a wrapper must `exec` the router), BARE_BIN (bare-pingora),
#      PERF (0; a target's name, or 1 for ours: a perf profile of that target, its children
#      included, during its last measured run, printed as the share by object (kernel, binary,
#      libc) and the top symbols; needs `perf`), WAIT_IDLE (0: seconds to
#      wait before each run for both cores to be under IDLE_BUSY (10) % busy with other work),
#      OTHERS_MAX (15) and RETRIES (2): a run during which processes that are not part of the
#      benchmark took more than OTHERS_MAX % of a core (the `others %` column) is done again, at
#      most RETRIES times. A build or test suite running beside the benchmark halves every number.
set -euo pipefail

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-2}
TARGETS=${TARGETS:-"direct nginx haproxy pingora ours_pingora ours"}
PERF=${PERF:-0}
[[ $PERF == 1 ]] && PERF=ours
HOST_HEADER=bench.test

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BENCH=load.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

need_tools nginx haproxy etcd etcdctl wrk curl taskset ss
router_bin
if [[ " $TARGETS " == *" pingora "* ]]; then
    BARE_BIN=${BARE_BIN:-${CARGO_TARGET_DIR:-target}/release/bare-pingora}
    if [[ ${NO_BUILD:-0} != 1 ]]; then
        cargo build --release -p flynn-benches --bin bare-pingora >&2
    fi
    [[ -x $BARE_BIN ]] || bench_die "no bare-pingora at $BARE_BIN (cargo build --release -p flynn-benches --bin bare-pingora)"
fi
bench_workdir flynn-load.XXXXXX

BACKEND=127.0.0.2:$(free_port)
NGINX=127.0.0.3:$(free_port)
HAPROXY=127.0.0.4:$(free_port)
OURS=127.0.0.5:$(free_port)
BARE=127.0.0.7:$(free_port)
OURS_ADMIN=127.0.0.5:$(free_port)
OURS_PINGORA=127.0.0.8:$(free_port)
OURS_HTTPS=127.0.0.5:$(free_port)
ETCD=127.0.0.6:$(free_port)
ETCD_PEER=127.0.0.6:$(free_port)

# --- backend ---------------------------------------------------------------------------------
nginx_conf "$WORK/backend" "server {
        listen $BACKEND;
        $NGINX_OK
    }"
start_nginx "$CLIENT_CPU" "$WORK/backend"
BACKEND_PID=$STARTED

# --- nginx as a reverse proxy ----------------------------------------------------------------
nginx_conf "$WORK/nginx" "server {
        listen $NGINX;
        server_name $HOST_HEADER;
        $(nginx_proxy_location)
    }" "$(nginx_upstream "$BACKEND")"
start_nginx "$PROXY_CPU" "$WORK/nginx"
NGINX_PID=$STARTED

# --- HAProxy -----------------------------------------------------------------------------------
start_haproxy_http "$HAPROXY" "$BACKEND" 60s

# --- etcd and our router ---------------------------------------------------------------------
# etcd is idle while wrk runs; it sits with the load side, away from the proxies.
start_etcd "$ETCD" "$ETCD_PEER"
put_http_route "$ETCD" "$HOST_HEADER" "$BACKEND"

# Its HTTPS listener goes to our own address too.
start_router router "$OURS" "$OURS_ADMIN" FLYNN_HTTPS_ADDR="$OURS_HTTPS"
OURS_PID=$STARTED

OURS_PINGORA_PID=
if [[ " $TARGETS " == *" ours_pingora "* ]]; then
    start_router router-pingora "$OURS_PINGORA" "127.0.0.8:$(free_port)" \
        FLYNN_H1_FAST_PATH=false FLYNN_NO_HTTPS=true
    OURS_PINGORA_PID=$STARTED
    wait_200 "http://$OURS_PINGORA/" "$HOST_HEADER"
fi

PINGORA_PID=
if [[ -n ${BARE_BIN:-} ]]; then
    start_pinned "$PROXY_CPU" "$WORK/bare.log" "$BARE_BIN" "$BARE" "$BACKEND"
    PINGORA_PID=$STARTED
    wait_200 "http://$BARE/" "$HOST_HEADER"
fi

wait_200 "http://$BACKEND/"
wait_200 "http://$NGINX/" "$HOST_HEADER"
wait_200 "http://$HAPROXY/" "$HOST_HEADER"
wait_200 "http://$OURS_ADMIN/health" || { tail -20 "$WORK/router.log" >&2; exit 1; }
wait_200 "http://$OURS/" "$HOST_HEADER"
for addr in "$BACKEND" "$NGINX" "$HAPROXY" "$OURS" ${OURS_PINGORA_PID:+"$OURS_PINGORA"}; do
    body=$(curl -s -H "Host: $HOST_HEADER" "http://$addr/")
    [[ $body == ok ]] || { echo "load.sh: $addr answered '$body', not ok" >&2; exit 1; }
done

target_addr() {
    case $1 in
        direct) echo "$BACKEND" ;;
        nginx) echo "$NGINX" ;;
        haproxy) echo "$HAPROXY" ;;
        ours) echo "$OURS" ;;
        ours_pingora) echo "$OURS_PINGORA" ;;
        pingora) echo "$BARE" ;;
        *) echo "load.sh: unknown target $1" >&2; exit 1 ;;
    esac
}

RESULTS="$WORK/results"
: >"$RESULTS"

run_wrk() { # run_wrk TARGET DURATION OUTFILE
    local addr
    addr=$(target_addr "$1")
    if [[ $PIN == 1 ]]; then
        taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$CONNS" -d"$2" --latency \
            -H "Host: $HOST_HEADER" "http://$addr/" >"$3"
    else
        wrk -t"$WRK_THREADS" -c"$CONNS" -d"$2" --latency -H "Host: $HOST_HEADER" "http://$addr/" >"$3"
    fi
}

# One measured run; sets rps p50 p99 errors proxy_cpu core0 core1 others.
measure_once() { # measure_once ROUND TARGET
    local round=$1 target=$2 out="$WORK/wrk-$1-$2.txt" pid perf_pid=""
    run_wrk "$target" "$WARMUP" /dev/null
    pid=$(target_pid "$target")
    if [[ $target == "$PERF" && $round == "$ROUNDS" ]]; then
        # With its children: nginx's worker is the master's child.
        perf record -F 999 -g -p "$(echo "$pid" $(pgrep -P "$pid") | tr ' ' ,)" -o "$WORK/perf.data" >"$WORK/perf.log" 2>&1 &
        perf_pid=$!
        sleep 0.5
    fi
    sample_begin "$pid" "$BACKEND_PID"
    run_wrk "$target" "$DURATION" "$out"
    sample_end
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
    fi
    local non2xx
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_us "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" { print $2 }' "$out")")
    errors=$(awk '/Socket errors:/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $5 }' "$out")
    errors=$((${errors:-0} + ${non2xx:-0}))
}

# A measured run (see quiet_run), its result recorded and printed.
measure() { # measure ROUND TARGET
    local round=$1 target=$2 rps p50 p99 errors proxy_cpu core0 core1 others
    quiet_run "$target" measure_once "$round" "$target"
    echo "$round $target $rps $p50 $p99 $proxy_cpu $core0 $core1 $errors $others" >>"$RESULTS"
    printf '  round %s %-12s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  proxy %4s%%  others %3s%%  errors %s\n' \
        "$round" "$target" "$rps" "$p50" "$p99" "$proxy_cpu" "$others" "$errors" >&2
}

echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION (warm-up $WARMUP), $ROUNDS round(s); pinning: PIN=$PIN proxies→core $PROXY_CPU, wrk+backend→core $CLIENT_CPU" >&2
for round in $(seq "$ROUNDS"); do
    for target in $TARGETS; do
        measure "$round" "$target"
    done
done

echo
echo "## Load: wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency, Host: $HOST_HEADER, response \"ok\\n\" ($(date -u +%Y-%m-%d), $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))"
echo
echo "| round | target       |    req/s | p50 (ms) | p99 (ms) | proxy CPU % | proxy CPU us/req | core$PROXY_CPU busy % | core$CLIENT_CPU busy % | errors | others % |"
echo "|------:|--------------|---------:|---------:|---------:|------------:|-----------------:|------------:|------------:|-------:|---------:|"
awk '{
    per = $6 == "-" ? "-" : sprintf("%.1f", $6 / 100 / $3 * 1e6)
    printf "| %5s | %-12s | %8.0f | %8.3f | %8.3f | %11s | %16s | %11s | %11s | %6s | %8s |\n", $1, $2, $3, $4 / 1000, $5 / 1000, $6, per, $7, $8, $9, $10
}' "$RESULTS"
echo
echo "Mean over $ROUNDS round(s):"
echo
echo "| target       |    req/s | p50 (ms) | p99 (ms) | proxy CPU us/req | req/s vs nginx | p99 vs nginx |"
echo "|--------------|---------:|---------:|---------:|-----------------:|---------------:|-------------:|"
awk -v order="$TARGETS" '
    { n[$2]++; rps[$2] += $3; p50[$2] += $4; p99[$2] += $5; if ($6 != "-") cpu[$2] += $6 / 100 / $3 * 1e6 }
    END {
        split(order, t, " ")
        base_rps = ("nginx" in n) ? rps["nginx"] / n["nginx"] : 0
        base_p99 = ("nginx" in n) ? p99["nginx"] / n["nginx"] : 0
        for (i = 1; i in t; i++) {
            k = t[i]
            if (!(k in n)) continue
            r = rps[k] / n[k]; q = p99[k] / n[k]
            ratio = base_rps > 0 ? sprintf("%.2f", r / base_rps) : "-"
            pr = base_p99 > 0 ? sprintf("%.2f", q / base_p99) : "-"
            per = (k in cpu) ? sprintf("%.1f", cpu[k] / n[k]) : "-"
            printf "| %-12s | %8.0f | %8.3f | %8.3f | %16s | %14s | %12s |\n", k, r, p50[k] / n[k] / 1000, q / 1000, per, ratio, pr
        }
    }' "$RESULTS"

if [[ $PERF != 0 && -s $WORK/perf.data ]]; then
    echo
    echo "## perf: $PERF during its last measured run (by object, then top symbols, self time)"
    echo
    perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
        grep -v '^#' | grep '%' | head -8
    echo
    perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio 2>/dev/null |
        grep -v '^#' | grep '%' | head -40
fi
