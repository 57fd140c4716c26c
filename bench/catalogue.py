"""Catalogue search latency over 100,000 resources: the index against a naive ILIKE scan.

    .venv/bin/python bench/catalogue.py                 # PostgreSQL and SQLite, about 3 minutes
    .venv/bin/python bench/catalogue.py --no-sqlite     # PostgreSQL only

The resources are built from real text: every Debian package of the machine's apt lists
(its one-line description as the title, name, section and tags as keywords and in the
abstract) combined with a Natural Earth country (its name, region and subregion in the
abstract, a box inside its extent as the bbox); owners are the packages' maintainers
and categories GeoNode's topic categories. They are loaded through
``providers.catalogue.Catalogue.upsert_many`` into a fresh database (``--db``, dropped at
the end) and, unless ``--no-sqlite``, into an embedded store file.

Each query is what the GeoNode API sends for ``search=<words>&extent=<box>&
filter{category.identifier}=<c>``: ranked full text (``tsvector`` + GIN, or FTS5 + bm25)
+ bbox + one filter, first page of 10 and the total. The baseline answers the same
question the naive way, one ``ILIKE '%word%'`` per word over title, abstract and
keywords, with the same bbox and filter, page and total. Each query is drawn from one
resource (words of its title, a box around its own, its category), so it finds something.
Prints a Markdown table and writes ``bench/results/catalogue-latest.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from glob import glob
from pathlib import Path
from typing import Any

import psycopg
import pyogrio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from providers.catalogue import Catalogue, CatalogueQuery, Filter  # noqa: E402
from providers.postgis import PostGISDatabase  # noqa: E402
from providers.store import PostgresStore, SQLiteStore  # noqa: E402
from server.demo import natural_earth_countries  # noqa: E402
from server.geonode import CATEGORIES  # noqa: E402

RESULTS = HERE / "results"
ADMIN_URL = os.environ.get("GEOHARBOR_BENCH_ADMIN_URL", "postgresql:///postgres")
STOP = frozenset("a an and the of for to in on with from by or is are be as at this that it its into".split())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the data ----------------------------------------------------------------------------------------
def packages() -> list[dict[str, str]]:
    """Every package stanza of the apt lists (lz4 or plain): name, description, section, tags, maintainer."""
    found: list[dict[str, str]] = []
    for path in sorted(glob("/var/lib/apt/lists/*_Packages*")):
        reader = ["lz4cat", path] if path.endswith(".lz4") else ["cat", path]
        text = subprocess.run(reader, capture_output=True, check=True).stdout.decode("utf-8", "replace")
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            last = None
            for line in stanza.splitlines():
                if line.startswith((" ", "\t")) and last:
                    fields[last] += " " + line.strip()
                elif ":" in line:
                    last, _, value = line.partition(":")
                    fields[last] = value.strip()
            if "Package" in fields and "Description" in fields:
                found.append(fields)
    if not found:
        raise SystemExit("no apt package lists under /var/lib/apt/lists (run apt-get update)")
    return found


def countries() -> list[dict[str, Any]]:
    frame = pyogrio.read_dataframe(natural_earth_countries())
    out = []
    for row in frame.itertuples():
        minx, miny, maxx, maxy = row.geometry.bounds
        out.append(
            {
                "name": row.name,
                "continent": row.continent,
                "box": (minx, miny, maxx, maxy),
                "text": f"{row.name}, {row.continent}",
            }
        )
    return out


def resources(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    """``count`` catalogue resources, each a package combined with a country."""
    pkgs = packages()
    places = countries()
    categories = list(CATEGORIES)
    owners: dict[str, int] = {}
    log(f"{len(pkgs)} packages x {len(places)} countries -> {count} resources")
    for i in range(count):
        pkg = pkgs[i % len(pkgs)]
        place = places[rng.randrange(len(places))]
        maintainer = re.sub(r"\s*<.*", "", pkg.get("Maintainer", "Debian")).strip() or "Debian"
        owner = owners.setdefault(maintainer, len(owners) + 1)
        minx, miny, maxx, maxy = place["box"]
        x0, x1 = sorted(rng.uniform(minx, maxx) for _ in range(2))
        y0, y1 = sorted(rng.uniform(miny, maxy) for _ in range(2))
        tags = [t.strip() for t in pkg.get("Tag", "").split(",") if t.strip()][:8]
        section = pkg.get("Section", "misc")
        yield {
            "pk": i + 1,
            "uuid": f"00000000-0000-4000-8000-{i + 1:012d}",
            "resource_type": "dataset",
            "title": f"{pkg['Description']} ({place['name']})",
            "abstract": (
                f"{pkg['Package']} {pkg.get('Version', '')}, section {section}. {pkg['Description']}. "
                f"Maintained by {maintainer}; {pkg.get('Homepage', '')}. Covers {place['text']}."
            ),
            "keywords": [pkg["Package"], section, *tags],
            "owner": {"pk": owner, "username": maintainer[:60]},
            "category": {"identifier": categories[i % len(categories)]},
            "bbox": [x0, y0, x1, y1],
            "srid": "EPSG:4326",
            "alternate": pkg["Package"],
            "readers": ["anonymous"],
            "created": datetime(2020, 1, 1, tzinfo=UTC),
        }


def workload(rows: list[dict[str, Any]], count: int, rng: random.Random) -> list[dict[str, Any]]:
    """``count`` queries, each after one resource: 1-2 words of its title, a box of 10 degrees
    around its own, its category (so each query finds at least that resource)."""
    queries = []
    for _ in range(count):
        row = rows[rng.randrange(len(rows))]
        words = [w for w in re.findall(r"[a-z]{4,}", row["title"].lower()) if w not in STOP] or ["debian"]
        picked = rng.sample(words, k=min(len(words), rng.choice((1, 2))))
        minx, miny, maxx, maxy = row["bbox"]
        box = (max(-180, minx - 5), max(-90, miny - 5), min(180, maxx + 5), min(90, maxy + 5))
        queries.append({"words": picked, "box": box, "category": row["category"]["identifier"]})
    return queries


# -- the two ways of asking --------------------------------------------------------------------------
def indexed(catalogue: Catalogue) -> Callable[[dict[str, Any]], int]:
    def run(q: dict[str, Any]) -> int:
        query = CatalogueQuery(
            search=" ".join(q["words"]),
            bbox=q["box"],
            filters=[Filter("category.identifier", "eq", q["category"])],
            limit=10,
        )
        return catalogue.search(query)[1]

    return run


PG_ILIKE = (
    "SELECT pk, title, count(*) OVER () FROM geoharbor.catalogue WHERE {words} "
    "AND minx <= %s AND maxx >= %s AND miny <= %s AND maxy >= %s AND category = %s "
    "ORDER BY pk LIMIT 10"
)
PG_WORD = "(title ILIKE %s OR abstract ILIKE %s OR array_to_string(keywords, ' ') ILIKE %s)"
SQLITE_ILIKE = (
    "SELECT pk, title, count(*) OVER () FROM catalogue WHERE {words} "
    "AND minx <= ? AND maxx >= ? AND miny <= ? AND maxy >= ? AND category = ? "
    "ORDER BY pk LIMIT 10"
)
SQLITE_WORD = "(title LIKE ? OR abstract LIKE ? OR keywords LIKE ?)"


def scan_params(q: dict[str, Any]) -> list[Any]:
    minx, miny, maxx, maxy = q["box"]
    params: list[Any] = []
    for word in q["words"]:
        params += [f"%{word}%"] * 3
    return [*params, maxx, minx, maxy, miny, q["category"]]


def pg_scan(url: str) -> Callable[[dict[str, Any]], int]:
    conn = psycopg.connect(url, autocommit=True)

    def run(q: dict[str, Any]) -> int:
        words = " AND ".join([PG_WORD] * len(q["words"]))
        rows = conn.execute(PG_ILIKE.replace("{words}", words), scan_params(q)).fetchall()  # type: ignore[arg-type]
        return int(rows[0][2]) if rows else 0

    return run


def sqlite_scan(path: str) -> Callable[[dict[str, Any]], int]:
    conn = sqlite3.connect(path)

    def run(q: dict[str, Any]) -> int:
        words = " AND ".join([SQLITE_WORD] * len(q["words"]))
        rows = conn.execute(SQLITE_ILIKE.replace("{words}", words), scan_params(q)).fetchall()
        return int(rows[0][2]) if rows else 0

    return run


def measure(run: Callable[[dict[str, Any]], int], queries: list[dict[str, Any]]) -> dict[str, float]:
    for q in queries[:10]:  # warm the caches
        run(q)
    times, hits = [], 0
    for q in queries:
        start = time.perf_counter()
        found = run(q)
        times.append((time.perf_counter() - start) * 1000)
        hits += found > 0
    times.sort()
    return {
        "p50": statistics.median(times),
        "p95": times[min(len(times) - 1, int(len(times) * 0.95))],
        "mean": statistics.fmean(times),
        "matched": hits / len(queries),
    }


# -- main ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--db", default="gh_cat_c_bench")
    parser.add_argument("--no-sqlite", dest="sqlite", action="store_false")
    parser.add_argument("--seed", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = list(resources(args.count, rng))
    queries = workload(rows, args.queries, rng)
    results: list[tuple[str, str, dict[str, float], float]] = []

    base, _, _ = ADMIN_URL.rpartition("/")
    url = f"{base}/{args.db}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')  # noqa: S608 - a CLI name
        admin.execute(f'CREATE DATABASE "{args.db}"')
    database = PostGISDatabase(url, name="bench", pool_min=1, pool_max=4)
    try:
        catalogue = Catalogue(PostgresStore(database))
        start = time.perf_counter()
        catalogue.upsert_many(rows)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE geoharbor.catalogue")
        load = time.perf_counter() - start
        log(f"PostgreSQL: {len(rows)} resources loaded in {load:.1f} s")
        results.append(
            ("PostgreSQL", "tsvector + GIN, ts_rank_cd", measure(indexed(catalogue), queries), load)
        )
        results.append(("PostgreSQL", "naive ILIKE scan", measure(pg_scan(url), queries), load))
        log("PostgreSQL measured")
    finally:
        database.close()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{args.db}" WITH (FORCE)')  # noqa: S608 - a CLI name

    if args.sqlite:
        with tempfile.TemporaryDirectory(prefix="catalogue-bench-") as directory:
            path = str(Path(directory) / "state.sqlite")
            catalogue = Catalogue(SQLiteStore(path))
            start = time.perf_counter()
            catalogue.upsert_many(rows)
            sqlite3.connect(path).execute("ANALYZE")
            load = time.perf_counter() - start
            log(f"SQLite: {len(rows)} resources loaded in {load:.1f} s")
            results.append(("SQLite", "FTS5, bm25", measure(indexed(catalogue), queries), load))
            results.append(("SQLite", "naive LIKE scan", measure(sqlite_scan(path), queries), load))

    report = render(results, args, len(queries))
    print(report)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "catalogue-latest.md").write_text(report)


def render(results: list[tuple[str, str, dict[str, float], float]], args: argparse.Namespace, n: int) -> str:
    lines = [
        f"# Catalogue search, {args.count:,} resources, {n} queries",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Each query: 1-2 words of a real title + a box of "
        "10 degrees around that resource's + its category (first page of 10 and the total), "
        "one at a time.",
        "",
        "| store | method | p50 ms | p95 ms | mean ms | queries matching | load s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for store, method, figures, load in results:
        lines.append(
            f"| {store} | {method} | {figures['p50']:.2f} | {figures['p95']:.2f} | {figures['mean']:.2f} "
            f"| {figures['matched']:.0%} | {load:.1f} |"
        )
    by_store: dict[str, list[dict[str, float]]] = {}
    for store, _, figures, _ in results:
        by_store.setdefault(store, []).append(figures)
    lines.append("")
    for store, (index, scan) in ((s, f) for s, f in by_store.items() if len(f) == 2):
        lines.append(
            f"- {store}: the index is {scan['p50'] / index['p50']:.1f}x faster at p50, "
            f"{scan['p95'] / index['p95']:.1f}x at p95."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
