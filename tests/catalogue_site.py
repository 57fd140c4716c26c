"""A catalogue test site: Natural Earth countries split by continent in a fresh database,
a protected geoharbor on either store (PostgreSQL or embedded SQLite) publishing them,
and users with API keys made through the REST API, as the catalogue tests need them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import requests
from conftest import free_port, fresh_database, load_countries

TIMEOUT = 60


def continent_database(name: str, tables: dict[str, str]) -> str:
    """A fresh database ``name`` with the countries table and one table per continent
    (table name -> continent), each keyed by id; its URL."""
    url = fresh_database(name)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        for table, continent in tables.items():
            conn.execute(
                f"CREATE TABLE {table} AS SELECT id, name, geom FROM countries WHERE continent = %s",  # noqa: S608
                (continent,),
            )
            conn.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (id)")
    return url


def site_config(store: str, workdir: Path, db_url: str, master: str, collections: dict[str, Any]) -> dict:
    """A two-worker server in protected mode on ``store`` (``postgres`` or ``sqlite``)."""
    return {
        "server": {"bind": f"127.0.0.1:{free_port()}", "workers": 2, "log_level": "WARNING"},
        "auth": {"api_key": master},
        "sources": {"pg": {"type": "postgis", "url": db_url, "pool_max": 4}},
        "store": {"source": "pg"} if store == "postgres" else {"path": str(workdir / "state.sqlite")},
        "collections": collections,
    }


def call(base: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, base + path, timeout=TIMEOUT, allow_redirects=False, **kwargs)


def ok(response: requests.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def add_user(base: str, master: str, name: str, admin: bool) -> tuple[dict[str, Any], str]:
    """A user (an admin or not) and an API key of theirs with write scope (and admin, for an
    admin); the user's record and the key."""
    headers = {"X-API-Key": master}
    user = ok(
        call(base, "POST", "/rest/1/users", json={"username": name, "admin": admin}, headers=headers), 201
    )
    scopes = ["read", "write", "admin"] if admin else ["read", "write"]
    body = {"username": name, "scopes": scopes}
    key = ok(call(base, "POST", "/rest/1/keys", json=body, headers=headers), 201)["key"]
    return user, key
