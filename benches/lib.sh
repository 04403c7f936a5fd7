# Helpers shared by the benches/*.sh scripts: sourced, not run.
#
# The caller sets BENCH (its name, for messages); bench_workdir sets WORK and PIDS (every
# process to kill on exit). The settings below come from the environment (or the caller, set
# before sourcing this), else these defaults: the proxy on core PROXY_CPU, the load side on
# CLIENT_CPU, pinned unless PIN=0; quiet_run waits up to WAIT_IDLE s for both cores to be under
# IDLE_BUSY % busy and runs again (RETRIES times at most) while other work took more than
# OTHERS_MAX % of a core.
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PIN=${PIN:-1}
WAIT_IDLE=${WAIT_IDLE:-0}
IDLE_BUSY=${IDLE_BUSY:-10}
OTHERS_MAX=${OTHERS_MAX:-15}
RETRIES=${RETRIES:-2}

bench_die() {
    echo "$BENCH: $*" >&2
    exit 1
}

need_tools() { # need_tools TOOL...
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || bench_die "$tool is not installed"
    done
}

# Sets ROUTER_BIN: the given one (no build), else target/release/flynn-router, built unless
# NO_BUILD=1.
router_bin() {
    local target_dir=${CARGO_TARGET_DIR:-target}
    if [[ -n ${ROUTER_BIN:-} ]]; then
        NO_BUILD=1
    else
        ROUTER_BIN="$target_dir/release/flynn-router"
    fi
    if [[ ${NO_BUILD:-0} != 1 ]]; then
        echo "building the router (cargo build --release -p flynn-router) ..." >&2
        cargo build --release -p flynn-router >&2
    fi
    [[ -x $ROUTER_BIN ]] || bench_die "no router binary at $ROUTER_BIN"
}

# A temporary dir for all state (WORK) and PIDS, killed and removed on exit.
bench_workdir() { # bench_workdir TEMPLATE
    WORK=$(mktemp -d -t "$1")
    PIDS=()
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}

pin() { # pin CPU cmd...
    local cpu=$1
    shift
    if [[ $PIN == 1 ]]; then
        exec taskset -c "$cpu" "$@"
    else
        exec "$@"
    fi
}

# Like pin, without replacing the shell: for the load generator run in the foreground.
pinned() { # pinned CPU cmd...
    local cpu=$1
    shift
    if [[ $PIN == 1 ]]; then
        taskset -c "$cpu" "$@"
    else
        "$@"
    fi
}

# A TCP port nothing listens on (on any address) right now.
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if [[ -z $(ss -Hltn "sport = :$port") ]]; then
            echo "$port"
            return
        fi
    done
}

# wait_200 URL [HOST [CURL-ARG...]]: until URL answers 200 (20 s at most).
wait_200() {
    local url=$1 host=${2:-localhost}
    shift $(($# < 2 ? $# : 2))
    for _ in $(seq 200); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Host: $host" "$@" "$url" || true) == 200 ]]; then
            return 0
        fi
        sleep 0.1
    done
    echo "$BENCH: $url (Host: $host) never answered 200" >&2
    return 1
}

nginx_conf() { # nginx_conf DIR SERVER-BLOCK [HTTP-EXTRA [MAIN-EXTRA]]
    local dir=$1
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
${4:-}
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    ${3:-}
    $2
}
EOF
}

# Starts a command pinned to CPU in the background, its output in LOG; sets STARTED to its pid
# (also in PIDS, killed on exit).
start_pinned() { # start_pinned CPU LOG CMD...
    local cpu=$1 log=$2
    shift 2
    (pin "$cpu" "$@" >"$log" 2>&1) &
    STARTED=$!
    PIDS+=("$STARTED")
}

# nginx with DIR/nginx.conf (written by nginx_conf), pinned to CPU.
start_nginx() { # start_nginx CPU DIR
    start_pinned "$1" "$2/stdout.log" nginx -p "$2" -e "$2/error.log" -c "$2/nginx.conf"
}

# HAProxy's `global` and the timeouts every frontend and backend share (MAXCONN: 4096).
haproxy_head() { # haproxy_head [MAXCONN]
    cat <<EOF
global
    nbthread 1
    maxconn ${1:-4096}

defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
EOF
}

# HAProxy as an HTTP reverse proxy on FRONT for BACKEND (kept-alive both ways, the same added
# headers as ours), pinned to PROXY_CPU; sets HAPROXY_PID.
start_haproxy_http() { # start_haproxy_http FRONT BACKEND KEEPALIVE [MAXCONN]
    mkdir -p "$WORK/haproxy"
    cat >"$WORK/haproxy/haproxy.cfg" <<EOF
$(haproxy_head "${4:-}")
    mode http
    timeout http-keep-alive $3
    option http-keep-alive
    http-reuse always

frontend fe
    bind $1
$(haproxy_forwarding http)
    default_backend be

backend be
    server s1 $2
EOF
    start_pinned "$PROXY_CPU" "$WORK/haproxy/log" haproxy -db -f "$WORK/haproxy/haproxy.cfg"
    HAPROXY_PID=$STARTED
}

# The backend's answer: 200 "ok\n", from nginx itself (no upstream, no file I/O).
NGINX_OK='location / { default_type text/plain; return 200 "ok\n"; }'

# nginx's reverse-proxy location, adding the request headers flynn-router adds, and the upstream
# block for BACKEND with idle connections kept as ours keeps them.
nginx_proxy_location() {
    cat <<'EOF'
location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header X-Request-Start "t=${msec}";
            proxy_set_header X-Request-Id $request_id;
        }
EOF
}

nginx_upstream() { # nginx_upstream BACKEND
    cat <<EOF
upstream backend {
        server $1;
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }
EOF
}

# HAProxy's frontend lines adding the same headers (`option forwardfor` adds X-Forwarded-For).
haproxy_forwarding() { # haproxy_forwarding PROTO
    cat <<EOF
    option forwardfor
    http-request set-header X-Forwarded-Proto $1
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Request-Start t=%[date(0,ms)]
    http-request set-header X-Request-Id %[uuid()]
EOF
}

etcd_put() { # etcd_put ETCD KEY VALUE
    ETCDCTL_API=3 etcdctl --endpoints "http://$1" put "$2" "$3" >/dev/null
}

# The route the HTTP benches use (Host HOST → service bench-web) and its one instance, in etcd.
put_http_route() { # put_http_route ETCD HOST BACKEND
    etcd_put "$1" /flynn/routes/http-bench \
        "{\"id\":\"http-bench\",\"type\":\"http\",\"domain\":\"$2\",\"path\":\"/\",\"service\":\"bench-web\"}"
    etcd_put "$1" /flynn/services/bench-web/i1 "{\"id\":\"i1\",\"addr\":\"$3\"}"
}

# A TCP route ID on PORT (→ service bench-tcp) and the service's one instance BACKEND, in etcd.
put_tcp_route() { # put_tcp_route ETCD ID PORT BACKEND
    etcd_put "$1" "/flynn/routes/$2" "{\"id\":\"$2\",\"type\":\"tcp\",\"port\":$3,\"service\":\"bench-tcp\"}"
    etcd_put "$1" /flynn/services/bench-tcp/i1 "{\"id\":\"i1\",\"addr\":\"$4\"}"
}

# etcd on ADDR, data in WORK, pinned with the load side (it is idle while measuring).
start_etcd() { # start_etcd ADDR PEER-ADDR
    (pin "$CLIENT_CPU" etcd --name bench --data-dir "$WORK/etcd" \
        --listen-client-urls "http://$1" --advertise-client-urls "http://$1" \
        --listen-peer-urls "http://$2" --initial-advertise-peer-urls "http://$2" \
        --initial-cluster "bench=http://$2" --log-level error >"$WORK/etcd.log" 2>&1) &
    PIDS+=("$!")
    wait_200 "http://$1/health"
}

# flynn-router on the plain HTTP address ADDR, reading the etcd at ETCD, one worker thread,
# pinned to PROXY_CPU, its log in WORK/NAME.log; its TCP routes and upgrade socket on its own
# address and path. Further settings come as FLYNN_* assignments (environment, which an older
# binary given as ROUTER_BIN ignores where it would refuse an unknown flag). Sets STARTED.
start_router() { # start_router NAME ADDR ADMIN-ADDR [FLYNN_VAR=VALUE...]
    local name=$1 addr=$2 admin=$3
    shift 3
    (
        export FLYNN_TCP_IP="${addr%:*}" FLYNN_UPGRADE_SOCK="$WORK/$name.sock" "$@"
        pin "$PROXY_CPU" "$ROUTER_BIN" --store "etcd://$ETCD" --http-addr "$addr" \
            --admin-addr "$admin" --threads 1 --log warn >"$WORK/$name.log" 2>&1
    ) &
    STARTED=$!
    PIDS+=("$STARTED")
}

# The PID of TARGET's proxy, from the variable named after it (NGINX_PID, HAPROXY_PID, OURS_PID,
# PINGORA_PID); empty for a target without one (direct).
target_pid() { # target_pid TARGET
    local var=${1^^}_PID
    echo "${!var:-}"
}

# CPU ticks (user + system) used so far by processes and their children (nginx's workers).
cpu_ticks() { # cpu_ticks [PID...]
    local pid total=0 p
    for pid in "$@"; do
        [[ -z $pid ]] && continue
        for p in "$pid" $(pgrep -P "$pid" || true); do
            # Fields after the `(comm)`: utime and stime are the 12th and 13th.
            total=$((total + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
        done
    done
    echo "$total"
}

# VmRSS (KiB) of a process and its children (nginx's workers).
rss_kib() { # rss_kib PID
    local total=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        total=$((total + $(awk '/^VmRSS/ { print $2 }' "/proc/$p/status")))
    done
    echo "$total"
}

# "busy total" jiffies of one core from /proc/stat.
core_jiffies() {
    awk -v cpu="cpu$1" '$1 == cpu { busy = $2 + $3 + $4 + $7 + $8 + $9; print busy, busy + $5 + $6 }' /proc/stat
}

# wrk latency like 412.00us, 1.20ms, 1.01s → microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) print n
        else if (v ~ /ms$/) print n * 1000
        else if (v ~ /s$/) print n * 1000000
        else print n
    }'
}

CLK_TCK=$(getconf CLK_TCK)

# Busy share (%) of the busier core over one second while nothing of ours is loaded: anything
# above a few percent is someone else's work (a build, tests) that skews the numbers.
background_busy() {
    local a0 a1 b0 b1
    read -r a0 a1 < <(core_jiffies "$PROXY_CPU")
    read -r b0 b1 < <(core_jiffies "$CLIENT_CPU")
    sleep 1
    {
        core_jiffies "$PROXY_CPU" | awk -v b="$a0" -v t="$a1" '{ print 100 * ($1 - b) / ($2 - t) }'
        core_jiffies "$CLIENT_CPU" | awk -v b="$b0" -v t="$b1" '{ print 100 * ($1 - b) / ($2 - t) }'
    } | sort -n | tail -1 | awk '{ printf "%.0f", $1 }'
}

# Waits (WAIT_IDLE seconds at most) for the machine to be quiet; prints the last busy share.
quiet_machine() {
    local busy deadline=$((SECONDS + WAIT_IDLE))
    while :; do
        busy=$(background_busy)
        if ((busy <= IDLE_BUSY || SECONDS >= deadline)); then
            echo "$busy"
            return
        fi
    done
}

# Runs CMD after waiting for a quiet machine, and again (RETRIES times at most) while other work
# took more than OTHERS_MAX % of a core during it. CMD sets `others` (a local of the caller).
quiet_run() { # quiet_run LABEL CMD...
    local label=$1 bg attempt
    shift
    for attempt in $(seq 0 "$RETRIES"); do
        bg=$(quiet_machine)
        if ((bg > IDLE_BUSY)); then
            echo "$BENCH: warning: a core was ${bg}% busy with other work before this run" >&2
        fi
        "$@"
        ((others > OTHERS_MAX)) || break
        echo "$BENCH: warning: other work took ${others}% of a core during the $label run (attempt $((attempt + 1)))" >&2
    done
}

# CPU seconds (user + system) of the children this shell has waited for (the load generator's,
# after a run), from `times` run in this shell (not in a $(...) subshell, which has children of
# its own).
children_cpu() {
    awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); n += p[1] * 60 + p[2] } print n }' "$1"
}

# TCP connections accepted so far on this machine (all addresses): per request, it tells whether
# the client made a new connection for each request.
passive_opens() {
    awk '$1 == "Tcp:" { if (!seen) { for (f = 1; f <= NF; f++) col[$f] = f; seen = 1; next } print $col["PassiveOpens"] }' /proc/net/snmp
}

# Around one measured run of the load generator, which must run in the foreground of this shell
# between the two (so that `times` counts it):
#   sample_begin PROXY-PID [BACKEND-PID...]   (PROXY-PID may be "" for none)
#   sample_end
# sample_end sets proxy_cpu (% of one core, "-" without a proxy), core0 and core1 (busy % of
# PROXY_CPU and CLIENT_CPU), others (% of a core used by processes that are not the proxy, the
# backends or the load generator), accepted (TCP connections accepted) and elapsed (seconds).
sample_begin() {
    _s_proxy=$1
    shift
    _s_backends=("$@")
    _s_c0=$(cpu_ticks "$_s_proxy")
    _s_d0=$(cpu_ticks "${_s_backends[@]}")
    _s_o0=$(passive_opens)
    times >"$WORK/times0"
    read -r _s_a0 _s_a1 < <(core_jiffies "$PROXY_CPU")
    read -r _s_b0 _s_b1 < <(core_jiffies "$CLIENT_CPU")
    _s_t0=$(date +%s.%N)
}

sample_end() {
    local t1 c1 d1 w0 w1
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$_s_proxy")
    d1=$(cpu_ticks "${_s_backends[@]}")
    accepted=$(($(passive_opens) - _s_o0))
    times >"$WORK/times1"
    core0=$(core_jiffies "$PROXY_CPU" | awk -v b="$_s_a0" -v t="$_s_a1" '{ printf "%.0f", 100 * ($1 - b) / ($2 - t) }')
    core1=$(core_jiffies "$CLIENT_CPU" | awk -v b="$_s_b0" -v t="$_s_b1" '{ printf "%.0f", 100 * ($1 - b) / ($2 - t) }')
    w0=$(children_cpu "$WORK/times0")
    w1=$(children_cpu "$WORK/times1")
    # Percent of one core over the run: the proxy, and everything that is not ours (the cores'
    # busy time less proxy, backend and load generator).
    read -r proxy_cpu others elapsed < <(awk -v c="$((c1 - _s_c0))" -v d="$((d1 - _s_d0))" -v w="$w0" -v x="$w1" \
        -v hz="$CLK_TCK" -v a="$_s_t0" -v b="$t1" -v k0="$core0" -v k1="$core1" 'BEGIN {
            s = b - a; p = 100 * c / hz / s
            o = k0 + k1 - p - 100 * d / hz / s - 100 * (x - w) / s
            printf "%.0f %.0f %.3f\n", p, o < 0 ? 0 : o, s
        }')
    [[ -n $_s_proxy ]] || proxy_cpu=-
}
