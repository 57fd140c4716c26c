#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine as root: installs PostGIS, GDAL,
# Chromium, MapServer (the WFS the remote-layer tests talk to), pgbouncer and HAProxy
# (the scale test's pooler and balancer) from Debian, starts
# PostgreSQL, builds the venv, lints, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

need=()
for pkg in postgresql-15-postgis-3 gdal-bin chromium cgi-mapserver mapserver-bin pgbouncer haproxy; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Start the cluster on port 5432 (the tests make clusters of their own on other ports) and
# let root connect over the Unix socket.
read -r pg_version pg_cluster < <(pg_lsclusters -h | awk '$3 == 5432 {print $1, $2; exit}')
pg_ctlcluster "$pg_version" "$pg_cluster" start 2>/dev/null || true
for _ in $(seq 1 30); do
    su postgres -c "psql -qAtc 'SELECT 1'" >/dev/null 2>&1 && break
    sleep 1
done
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_roles WHERE rolname = 'root'\"" | grep -q 1 \
    || su postgres -c "psql -qc 'CREATE ROLE root SUPERUSER LOGIN'"

make_venv test
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
