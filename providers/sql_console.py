"""Read-only SQL over the published tables of a source: what the portal's SQL console runs.

The SQL is the caller's (that is the point), so nothing in it is trusted. Each guard
below stops some attack on its own; together they leave one read of published data:

PostGIS source
  1. The text is parsed by PostgreSQL's own parser (``pglast``, libpg_query): exactly
     one statement, a query (``SELECT``, ``VALUES``, ``TABLE``, ``WITH`` of queries);
     no ``SELECT INTO``, no row locks, no data-modifying ``WITH``, and no call to a
     function that changes the session or reaches outside the query (``set_config``,
     advisory locks, ``dblink``, large objects, server files, functions that run SQL
     given as text ...), nor to any ``SECURITY DEFINER`` function.
  2. It runs as a ``NOLOGIN`` role of its own (``SET LOCAL ROLE``) holding ``SELECT``
     only on the tables of the published collections of the source (and ``USAGE`` on
     their schemas): granted and revoked here, from the registry's view, before each
     query when they differ. Catalogs and what the database grants to ``PUBLIC``
     (``spatial_ref_sys``) stay readable, as for any role.
  3. In a ``READ ONLY`` transaction that is always rolled back, with a
     ``statement_timeout``.
  4. Sent through the extended protocol (a server-side cursor), which refuses a
     second statement even if one got past the parser, and fetched up to a row cap.

GeoPackage source
  The file is opened read-only (``mode=ro``) with ``PRAGMA query_only``; SQLite runs
  one statement per call, and an authorizer allows only reads of the published
  layers' tables (or views), and functions other than those that touch files or load
  code. A progress handler interrupts a statement past the timeout.

Geometries come out as GeoJSON geometries in longitude/latitude (RFC 7946), whatever
the column's SRID; the column's type says ``geometry``. Roles are named after the
database (roles belong to the whole cluster; grants to one database): one that reads
every published table (``all``) and one for the tables anyone may read (``public``).
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psycopg
import shapely
from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor
from psycopg import errors as pgerrors
from psycopg import sql

from providers import reproject
from providers.errors import Forbidden, InvalidQuery, ProviderError, Unavailable
from providers.geopackage import decode_geometries

#: The tiers of roles: every published table, or those anyone may read.
TIERS = ("all", "public")
#: Functions refused by name (any schema): they change the session, lock, signal, reach
#: files, large objects or other servers, or run SQL given as text, out of the parser's sight.
DENIED_FUNCTIONS = frozenset(
    {
        "set_config",
        "pg_notify",
        "pg_cancel_backend",
        "pg_terminate_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_stat_reset",
        "pg_stat_file",
        "pg_import_system_collations",
        "lowrite",
        "loread",
        "ts_stat",
        "ts_rewrite",
        "setval",
        "nextval",
    }
)
#: Name prefixes refused likewise (families of the above).
DENIED_PREFIXES = (
    "pg_advisory",
    "pg_try_advisory",
    "dblink",
    "lo_",
    "pg_read_",
    "pg_ls_",
    "pg_file",
    "pg_create_",
    "pg_drop_",
    "pg_replication",
    "pg_logical",
    "pg_stat_reset",
    "query_to_xml",
    "cursor_to_xml",
    "table_to_xml",
    "schema_to_xml",
    "database_to_xml",
)
#: SQLite functions refused in a GeoPackage query (files, code, virtual tables of files).
SQLITE_DENIED_FUNCTIONS = frozenset(
    {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile", "sqlar_uncompress"}
)
#: The server-side cursor a query is read through.
CURSOR = "geoharbor_sql_console"
#: SQLite: the progress handler looks at the clock every this many virtual machine steps.
PROGRESS_STEPS = 10_000


@dataclass(slots=True)
class Column:
    name: str
    type: str

    @property
    def geometry(self) -> bool:
        return self.type in ("geometry", "geography")


@dataclass(slots=True)
class Result:
    """Columns with their type names, rows of JSON-ready values (GeoJSON as ``orjson.Fragment``)."""

    columns: list[Column]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float = 0.0
    role: str | None = field(default=None, repr=False)


# -- the text ------------------------------------------------------------------------------------
class _Calls(Visitor):
    """Everything in a statement tree the console refuses, and the functions it calls."""

    def __init__(self) -> None:
        super().__init__()
        self.functions: set[str] = set()
        self.refused: list[str] = []

    def visit(self, ancestors: Any, node: Any) -> None:
        kind = type(node).__name__
        if isinstance(node, ast.FuncCall):
            name = node.funcname[-1].sval.lower()
            self.functions.add(name)
            if name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES):
                self.refused.append(f"the function {name}() is not allowed in the SQL console")
        elif isinstance(node, ast.IntoClause):
            self.refused.append("SELECT INTO creates a table: the SQL console only reads")
        elif isinstance(node, ast.LockingClause):
            self.refused.append("row locks (FOR UPDATE/SHARE) are not allowed: the SQL console only reads")
        elif kind.endswith("Stmt") and kind not in ("SelectStmt", "RawStmt"):
            self.refused.append(
                f"{_verb(kind)} is not allowed: the SQL console runs one query that only reads"
            )


#: Statement node names as a person writes them.
_VERBS = {
    "VariableSetStmt": "SET/RESET",
    "VariableShowStmt": "SHOW",
    "TransactionStmt": "transaction control (BEGIN, COMMIT, ROLLBACK ...)",
    "CopyStmt": "COPY",
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
    "DropStmt": "DROP",
    "ExplainStmt": "EXPLAIN",
    "DoStmt": "DO",
    "CallStmt": "CALL",
}


def _verb(kind: str) -> str:
    return _VERBS.get(kind, kind.removesuffix("Stmt").upper())


def check_statement(text: str) -> set[str]:
    """Refuse anything but one read-only query (InvalidQuery); the names of the functions it calls."""
    try:
        statements = parse_sql(text)
    except ParseError as exc:
        raise InvalidQuery(f"SQL syntax error: {exc.args[0]}") from None
    if len(statements) != 1:
        raise InvalidQuery(
            "send exactly one SQL statement" if statements else "the SQL has no statement, only comments"
        )
    statement = statements[0].stmt
    if not isinstance(statement, ast.SelectStmt):
        verb = _verb(type(statement).__name__)
        raise InvalidQuery(f"{verb} is not allowed: the SQL console runs one query that only reads")
    calls = _Calls()
    calls(statements[0])
    if calls.refused:
        raise InvalidQuery(calls.refused[0])
    return calls.functions


# -- values --------------------------------------------------------------------------------------
def json_value(value: Any) -> Any:
    """What orjson cannot write itself: numbers of arbitrary precision, bytes, intervals."""
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value() and abs(value) < 2**63:
            return int(value)
        as_float = float(value)
        return as_float if math.isfinite(as_float) and Decimal(repr(as_float)) == value else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    return str(value)


def _geojson(geoms: np.ndarray, srids: Iterable[int]) -> list[Any]:
    """GeoJSON geometries (``orjson.Fragment``) in lon/lat; ``srids`` per geometry (0: unknown, kept)."""
    srid_array = np.asarray(list(srids), dtype=np.int64)
    out = np.array(geoms, dtype=object)
    for srid in set(srid_array.tolist()):
        if srid in (0, 4326):
            continue
        chosen = srid_array == srid
        out[chosen] = reproject.geometries(out[chosen], int(srid), 4326)
    texts = shapely.to_geojson(out)
    return [None if t is None else orjson.Fragment(t) for t in texts]


# -- PostGIS -------------------------------------------------------------------------------------
_GRANTED = """
SELECT n.nspname, c.relname
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL aclexplode(c.relacl) a
WHERE a.grantee = to_regrole(%s) AND a.privilege_type = 'SELECT'
"""
_EXISTING = """
SELECT u.s, u.t FROM unnest(%s::text[], %s::text[]) AS u(s, t)
WHERE to_regclass(format('%%I.%%I', u.s, u.t)) IS NOT NULL
"""
_SCHEMAS_WITHOUT_USAGE = """
SELECT nspname FROM pg_namespace
WHERE nspname = ANY(%s) AND NOT has_schema_privilege(to_regrole(%s), oid, 'USAGE')
"""


class PostGISConsole:
    """Queries over a :class:`providers.postgis.PostGISDatabase`, as its console role."""

    def __init__(self, database: Any) -> None:
        self.db = database

    @staticmethod
    def role_name(database: str, tier: str) -> str:
        """The role of ``tier`` for ``database`` (roles are shared by every database of a cluster)."""
        digest = hashlib.blake2b(database.encode(), digest_size=5).hexdigest()
        return f"geoharbor_sql_{tier}_{digest}"

    def prepare(self, conn: psycopg.Connection, tier: str, tables: frozenset[tuple[str, str]]) -> str:
        """The role of ``tier``, made if missing, holding SELECT on exactly ``tables`` (those that exist)."""
        if tier not in TIERS:
            raise ValueError(f"unknown tier {tier!r}")
        database = conn.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
        role = self.role_name(database, tier)
        wanted = sorted(tables)
        desired = {
            (s, t)
            for s, t in conn.execute(_EXISTING, ([s for s, _ in wanted], [t for _, t in wanted])).fetchall()
        }
        if self._current(conn, role, desired):
            return role
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('geoharbor.sql_console'))")
                self._grant(conn, role, database, tier, desired)
        except (pgerrors.InsufficientPrivilege, pgerrors.ObjectInUse) as exc:
            raise Unavailable(f"the SQL console cannot prepare its database role {role}: {exc}") from exc
        return role

    @staticmethod
    def _current(conn: psycopg.Connection, role: str, desired: set[tuple[str, str]]) -> bool:
        """Whether ``role`` exists and holds exactly ``desired`` and the usage of their schemas."""
        if not conn.execute("SELECT to_regrole(%s) IS NOT NULL", (role,)).fetchone()[0]:  # type: ignore[index]
            return False
        granted = {(s, t) for s, t in conn.execute(_GRANTED, (role,)).fetchall()}
        schemas = sorted({s for s, _ in desired})
        unusable = conn.execute(_SCHEMAS_WITHOUT_USAGE, (schemas, role)).fetchall()
        return granted == desired and not unusable

    @staticmethod
    def _grant(
        conn: psycopg.Connection, role: str, database: str, tier: str, desired: set[tuple[str, str]]
    ) -> None:
        ident = sql.Identifier(role)
        if not conn.execute("SELECT to_regrole(%s) IS NOT NULL", (role,)).fetchone()[0]:  # type: ignore[index]
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN NOINHERIT").format(ident))
            comment = f"geoharbor SQL console of database {database} ({tier} published tables)"
            conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(comment)))
        superuser, member = conn.execute(
            "SELECT rolsuper, pg_has_role(current_user, %s, 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user",
            (role,),
        ).fetchone()  # type: ignore[misc]
        if not superuser and not member:
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))  # to SET ROLE to it
        granted = {(s, t) for s, t in conn.execute(_GRANTED, (role,)).fetchall()}
        for schema in sorted({s for s, _ in desired}):
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        for schema, table in sorted(desired - granted):
            conn.execute(
                sql.SQL("GRANT SELECT ON TABLE {} TO {}").format(sql.Identifier(schema, table), ident)
            )
        for schema, table in sorted(granted - desired):
            conn.execute(
                sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(sql.Identifier(schema, table), ident)
            )

    def run(
        self, text: str, tier: str, tables: frozenset[tuple[str, str]], timeout_ms: int, max_rows: int
    ) -> Result:
        """Run one read-only query as the console role of ``tier``; at most ``max_rows`` rows."""
        functions = check_statement(text)
        started = time.perf_counter()
        try:
            with self.db.connection() as conn:
                role = self.prepare(conn, tier, tables)
                self._refuse_definer_rights(conn, functions)
                with conn.transaction(force_rollback=True):
                    conn.execute("SET TRANSACTION READ ONLY")
                    conn.execute(
                        sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(int(timeout_ms)))
                    )
                    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
                    with conn.cursor(name=CURSOR) as cursor:
                        cursor.execute(text)
                        rows = cursor.fetchmany(max_rows + 1)
                        description = cursor.description or []
                types = self._type_names(conn, {c.type_code for c in description})
        except psycopg.Error as exc:
            raise _pg_error(exc, timeout_ms) from None
        columns = [Column(c.name, types.get(c.type_code, "unknown")) for c in description]
        truncated = len(rows) > max_rows
        values = [list(r) for r in rows[:max_rows]]
        for i, column in enumerate(columns):
            if column.geometry:
                _geometries_to_json(values, i)
        elapsed = (time.perf_counter() - started) * 1000
        return Result(columns, values, truncated, elapsed, role)

    @staticmethod
    def _refuse_definer_rights(conn: psycopg.Connection, functions: set[str]) -> None:
        """Refuse calls to functions that run with their owner's rights (no overload is told apart)."""
        if not functions:
            return
        found = conn.execute(
            "SELECT DISTINCT proname FROM pg_proc WHERE prosecdef AND proname = ANY(%s)", (sorted(functions),)
        ).fetchall()
        if found:
            raise InvalidQuery(
                f"the function {found[0][0]}() runs with its owner's rights: not allowed in the SQL console"
            )

    @staticmethod
    def _type_names(conn: psycopg.Connection, oids: set[int]) -> dict[int, str]:
        if not oids:
            return {}
        rows = conn.execute(
            "SELECT oid::int, format_type(oid, NULL) FROM pg_type WHERE oid = ANY(%s::oid[])", (sorted(oids),)
        ).fetchall()
        return {int(oid): str(name) for oid, name in rows}


def _geometries_to_json(rows: list[list[Any]], index: int) -> None:
    """Column ``index`` of ``rows`` (EWKB hex from PostGIS) as GeoJSON, in place."""
    present = [i for i, row in enumerate(rows) if row[index] is not None]
    if not present:
        return
    try:
        geoms = shapely.from_wkb(np.array([rows[i][index] for i in present], dtype=object))
    except shapely.errors.GEOSException as exc:
        raise InvalidQuery(f"a geometry of column {index + 1} cannot be read: {exc}") from None
    srids = shapely.get_srid(geoms)
    for i, value in zip(present, _geojson(geoms, srids), strict=True):
        rows[i][index] = value


#: PostgreSQL error classes (SQLSTATE's first two characters) that are the query's fault.
_CLIENT_CLASSES = {"22", "42", "0A", "21", "2F", "38", "39", "44", "P0"}


def _pg_error(exc: psycopg.Error, timeout_ms: int) -> ProviderError:
    """The provider error of a database error: the query's faults are 4xx, the database's 503."""
    message = (exc.diag.message_primary if exc.diag else None) or str(exc).splitlines()[0]
    state = exc.sqlstate or ""
    if isinstance(exc, pgerrors.QueryCanceled):
        return InvalidQuery(f"the query was cancelled: it ran longer than {timeout_ms} ms")
    if isinstance(exc, pgerrors.InsufficientPrivilege):
        return Forbidden(f"{message} (the SQL console reads the published tables only)")
    if isinstance(exc, pgerrors.ReadOnlySqlTransaction):
        return Forbidden(f"{message}: the SQL console only reads")
    if state[:2] in _CLIENT_CLASSES or state.startswith("25"):
        return InvalidQuery(message)
    if isinstance(exc, psycopg.OperationalError):
        return Unavailable(f"database unavailable: {message}")
    return InvalidQuery(message)


# -- GeoPackage ----------------------------------------------------------------------------------
class GeoPackageConsole:
    """Queries over a GeoPackage file, read-only, restricted to the published layers' tables."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> tuple[sqlite3.Connection, dict[int, int]]:
        """A read-only connection, and the EPSG code of each srs_id of the file."""
        try:
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open GeoPackage {self.path.name}: {exc}") from exc
        try:
            srs = {
                int(srs_id): int(code)
                for srs_id, org, code in conn.execute(
                    "SELECT srs_id, organization, organization_coordsys_id FROM gpkg_spatial_ref_sys"
                )
                if str(org).upper() == "EPSG" and code is not None and int(code) > 0
            }
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            conn.close()
            raise Unavailable(f"{self.path.name} is not a readable GeoPackage: {exc}") from exc
        return conn, srs

    def run(self, text: str, tables: frozenset[str], timeout_ms: int, max_rows: int) -> Result:
        """Run one query reading only ``tables`` (names, any case); at most ``max_rows`` rows."""
        allowed = {t.lower() for t in tables}
        conn, srs = self._connect()
        started = time.perf_counter()
        deadline = time.monotonic() + timeout_ms / 1000
        denied: list[str] = []

        def authorize(
            action: int, arg1: str | None, arg2: str | None, database: str | None, source: str | None
        ) -> int:
            if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_READ:
                # No database: a WITH query's own rows; through a published view: its tables.
                if database is None or (arg1 or "").lower() in allowed or (source or "").lower() in allowed:
                    return sqlite3.SQLITE_OK
                denied.append(f"the table {arg1} is not published")
                return sqlite3.SQLITE_DENY
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() not in SQLITE_DENIED_FUNCTIONS:
                return sqlite3.SQLITE_OK
            denied.append("the SQL console runs one query that only reads published tables")
            return sqlite3.SQLITE_DENY

        try:
            conn.set_authorizer(authorize)
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), PROGRESS_STEPS)
            cursor = conn.execute(text)
            rows = cursor.fetchmany(max_rows + 1)
            names = [d[0] for d in cursor.description or []]
        except sqlite3.ProgrammingError as exc:  # "You can only execute one statement at a time."
            raise InvalidQuery(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            if denied:
                raise Forbidden(denied[0]) from None
            if "interrupted" in str(exc):
                raise InvalidQuery(f"the query was cancelled: it ran longer than {timeout_ms} ms") from None
            raise InvalidQuery(str(exc)) from None
        finally:
            conn.close()
        truncated = len(rows) > max_rows
        values = [list(r) for r in rows[:max_rows]]
        columns = [Column(name, _sqlite_type(values, i, srs)) for i, name in enumerate(names)]
        elapsed = (time.perf_counter() - started) * 1000
        return Result(columns, values, truncated, elapsed)


def _sqlite_type(rows: list[list[Any]], index: int, srs: dict[int, int]) -> str:
    """The type of column ``index`` from its values; GeoPackage geometries become GeoJSON, in place."""
    present = [row[index] for row in rows if row[index] is not None]
    if not present:
        return "null"
    if all(isinstance(v, bytes) and v[:2] == b"GP" and len(v) >= 8 for v in present):
        _gpkg_geometries_to_json(rows, index, srs)
        return "geometry"
    kinds = {type(v) for v in present}
    if kinds <= {int}:
        return "integer"
    if kinds <= {int, float}:
        return "real"
    if kinds <= {str}:
        return "text"
    if kinds <= {bytes}:
        return "blob"
    return "mixed"


def _gpkg_geometries_to_json(rows: list[list[Any]], index: int, srs: dict[int, int]) -> None:
    present = [i for i, row in enumerate(rows) if row[index] is not None]
    blobs = [rows[i][index] for i in present]
    geoms = decode_geometries(blobs)
    # srs_id is the header's int32 after magic, version and flags; flags bit 0 is its byte order.
    srids = [srs.get(int.from_bytes(b[4:8], "little" if b[3] & 1 else "big", signed=True), 0) for b in blobs]
    for i, value in zip(present, _geojson(geoms, srids), strict=True):
        rows[i][index] = value
