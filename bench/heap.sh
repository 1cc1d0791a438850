#!/usr/bin/env bash
# Heap profile of chat-server and loadtest-agent holding N users, F1's shape (channels of 2,000
# members, open model), each under heaptrack; prints the allocation sites that hold the most
# memory at each process's peak, and the heap per connection / per user.
#
#   bench/heap.sh                    # N=4000 users, ramp-up 40 s, run 100 s, 1.4 posts/s
#   N=6000 PPS=2 BIN=target/debug bench/heap.sh
#
# Needs heaptrack (Debian package `heaptrack`). Everything runs on 127.0.0.1:$PORT; the data
# directory and profiles are in $OUT (default: a new temp dir, kept and printed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN=${BIN:-target/release}
N=${N:-4000}
PORT=${PORT:-18165}
RAMP=${RAMP:-40}
DUR=${DUR:-100}
OUT=${OUT:-$(mktemp -d /tmp/heap-XXXX)}
command -v heaptrack >/dev/null || { echo "heaptrack is not installed: apt-get install heaptrack" >&2; exit 2; }
[ -x "$BIN/chat-server" ] && [ -x "$BIN/loadtest-agent" ] || {
  echo "no $BIN/chat-server or $BIN/loadtest-agent: cargo build --release -p chat-server -p loadtest-agent" >&2; exit 2; }
mkdir -p "$OUT"
CH=$(( N / 2000 > 0 ? N / 2000 : 1 ))
cat >"$OUT/w.toml" <<TOML
preset = "extreme"
[target]
url = "http://127.0.0.1:$PORT"
admin_password = "Lt-Admin-Passw0rd!"
request_timeout = "30s"
[dataset]
teams = 1
users = $N
posts_per_channel = 5
[[dataset.channels]]
count = $CH
members = 2000
[users]
count = $N
ramp_up = "${RAMP}s"
duration = "${DUR}s"
[behaviour]
mode = "open"
posts_per_second = ${PPS:-1.4}
mean_interval = "240s"
interval_jitter = "60s"
reply_fraction = 0.1
[run]
interval = "10s"
TOML
ulimit -n "$(ulimit -Hn)"
server() { "$@" "$BIN/chat-server" --listen "127.0.0.1:$PORT" --metrics-listen off --data-dir "$OUT/data" --log warn >>"$OUT/server.log" 2>&1 & }
ping_server() { for _ in $(seq 300); do curl -sf "http://127.0.0.1:$PORT/api/v4/system/ping" >/dev/null && return; sleep 0.2; done; echo "the server did not start: $OUT/server.log" >&2; exit 1; }
trap 'pkill -f "^$BIN/chat-server --listen 127.0.0.1:$PORT" 2>/dev/null || true' EXIT
echo "== setup: $N users in $CH channel(s) of 2,000 ($OUT)"
server env; ping_server
"$BIN/loadtest-agent" setup --config "$OUT/w.toml" --concurrency 16 >"$OUT/setup.json" 2>"$OUT/setup.log"
pkill -f "^$BIN/chat-server --listen 127.0.0.1:$PORT"; sleep 2
echo "== run under heaptrack: ramp-up ${RAMP}s, ${DUR}s in all"
server heaptrack -o "$OUT/server"; ping_server
heaptrack -o "$OUT/agent" "$BIN/loadtest-agent" run --skip-setup --config "$OUT/w.toml" \
  --results "$OUT/results.jsonl" --run-id heap >"$OUT/agent.out" 2>"$OUT/agent.log" || true
pkill -INT -f "^$BIN/chat-server --listen 127.0.0.1:$PORT" || true
for _ in $(seq 100); do pgrep -f "^$BIN/chat-server --listen 127.0.0.1:$PORT" >/dev/null || break; sleep 0.2; done
sleep 2
for w in server agent; do
  heaptrack_print -f "$OUT/$w.zst" -p 0 -a 0 -T 0 -l 0 -F "$OUT/$w.fg" --flamegraph-cost-type peak >/dev/null 2>&1
done
python3 bench/heap_top.py --per "$N" "$OUT/server.fg" "$OUT/agent.fg"
echo "profiles: $OUT/{server,agent}.zst (heaptrack --analyze FILE)"
