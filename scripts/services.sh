#!/usr/bin/env bash
# Install (Debian packages) and start the real local services the tests use, on project-local
# ports and data directories so that nothing clashes with system-wide instances.
#   scripts/services.sh up     install what is missing, start what is not running (idempotent)
#   scripts/services.sh down   stop them
#   scripts/services.sh env    print the environment variables that point tests at them
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${MLPLATFORM_SERVICES_DIR:-$ROOT/.services}
REDIS_PORT=${MLPLATFORM_REDIS_PORT:-16379}
PG_PORT=${MLPLATFORM_PG_PORT:-15432}
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

need_install=()
command -v redis-server >/dev/null || need_install+=(redis-server)
[ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || need_install+=(postgresql)
command -v prometheus >/dev/null || need_install+=(prometheus)
command -v promtool >/dev/null || need_install+=(prometheus)
# Alertmanager routes the local rules' alerts to the retraining webhook (mlplatform/local/prometheus.py starts it per test).
command -v prometheus-alertmanager >/dev/null || need_install+=(prometheus-alertmanager)

install_missing() {
  [ ${#need_install[@]} -eq 0 ] && return 0
  echo "services: installing ${need_install[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_install[@]}" >/dev/null
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
}

redis_up() {
  if redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then return 0; fi
  mkdir -p "$STATE/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" --daemonize yes \
    --save "" --appendonly no --logfile "$STATE/redis/redis.log" --pidfile "$STATE/redis/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "services: redis did not answer on port $REDIS_PORT; see $STATE/redis/redis.log" >&2; return 1
}

pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

postgres_up() {
  local data="$STATE/postgres"
  if "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q; then return 0; fi
  mkdir -p "$STATE"
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
    pg_as "$PG_BIN/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$data"
  pg_as "$PG_BIN/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
  "$PG_BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q
}

down() {
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  if [ -f "$STATE/postgres/postmaster.pid" ]; then
    pg_as "$PG_BIN/pg_ctl" -D "$STATE/postgres" -m fast -w stop >/dev/null || true
  fi
}

print_env() {
  echo "MLPLATFORM_TEST_REDIS=127.0.0.1:$REDIS_PORT"
  echo "MLPLATFORM_TEST_POSTGRES=postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
}

case "${1:-up}" in
  up) install_missing; redis_up; postgres_up
      echo "services: redis on 127.0.0.1:$REDIS_PORT, postgres on 127.0.0.1:$PG_PORT ($(prometheus --version 2>&1 | head -n 1); $(prometheus-alertmanager --version 2>&1 | head -n 1))"
      bash "$ROOT/scripts/kafka.sh" up ;;
  down) down; bash "$ROOT/scripts/kafka.sh" down ;;
  env) print_env; bash "$ROOT/scripts/kafka.sh" env ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
