#!/usr/bin/env bash
# TCP proxying: flynn-router's TCP routes against nginx `stream {}` and HAProxy `mode tcp` (and
# no proxy at all), in one run: throughput, CPU per GB and memory per idle connection.
#
#   benches/tcp.sh                              # 2 GB each way, 2 rounds
#   BYTES=4000000000 ROUNDS=3 benches/tcp.sh
#   OLD_BIN=/tmp/flynn-router-old benches/tcp.sh   # also a second router binary (`ours_old`)
#
# What runs (loopback, each on its own 127.0.0.x address, state in a temporary dir, everything
# killed on exit):
#   backend          127.0.0.2  `tcp-load serve` (benches/src/bin/tcp-load.rs): sinks, sources
#                               or echoes what a connection asks for
#   nginx            127.0.0.3  1 worker, `stream { server { proxy_pass backend; } }` (defaults:
#                               16 KiB buffers, no splice: nginx has none for streams)
#   haproxy          127.0.0.4  nbthread 1, `mode tcp` (defaults: no splicing)
#   haproxy_splice   127.0.0.7  the same with `option splice-auto` (HAProxy's kernel splicing)
#   ours             127.0.0.5  flynn-router --threads 1, a TCP route from a real etcd
#                               (127.0.0.6) to the backend
#   ours_old         127.0.0.8  OLD_BIN's router the same way, when OLD_BIN is set
#   direct                      the client straight to the backend
# Proxies on core PROXY_CPU (0); the client, the backend and etcd on CLIENT_CPU (1) (PIN=0: no
# pinning). `direct` runs both ends on core 1 as the proxied runs do: the ceiling a proxy can
# reach when it is not the limit.
#
# Measured, for each target, direction and round (rotating the targets):
#   - `tcp-load push ADDR BYTES up|down`: one connection moving BYTES client → backend (up) or
#     backend → client (down): MB/s (10^6 bytes) from connect to the last byte;
#   - the proxy's CPU seconds (utime + stime from /proc/PID/stat, nginx's worker included) per
#     GB moved;
#   - then, once per proxy: IDLE connections (`tcp-load hold`), each with one echoed message,
#     held open; the growth of the proxy's VmRSS (its processes) divided by IDLE, in KiB.
#     Kernel memory (socket buffers, pipes) is not in it: see benches/README.md.
# A run is repeated (RETRIES at most) when other work took more than OTHERS_MAX % of a core.
#
# Env: BYTES (2000000000), ROUNDS (2), IDLE (2000), TARGETS ("direct nginx haproxy
#      haproxy_splice ours" + ours_old with OLD_BIN), PROXY_CPU (0), CLIENT_CPU (1), PIN (1),
#      WAIT_IDLE (0), IDLE_BUSY (10), OTHERS_MAX (15), RETRIES (2), ROUTER_BIN, LOAD_BIN (the
#      tcp-load binary), NO_BUILD, CARGO_TARGET_DIR.
set -euo pipefail

BYTES=${BYTES:-2000000000}
ROUNDS=${ROUNDS:-2}
IDLE=${IDLE:-2000}
OLD_BIN=${OLD_BIN:-}
TARGETS=${TARGETS:-"direct nginx haproxy haproxy_splice ours${OLD_BIN:+ ours_old}"}
STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BENCH=tcp.sh
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"

need_tools nginx haproxy etcd etcdctl curl taskset ss
[[ -f $STREAM_MODULE ]] || bench_die "no $STREAM_MODULE (Debian: libnginx-mod-stream)"
router_bin
if [[ -n ${LOAD_BIN:-} ]]; then
    NO_BUILD=1
fi
LOAD_BIN=${LOAD_BIN:-${CARGO_TARGET_DIR:-target}/release/tcp-load}
if [[ ${NO_BUILD:-0} != 1 ]]; then
    cargo build --release -p flynn-benches --bin tcp-load >&2
fi
[[ -x $LOAD_BIN ]] || bench_die "no $LOAD_BIN (cargo build --release -p flynn-benches --bin tcp-load)"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) > 2 * IDLE + 100)) || bench_die "IDLE=$IDLE needs more open files than $(ulimit -n)"
bench_workdir flynn-tcp.XXXXXX

BACKEND=127.0.0.2:$(free_port)
NGINX=127.0.0.3:$(free_port)
HAPROXY=127.0.0.4:$(free_port)
HAPROXY_SPLICE=127.0.0.7:$(free_port)
OURS_PORT=$(free_port)
OURS=127.0.0.5:$OURS_PORT
OURS_OLD_PORT=$(free_port)
OURS_OLD=127.0.0.8:$OURS_OLD_PORT
ETCD=127.0.0.6:$(free_port)

start_pinned "$CLIENT_CPU" "$WORK/backend.log" "$LOAD_BIN" serve "$BACKEND"
BACKEND_PID=$STARTED

# --- nginx: stream -----------------------------------------------------------------------------
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
load_module $STREAM_MODULE;
worker_processes 1;
worker_rlimit_nofile $((2 * IDLE + 1000));
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections $((2 * IDLE + 1000)); }
stream {
    server { listen $NGINX; proxy_pass $BACKEND; }
}
EOF
start_nginx "$PROXY_CPU" "$WORK/nginx"
NGINX_PID=$STARTED

# --- HAProxy, without and with splicing --------------------------------------------------------
start_haproxy_tcp() { # start_haproxy_tcp NAME FRONT [OPTION-LINE]
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/haproxy.cfg" <<EOF
$(haproxy_head $((2 * IDLE + 1000)))
    mode tcp
    ${3:-}

frontend fe
    bind $2
    default_backend be

backend be
    server s1 $BACKEND
EOF
    start_pinned "$PROXY_CPU" "$WORK/$1/log" haproxy -db -f "$WORK/$1/haproxy.cfg"
}
start_haproxy_tcp haproxy "$HAPROXY"
HAPROXY_PID=$STARTED
start_haproxy_tcp haproxy-splice "$HAPROXY_SPLICE" "option splice-auto"
HAPROXY_SPLICE_PID=$STARTED

# --- ours: TCP routes from etcd -----------------------------------------------------------------
start_etcd "$ETCD" "127.0.0.6:$(free_port)"
put_tcp_route "$ETCD" tcp-bench "$OURS_PORT" "$BACKEND"
start_router ours "127.0.0.5:$(free_port)" "127.0.0.5:$(free_port)" FLYNN_NO_HTTPS=true \
    FLYNN_TCP_PORTS="$OURS_PORT-$OURS_PORT"
OURS_PID=$STARTED
if [[ -n $OLD_BIN ]]; then
    put_tcp_route "$ETCD" tcp-bench-old "$OURS_OLD_PORT" "$BACKEND"
    new_bin=$ROUTER_BIN
    ROUTER_BIN=$OLD_BIN
    start_router ours-old "127.0.0.8:$(free_port)" "127.0.0.8:$(free_port)" FLYNN_NO_HTTPS=true \
        FLYNN_TCP_PORTS="$OURS_OLD_PORT-$OURS_OLD_PORT"
    OURS_OLD_PID=$STARTED
    ROUTER_BIN=$new_bin
fi

addr_of() { # addr_of TARGET
    case $1 in
        direct) echo "$BACKEND" ;;
        nginx) echo "$NGINX" ;;
        haproxy) echo "$HAPROXY" ;;
        haproxy_splice) echo "$HAPROXY_SPLICE" ;;
        ours) echo "$OURS" ;;
        ours_old) echo "$OURS_OLD" ;;
        *) bench_die "unknown target $1" ;;
    esac
}

# Every target answers a small push before measuring.
for target in $TARGETS; do
    ok=0
    for _ in $(seq 100); do
        if "$LOAD_BIN" push "$(addr_of "$target")" 1000 up >/dev/null 2>&1; then
            ok=1
            break
        fi
        sleep 0.2
    done
    ((ok)) || bench_die "$target ($(addr_of "$target")) does not pass bytes; logs in $WORK"
done

# One measured push; sets _line (`target direction MB/s CPU-s/GB`) and, through sample_end,
# `others` (for quiet_run). CPU seconds from the proxy's ticks around the push itself.
run_one() { # run_one TARGET DIRECTION
    local pid
    pid=$(target_pid "$1")
    _cpu_before=$(cpu_ticks "$pid")
    sample_begin "$pid" "$BACKEND_PID"
    out=$(pinned "$CLIENT_CPU" "$LOAD_BIN" push "$(addr_of "$1")" "$BYTES" "$2")
    sample_end
    _cpu_after=$(cpu_ticks "$pid")
    read -r moved secs <<<"$out"
    _line=$(awk -v t="$1" -v d="$2" -v m="$moved" -v s="$secs" -v c="$((_cpu_after - _cpu_before))" \
        -v hz="$CLK_TCK" -v has="${pid:+1}" 'BEGIN {
            cpu = has ? sprintf("%.3f", c / hz / (m / 1e9)) : "-"
            printf "%s %s %.0f %s\n", t, d, m / 1e6 / s, cpu
        }')
}

: >"$WORK/results"
echo "$BENCH: $BYTES bytes each way, $ROUNDS rounds, targets: $TARGETS" >&2
read -ra targets <<<"$TARGETS"
for round in $(seq "$ROUNDS"); do
    # A different target first each round.
    shift_by=$(((round - 1) % ${#targets[@]}))
    order=("${targets[@]:shift_by}" "${targets[@]:0:shift_by}")
    for target in "${order[@]}"; do
        for direction in up down; do
            quiet_run "$target $direction" run_one "$target" "$direction"
            echo "$_line" >>"$WORK/results"
            echo "$BENCH: round $round: $_line (others ${others}%)" >&2
        done
    done
done

# --- idle connections ---------------------------------------------------------------------------
: >"$WORK/idle"
for target in $TARGETS; do
    [[ $target == direct ]] && continue
    pid=$(target_pid "$target")
    before=$(rss_kib "$pid")
    "$LOAD_BIN" hold "$(addr_of "$target")" "$IDLE" >"$WORK/hold-$target.log" 2>&1 &
    holder=$!
    for _ in $(seq 600); do
        grep -q open "$WORK/hold-$target.log" 2>/dev/null && break
        kill -0 "$holder" 2>/dev/null || bench_die "$target: $(cat "$WORK/hold-$target.log")"
        sleep 0.1
    done
    sleep 3
    after=$(rss_kib "$pid")
    kill "$holder" 2>/dev/null || true
    wait "$holder" 2>/dev/null || true
    echo "$target $(awk -v a="$after" -v b="$before" -v n="$IDLE" 'BEGIN { printf "%.1f", (a - b) / n }')" >>"$WORK/idle"
    sleep 2
done

# --- the table ----------------------------------------------------------------------------------
echo
echo "TCP: $BYTES bytes per run, one connection, $ROUNDS rounds (medians); idle: $IDLE connections"
echo
echo "| target | up MB/s | down MB/s | up vs direct | down vs direct | CPU s/GB up | CPU s/GB down | KiB per idle connection |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
awk -v targets="$TARGETS" '
    function median(key,   n, i, j, t, a) {
        n = split(vals[key], a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        if (n == 0 || a[1] == "-") return "-"
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    FILENAME ~ /results$/ { vals[$1 " " $2 " mbs"] = vals[$1 " " $2 " mbs"] " " $3; vals[$1 " " $2 " cpu"] = vals[$1 " " $2 " cpu"] " " $4; next }
    { idle[$1] = $2 }
    END {
        du = median("direct up mbs"); dd = median("direct down mbs")
        n = split(targets, ts, " ")
        for (i = 1; i <= n; i++) {
            t = ts[i]; u = median(t " up mbs"); d = median(t " down mbs")
            ru = (du != "-" && du > 0) ? sprintf("%.2f", u / du) : "-"
            rd = (dd != "-" && dd > 0) ? sprintf("%.2f", d / dd) : "-"
            printf "| %s | %.0f | %.0f | %s | %s | %s | %s | %s |\n", t, u, d, ru, rd,
                median(t " up cpu"), median(t " down cpu"), (t in idle) ? idle[t] : "-"
        }
    }' "$WORK/results" "$WORK/idle"
