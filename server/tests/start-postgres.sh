#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 15 in a temporary directory for the store tests and prints the
# superuser URL on stdout (the only thing printed there), e.g.
#   export CHAT_TEST_POSTGRES_URL=$(bash server/tests/start-postgres.sh)
# Optional: PGPORT_WANTED=55432 (default: a free port picked by the kernel).
# Stop it later with: su postgres -c "$PGBIN/pg_ctl -D <dir>/pg stop"  (the dir is logged on stderr).
set -euo pipefail

PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
if [[ -z "$PGBIN" || ! -x "$PGBIN/initdb" ]]; then
  echo "start-postgres: PostgreSQL server binaries not found (apt-get install postgresql)" >&2
  exit 1
fi

port=${PGPORT_WANTED:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 55432)}
dir=$(mktemp -d /tmp/chat-pg.XXXXXX)
chmod 755 "$dir"

# initdb refuses to run as root, so run the server as the postgres user when we are root.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    chown -R postgres "$dir"
    su postgres -c "$*"
  else
    bash -c "$*"
  fi
}

as_pg "'$PGBIN/initdb' -D '$dir/pg' -A trust -U postgres" >"$dir/initdb.log" 2>&1 || {
  cat "$dir/initdb.log" >&2; exit 1; }
as_pg "'$PGBIN/pg_ctl' -D '$dir/pg' -o \"-h 127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off\" -l '$dir/log' -w start" >&2 || {
  cat "$dir/log" >&2; exit 1; }
echo "start-postgres: running in $dir on port $port (stop: su postgres -c \"$PGBIN/pg_ctl -D $dir/pg stop\")" >&2
echo "postgres://postgres@127.0.0.1:$port/postgres"
