#!/bin/sh
# Run once by the postgis image when the primary's data directory is made
# (/docker-entrypoint-initdb.d): the role the replica streams WAL as, allowed to
# connect for replication from the compose network.
set -eu
psql -v ON_ERROR_STOP=1 -v password="$REPLICATION_PASSWORD" \
    --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'password';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
