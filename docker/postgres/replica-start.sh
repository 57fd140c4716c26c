#!/bin/sh
# The streaming replica of docker/compose.yml. On its first start its data directory is a
# base backup of the primary (pg_basebackup -R also writes standby.signal and
# primary_conninfo); from then on it is a hot standby replaying the primary's WAL.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    until pg_isready -q -h primary -U "$POSTGRES_USER"; do sleep 1; done
    PGPASSWORD="$REPLICATION_PASSWORD" pg_basebackup -h primary -U replicator \
        -D "$PGDATA" -R -X stream -c fast
    chmod 700 "$PGDATA"
fi
# Feedback keeps the primary's vacuum from removing rows a replica read still needs
# (such reads would be cancelled: "conflict with recovery").
exec postgres -c hot_standby=on -c hot_standby_feedback=on
