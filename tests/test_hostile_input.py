"""Hostile values at every parameter: clear 4xx answers, never a 500, data untouched.

Every value here would change or break the query if it reached SQL as text.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
import requests

from server.params import ITEM_PARAMS

HOSTILE = [
    "'",
    "''",
    '"',
    "\\",
    ";",
    "; DROP TABLE countries; --",
    "' OR '1'='1",
    "1; SELECT pg_sleep(5)",
    "/* comment */",
    "-- comment",
    "name\x00",
    "\u202e\u0000\ufeff",
    "😀",
    "é'ü",
    "99999999999999999999999999",
    "-1e309",
    "NaN",
    "%",
    "%27",
    "name = 'x') OR (1=1",
    "geom)) OR TRUE --",
    "a" * 3000,
]
# Every parameter the items route reads, plus two property filters.
PARAMS = sorted(ITEM_PARAMS - {"lang"}) + ["name", "pop_est"]


def pg_checksum(pg) -> str:
    rows = pg.execute(
        "SELECT (SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM countries t), "
        "(SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM country_points t), "
        "(SELECT count(*) FROM pg_tables WHERE schemaname = 'public')"
    ).fetchone()
    return repr(rows)


def gpkg_checksum(path) -> str:
    with sqlite3.connect(path) as conn:
        digest = hashlib.sha256()
        for table in ("countries", "country_points"):
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY id'):  # noqa: S608 - test constant
                digest.update(repr(row).encode())
        digest.update(repr(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()).encode())
    return digest.hexdigest()


@pytest.fixture()
def untouched(pg, gpkg_path):
    before = (pg_checksum(pg), gpkg_checksum(gpkg_path))
    yield
    assert (pg_checksum(pg), gpkg_checksum(gpkg_path)) == before


@pytest.mark.parametrize("param", PARAMS)
def test_hostile_query_parameters(base, backend, untouched, param):
    for value in HOSTILE:
        response = requests.get(
            f"{base}/collections/{backend}-countries/items", params={param: value}, timeout=30
        )
        assert response.status_code < 500, (param, value, response.text[:300])
        if response.status_code >= 400:
            assert response.json()["description"], (param, value)


def test_hostile_identifiers(base, backend, untouched):
    for value in HOSTILE:
        quoted = requests.utils.quote(value, safe="")
        for path in (
            f"/collections/{backend}-countries/items/{quoted}",
            f"/collections/{quoted}/items",
            f"/collections/{quoted}",
        ):
            response = requests.get(base + path, timeout=30)
            assert response.status_code in (400, 404), (path, response.status_code, response.text[:200])


def test_hostile_cql2_json(base, backend, untouched):
    for value in HOSTILE:
        trees = [
            {"op": "=", "args": [{"property": value}, 1]},
            {"op": value, "args": [{"property": "name"}, 1]},
            {"op": "=", "args": [{"property": "name"}, value]},
            {"op": "like", "args": [{"property": "name"}, value]},
            {"op": "in", "args": [{"property": "name"}, [value, value]]},
            {"op": "s_intersects", "args": [{"property": "geom"}, {"type": value, "coordinates": [value]}]},
        ]
        for tree in trees:
            response = requests.get(
                f"{base}/collections/{backend}-countries/items",
                params={"filter": requests.compat.json.dumps(tree), "filter-lang": "cql2-json"},
                timeout=30,
            )
            assert response.status_code in (200, 400), (tree, response.text[:200])


def test_hostile_write_bodies(base, backend, pg, gpkg_path):
    before_countries = pg_checksum(pg).split(",")[0]
    target = f"{base}/collections/{backend}.points/items"
    for value in HOSTILE[:12]:
        for body in (
            {"type": "Feature", "geometry": None, "properties": {value: 1}},
            {"type": "Feature", "geometry": {"type": value, "coordinates": [0, 0]}, "properties": {}},
            {"type": "Feature", "id": value, "geometry": None, "properties": {"name": value}},
        ):
            response = requests.post(
                target, json=body, headers={"Content-Type": "application/geo+json"}, timeout=30
            )
            assert response.status_code in (201, 400, 404, 409, 422), (body, response.text[:200])
            if response.status_code == 201:
                stored = requests.get(response.headers["Location"], timeout=30).json()
                assert (
                    stored["properties"]["name"] == value.replace("\x00", "")
                    or stored["properties"]["name"] == value
                )
                assert requests.delete(response.headers["Location"], timeout=30).status_code == 204
    assert pg_checksum(pg).split(",")[0] == before_countries
