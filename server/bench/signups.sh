#!/usr/bin/env bash
# Peak memory of chat-server during a load test's setup: N sign-ups (each an Argon2id hash) sent
# by C clients at once, against a fresh SQLite data directory on 127.0.0.1. Prints the time, the
# errors and the server's VmHWM (peak RSS), VmRSS and thread count from /proc when they are done.
#
#   server/bench/signups.sh [BINARY] [N] [C]      default: target/release/chat-server 1500 300
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/release/chat-server}
n=${2:-1500}
c=${3:-300}
[[ -x "$bin" ]] || { echo "no $bin: cargo build --release -p chat-server" >&2; exit 2; }
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin" --listen "127.0.0.1:$port" --data-dir "$dir" >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 50); do
  curl -fs "http://127.0.0.1:$port/api/v4/system/ping" >/dev/null 2>&1 && break
  sleep 0.1
done
python3 server/bench/signups.py "http://127.0.0.1:$port" "$n" "$c"
grep -E '^(VmHWM|VmRSS|Threads)' "/proc/$pid/status" | tr -s ' \t' ' ' | tr '\n' ' '
echo
