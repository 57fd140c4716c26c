"""Writing a chain's result into PostGIS: a new table in one transaction, or rows of it refreshed.

The table is created, filled, given its primary key, spatial index and statistics, and
its revision bumped in ONE transaction: readers see it whole or not at all, and a
failure (or a killed process) leaves nothing behind. Replacing a table builds the new
one under a name of its own and swaps it in (drop, rename) at the end of that
transaction, so the old one is locked only for the swap and the indexes. It is filled either by the chain's
own statement (``INSERT INTO ... WITH ... SELECT``: the whole chain runs inside PostGIS)
or by a binary COPY of the Python engine's frames (:mod:`providers.pgcopy`).

Columns are ``id bigint`` (the primary key), the attributes as their kinds' types, and
``geom geometry(<type>, <srid>)``. The table's name was checked by
:func:`providers.tables.check_name`; everything is composed with :mod:`psycopg.sql`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import pyarrow as pa
import shapely
from psycopg import sql

from providers import pgcopy
from providers.capabilities.model import Layout
from providers.capabilities.sql import pg_type
from providers.capabilities.vector import Frame, fit
from providers.errors import Conflict, InvalidData, NotFound, ProviderError, Unavailable
from providers.load_postgis import Target, pg_error
from providers.postgis import PostGISDatabase
from providers.tables import GEOMETRY_COLUMN, ID_COLUMN

Progress = Callable[[int, int], None]


def _columns(layout: Layout) -> list[sql.Identifier]:
    return [
        sql.Identifier(ID_COLUMN),
        *(sql.Identifier(a.name) for a in layout.attributes),
        sql.Identifier(GEOMETRY_COLUMN),
    ]


@contextmanager
def _transaction(db: PostGISDatabase) -> Iterator[psycopg.Connection]:
    """A connection of its own (a chain may outlast the pool's statement timeout), in a transaction."""
    try:
        conn = db.connect_direct(autocommit=True)  # session settings: past any transaction pooler
    except psycopg.OperationalError as exc:
        raise Unavailable(f"database unavailable: {exc}") from exc
    try:
        conn.execute("SET statement_timeout = 0")
        conn.execute("SET jit = off")
        with conn.transaction():
            yield conn
    except ProviderError:
        raise
    except psycopg.Error as exc:
        raise error(exc) from exc
    finally:
        conn.close()


def _bump(conn: psycopg.Connection, target: Target) -> None:
    conn.execute(
        "INSERT INTO geoharbor.revisions AS r (source, revision) VALUES (%s, 1) "
        "ON CONFLICT (source) DO UPDATE SET revision = r.revision + 1, changed = now()",
        (target.key,),
    )


def create(
    db: PostGISDatabase,
    table: str,
    layout: Layout,
    fill: Callable[[psycopg.Connection, Target], int],
    replace: bool = False,
) -> tuple[str, int]:
    """Create ``table`` for ``layout``, ``fill`` it, index it, bump its revision: one transaction.

    With ``replace``, an existing table of that name is dropped in the same transaction,
    once the new one is filled (under a name of its own until then): readers see the
    old rows until the commit, the new ones after. Returns the table's ``schema.table``
    and the rows written.
    """
    target = Target.parse(table)
    revisions = db.ensure_revisions()
    with _transaction(db) as conn:
        taken = conn.execute("SELECT to_regclass(%s)", (target.ident.as_string(conn),)).fetchone()
        exists = bool(taken and taken[0] is not None)
        if exists and not replace:
            raise Conflict(f"table {target.key!r} already exists")
        known = conn.execute("SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (layout.srid,)).fetchone()
        if known is None:
            raise InvalidData(f"EPSG:{layout.srid} is not a CRS this database knows")
        parts = [sql.SQL("{} bigint NOT NULL").format(sql.Identifier(ID_COLUMN))]
        parts += [sql.SQL("{} {}").format(sql.Identifier(a.name), pg_type(a.kind)) for a in layout.attributes]
        # The type is one of model's names and the SRID an int: both safe as literal SQL.
        parts.append(
            sql.SQL("{} geometry({}, {})").format(
                sql.Identifier(GEOMETRY_COLUMN), sql.SQL(layout.geometry_type), sql.Literal(int(layout.srid))
            )
        )
        building = Target(target.schema, f"{target.name[:40]}_{secrets.token_hex(6)}") if exists else target
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(building.ident, sql.SQL(", ").join(parts)))
        written = fill(conn, building)
        if exists:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("DROP TABLE {}").format(target.ident))
            except psycopg.errors.DependentObjectsStillExist as exc:
                raise InvalidData(
                    f"table {target.key!r} cannot be replaced: other objects depend on it"
                ) from exc
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(building.ident, sql.Identifier(target.name))
            )
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target.ident, sql.Identifier(ID_COLUMN))
        )
        conn.execute(
            sql.SQL("CREATE INDEX ON {} USING gist ({})").format(
                target.ident, sql.Identifier(GEOMETRY_COLUMN)
            )
        )
        conn.execute(sql.SQL("ANALYZE {}").format(target.ident))
        if revisions:
            _bump(conn, target)
    return target.key, written


def refresh(
    db: PostGISDatabase,
    table: str,
    ids: Sequence[int],
    fill: Callable[[psycopg.Connection, Target], int],
) -> int:
    """Delete the rows of ``ids`` from ``table``, ``fill`` it again, bump its revision: one transaction."""
    target = Target.parse(table)
    revisions = db.ensure_revisions()
    with _transaction(db) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (target.ident.as_string(conn),)).fetchone()
        if not found or found[0] is None:
            raise NotFound(f"table {target.key!r} does not exist")
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = ANY(%s::bigint[])").format(
                target.ident, sql.Identifier(ID_COLUMN)
            ),
            ([int(i) for i in ids],),
        )
        written = fill(conn, target)
        if revisions:
            _bump(conn, target)
    return written


def insert_statement(
    layout: Layout, statement: sql.Composable, params: Mapping[str, Any]
) -> Callable[[psycopg.Connection, Target], int]:
    """A filler running the chain's own statement: ``INSERT INTO <table> (...) <statement>``."""

    def fill(conn: psycopg.Connection, target: Target) -> int:
        insert = sql.SQL("INSERT INTO {} ({}) {}").format(
            target.ident, sql.SQL(", ").join(_columns(layout)), statement
        )
        return conn.execute(insert, dict(params)).rowcount

    return fill


def copy_frames(
    layout: Layout, frames: Iterable[Frame], progress: Progress | None = None
) -> Callable[[psycopg.Connection, Target], int]:
    """A filler streaming frames through one binary COPY."""

    def fill(conn: psycopg.Connection, target: Target) -> int:
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            target.ident, sql.SQL(", ").join(_columns(layout))
        )
        written = 0
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.write(pgcopy.HEADER)
            for frame in frames:
                if not len(frame):
                    continue
                columns = [(pa.array(frame.ids, pa.int64()), "bigint")]
                columns += [(frame.column(a.name).combine_chunks(), a.kind) for a in layout.attributes]
                geoms = fit(frame.geoms, layout.geometry_type)
                wkb = pa.array(list(shapely.to_wkb(geoms, flavor="iso", byte_order=1)), pa.binary())
                copy.write(pgcopy.encode(columns, wkb, layout.srid, None))
                written += len(frame)
                if progress is not None:
                    progress(written, written)
            copy.write(pgcopy.TRAILER)
        return written

    return fill


def error(exc: psycopg.Error) -> ProviderError:
    """A failed chain statement or write as the error its caller should see."""
    return pg_error(exc, "the data cannot be processed")
