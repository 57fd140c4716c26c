"""PostGIS data access with psycopg 3: discovery, reads built as GeoJSON in SQL, writes.

All SQL of this backend is composed here with :mod:`psycopg.sql`; column names that
come from a request are checked against the table's schema first (see
:meth:`CollectionSchema.check_property`) and every value is a bound parameter.

Each feature is assembled as GeoJSON text inside PostgreSQL (``ST_AsGeoJSON`` and
``json_build_object``) and passed through untouched, so a page costs one query and
no per-feature Python objects. Large pages are read through a server-side cursor
and streamed in batches, in bounded memory.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool, PoolTimeout

from providers.base import (
    MISSING,
    STREAM_BATCH,
    STREAM_THRESHOLD,
    CollectionSchema,
    Count,
    CountMode,
    FeaturePage,
    FeatureProvider,
    Field,
    GeometryEncoding,
    Query,
    StoredFeature,
    TileRequest,
    Write,
    check_if_match,
    feature_values,
    geometry_from_geojson,
    numbered,
)
from providers.crs import CRS, CRS84, coordinate_precision, from_srid
from providers.errors import (
    Conflict,
    InvalidData,
    InvalidQuery,
    NotFound,
    PreconditionFailed,
    ProviderError,
    Unavailable,
)
from providers.filters import Compiler, Dialect
from providers.replica import SCOPE, Replica, wrote

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a tile statement's filter conditions go (never valid SQL, so never in a template).
_WHERE_MARKER = "\x00where\x00"
#: Output shapes whose feature SQL is kept per collection.
SQL_CACHE_SIZE = 64
#: How often a running tile statement checks whether its client is still there.
CANCEL_POLL_S = 0.1
#: A pooled connection idle longer than this is checked before use.
IDLE_CHECK_S = 5.0
#: How long the planner's row count of a table is trusted before it is read again.
ROW_ESTIMATE_TTL_S = 30.0
#: Tables with more rows than this report the planner's estimated extent.
ESTIMATED_EXTENT_ABOVE = 1_000_000
#: json_build_object takes at most 100 arguments: 50 key/value pairs per call.
PAIRS_PER_CALL = 50

REVISIONS_DDL = (
    "CREATE SCHEMA IF NOT EXISTS geoharbor; "
    "CREATE TABLE IF NOT EXISTS geoharbor.revisions "
    "(source text PRIMARY KEY, revision bigint NOT NULL DEFAULT 0,"
    " changed timestamptz NOT NULL DEFAULT now())"
)

_JSON_TYPES = {
    "int2": ("integer", None),
    "int4": ("integer", None),
    "int8": ("integer", None),
    "oid": ("integer", None),
    "float4": ("number", None),
    "float8": ("number", None),
    "numeric": ("number", None),
    "bool": ("boolean", None),
    "date": ("string", "date"),
    "timestamp": ("string", "date-time"),
    "timestamptz": ("string", "date-time"),
    "uuid": ("string", "uuid"),
    "json": ("object", None),
    "jsonb": ("object", None),
}


# -- the pool shared by all collections of one database --------------------------------
class PostGISDatabase:
    """One connection pool per database, opened lazily; and its read replica's, if any.

    Lazily, because gunicorn forks workers after the app is built and a pool's
    connections and threads must not cross a fork.

    ``direct_url`` says that ``url`` reaches PostgreSQL through a pooler in transaction
    mode (pgbouncer): each transaction may run on another server session, so nothing
    is set per session on ``url``'s connections (``statement_timeout`` and ``jit`` are
    then the role's settings: ``ALTER ROLE ... SET``), and whatever needs a session of
    its own (LISTEN, session advisory locks, long loads) connects to ``direct_url``
    (:meth:`connect_direct`). ``prepare_threshold`` (None: never prepare, as pgbouncer
    1.18 requires) applies to every connection opened for this source.

    ``read_url`` is a streaming replica: the reads of requests that may use it go there
    (:meth:`read`, :meth:`read_connection`; see providers/replica.py).
    """

    def __init__(
        self,
        url: str,
        *,
        name: str = "",
        read_url: str | None = None,
        direct_url: str | None = None,
        pool_min: int = 1,
        pool_max: int = 10,
        prepare_threshold: int | None = 5,
        statement_timeout_ms: int = 30_000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.name = name
        self.direct_url = direct_url
        self.pool_min = pool_min
        self.pool_max = pool_max
        self.prepare_threshold = prepare_threshold
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._revisions: bool | None = None
        self._revision_sql: dict[tuple[str, ...], bytes] = {}
        self.replica: Replica | None = None
        if read_url:
            self.replica = Replica(
                name or _safe_url(url),
                read_url,
                lambda replica_url, pool_name: self._make_pool(replica_url, pool_name, replica=True),
                {"prepare_threshold": prepare_threshold},
            )

    @property
    def pooled(self) -> bool:
        """Whether ``url`` goes through a transaction pooler (``direct_url`` is given)."""
        return self.direct_url is not None

    def _configure(self, conn: psycopg.Connection) -> None:
        # Reads are single statements: autocommit spares a BEGIN and a COMMIT round trip
        # each. Writes and server-side cursors open an explicit transaction.
        conn.autocommit = True
        conn.prepare_threshold = self.prepare_threshold
        if self.pooled:
            # Through a transaction pooler a SET would stay on whichever server session ran
            # it, for other clients, and not on the sessions our next statements get.
            return
        # Tile statements over big tables cost enough to trigger JIT compilation, which
        # takes longer than it saves on queries of this size.
        conn.execute("SET jit = off")
        # SET does not take bound parameters; the value is our own integer.
        conn.execute(
            sql.SQL("SET statement_timeout = {}").format(sql.Literal(int(self.statement_timeout_ms)))
        )

    @staticmethod
    def _check(conn: psycopg.Connection) -> None:
        """Check a connection not used for a while (the database may have restarted).

        Checking every checkout would cost a round trip per request. The time of the
        previous checkout stands for the time the connection went idle: a pool
        ``reset`` callback could record the return time, but it makes the pool hand
        every returned connection to its worker thread, a thread switch per request.
        """
        now = time.monotonic()
        used_at = getattr(conn, "_geoharbor_used_at", None)
        conn._geoharbor_used_at = now  # type: ignore[attr-defined]
        if used_at is None or now - used_at > IDLE_CHECK_S:
            ConnectionPool.check_connection(conn)

    def _configure_replica(self, conn: psycopg.Connection) -> None:
        self._configure(conn)
        conn._geoharbor_replica = True  # type: ignore[attr-defined]

    def _make_pool(self, url: str, name: str, replica: bool = False) -> ConnectionPool:
        """A pool on ``url`` (the primary's or the replica's) configured alike."""
        return ConnectionPool(
            url,
            min_size=self.pool_min,
            max_size=self.pool_max,
            configure=self._configure_replica if replica else self._configure,
            check=self._check,
            timeout=self.connect_timeout_s,
            kwargs={"connect_timeout": int(self.connect_timeout_s)},
            open=True,
            name=name,
        )

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = self._make_pool(self.url, "geoharbor")
        return self._pool

    def connection(self):
        """A pooled connection to the primary; failures to get one become :class:`Unavailable`."""
        try:
            return self.pool.connection()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise Unavailable(f"database unavailable: {exc}") from exc

    def connect_direct(self, **kwargs: Any) -> psycopg.Connection:
        """A connection of its own, bypassing any pooler (``direct_url``), for what needs a
        session: LISTEN, session advisory locks, session settings of a long load."""
        kwargs.setdefault("prepare_threshold", self.prepare_threshold)
        return psycopg.connect(self.direct_url or self.url, **kwargs)

    # -- reads that may go to the replica ------------------------------------------------
    def _reader(self) -> Replica | None:
        """The replica this request's reads of this database go to; None for the primary.

        Chosen at the request's first read of this database and kept for the request.
        """
        replica = self.replica
        scope = SCOPE.get()
        if replica is None or scope is None or not scope.replica_ok:
            return None
        choice = scope.chosen.get(id(self))
        if choice is None:
            choice = scope.chosen[id(self)] = replica.serves(scope.floor(self))
        elif choice and not replica.up:
            choice = scope.chosen[id(self)] = False  # it failed during this request
        return replica if choice else None

    def _fell_back(self, replica: Replica, exc: BaseException) -> None:
        scope = SCOPE.get()
        if scope is not None:
            scope.chosen[id(self)] = False
        replica.failed(exc)

    def read(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(conn)`` on the replica when this request may read there, else on the primary.

        A replica that fails (no connection, a connection lost) is left for the primary
        and ``work`` runs again there: ``work`` must only read. So does a statement the
        replica cancelled because it conflicted with what it was replaying. Other
        database errors are raised as they are (psycopg's).
        """
        replica = self._reader()
        if replica is not None:
            try:
                with replica.connection() as conn:
                    return work(conn)
            except PoolTimeout as exc:
                self._fell_back(replica, exc)
            except psycopg.OperationalError as exc:
                if exc.sqlstate == RECOVERY_CONFLICT:
                    LOGGER.info("replica of %s cancelled a read (recovery conflict): primary", self.name)
                elif _lost(exc):
                    self._fell_back(replica, exc)
                else:
                    raise
        with self.connection() as conn:
            return work(conn)

    @contextlib.contextmanager
    def read_connection(self) -> Iterator[psycopg.Connection]:
        """A connection for reads streamed to the client (see :meth:`read`): the replica's
        when it may be used and answers, else the primary's. Once rows are on their way
        nothing can be read again elsewhere, so only getting the connection falls back."""
        replica = self._reader()
        if replica is not None:
            held = contextlib.ExitStack()
            try:
                conn = held.enter_context(replica.connection())
                conn.execute("SELECT 1", prepare=False)  # a connection the replica dropped fails here
            except (PoolTimeout, psycopg.OperationalError) as exc:
                held.close()
                self._fell_back(replica, exc)
            else:
                with held:
                    yield conn
                return
        with self.connection() as conn:
            yield conn

    def saw(self, conn: psycopg.Connection, revisions: dict[str, int] | None) -> None:
        """Revisions read on ``conn``: when it is the replica's, it has replayed them."""
        if revisions and self.replica is not None and getattr(conn, "_geoharbor_replica", False):
            self.replica.saw(revisions)

    def read_revisions(self, keys: list[str]) -> dict[str, int] | None:
        """:meth:`revisions` where this request reads (the replica's, when it may): what a
        tile is then read and cached under."""
        if not self.ensure_revisions():
            return None
        statement = self.revisions_statement(tuple(keys))

        def work(conn: psycopg.Connection) -> dict[str, int]:
            found = revisions_found(keys, conn.execute(statement).fetchall())
            self.saw(conn, found)
            return found

        try:
            return self.read(work)
        except psycopg.Error as exc:
            raise _read_error(exc) from exc

    def bump_revision(self, conn: psycopg.Connection, key: str) -> int:
        """Count a write to ``key`` (``schema.table``) in the revisions, in ``conn``'s
        transaction; the request's client is told the new revision (its ``gh_rev`` cookie)."""
        row = conn.execute(
            "INSERT INTO geoharbor.revisions AS r (source, revision) VALUES (%s, 1) "
            "ON CONFLICT (source) DO UPDATE SET revision = r.revision + 1, changed = now() "
            "RETURNING revision",
            (key,),
        ).fetchone()
        revision = int(row[0]) if row else 0
        wrote(self.name, key, revision)
        return revision

    def replica_status(self) -> dict[str, Any] | None:
        """The replica's state and lag (None without a replica), for /health and /metrics."""
        if self.replica is None:
            return None
        primary_lsn = None
        try:
            with self.pool.connection(timeout=2.0) as conn:
                row = conn.execute(
                    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END",
                    prepare=False,
                ).fetchone()
                primary_lsn = row[0] if row else None
        except (psycopg.Error, PoolTimeout):
            pass  # the primary's own health says it is down; the replica's lag in bytes is unknown
        return self.replica.status(primary_lsn)

    def ensure_revisions(self) -> bool:
        """Create the table of collection revisions if it is missing; False when we may not.

        Revisions live in the database the data lives in, so a write and its revision
        bump commit together and every geoharbor process sees the same number.
        """
        if self._revisions is None:
            try:
                with self.pool.connection() as conn, conn.transaction():
                    conn.execute(REVISIONS_DDL)
                self._revisions = True
            except psycopg.Error as exc:
                LOGGER.warning(
                    "no revision table in %s (%s): tiles of its collections are not cached",
                    _safe_url(self.url),
                    _pg_message(exc),
                )
                self._revisions = False
        return self._revisions

    def revisions(self, keys: list[str]) -> dict[str, int] | None:
        """The revisions of several sources in one round trip (0 for one never written), on
        the primary (:meth:`read_revisions` reads where the request reads).

        The store reads the registry's generation this way; None when the revision table
        cannot be had.
        """
        if not self.ensure_revisions():
            return None
        statement = self.revisions_statement(tuple(keys))
        with self.connection() as conn:
            try:
                rows = conn.execute(statement).fetchall()
            except psycopg.Error as exc:
                raise _read_error(exc) from exc
        return revisions_found(keys, rows)

    def revisions_statement(self, keys: tuple[str, ...]) -> bytes:
        """The statement reading the revisions of ``keys``: (source, revision) rows.

        A tile request sends it every time: with the keys as literals psycopg neither
        dumps a text array nor parses placeholders, and it still prepares the statement.
        """
        return b"SELECT source, revision FROM geoharbor.revisions WHERE source = ANY(%s)" % self._keys(keys)

    def with_revisions(
        self, keys: tuple[str, ...], statement: bytes | sql.Composable
    ) -> bytes | sql.Composable:
        """``statement`` (one row, one value) and the revisions of ``keys`` as one statement.

        Its row is (sources, revisions, value): both parts read one snapshot, so the
        value is exactly as new as the revisions read with it, and a cache miss costs
        one statement where a pipeline of two costs psycopg twice the work.
        """
        keys_sql = self._keys(keys).replace(b"%", b"%%")  # the statement has placeholders
        head = b"SELECT r.sources, r.revisions, ("
        tail = (
            b") FROM (SELECT array_agg(source) AS sources, array_agg(revision) AS revisions"
            b" FROM geoharbor.revisions WHERE source = ANY(" + keys_sql + b")) AS r"
        )
        if isinstance(statement, bytes):
            return head + statement + tail
        return sql.Composed([sql.SQL(head.decode()), statement, sql.SQL(tail.decode())])

    def _keys(self, keys: tuple[str, ...]) -> bytes:
        """``keys`` as a text[] literal, rendered once per set of keys (table names and the
        registry's key, never request input)."""
        found = self._revision_sql.get(keys)
        if found is None:
            if len(self._revision_sql) >= SQL_CACHE_SIZE:
                self._revision_sql.clear()
            literal = sql.SQL("{}::text[]").format(sql.Literal(list(keys)))
            found = self._revision_sql[keys] = literal.as_bytes(None)
        return found

    def ping(self) -> bool:
        try:
            with self.pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - health reports any failure as down
            return False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self.replica is not None:
            self.replica.close()

    def describe(self, ref: TableRef, **options: Any) -> CollectionSchema:
        """The schema of a table or view; see :func:`describe_table`."""
        return describe_table(self, ref, **options)

    def compute_extents(self, ref: TableRef, schema: CollectionSchema) -> None:
        """Fill ``schema``'s extents; see :func:`compute_extents`."""
        compute_extents(self, ref, schema)

    # -- discovery ------------------------------------------------------------------
    def discover(self, schemas: list[str]) -> list[TableRef]:
        """Every table and view with a geometry column in ``schemas``."""
        query = sql.SQL(
            "SELECT f_table_schema, f_table_name, f_geometry_column "
            "FROM geometry_columns WHERE f_table_schema = ANY(%s) "
            "ORDER BY f_table_schema, f_table_name, f_geometry_column"
        )
        with self.connection() as conn:
            rows = conn.execute(query, (schemas,)).fetchall()
        seen: dict[tuple[str, str], TableRef] = {}
        for schema, table, column in rows:
            key = (schema, table)
            if key not in seen:  # the first geometry column, unless config picks another
                seen[key] = TableRef(schema, table, column)
        return list(seen.values())


@dataclass(frozen=True, slots=True)
class TableRef:
    schema: str
    table: str
    geometry_column: str | None = None

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


# -- the SQL dialect of the filter compiler ---------------------------------------------
class PostGISDialect(Dialect[sql.Composable]):
    def __init__(self, storage_srid: int) -> None:
        super().__init__()
        self.storage_srid = storage_srid

    def sql(self, text: str) -> sql.Composable:
        return sql.SQL(text)

    def ident(self, name: str) -> sql.Composable:
        return sql.Identifier(name)

    def placeholder(self, name: str) -> sql.Composable:
        return sql.Placeholder(name)

    def fmt(self, template: str, *parts: sql.Composable) -> sql.Composable:
        return sql.SQL(template).format(*parts)

    def join(self, parts, sep: str) -> sql.Composable:
        return sql.SQL(sep).join(parts)

    def _to_storage(self, geom: sql.Composable, crs: CRS) -> sql.Composable:
        if crs.lat_first:
            geom = sql.SQL("ST_FlipCoordinates({})").format(geom)
        if crs.srid != self.storage_srid:
            geom = sql.SQL("ST_Transform({}, {})").format(geom, sql.Literal(self.storage_srid))
        return geom

    def geometry_literal(self, geojson: dict[str, Any], crs: CRS) -> sql.Composable:
        geom = sql.SQL("ST_SetSRID(ST_GeomFromGeoJSON({}), {})").format(
            self.param(orjson.dumps(geojson).decode()), sql.Literal(crs.srid)
        )
        return self._to_storage(geom, crs)

    def envelope_literal(self, bbox, crs: CRS) -> sql.Composable:
        minx, miny, maxx, maxy = (float(v) for v in bbox)
        env = sql.SQL("ST_MakeEnvelope({}, {}, {}, {}, {})").format(
            self.param(minx),
            self.param(miny),
            self.param(maxx),
            self.param(maxy),
            sql.Literal(crs.srid),
        )
        if crs.srid != self.storage_srid:
            # Densify before reprojecting so the box's curved edges are kept.
            env = sql.SQL("ST_Transform(ST_Segmentize({}, {}), {})").format(
                env, sql.Literal(max(maxx - minx, maxy - miny) / 16 or 1), sql.Literal(self.storage_srid)
            )
        return env

    def spatial(self, op: str, lhs, rhs, envelope) -> sql.Composable:
        func = {
            "s_intersects": "ST_Intersects",
            "s_disjoint": "ST_Disjoint",
            "s_contains": "ST_Contains",
            "s_within": "ST_Within",
            "s_touches": "ST_Touches",
            "s_crosses": "ST_Crosses",
            "s_overlaps": "ST_Overlaps",
            "s_equals": "ST_Equals",
        }[op]
        return sql.SQL(func + "({}, {})").format(lhs, rhs)

    def dwithin(self, column, geojson: dict[str, Any], distance: float, crs: CRS, box) -> sql.Composable:
        literal = sql.SQL("ST_SetSRID(ST_GeomFromGeoJSON({}), {})").format(
            self.param(orjson.dumps(geojson).decode()), sql.Literal(crs.srid)
        )
        if crs.srid == self.storage_srid:
            return sql.SQL("ST_DWithin({}, {}, {})").format(column, literal, self.param(distance))
        # Measured in ``crs``, so the column is transformed; the index is still used
        # through the search box, moved to the storage CRS.
        return sql.SQL("({} && {} AND ST_DWithin(ST_Transform({}, {}), {}, {}))").format(
            column,
            self.envelope_literal(box, crs),
            column,
            sql.Literal(crs.srid),
            literal,
            self.param(distance),
        )

    def like(self, lhs, pattern) -> sql.Composable:
        return sql.SQL("({}::text LIKE {})").format(lhs, pattern)

    def lower(self, expr) -> sql.Composable:
        return sql.SQL("lower({}::text)").format(expr)

    def time_value(self, expr) -> sql.Composable:
        return expr


# -- schema introspection ---------------------------------------------------------------
def describe_table(
    db: PostGISDatabase,
    ref: TableRef,
    *,
    id_column: str | None = None,
    time_column: str | None = None,
    properties: list[str] | None = None,
) -> CollectionSchema:
    """Read a table's or view's columns, key, geometry, SRID and extents from PostgreSQL."""
    with db.connection() as conn:
        cols = conn.execute(
            "SELECT a.attname, t.typname, NOT a.attnotnull, "
            "       pg_get_expr(d.adbin, d.adrelid) IS NOT NULL OR a.attidentity <> '' "
            "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (ref.ident.as_string(conn),),
        ).fetchall()
        if not cols:
            raise NotFound(f"table {ref.schema}.{ref.table} not found")
        pk = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (ref.ident.as_string(conn),),
        ).fetchall()
        geom_col = ref.geometry_column
        geo = None
        if geom_col:
            geo = conn.execute(
                "SELECT srid, type FROM geometry_columns WHERE f_table_schema = %s "
                "AND f_table_name = %s AND f_geometry_column = %s",
                (ref.schema, ref.table, geom_col),
            ).fetchone()
    types = {name: typ for name, typ, _, _ in cols}
    if id_column is None:
        if len(pk) == 1:
            id_column = pk[0][0]
        else:
            id_column = next((c for c in ("id", "fid", "gid", "ogc_fid") if c in types), None)
            if id_column is None:
                id_column = next(
                    (n for n, t, _, _ in cols if t in ("int2", "int4", "int8", "uuid", "text", "varchar")),
                    None,
                )
    if id_column is None or id_column not in types:
        raise InvalidData(f"{ref.schema}.{ref.table}: no usable id column; set id_column")
    fields: dict[str, Field] = {}
    for name, typ, nullable, _has_default in cols:
        if name in (id_column, geom_col) or typ in ("geometry", "geography", "raster"):
            continue
        if properties is not None and name not in properties:
            continue
        kind, fmt = _JSON_TYPES.get(typ, ("string", None))
        fields[name] = Field(name, kind, fmt, nullable, typ)
    if time_column is None:
        time_column = next((n for n, f in fields.items() if f.format in ("date", "date-time")), None)
    srid = int(geo[0]) if geo and geo[0] else 4326
    id_kind = _JSON_TYPES.get(types[id_column], ("string", None))[0]
    return CollectionSchema(
        id_field=id_column,
        geometry_field=geom_col,
        geometry_type=(geo[1] if geo else None),
        storage_crs=from_srid(srid),
        fields=fields,
        id_type="integer" if id_kind == "integer" else "string",
        time_field=time_column,
        id_native_type=types[id_column],
        id_has_default=next(bool(d) for n, _, _, d in cols if n == id_column),
    )


def compute_extents(db: PostGISDatabase, ref: TableRef, schema: CollectionSchema) -> None:
    """Fill the schema's CRS84 bbox (planner estimate first) and temporal extent."""
    table = ref.ident
    with db.connection() as conn:
        if schema.geometry_field:
            geom = sql.Identifier(schema.geometry_field)
            srid = sql.Literal(schema.storage_crs.srid)
            box = None
            rows = conn.execute(
                "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", (table.as_string(conn),)
            ).fetchone()
            if rows and rows[0] >= ESTIMATED_EXTENT_ABOVE:
                # Exact extents of big tables take a full scan: the planner's is close enough.
                try:
                    box = conn.execute(
                        sql.SQL(
                            "SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) FROM ("
                            "SELECT ST_Transform(ST_SetSRID(ST_EstimatedExtent({}, {}, {})::geometry, {}),"
                            " 4326) AS b) s"
                        ).format(
                            sql.Literal(ref.schema),
                            sql.Literal(ref.table),
                            sql.Literal(schema.geometry_field),
                            srid,
                        )
                    ).fetchone()
                except psycopg.Error:
                    conn.rollback()
            if not box or box[0] is None:
                box = conn.execute(
                    sql.SQL(
                        "SELECT ST_XMin(b), ST_YMin(b), ST_XMax(b), ST_YMax(b) FROM ("
                        "SELECT ST_Extent(ST_Transform({}, 4326))::geometry AS b FROM {}) s"
                    ).format(geom, table)
                ).fetchone()
            if box and box[0] is not None:
                schema.bbox = (max(-180.0, box[0]), max(-90.0, box[1]), min(180.0, box[2]), min(90.0, box[3]))
        if schema.time_field:
            col = sql.Identifier(schema.time_field)
            low, high = conn.execute(
                sql.SQL("SELECT min({c}), max({c}) FROM {t}").format(c=col, t=table)
            ).fetchone()
            schema.temporal = (_as_datetime(low), _as_datetime(high))


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return None


# -- one collection ---------------------------------------------------------------------
class PostGISProvider(FeatureProvider):
    """A table or view of a :class:`PostGISDatabase` published as a collection."""

    def __init__(
        self,
        db: PostGISDatabase,
        ref: TableRef,
        schema: CollectionSchema,
        *,
        editable: bool = False,
        count_mode: CountMode = "auto",
        exact_count_below: int = 100_000,
    ) -> None:
        self.db = db
        self.ref = ref
        self.schema = schema
        self.editable = editable
        self.count_mode = count_mode
        self.exact_count_below = exact_count_below
        self._table = ref.ident
        self._id = sql.Identifier(schema.id_field)
        self._geom = sql.Identifier(schema.geometry_field) if schema.geometry_field else None
        self._native_id = schema.id_native_type
        self._id_default = schema.id_has_default
        self._rows = 0
        self._rows_at = -ROW_ESTIMATE_TTL_S
        self._sql_cache: dict[tuple, sql.SQL] = {}
        #: Tile statements by output shape, before and after their filter conditions.
        self._tile_templates: dict[tuple, tuple[bytes, bytes]] = {}

    def ping(self) -> bool:
        return self.db.ping()

    @property
    def _source_key(self) -> str:
        return f"{self.ref.schema}.{self.ref.table}"

    @property
    def revision_key(self) -> str:
        """This table's row in ``geoharbor.revisions`` of :attr:`db`."""
        return self._source_key

    def revision(self) -> int | None:
        found = self.db.read_revisions([self._source_key])
        return None if found is None else found[self._source_key]

    # -- SQL pieces ----------------------------------------------------------------
    def _geometry_out(self, crs: CRS) -> sql.Composable:
        geom: sql.Composable = self._geom  # type: ignore[assignment]
        if crs.srid != self.schema.storage_crs.srid:
            geom = sql.SQL("ST_Transform({}, {})").format(geom, sql.Literal(crs.srid))
        if crs.lat_first:
            geom = sql.SQL("ST_FlipCoordinates({})").format(geom)
        return geom

    def _feature_json(self, crs: CRS, properties: list[str] | None, skip_geometry: bool) -> sql.Composable:
        """SQL text of one GeoJSON Feature; the geometry's GeoJSON is spliced in as text.

        Rendered once per output shape (CRS, properties, geometry or not) and kept, as
        Martin keeps its tile SQL: a request only composes its WHERE clause.
        """
        names = self.schema.selected(properties)
        key = (crs, tuple(names), skip_geometry)
        found = self._sql_cache.get(key)
        if found is None:
            if len(self._sql_cache) >= SQL_CACHE_SIZE:
                self._sql_cache.clear()
            found = self._sql_cache[key] = sql.SQL(self._render_feature_json(crs, names, skip_geometry))
        return found

    def _render_feature_json(self, crs: CRS, names: list[str], skip_geometry: bool) -> str:
        if names:
            calls = []
            for start in range(0, len(names), PAIRS_PER_CALL):
                chunk = names[start : start + PAIRS_PER_CALL]
                pairs = sql.SQL(", ").join(
                    sql.SQL("{}, {}").format(sql.Literal(n), sql.Identifier(n)) for n in chunk
                )
                calls.append(
                    sql.SQL(
                        "jsonb_build_object({})" if len(names) > PAIRS_PER_CALL else "json_build_object({})"
                    ).format(pairs)
                )
            props = sql.SQL(" || ").join(calls)
            props = sql.SQL("({})::text").format(props)
        else:
            props = sql.SQL("'{}'")
        if skip_geometry or self._geom is None:
            geometry = sql.SQL("'null'")
        else:
            geometry = sql.SQL("COALESCE(ST_AsGeoJSON({}, {}, 0), 'null')").format(
                self._geometry_out(crs), sql.Literal(coordinate_precision(crs))
            )
        return (
            sql.SQL(
                '\'{{"type":"Feature","id":\' || to_json({id})::text || \',"geometry":\' || {geom}'
                " || ',\"properties\":' || {props} || '}}'"
            )
            .format(id=self._id, geom=geometry, props=props)
            .as_string(None)
        )

    def _where(self, query: Query) -> tuple[sql.Composable, dict[str, Any]]:
        dialect = PostGISDialect(self.schema.storage_crs.srid)
        clause = Compiler(self.schema, dialect).where(query)
        if clause is None:
            return sql.SQL(""), dialect.params
        return sql.SQL(" WHERE {}").format(clause), dialect.params

    def _order(self, query: Query) -> sql.Composable:
        terms = []
        for name, ascending in query.sortby:
            self.schema.check_property(name)
            terms.append(
                sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL("ASC" if ascending else "DESC"))
            )
        if not any(name == self.schema.id_field for name, _ in query.sortby):
            terms.append(self._id)
        return sql.SQL(" ORDER BY {}").format(sql.SQL(", ").join(terms))

    def _page(
        self, columns: sql.Composable, query: Query
    ) -> tuple[sql.Composable, sql.Composable, dict[str, Any]]:
        """SELECT ``columns`` for one page of ``query``; also its WHERE clause and parameters.

        The page's keys are picked in a subquery first (an index-only scan when the
        order is the key's), so the output expressions (GeoJSON, transforms) run for
        the returned rows only and not for every row that OFFSET skips: that made
        deep pages of a large table cost seconds.
        """
        where, params = self._where(query)
        order = self._order(query)
        select = sql.SQL(
            "SELECT {columns} FROM {table} AS t WHERE t.{id} IN"
            " (SELECT t.{id} FROM {table} AS t{where}{order} LIMIT {limit} OFFSET {offset}){order}"
        ).format(
            columns=columns,
            table=self._table,
            id=self._id,
            where=where,
            order=order,
            limit=sql.Placeholder("_limit"),
            offset=sql.Placeholder("_offset"),
        )
        return select, where, {**params, "_limit": query.limit, "_offset": query.offset}

    # -- reads -----------------------------------------------------------------------
    def query(self, query: Query) -> FeaturePage:
        select, where, params = self._page(
            self._feature_json(query.crs, query.properties, query.skip_geometry), query
        )
        mode = self.count_mode if query.count == "auto" else query.count
        filters = {k: v for k, v in params.items() if not k.startswith("_")}

        def work(conn: psycopg.Connection) -> FeaturePage:
            matched, counter = self._start_count(conn, where, filters, mode)
            if query.limit > STREAM_THRESHOLD:
                matched = self._finish_count(conn, counter, where, filters) if counter else matched
                return FeaturePage(self._stream(select, params), matched)
            # The count and the page travel together: one round trip.
            with conn.pipeline():
                count_cur = conn.cursor()
                if counter is not None:
                    count_cur.execute(counter, filters)
                cur = conn.cursor()
                cur.execute(select, params)
            if counter is not None:
                matched = self._finish_count(conn, count_cur, where, filters)
            return FeaturePage(iter([r[0].encode() for r in cur.fetchall()]), matched)

        try:
            return self.db.read(work)
        except psycopg.Error as exc:
            raise _read_error(exc) from exc

    def _stream(self, select: sql.Composable, params: dict[str, Any]) -> Iterator[bytes]:
        """Rows from a server-side cursor; the connection goes back when the client is done."""
        with self.db.read_connection() as conn:
            try:
                with conn.transaction(), conn.cursor(name=f"gh_{uuid.uuid4().hex}") as cur:
                    cur.itersize = STREAM_BATCH
                    cur.execute(select, params)
                    while True:
                        batch = cur.fetchmany(STREAM_BATCH)
                        if not batch:
                            break
                        for (text,) in batch:
                            yield text.encode()
            except psycopg.Error as exc:
                raise _read_error(exc) from exc

    def _table_rows(self, conn: psycopg.Connection) -> int:
        """The planner's row count of the table, cached for a while in this process."""
        now = time.monotonic()
        if now - self._rows_at > ROW_ESTIMATE_TTL_S:
            found = conn.execute(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                (self._table.as_string(conn),),
            ).fetchone()
            self._rows = max(0, int(found[0])) if found else 0
            self._rows_at = now
        return self._rows

    def _start_count(
        self, conn: psycopg.Connection, where: sql.Composable, filters: dict[str, Any], mode: CountMode
    ) -> tuple[Count | None, sql.Composable | None]:
        """numberMatched, or the statement that will tell it.

        ``auto`` needs no query for an unfiltered big table (the planner's row count);
        otherwise it counts up to ``exact_count_below`` matches, so a count never
        scans more than that, and only beyond it asks the planner for an estimate.
        """
        if mode == "none":
            return None, None
        if mode == "exact":
            return None, sql.SQL("SELECT count(*), false FROM {} AS t{}").format(self._table, where)
        if not filters:
            rows = self._table_rows(conn)
            if mode == "estimate" or rows >= self.exact_count_below:
                return Count(rows, False), None
        elif mode == "estimate":
            return Count(self._estimate(conn, where, filters), False), None
        return None, sql.SQL(
            "SELECT count(*), count(*) > {cap} FROM (SELECT 1 FROM {} AS t{} LIMIT {limit}) s"
        ).format(
            self._table,
            where,
            cap=sql.Literal(self.exact_count_below),
            limit=sql.Literal(self.exact_count_below + 1),
        )

    def _finish_count(
        self, conn: psycopg.Connection, counter: Any, where: sql.Composable, filters: dict[str, Any]
    ) -> Count:
        if isinstance(counter, sql.Composable):
            counter = conn.execute(counter, filters)
        value, capped = counter.fetchone()
        if capped:
            return Count(max(int(value), self._estimate(conn, where, filters)), False)
        return Count(int(value), True)

    def _estimate(self, conn: psycopg.Connection, where: sql.Composable, filters: dict[str, Any]) -> int:
        plan = conn.execute(
            sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} AS t{}").format(self._table, where), filters
        ).fetchone()[0]
        return int(plan[0]["Plan"]["Plan Rows"])

    def tile(self, request: TileRequest, query: Query) -> bytes:
        """One MVT layer built entirely in PostGIS (ST_AsMVTGeom, ST_AsMVT).

        The tile's envelope (plus buffer) is moved into the storage CRS to use the
        spatial index; only the selected rows are transformed to the tile's CRS. The
        statement is rendered once per output shape and only the envelope (from
        z/x/y) and filter values are bound.
        """
        return self.tile_with_revisions(request, query, ())[0]

    def tile_with_revisions(
        self, request: TileRequest, query: Query, keys: tuple[str, ...]
    ) -> tuple[bytes, dict[str, int] | None]:
        """The tile, and the revisions of ``keys`` read in the same statement.

        A tile missing from the cache costs one pool checkout and one statement: the
        revision read rides along (:meth:`PostGISDatabase.with_revisions`), in the
        tile's snapshot, so a tile is never older than the revisions it is cached
        under. The revisions are None when ``keys`` is empty or there is no revision
        table.
        """
        if self._geom is None:
            return b"", (self.db.read_revisions(list(keys)) if keys else None)
        read = bool(keys) and self.db.ensure_revisions()

        def work(conn: psycopg.Connection) -> tuple[bytes, dict[str, int] | None]:
            self._table_rows(conn)  # for _big_tile: a query every ROW_ESTIMATE_TTL_S
            statement, params, big = self._tile_statement(request, query)
            if read:
                statement = self.db.with_revisions(keys, statement)
            prepare = False if big else None  # a big tile is planned for its envelope: unprepared
            # Binary: the tile comes as its bytes, not as hex text twice its size to decode.
            with _cancel_when(conn, request.client_gone):
                row = conn.execute(statement, params, prepare=prepare, binary=True).fetchone()
            if not read:
                return (bytes(row[0]) if row and row[0] else b""), None
            sources, revisions, tile = row
            found = revisions_found(keys, zip(sources or (), revisions or (), strict=True))
            # Read in the tile's snapshot, where the tile was read: on the replica, what it replayed.
            self.db.saw(conn, found)
            return (bytes(tile) if tile else b""), found

        try:
            return self.db.read(work)
        except psycopg.Error as exc:
            raise _read_error(exc) from exc

    def _tile_statement(
        self, request: TileRequest, query: Query
    ) -> tuple[sql.Composable | bytes, dict[str, Any], bool]:
        """The tile statement, its parameters, and whether it is a big tile's (see :meth:`_big_tile`)."""
        names = self.schema.selected(query.properties)
        big = self._big_tile(request)
        head, tail = self._tile_sql(request, tuple(names), big)
        params: dict[str, Any]
        statement: sql.Composable | bytes
        if query.filter is None and not query.equals and query.datetime is None:
            params, statement = {}, head + tail
        else:
            dialect = PostGISDialect(self.schema.storage_crs.srid)
            conditions = Query(
                filter=query.filter, filter_crs=query.filter_crs, equals=query.equals, datetime=query.datetime
            )
            clause = Compiler(self.schema, dialect).where(conditions)
            params = dialect.params
            where = sql.SQL(" AND {}").format(clause) if clause is not None else sql.SQL("")
            statement = sql.Composed([sql.SQL(head.decode()), where, sql.SQL(tail.decode())])
        minx, miny, maxx, maxy = request.bounds
        params.update(
            {
                "_minx": minx,
                "_miny": miny,
                "_maxx": maxx,
                "_maxy": maxy,
                "_margin": (maxx - minx) * request.buffer / request.extent,
                "_layer": request.layer,
            }
        )
        return statement, params, big

    def _big_tile(self, request: TileRequest) -> bool:
        """Whether the tile may hold so many rows that its plan must see its envelope.

        A tile statement is prepared and PostgreSQL soon runs it with a generic plan:
        a spatial index scan and a sort by id, right for a tile of a few thousand
        rows and ruinous for a low-zoom tile of 100,000 rows capped at
        ``max_features`` (every row fetched and sorted). A tile whose share of the
        table's extent holds more than a quarter of the cap is sent unprepared, so
        the planner sees its envelope, estimates its rows and may walk the id index
        instead, stopping at the cap. The share assumes an even spread: a cheap
        guess, made without a round trip.
        """
        bbox = self.schema.bbox
        box = _lonlat_bounds(request.bounds, request.crs.srid)
        if bbox is None or box is None:
            return True
        width = min(box[2], bbox[2]) - max(box[0], bbox[0])
        height = min(box[3], bbox[3]) - max(box[1], bbox[1])
        if width < 0 or height < 0:
            return False
        area = (bbox[2] - bbox[0]) * (bbox[3] - bbox[1])
        share = width * height / area if area > 0 else 1.0
        return share * self._rows > request.max_features / 4

    def _tile_sql(self, request: TileRequest, names: tuple[str, ...], big: bool) -> tuple[bytes, bytes]:
        """The tile statement of one output shape, before and after its filter conditions.

        An ordinary tile's statement takes its envelope, search box and pixel size
        from scalar subqueries, each computed once per run, and the search box is
        built on the envelope's subquery: the planner then neither estimates rows
        from the envelope nor folds the box's functions into constants, so a plan for
        given values costs what the generic plan costs, and PostgreSQL keeps the
        prepared statement's generic plan after its first runs. That spares planning
        each tile, which at z14 costs as much as running it. A big tile's statement
        shows the planner its envelope as constants (see :meth:`_big_tile`).
        """
        storage = self.schema.storage_crs.srid
        tms = request.crs.srid
        key = (tms, names, request.extent, request.buffer, request.max_features, request.simplify, big)
        template = self._tile_templates.get(key)
        if template is not None:
            return template
        envelope: sql.Composable = sql.SQL(
            "ST_MakeEnvelope(%(_minx)s, %(_miny)s, %(_maxx)s, %(_maxy)s, {})"
        ).format(sql.Literal(tms))
        pixel: sql.Composable = sql.SQL("(%(_maxx)s - %(_minx)s) / {}").format(sql.Literal(request.extent))
        if not big:
            # Computed once, and out of the planner's sight: see the docstring.
            envelope = sql.SQL("(SELECT {})").format(envelope)
            pixel = sql.SQL("(SELECT {})").format(pixel)
        search: sql.Composable = sql.SQL("ST_Expand({}, %(_margin)s)").format(envelope)
        geom: sql.Composable = sql.SQL("t.{}").format(_bare(self._geom))
        if storage != tms:
            # Densified so the curved edges of the reprojected box still cover the tile.
            search = sql.SQL("ST_Transform(ST_Segmentize({}, (%(_maxx)s - %(_minx)s) / 8), {})").format(
                search, sql.Literal(storage)
            )
            geom = sql.SQL("ST_Transform({}, {})").format(geom, sql.Literal(tms))
        if not big:
            search = sql.SQL("(SELECT {})").format(search)
        if request.simplify and (self.schema.geometry_type or "").upper() not in ("POINT", "MULTIPOINT"):
            # Detail finer than a tile pixel is invisible: drop it before clipping and encoding.
            geom = sql.SQL("ST_Simplify({}, {}, true)").format(geom, pixel)
        columns = [sql.SQL("t.{} AS {}").format(_bare(self._id), _bare(self._id))]
        for name in names:
            column = sql.SQL("t.{}").format(_bare(sql.Identifier(name)))
            native = self.schema.fields[name].native_type
            if native == "numeric":
                column = sql.SQL("{}::float8").format(column)  # ST_AsMVT writes numeric as text
            elif native in ("date", "timestamp", "timestamptz", "uuid", "json", "jsonb"):
                column = sql.SQL("{}::text").format(column)
            columns.append(sql.SQL("{} AS {}").format(column, _bare(sql.Identifier(name))))
        id_name = sql.SQL("")
        if self.schema.id_type == "integer":
            id_name = sql.SQL(", {}").format(_bare(sql.Literal(self.schema.id_field)))
        rendered = sql.SQL(
            # Ordered by id before the cap, so a tile has the same bytes on every build (and
            # so one ETag whichever worker answers), whatever plan PostgreSQL picks; it
            # computes the MVT geometry of the rows the cap keeps only.
            "SELECT ST_AsMVT(q, %(_layer)s, {extent}, '__geom'{id_name}) FROM ("
            "SELECT ST_AsMVTGeom({geom}, {envelope}, {extent}, {buffer}, true) AS __geom, {columns} "
            "FROM {table} AS t WHERE t.{geomcol} && {search}{marker} ORDER BY t.{id} LIMIT {limit}"
            ") AS q WHERE q.__geom IS NOT NULL"
        ).format(
            extent=sql.Literal(request.extent),
            id_name=id_name,
            geom=geom,
            envelope=envelope,
            buffer=sql.Literal(request.buffer),
            columns=sql.SQL(", ").join(columns),
            table=_bare(self._table),
            geomcol=_bare(self._geom),
            search=search,
            marker=sql.SQL(_WHERE_MARKER),
            id=_bare(self._id),
            limit=sql.Literal(request.max_features),
        )
        head, _, tail = rendered.as_string(None).partition(_WHERE_MARKER)
        template = (head.encode(), tail.encode())
        if len(self._tile_templates) >= SQL_CACHE_SIZE:
            self._tile_templates.clear()
        self._tile_templates[key] = template
        return template

    def records(self, query: Query, geometry: GeometryEncoding = "wkt") -> tuple[list[str], Iterator[tuple]]:
        names = self.schema.selected(query.properties)
        columns = [sql.SQL("t.{}").format(self._id)]
        header = [self.schema.id_field]
        if geometry != "none" and self._geom is not None and not query.skip_geometry:
            func = {"wkt": "ST_AsText", "wkb": "ST_AsBinary", "geojson": "ST_AsGeoJSON"}[geometry]
            columns.append(sql.SQL(func + "({})").format(self._geometry_out(query.crs)))
            header.append(self.schema.geometry_field or "geometry")
        columns += [sql.SQL("t.{}").format(sql.Identifier(n)) for n in names]
        header += names
        select, _, params = self._page(sql.SQL(", ").join(columns), query)

        def rows() -> Iterator[tuple]:
            with self.db.read_connection() as conn:
                try:
                    with conn.transaction(), conn.cursor(name=f"gh_{uuid.uuid4().hex}") as cur:
                        cur.execute(select, params)
                        while batch := cur.fetchmany(STREAM_BATCH):
                            yield from batch
                except psycopg.Error as exc:
                    raise _read_error(exc) from exc

        return header, rows()

    def _id_value(self, fid: Any) -> Any:
        """The id as the column's type; anything that cannot be one is simply not found."""
        try:
            if self._native_id in ("int2", "int4", "int8"):
                value = int(str(fid))
                if abs(value) > 2**63 - 1:
                    raise ValueError
                return value
            if self._native_id == "uuid":
                return uuid.UUID(str(fid))
        except ValueError as exc:
            raise NotFound(f"feature {str(fid)[:100]!r} not found") from exc
        return str(fid)

    def _select_one(self, crs: CRS, properties, skip_geometry: bool, lock: bool = False) -> sql.Composable:
        return sql.SQL(
            "SELECT t.{id}, md5(t::text), {feature} FROM {table} AS t WHERE t.{id} = %s{lock}"
        ).format(
            id=self._id,
            feature=self._feature_json(crs, properties, skip_geometry),
            table=self._table,
            lock=sql.SQL(" FOR UPDATE" if lock else ""),
        )

    def get(self, fid: str, crs: CRS = CRS84, properties=None, skip_geometry: bool = False) -> StoredFeature:
        key = self._id_value(fid)
        statement = self._select_one(crs, properties, skip_geometry)
        try:
            row = self.db.read(lambda conn: conn.execute(statement, (key,)).fetchone())
        except psycopg.Error as exc:
            raise _read_error(exc) from exc
        if row is None:
            raise NotFound(f"feature {str(fid)[:100]!r} not found")
        return StoredFeature(row[0], row[2].encode(), f'"{row[1]}"')

    # -- writes ----------------------------------------------------------------------
    def _geometry_in(self, crs: CRS) -> sql.Composable:
        geom: sql.Composable = sql.SQL("ST_SetSRID(ST_GeomFromGeoJSON(%s), {})").format(sql.Literal(crs.srid))
        if crs.lat_first:
            geom = sql.SQL("ST_FlipCoordinates({})").format(geom)
        if crs.srid != self.schema.storage_crs.srid:
            geom = sql.SQL("ST_Transform({}, {})").format(geom, sql.Literal(self.schema.storage_crs.srid))
        if (self.schema.geometry_type or "").upper().startswith("MULTI"):
            # A Polygon sent to a MultiPolygon layer is stored as a one-part multi.
            geom = sql.SQL("ST_Multi({})").format(geom)
        return geom

    def _values(self, feature: dict[str, Any], partial: bool) -> tuple[list[str], list[Any], Any]:
        """Columns, values and geometry (as GeoJSON text) of a feature; PostgreSQL casts the rest."""
        names, values, geometry = feature_values(self.schema, feature, partial, _pg_cell)
        if isinstance(geometry, dict):
            geometry_from_geojson(geometry)  # malformed GeoJSON is refused as GeoPackage refuses it
            geometry = orjson.dumps(geometry).decode()
        return names, values, geometry

    def apply_writes(self, ops: list[Write], crs: CRS = CRS84) -> list[StoredFeature | None]:
        """All ``ops`` in one transaction, with the revision bump; see :meth:`FeatureProvider.write`.

        Geometry is checked by PostGIS itself: the column's typmod rejects a wrong type,
        SRID or dimension, ``ST_GeomFromGeoJSON`` malformed GeoJSON, and ``ST_Multi``
        promotes a single geometry sent to a multi column. Each of those database
        errors is mapped to a client error (422, 409 ...) naming the failed op.
        """
        self.require_editable()
        if not ops:
            return []

        def work(conn: psycopg.Connection) -> list[StoredFeature | None]:
            out: list[StoredFeature | None] = []
            for index, op in enumerate(ops):
                with numbered(index, len(ops)):
                    try:
                        out.append(self._apply(conn, op, crs))
                    except psycopg.Error as exc:
                        raise _write_error(exc) from exc
            return out

        return self._write(work)

    def _write(self, work: Callable[[psycopg.Connection], Any]) -> Any:
        """Run ``work(conn)`` and bump the revision in one transaction; errors become provider errors."""
        self.require_editable()
        with self.db.connection() as conn:
            try:
                with conn.transaction():
                    result = work(conn)
                    if self.db.ensure_revisions():
                        self.db.bump_revision(conn, self._source_key)
                    return result
            except PreconditionFailed:
                self._tell_revision()
                raise
            except ProviderError:
                raise
            except psycopg.Error as exc:
                raise _write_error(exc) from exc

    def _tell_revision(self) -> None:
        """After a failed ``If-Match``: tell the client the table's revision now, as a write
        does, so that its next read (for the current version) is not answered by a replica
        that has not replayed the write it lost to."""
        try:
            found = self.db.revisions([self._source_key])
        except (ProviderError, psycopg.Error):
            return  # the 412 stands without it
        if found is not None:
            wrote(self.db.name, self._source_key, found[self._source_key])

    def _apply(self, conn: psycopg.Connection, op: Write, crs: CRS) -> StoredFeature | None:
        """One op of a batch, inside the batch's transaction."""
        if op.action == "create":
            return self._read_locked(conn, self._insert(conn, op.feature, crs))
        key = self._id_value(op.fid)
        self._check_version(conn, key, op.if_match)
        if op.action == "delete":
            conn.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(self._table, self._id), (key,))
            return None
        if op.action not in ("replace", "update"):
            raise ValueError(f"unknown write action {op.action!r}")
        names, values, geometry = self._values(op.feature, partial=op.action == "update")
        sets = [sql.SQL("{} = %s").format(sql.Identifier(n)) for n in names]
        if self._geom is not None and geometry is not MISSING:
            if geometry is None:
                sets.append(sql.SQL("{} = NULL").format(self._geom))
            else:
                sets.append(sql.SQL("{} = {}").format(self._geom, self._geometry_in(crs)))
                values.append(geometry)
        if sets:
            conn.execute(
                sql.SQL("UPDATE {} SET {} WHERE {} = %s").format(
                    self._table, sql.SQL(", ").join(sets), self._id
                ),
                [*values, key],
            )
        return self._read_locked(conn, key)

    def _insert(self, conn: psycopg.Connection, feature: Any, crs: CRS) -> Any:
        """INSERT one feature; returns its key (assigned by the table unless the client must give it)."""
        names, values, geometry = self._values(feature, partial=True)
        columns = [sql.Identifier(n) for n in names]
        holders: list[sql.Composable] = [sql.Placeholder()] * len(names)
        client_id = feature.get("id")
        if client_id is None:
            client_id = (feature.get("properties") or {}).get(self.schema.id_field)
        if client_id is not None and not self._id_default:
            columns.insert(0, self._id)
            holders.insert(0, sql.Placeholder())
            values.insert(0, self._client_id(client_id))
        elif client_id is None and not self._id_default:
            raise InvalidData("this collection needs an 'id'")
        if self._geom is not None and geometry not in (MISSING, None):
            columns.append(self._geom)
            holders.append(self._geometry_in(crs))
            values.append(geometry)
        statement = (
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
                self._table, sql.SQL(", ").join(columns), sql.SQL(", ").join(holders), self._id
            )
            if columns
            else sql.SQL("INSERT INTO {} DEFAULT VALUES RETURNING {}").format(self._table, self._id)
        )
        return conn.execute(statement, values).fetchone()[0]

    def _client_id(self, value: Any) -> Any:
        """A client-given id as the key column's type; 422 (not 404) when it cannot be one."""
        try:
            return self._id_value(value)
        except NotFound as exc:
            raise InvalidData(f"id {str(value)[:60]!r} is not a valid {self.schema.id_type} key") from exc

    def _read_locked(self, conn: psycopg.Connection, key: Any, lock: bool = False) -> StoredFeature:
        row = conn.execute(self._select_one(CRS84, None, False, lock), (key,)).fetchone()
        if row is None:
            raise NotFound(f"feature {str(key)[:100]!r} not found")
        return StoredFeature(row[0], row[2].encode(), f'"{row[1]}"')

    def _check_version(self, conn: psycopg.Connection, key: Any, if_match: str | None) -> None:
        """NotFound, or 412 unless ``If-Match`` names the stored version; locks the row till commit."""
        check_if_match(self._read_locked(conn, key, lock=True).etag, if_match)


def _pg_cell(field: Field, value: Any) -> Any:
    """JSON objects go to json/jsonb columns as such, to other columns as JSON text."""
    if isinstance(value, (dict, list)):
        return psycopg.types.json.Jsonb(value) if field.type == "object" else orjson.dumps(value).decode()
    return value


@dataclass(eq=False, slots=True)
class _Watched:
    """A statement running on ``conn`` for a client that ``gone()`` says has left, or not."""

    conn: psycopg.Connection
    gone: Callable[[], bool]
    since: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: bool = False


class _Canceller:
    """Cancels statements whose client has gone, with one thread per process.

    The thread wakes every :data:`CANCEL_POLL_S` and asks only about statements
    running longer than that: a fast tile costs a set entry, not a thread of its own
    and a ``select()`` of its socket.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[_Watched] = set()
        self._pid = 0

    def watch(self, conn: psycopg.Connection, gone: Callable[[], bool]) -> _Watched:
        entry = _Watched(conn, gone, time.monotonic())
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: threads do not cross a fork
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="geoharbor-cancel", daemon=True).start()
            self._watched.add(entry)
        return entry

    def done(self, entry: _Watched) -> None:
        with self._lock:
            self._watched.discard(entry)
        # A cancel under way ends before the connection goes back to the pool, where the
        # next statement on it could otherwise be cancelled in its place.
        with entry.lock:
            entry.finished = True

    def _run(self) -> None:
        while True:
            time.sleep(CANCEL_POLL_S)
            now = time.monotonic()
            with self._lock:
                due = [e for e in self._watched if now - e.since >= CANCEL_POLL_S]
            for entry in due:
                with entry.lock:
                    if entry.finished:
                        continue
                    try:
                        if entry.gone():
                            entry.conn.cancel_safe()
                            entry.finished = True
                    except Exception as exc:  # noqa: BLE001 - the watch must go on for the others
                        LOGGER.warning("could not cancel a statement whose client left: %s", exc)
                        entry.finished = True


_CANCELLER = _Canceller()


@contextlib.contextmanager
def _cancel_when(conn: psycopg.Connection, gone: Callable[[], bool] | None) -> Iterator[None]:
    """Cancel the connection's running statement once ``gone()`` says its client left.

    A tile of a big table at a low zoom can run for seconds; a map panned away has
    already dropped the request, and PostgreSQL should stop working on it too.
    """
    if gone is None:
        yield
        return
    entry = _CANCELLER.watch(conn, gone)
    try:
        yield
    finally:
        _CANCELLER.done(entry)


def _lonlat_bounds(
    bounds: tuple[float, float, float, float], srid: int
) -> tuple[float, float, float, float] | None:
    """A tile's bounds in longitude and latitude, for the tile matrix sets' CRSs (None for others)."""
    if srid == 4326:
        return bounds
    if srid == 3857:
        radius = 6378137.0
        minx, miny, maxx, maxy = bounds

        def lat(y: float) -> float:
            return math.degrees(2.0 * math.atan(math.exp(y / radius)) - math.pi / 2.0)

        return (math.degrees(minx / radius), lat(miny), math.degrees(maxx / radius), lat(maxy))
    return None


def _bare(part: sql.Composable) -> sql.SQL:
    """A name rendered once for a statement template, its ``%`` doubled: psycopg reads the
    template's ``%(name)s`` placeholders and would take a ``%`` in a column name for one."""
    return sql.SQL(part.as_string(None).replace("%", "%%"))


def revisions_found(keys: Sequence[str], rows: Iterable[tuple[Any, Any]]) -> dict[str, int]:
    """Revisions by key from the rows of a revision read; 0 for a source never written."""
    found = dict.fromkeys(keys, 0)
    found.update((source, int(revision)) for source, revision in rows)
    return found


#: SQLSTATE of a statement a hot standby cancelled for the WAL it replays (serialization_failure).
RECOVERY_CONFLICT = "40001"


def _lost(exc: psycopg.OperationalError) -> bool:
    """Whether an error means the server or the connection is gone, not the statement failed:
    no SQLSTATE (libpq lost the connection), connection exceptions (08...), or an
    administrator's shutdown or a server not yet accepting connections (57P01-57P03)."""
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


def _safe_url(url: str) -> str:
    """A connection URL without its password, for logs."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return " ".join(f"{k}={v}" for k, v in info.items())


def _pg_message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return (primary or str(exc)).splitlines()[0][:300]


def _write_error(exc: psycopg.Error) -> ProviderError:
    """A failed write: a clash is a 409, a value the column refuses a 422, a lost database a 503.

    PostGIS reports a geometry that does not fit the column (type, SRID, Z) or is not
    GeoJSON as an invalid parameter or internal error: the feature's fault, so 422.
    """
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return Conflict(_pg_message(exc))
    if isinstance(
        exc,
        (
            psycopg.errors.IntegrityError,
            psycopg.errors.DataError,
            psycopg.errors.InternalError_,
            psycopg.errors.InvalidParameterValue,
            psycopg.errors.UndefinedFunction,
            psycopg.errors.DatatypeMismatch,
        ),
    ):
        return InvalidData(_pg_message(exc))
    if isinstance(exc, (psycopg.OperationalError, psycopg.errors.QueryCanceled)):
        return Unavailable(_pg_message(exc))
    LOGGER.error("unexpected database error in a write: %s", _pg_message(exc))
    return ProviderError(_pg_message(exc))


def _read_error(exc: psycopg.Error) -> ProviderError:
    """A failed read: the client's fault (types, values) is a 400, the rest 503."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return Unavailable("the query took too long and was cancelled")
    if isinstance(
        exc,
        (
            psycopg.errors.DataError,
            psycopg.errors.UndefinedFunction,
            psycopg.errors.DatatypeMismatch,
            psycopg.errors.InternalError_,
            psycopg.errors.InvalidParameterValue,
        ),
    ):
        return InvalidQuery(_pg_message(exc))
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable(_pg_message(exc))
    LOGGER.exception("unexpected database error")
    return ProviderError(_pg_message(exc))
