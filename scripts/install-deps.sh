#!/usr/bin/env bash
# Installs what neonproxy needs on a Debian machine, only when missing:
# PostgreSQL 15 server binaries (computes); with --bench, PgBouncer; with
# --test, Node.js and npm (the serverless driver's integration test).
# Debian's postgresql-15 package creates a cluster 15/main on port 5432;
# neonproxy runs its own computes and listens on 5432 itself, so that
# cluster is stopped and kept from starting at boot.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
want=()
[ -x "$PG_BIN/postgres" ] || want+=(postgresql-15)
command -v psql >/dev/null 2>&1 || want+=(postgresql-client-15)
if [ "${1:-}" = "--bench" ]; then
  command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || want+=(pgbouncer)
fi
if [ "${1:-}" = "--test" ]; then
  command -v node >/dev/null 2>&1 || want+=(nodejs)
  command -v npm >/dev/null 2>&1 || want+=(npm)
fi
[ ${#want[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-deps: need root or sudo to apt-get install ${want[*]}" >&2; exit 1; }
  sudo=sudo
fi
echo "install-deps: installing ${want[*]}" >&2
# Keep package scripts from starting services (no init system in CI).
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null
for cl in /etc/postgresql/15/*/; do
  [ -d "$cl" ] || continue
  name=$(basename "$cl")
  $sudo pg_ctlcluster 15 "$name" stop >/dev/null 2>&1 || true
  echo manual | $sudo tee "$cl/start.conf" >/dev/null
done
if [ -x /usr/sbin/pgbouncer ] && [ "${1:-}" = "--bench" ]; then
  $sudo service pgbouncer stop >/dev/null 2>&1 || true
fi
