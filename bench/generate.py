"""Build the benchmark database: deterministic synthetic parcels and addresses, made in SQL.

    .venv/bin/python bench/generate.py                       # 1,000,000 parcels, 2,000,000 addresses
    .venv/bin/python bench/generate.py --polygons 20000 --points 40000 --db geoharbor_bench_quick

Creates the database (``CREATE EXTENSION postgis``) and two tables:

``parcels``
    hexagons of 50-200 m radius (random rotation) around random points spread
    uniformly over a country-sized extent (about 950 km x 950 km, France-like, EPSG:4326);
    ``id serial primary key, name, category (10 values), value, area, updated, geom``.
``addresses``
    points over the same extent; ``id, street, number, postcode, geom``.

Everything comes from ``setseed()`` + ``random()`` over ``generate_series`` in one
serial (non-parallel) session, so the same sizes always give the same rows. Coordinates
are rounded to 7 decimals, the precision geoharbor writes, so both servers emit
GeoJSON of similar size. Idempotent: a table that already has the asked number of rows
is left alone; otherwise it is dropped and rebuilt. Ends with ``VACUUM ANALYZE``.
"""

from __future__ import annotations

import argparse
import sys
import time

import psycopg
from psycopg import sql

#: The data extent (lon/lat): roughly metropolitan France.
EXTENT = (-4.5, 42.5, 8.0, 51.0)
CATEGORIES = [
    "residential",
    "commercial",
    "industrial",
    "agricultural",
    "forest",
    "water",
    "public",
    "transport",
    "recreation",
    "vacant",
]
STREETS = [
    "Rue de la Paix", "Avenue Victor Hugo", "Rue du Moulin", "Chemin des Vignes", "Rue de l'Eglise",
    "Place de la Mairie", "Rue Pasteur", "Boulevard Gambetta", "Rue des Ecoles", "Allee des Tilleuls",
    "Rue Jean Jaures", "Impasse des Lilas", "Route de Paris", "Rue de la Gare", "Quai des Orfevres",
    "Rue Nationale", "Rue du Chateau", "Avenue de la Republique", "Rue des Roses", "Chemin du Lavoir",
]  # fmt: skip

SEED_PARCELS = 0.4242
SEED_ADDRESSES = 0.1717


def log(msg: str) -> None:
    print(f"[generate] {msg}", file=sys.stderr, flush=True)


def ensure_database(admin_dsn: str, dbname: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            log(f"creating database {dbname}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def row_count(conn: psycopg.Connection, table: str) -> int | None:
    if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone()[0] is None:
        return None
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]


def _serial_session(conn: psycopg.Connection, seed: float) -> None:
    # random() is only reproducible when one process draws every value in row order.
    conn.execute("SET max_parallel_workers_per_gather = 0")
    conn.execute("SET max_parallel_maintenance_workers = 2")
    conn.execute("SET maintenance_work_mem = '512MB'")
    conn.execute("SET synchronous_commit = off")
    conn.execute("SELECT setseed(%s)", (seed,))


def build_parcels(conn: psycopg.Connection, n: int) -> None:
    minx, miny, maxx, maxy = EXTENT
    conn.execute("DROP TABLE IF EXISTS parcels")
    conn.execute(
        """
        CREATE TABLE parcels (
            id serial PRIMARY KEY,
            name text,
            category text,
            value integer,
            area double precision,
            updated timestamptz,
            geom geometry(Polygon, 4326)
        )
        """
    )
    _serial_session(conn, SEED_PARCELS)
    # One row of random draws per parcel (a MATERIALIZED CTE keeps the draw order fixed),
    # then a hexagon of radius r metres, rotated by a, around (cx, cy).
    conn.execute(
        """
        INSERT INTO parcels (name, category, value, area, updated, geom)
        SELECT
            'Parcel ' || to_char(g, 'FM0000000') || '-' || upper(substr(md5(g::text), 1, 4)),
            (%(categories)s::text[])[1 + floor(u_cat * 10)::int],
            floor(u_val * 1000000)::int,
            round((1.5 * sqrt(3) * r * r)::numeric, 2)::float8,
            timestamptz '2020-01-01 00:00:00+00' + u_time * interval '1826 days',
            ST_GeomFromText(
                'POLYGON((' || (
                    SELECT string_agg(
                        round((cx + r * cos(a + radians(60 * (k %% 6)))
                               / (111320 * cos(radians(cy))))::numeric, 7)::text
                        || ' ' ||
                        round((cy + r * sin(a + radians(60 * (k %% 6))) / 110540)::numeric, 7)::text,
                        ', ' ORDER BY k)
                    FROM generate_series(0, 6) AS k
                ) || '))', 4326)
        FROM (
            SELECT g,
                   %(minx)s + u_x * (%(maxx)s - %(minx)s) AS cx,
                   %(miny)s + u_y * (%(maxy)s - %(miny)s) AS cy,
                   50 + u_r * 150 AS r,
                   u_a * pi() / 3 AS a,
                   u_cat, u_val, u_time
            FROM (
                SELECT g, random() AS u_x, random() AS u_y, random() AS u_r, random() AS u_a,
                       random() AS u_cat, random() AS u_val, random() AS u_time
                FROM generate_series(1, %(n)s) AS g
            ) AS draws
        ) AS p

        """,
        {"categories": CATEGORIES, "n": n, "minx": minx, "miny": miny, "maxx": maxx, "maxy": maxy},
    )
    conn.execute("CREATE INDEX parcels_geom_idx ON parcels USING gist (geom)")


def build_addresses(conn: psycopg.Connection, n: int) -> None:
    minx, miny, maxx, maxy = EXTENT
    conn.execute("DROP TABLE IF EXISTS addresses")
    conn.execute(
        """
        CREATE TABLE addresses (
            id serial PRIMARY KEY,
            street text,
            number integer,
            postcode text,
            geom geometry(Point, 4326)
        )
        """
    )
    _serial_session(conn, SEED_ADDRESSES)
    conn.execute(
        """
        INSERT INTO addresses (street, number, postcode, geom)
        SELECT (%(streets)s::text[])[1 + floor(u_s * %(nstreets)s)::int],
               1 + floor(u_n * 250)::int,
               to_char(1000 + floor(u_p * 94000)::int, 'FM00000'),
               ST_SetSRID(ST_MakePoint(
                   round((%(minx)s + u_x * (%(maxx)s - %(minx)s))::numeric, 7)::float8,
                   round((%(miny)s + u_y * (%(maxy)s - %(miny)s))::numeric, 7)::float8), 4326)
        FROM (
            SELECT g, random() AS u_x, random() AS u_y, random() AS u_s, random() AS u_n, random() AS u_p
            FROM generate_series(1, %(n)s) AS g
        ) AS draws

        """,
        {
            "streets": STREETS,
            "nstreets": len(STREETS),
            "n": n,
            "minx": minx,
            "miny": miny,
            "maxx": maxx,
            "maxy": maxy,
        },
    )
    conn.execute("CREATE INDEX addresses_geom_idx ON addresses USING gist (geom)")


def generate(dsn_base: str, dbname: str, polygons: int, points: int, admin_db: str = "postgres") -> dict:
    """Make sure ``dbname`` holds the asked tables; returns what was done per table."""
    ensure_database(f"{dsn_base}{admin_db}", dbname)
    done: dict[str, str] = {}
    with psycopg.connect(f"{dsn_base}{dbname}", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
        for table, n, build in (("parcels", polygons, build_parcels), ("addresses", points, build_addresses)):
            have = row_count(conn, table)
            if have == n:
                log(f"{table}: already {n:,} rows, kept")
                done[table] = "kept"
                continue
            log(f"{table}: have {have if have is not None else 'no table'}, building {n:,} rows ...")
            t0 = time.perf_counter()
            build(conn, n)
            conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))
            log(f"{table}: {n:,} rows in {time.perf_counter() - t0:.1f} s")
            done[table] = "built"
        size = conn.execute(
            "SELECT pg_size_pretty(pg_total_relation_size('parcels')), "
            "pg_size_pretty(pg_total_relation_size('addresses'))"
        ).fetchone()
        log(f"sizes (with indexes): parcels {size[0]}, addresses {size[1]}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default="geoharbor_bench", help="database name (default geoharbor_bench)")
    p.add_argument(
        "--dsn-base",
        default="postgresql:///",
        help="libpq URL up to the database name (default postgresql:/// - the local Unix socket)",
    )
    p.add_argument("--polygons", type=int, default=1_000_000, help="rows of parcels (default 1,000,000)")
    p.add_argument("--points", type=int, default=2_000_000, help="rows of addresses (default 2,000,000)")
    args = p.parse_args(argv)
    if args.polygons < 1 or args.points < 1:
        p.error("--polygons and --points must be positive")
    generate(args.dsn_base, args.db, args.polygons, args.points)
    return 0


if __name__ == "__main__":
    sys.exit(main())
