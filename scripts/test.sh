#!/usr/bin/env bash
# The one test command (README): formatting, lints, every crate's unit and end-to-end tests, the
# store suite on SQLite and on a private PostgreSQL, and the official Mattermost JS client check.
#
# PostgreSQL: if CHAT_TEST_POSTGRES_URL is unset and PostgreSQL binaries exist, a throwaway
# server is started in a temp dir (initdb/pg_ctl, 127.0.0.1, free port) and stopped on exit.
# Without PostgreSQL or Node the related tests skip with a note, except under CI=true, where
# they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

# End-to-end tests open thousands of sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 20000 2>/dev/null || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

pg_dir=""
cleanup() {
  if [[ -n "$pg_dir" ]]; then
    scripts/postgres.sh stop "$pg_dir" >/dev/null 2>&1 || true
    rm -rf "$pg_dir"
  fi
}
trap cleanup EXIT
if [[ -z "${CHAT_TEST_POSTGRES_URL:-}" ]]; then
  if pg_dir=$(mktemp -d) && url=$(scripts/postgres.sh start "$pg_dir"); then
    export CHAT_TEST_POSTGRES_URL="$url"
    echo "== PostgreSQL for tests at ${url}"
  else
    rm -rf "$pg_dir"; pg_dir=""
    if [[ "${CI:-}" == "true" ]]; then
      echo "error: could not start PostgreSQL (CI=true requires it); see messages above" >&2
      exit 1
    fi
    echo "note: PostgreSQL not available; its tests will skip (install postgresql to run them)"
  fi
fi

# One build: `--no-run` compiles every test and, with them, every binary the end-to-end tests
# start (target/debug/{chat-server,loadtest-agent,ltops}) with the same features, so the test
# step below compiles nothing again. A separate `cargo build --bins` would build a second copy
# of most dependencies (dev-dependencies change their features).
echo "== cargo test --no-run (tests and the binaries end-to-end tests start)"
cargo test --workspace --locked --no-run
echo "== cargo test"
cargo test --workspace --locked --no-fail-fast -- --test-threads=2
