#!/usr/bin/env bash
# Gateway benchmark: nginx as the upstream (a small fixed body), then nginx as
# a reverse proxy, HAProxy and Trellis in front of it, each with the same
# number of worker threads (1, then 2) and keep-alive to the upstream, loaded
# by wrk over keep-alive connections, in alternation for several rounds.
# Trellis runs twice: plain, and with retries, a breaker, a bulkhead and a
# (never reached) rate limit on the route. Prints requests/s and p50/p99 per
# run and the ratios to nginx, then idle RSS and RSS with 10,000 idle
# keep-alive connections, and ends with a line per part of the bar (met or
# NOT met).
#
# Usage: benches/gateway/run.sh [rounds] [duration] [connections]
# WORKERS="1" (or "2") runs one worker count only; the default is both.
# With PEER_HEADERS=trellis, nginx and HAProxy are configured to add what
# Trellis adds to every request (X-Forwarded-For/-Proto/-Host, Forwarded,
# X-Request-Id both ways, traceparent), so all three send the upstream the
# same fields; by default the peers run with their own defaults (they add
# nothing).
# Needs: nginx, haproxy, wrk (Debian: apt-get install nginx haproxy wrk), python3.
set -euo pipefail
cd "$(dirname "$0")/../.."

NGINX_HEADERS=""
HAPROXY_HEADERS=""
if [ "${PEER_HEADERS:-}" = trellis ]; then
    NGINX_HEADERS='proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header Forwarded "for=$remote_addr;proto=$scheme;host=\"$host\"";
            proxy_set_header X-Request-Id $request_id;
            proxy_set_header traceparent "00-$request_id-00f067aa0ba902b7-01";
            add_header X-Request-Id $request_id;'
    HAPROXY_HEADERS='    option forwardfor
    unique-id-format %[uuid(4),regsub(-,,g)]
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header Forwarded for=%[src]\;proto=http\;host=\"%[req.hdr(host)]\"
    http-request set-header X-Request-Id %[unique-id]
    http-request set-header traceparent 00-%[unique-id]-00f067aa0ba902b7-01
    http-after-response set-header X-Request-Id %[unique-id]'
fi
# Each server runs in a session of its own, as a service manager (or nginx's
# own daemon mode) would run it. Kernels with autogroup scheduling (the
# default on most distributions) share the CPU between sessions first: a
# server left in wrk's session would compete with wrk inside one group, and
# whichever proxy happened to be started that way would be measured under a
# different scheduler than its peers. SHARED_SESSION=1 puts everything in
# this script's session instead.
LAUNCH=(setsid)
[ "${SHARED_SESSION:-}" = 1 ] && LAUNCH=()
ROUNDS=${1:-3}
DURATION=${2:-10s}
CONNS=${3:-64}
WORK=$(mktemp -d /tmp/trellis-gw-bench.XXXXXX)
UP_PORT=18080; NGINX_PORT=18081; HAPROXY_PORT=18082; TRELLIS_PORT=18083; TRELLIS_POL_PORT=18084
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
for b in "$NGINX" "$HAPROXY" "$(command -v wrk)"; do
    [ -x "$b" ] || { echo "missing $b: apt-get install nginx haproxy wrk" >&2; exit 1; }
done

echo "building trellis-gateway (release)..." >&2
cargo build --release -q -p trellis-gateway --example serve
TARGET=${CARGO_TARGET_DIR:-target}
SERVE="$TARGET/release/examples/serve"

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

# The upstream: nginx with two workers answering a 13-byte body.
mkdir -p "$WORK/up"
cat > "$WORK/up/nginx.conf" <<CONF
worker_processes 2;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log crit;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "hello, world\n"; } }
}
CONF
"${LAUNCH[@]}" "$NGINX" -c "$WORK/up/nginx.conf" -g 'daemon off;' & PIDS+=($!)
wait_port $UP_PORT

start_nginx_proxy() { # workers
    mkdir -p "$WORK/np"
    cat > "$WORK/np/nginx.conf" <<CONF
worker_processes $1;
pid $WORK/np/nginx.pid;
error_log $WORK/np/error.log crit;
worker_rlimit_nofile 40000;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
            $NGINX_HEADERS
        }
    }
}
CONF
    "${LAUNCH[@]}" "$NGINX" -c "$WORK/np/nginx.conf" -g "daemon off;" >/dev/null 2>&1 & echo $!
}

start_haproxy() { # threads
    cat > "$WORK/haproxy.cfg" <<CONF
global
    nbthread $1
    maxconn 9000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend f
    bind 127.0.0.1:$HAPROXY_PORT
$HAPROXY_HEADERS
    default_backend b
backend b
    server up 127.0.0.1:$UP_PORT
CONF
    "${LAUNCH[@]}" "$HAPROXY" -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 & echo $!
}

start_trellis() { # port workers policies(0/1)
    local policies=""
    if [ "$3" = 1 ]; then
        policies='retry = { attempts = 2 }
breaker = { minimum_calls = 100, failure_rate_percent = 50 }
bulkhead = { max_concurrent = 100000 }
rate_limit = { requests = 100000000, per = "1s" }'
    fi
    cat > "$WORK/trellis-$1.toml" <<CONF
[[listeners]]
name = "main"
bind = "127.0.0.1:$1"
workers = $2
limits = { max_connections = 20000 }
[[routes]]
name = "bench"
upstream = "up"
$policies
[[upstreams]]
name = "up"
endpoints = ["127.0.0.1:$UP_PORT"]
CONF
    # The listener's own worker threads serve it; the runtime given to the
    # example (1 thread) runs only health checks and the like.
    "${LAUNCH[@]}" "$SERVE" "$WORK/trellis-$1.toml" 1 >/dev/null 2>&1 & echo $!
}

# wrk prints e.g. "Requests/sec: 12345.67" and latency percentiles with --latency.
measure() { # port -> "rps p50_ms p99_ms"
    wrk -t 2 -c "$CONNS" -d "$DURATION" --latency "http://127.0.0.1:$1/" > "$WORK/wrk.out"
    python3 - "$WORK/wrk.out" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p50:.3f} {p99:.3f} {errors.group(1) if errors else 0}")
PY
}

# The servers are not this shell's children (each was started in a
# subshell), so `wait` cannot see them end: poll until each has, so that one
# still draining never shares the machine with the next one's run.
stop() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.05; done
    kill -9 "$1" 2>/dev/null || true
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

RESULTS="$WORK/results"
: > "$RESULTS"
for workers in ${WORKERS:-1 2}; do
    for round in $(seq 1 "$ROUNDS"); do
        # The order turns round every round, so that a drift in the
        # machine's speed during a round favours no one.
        order="nginx haproxy trellis trellis+policies"
        [ $((round % 2)) = 0 ] && order="trellis+policies trellis haproxy nginx"
        for peer in $order; do
            case $peer in
                nginx) pid=$(start_nginx_proxy "$workers"); port=$NGINX_PORT ;;
                haproxy) pid=$(start_haproxy "$workers"); port=$HAPROXY_PORT ;;
                trellis) pid=$(start_trellis $TRELLIS_PORT "$workers" 0); port=$TRELLIS_PORT ;;
                trellis+policies) pid=$(start_trellis $TRELLIS_POL_PORT "$workers" 1); port=$TRELLIS_POL_PORT ;;
            esac
            wait_port "$port"
            wrk -t 1 -c 8 -d 1s "http://127.0.0.1:$port/" > /dev/null # warm-up
            read -r rps p50 p99 errs < <(measure "$port")
            echo "$workers $round $peer $rps $p50 $p99 $errs" | tee -a "$RESULTS" >&2
            stop "$pid"
        done
    done
done

python3 - "$RESULTS" <<'PY'
import sys, statistics
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
verdicts = []
# Two views of the same runs: the ratio of the medians, and the median of
# each round's own ratio (a peer against nginx measured seconds apart), which
# a machine whose speed wanders between rounds disturbs less.
print("| workers | proxy | req/s (median) | p50 ms | p99 ms | non-2xx | req/s vs nginx | per-round req/s ratios (median) | p99 vs nginx | per-round p99 ratios (median) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for w in ("1", "2"):
    med = {}
    by_round = {}
    for peer in ("nginx", "haproxy", "trellis", "trellis+policies"):
        sel = [r for r in rows if r[0] == w and r[2] == peer]
        if not sel:
            continue
        by_round[peer] = {r[1]: (float(r[3]), float(r[5])) for r in sel}
        med[peer] = (statistics.median(float(r[3]) for r in sel),
                     statistics.median(float(r[4]) for r in sel),
                     statistics.median(float(r[5]) for r in sel),
                     sum(int(r[6]) for r in sel))
    base = med.get("nginx")
    for peer, (rps, p50, p99, errs) in med.items():
        ratio = f"{rps / base[0]:.2f}x" if base else "-"
        p99r = f"{p99 / base[2]:.2f}x" if base else "-"
        rounds = sorted(set(by_round[peer]) & set(by_round.get("nginx", {})), key=int)
        rr = [by_round[peer][k][0] / by_round["nginx"][k][0] for k in rounds]
        pr = [by_round[peer][k][1] / by_round["nginx"][k][1] for k in rounds]
        fmt = lambda xs: f"{statistics.median(xs):.2f}x (" + " ".join(f"{x:.2f}" for x in xs) + ")" if xs else "-"
        print(f"| {w} | {peer} | {rps:.0f} | {p50:.3f} | {p99:.3f} | {errs} | {ratio} | {fmt(rr)} | {p99r} | {fmt(pr)} |")
        if peer.startswith("trellis") and rr:
            verdicts.append((w, peer, statistics.median(rr), statistics.median(pr)))

# The issue's bar, judged on the per-round medians: plain Trellis at least
# 1.1x nginx's requests/s with p99 no worse, and with every policy on at
# least nginx's requests/s.
print()
for w, peer, rps, p99 in verdicts:
    if peer == "trellis":
        checks = [(f"req/s {rps:.2f}x >= 1.10x", rps >= 1.10), (f"p99 {p99:.2f}x <= 1.00x", p99 <= 1.00)]
    else:
        checks = [(f"req/s {rps:.2f}x >= 1.00x", rps >= 1.00)]
    mark = lambda ok: "met" if ok else "NOT met"
    print(f"bar, {w} worker(s), {peer}: " + "; ".join(f"{text} {mark(ok)}" for text, ok in checks))
PY

# Memory: idle RSS, then with 10,000 idle keep-alive connections (one request each).
pid=$(start_trellis $TRELLIS_PORT 1 0); wait_port $TRELLIS_PORT
sleep 0.5
idle=$(rss_kb "$pid")
ulimit -n 30000 2>/dev/null || true
python3 - "$TRELLIS_PORT" "$WORK/hold" <<'PY' &
import socket, sys, time, os
port = int(sys.argv[1]); socks = []
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    socks.append(s)
for s in socks:
    s.recv(4096)
open(sys.argv[2], "w").write("ready")
time.sleep(30)
PY
holder=$!
for _ in $(seq 1 600); do [ -f "$WORK/hold" ] && break; sleep 0.1; done
loaded=$(rss_kb "$pid")
kill "$holder" 2>/dev/null || true
stop "$pid"
echo
per_conn=$(( (loaded - idle) * 1024 / 10000 ))
echo "Trellis RSS idle: $((idle / 1024)) MiB; with 10,000 idle keep-alive connections: $((loaded / 1024)) MiB ($per_conn bytes per connection)"
verdict() { [ "$1" = 1 ] && echo met || echo "NOT met"; }
echo "bar, memory: idle under 30 MB $(verdict $(( idle * 1024 < 30000000 ))); under 40 KB per idle connection $(verdict $(( per_conn < 40000 )))"
