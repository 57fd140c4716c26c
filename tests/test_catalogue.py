"""The catalogue through GeoNode's API v2, against both stores (PostgreSQL and embedded SQLite).

Each store gets a server of its own (protected mode: a master key) publishing Natural
Earth countries as a configured collection and, through REST, as layers owned by a
user; the tests find them by search, keyword, category, owner and bbox, page and
order them, PATCH their metadata, hide one from anonymous callers (and show it is
hidden from its OGC items and tiles too) and delete it. Hostile ``filter{...}`` keys
and values answer 400 and leak nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from catalogue_site import add_user, call, continent_database, ok, site_config
from conftest import Server, drop_database

MASTER = "catalogue-master-key-0123456789"
DB = os.environ.get("GEOHARBOR_TEST_DB", "gh_cat_a") + "_srv"


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    yield continent_database(DB, {"africa": "Africa", "south_america": "South America"})
    drop_database(DB)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def api(
    request: pytest.FixtureRequest, db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    workdir = tmp_path_factory.mktemp(f"catalogue-{request.param}")
    world = {
        "source": "pg",
        "table": "countries",
        "title": "Countries of the world",
        "description": "Natural Earth admin 0 boundaries",
        "keywords": ["boundaries", "admin"],
    }
    server = Server(site_config(request.param, workdir, db_url, MASTER, {"world": world}), workdir)
    try:
        user, key = add_user(server.url, MASTER, "ada", admin=True)
        ada = {"X-API-Key": key}
        layers = {}
        for table, title in (("africa", "African countries"), ("south_america", "South American countries")):
            body = {
                "name": title,
                "title": title,
                "source": {"type": "pg", "src": table},
                "collection": table,
            }
            layers[table] = ok(call(server.url, "POST", "/rest/1/layers", json=body, headers=ada), 201)
        admin = {"X-API-Key": MASTER}
        yield {"url": server.url, "admin": admin, "ada": ada, "user": user, "key": key, "layers": layers}
    finally:
        server.stop()


def gn(api: dict, method: str, path: str, status: int = 200, who: str | None = "admin", **kwargs: Any) -> Any:
    headers = api[who] if who else {}
    return ok(call(api["url"], method, "/api/v2" + path, headers=headers, **kwargs), status)


def pk_of(api: dict, alternate: str) -> int:
    rows = gn(api, "GET", "/resources", params={"filter{alternate}": alternate})["resources"]
    assert len(rows) == 1, rows
    return int(rows[0]["pk"])


def titles(body: dict) -> list[str]:
    return [r["title"] for r in body["resources"]]


def test_every_collection_is_a_dataset_with_geonode_shape(api):
    body = gn(api, "GET", "/resources/")
    assert set(body) >= {"links", "total", "page", "page_size", "resources"}
    assert body["page"] == 1 and body["page_size"] == 10 and body["total"] == 3
    assert sorted(titles(body)) == ["African countries", "Countries of the world", "South American countries"]
    same = gn(api, "GET", "/resources")  # both slash forms, no redirect
    assert same["total"] == 3
    africa = pk_of(api, "africa")
    assert africa == api["layers"]["africa"]["id"]  # a layer's pk is its record id
    detail = gn(api, "GET", f"/datasets/{africa}")["dataset"]
    assert detail["owner"]["username"] == "ada" and detail["resource_type"] == "dataset"
    minx, miny, maxx, maxy = detail["extent"]["coords"]
    assert (
        -26 < minx < -16 and 50 < maxx < 52 and -35 < miny < -34 and 37 < maxy < 38
    )  # Africa, from the data
    assert detail["srid"] == "EPSG:4326"
    assert any(link["name"] == "ISO" for link in detail["links"])
    assert gn(api, "GET", f"/resources/{africa}/")["resource"]["uuid"] == detail["uuid"]
    listed = gn(api, "GET", "/datasets", params={"page_size": 80, "page": 1})
    assert listed["total"] == 3 and len(listed["datasets"]) == 3


def test_search_keyword_owner_bbox_paging_and_ordering(api):
    found = gn(api, "GET", "/resources", params={"search": "african"})
    assert titles(found) == ["African countries"]
    ranked = gn(api, "GET", "/resources", params={"search": "countries"})
    assert ranked["total"] == 3
    # Words English full-text search drops (stop words) still find what they name.
    assert titles(gn(api, "GET", "/resources", params={"search": "of the"})) == ["Countries of the world"]
    assert titles(gn(api, "GET", "/resources", params={"filter{keywords.name}": "admin"})) == [
        "Countries of the world"
    ]
    mine = gn(api, "GET", "/resources", params={"filter{owner.username}": "ada", "sort_by": "title"})
    assert titles(mine) == ["African countries", "South American countries"]
    # A box in Brazil: the world and South America, not Africa.
    boxed = gn(api, "GET", "/resources", params={"extent": "-50,-15,-45,-10", "ordering": "-title"})
    assert titles(boxed) == ["South American countries", "Countries of the world"]
    first = gn(api, "GET", "/resources", params={"page_size": 2, "ordering": "title"})
    second = gn(api, "GET", "/resources", params={"page_size": 2, "page": 2, "ordering": "title"})
    assert titles(first) + titles(second) == sorted(titles(first) + titles(second))
    assert first["links"]["next"] and first["links"]["previous"] is None and second["links"]["next"] is None
    negated = gn(api, "GET", "/resources", params={"filter{-owner.username}": "ada"})
    assert titles(negated) == ["Countries of the world"]
    several = gn(
        api,
        "GET",
        "/resources",
        params=[("filter{alternate.in}", "africa"), ("filter{alternate.in}", "world")],
    )
    assert several["total"] == 2
    slim = gn(api, "GET", "/resources", params={"exclude[]": "*", "include[]": "title"})
    assert set(slim["resources"][0]) == {"pk", "title"}


def test_patch_writes_metadata_through(api):
    africa = pk_of(api, "africa")
    patched = gn(
        api,
        "PATCH",
        f"/datasets/{africa}",
        json={
            "title": "Africa",
            "abstract": "Countries of Africa",
            "keywords": ["continent"],
            "category": {"identifier": "boundaries"},
            "regions": ["Africa"],
        },
        who="ada",
    )["dataset"]
    assert patched["title"] == "Africa" and patched["category"]["identifier"] == "boundaries"
    collection = ok(call(api["url"], "GET", "/collections/africa", params={"f": "json"}, headers=api["ada"]))
    assert collection["title"] == "Africa"  # written through to the layer
    by_category = gn(api, "GET", "/resources", params={"filter{category.identifier}": "boundaries"})
    assert titles(by_category) == ["Africa"]
    assert titles(gn(api, "GET", "/resources", params={"filter{regions.name}": "Africa"})) == ["Africa"]
    assert titles(gn(api, "GET", "/resources", params={"search": "continent"})) == ["Africa"]
    # Anonymous may not see ada's layer (404) nor change the public one (401); bad values are DRF-shaped.
    hidden = call(api["url"], "PATCH", f"/api/v2/resources/{africa}", json={"title": "x"})
    assert hidden.status_code == 404 and "detail" in hidden.json()
    denied = call(api["url"], "PATCH", f"/api/v2/resources/{pk_of(api, 'world')}", json={"title": "x"})
    assert denied.status_code == 401 and "detail" in denied.json()
    bad = call(
        api["url"], "PATCH", f"/api/v2/resources/{africa}", json={"category": "nonsense"}, headers=api["ada"]
    )
    assert bad.status_code in (400, 422) and "detail" in bad.json()
    world = pk_of(api, "world")
    gn(
        api,
        "PATCH",
        "/resources",
        params={"filter{alternate}": "world", "patch-all": "true"},
        json={"featured": True},
    )
    assert gn(api, "GET", f"/resources/{world}")["resource"]["featured"] is True
    assert [int(r["pk"]) for r in gn(api, "GET", "/resources/featured")["resources"]] == [world]


def test_permissions_hide_a_dataset_everywhere(api):
    south = pk_of(api, "south_america")
    # A layer is its owner's until shared: the legacy perm_spec shape shares it with everybody.
    assert call(api["url"], "GET", f"/api/v2/resources/{south}").status_code == 404
    spec = gn(api, "GET", f"/resources/{south}/permissions", who="ada")
    assert spec["users"][0]["username"] == "ada" and spec["users"][0]["permissions"] == "owner"
    answer = gn(
        api,
        "PUT",
        f"/resources/{south}/permissions",
        who="ada",
        json={"users": {"AnonymousUser": ["view_resourcebase"]}, "groups": {}},
    )
    assert answer["execution_id"]
    assert call(api["url"], "GET", "/collections/south_america/items", params={"limit": 1}).status_code == 200
    assert call(api["url"], "GET", f"/api/v2/resources/{south}").status_code == 200
    anonymous = ok(call(api["url"], "GET", "/api/v2/resources"))
    assert "south_america" in [r["alternate"] for r in anonymous["resources"]]
    groups = gn(api, "GET", f"/resources/{south}/permissions", who="ada")["groups"]
    assert [g["name"] for g in groups] == ["anonymous"]
    # The new shape takes it back: hidden from anonymous in the catalogue, OGC items and tiles alike.
    gn(
        api,
        "PUT",
        f"/resources/{south}/permissions",
        who="ada",
        json={"users": [{"id": api["user"]["id"], "permissions": "owner"}], "groups": []},
    )
    listed = ok(call(api["url"], "GET", "/api/v2/resources"))
    assert "south_america" not in [r["alternate"] for r in listed["resources"]]
    assert call(api["url"], "GET", f"/api/v2/resources/{south}").status_code == 404
    assert call(api["url"], "GET", "/collections/south_america/items").status_code == 404
    assert (
        call(api["url"], "GET", "/collections/south_america/tiles/WebMercatorQuad/0/0/0").status_code == 404
    )
    assert call(api["url"], "GET", "/rest/1/layers/" + str(south)).status_code == 404
    assert gn(api, "GET", f"/resources/{south}", who="ada")["resource"]["alternate"] == "south_america"


def test_permissions_hide_a_configured_collection(api):
    world = pk_of(api, "world")
    gn(
        api,
        "PUT",
        f"/resources/{world}/permissions",
        json={"users": [], "groups": [{"id": 0, "permissions": "none"}]},
    )
    assert call(api["url"], "GET", "/collections/world/items").status_code == 404
    assert call(api["url"], "GET", f"/api/v2/resources/{world}").status_code == 404
    assert gn(api, "GET", f"/resources/{world}")["resource"]["title"] == "Countries of the world"
    gn(
        api,
        "PUT",
        f"/resources/{world}/permissions",
        json={"users": [], "groups": [{"id": 0, "permissions": "view"}]},
    )
    assert call(api["url"], "GET", "/collections/world/items", params={"limit": 1}).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"filter{owner.password}": "x"},
        {"filter{owner.profile.password}": "x"},
        {"filter{title; DROP TABLE geoharbor.catalogue}": "x"},
        {"filter{title) OR 1=1 --}": "x"},
        {"filter{nonexistent}": "x"},
        {"filter{title.regex}": ".*"},
        {"filter{pk}": "1 OR 1=1"},
        {"filter{created.gte}": "yesterday'); --"},
        {"filter{is_published}": "maybe"},
        {"filter{pk.in}": ""},
        {"ordering": "password"},
        {"sort_by": "title; DROP TABLE x"},
        {"extent": "1,2,3"},
        {"extent": "0,0,nan,1"},
        {"page_size": "ten"},
        {"include[]": "owner_password"},
    ],
)
def test_hostile_queries_are_400(api, params):
    response = call(api["url"], "GET", "/api/v2/resources", params=params)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"detail"}
    # Nothing broke: the catalogue still answers in full.
    assert gn(api, "GET", "/resources")["total"] >= 2


def test_hostile_values_are_only_values(api):
    for value in ("' OR '1'='1", "%", "_", "\\", "africa%' --"):
        found = gn(api, "GET", "/resources", params={"filter{title.icontains}": value, "search": value})
        assert found["total"] == 0, value


def test_facets_and_people(api):
    keywords = {k["name"] for k in gn(api, "GET", "/keywords")["keywords"]}
    assert {"continent", "admin", "boundaries"} <= keywords
    owners = gn(api, "GET", "/owners")["owners"]
    assert [o["username"] for o in owners] == ["ada"]
    assert any(
        c["identifier"] == "boundaries" and c["count"] >= 1
        for c in gn(api, "GET", "/categories")["categories"]
    )
    types = {t["name"]: t["count"] for t in gn(api, "GET", "/resources/resource_types")["resource_types"]}
    assert types["dataset"] == 3 and types["map"] == 0
    assert "users" in gn(api, "GET", "/users") and "group_profiles" in gn(api, "GET", "/groups")
    assert call(api["url"], "GET", "/api/v2/users").status_code == 401


def test_maps_are_resources(api):
    layer_id = api["layers"]["africa"]["id"]
    made = ok(
        call(
            api["url"],
            "POST",
            "/rest/1/maps",
            json={"name": "Africa map", "layers": [layer_id]},
            headers=api["ada"],
        ),
        201,
    )
    maps = gn(api, "GET", "/maps")["maps"]
    assert [m["title"] for m in maps] == ["Africa map"] and int(maps[0]["pk"]) == made["id"]
    gn(api, "PATCH", f"/maps/{made['id']}", json={"title": "Map of Africa"}, who="ada")
    assert (
        ok(call(api["url"], "GET", f"/rest/1/maps/{made['id']}", headers=api["ada"]))["name"]
        == "Map of Africa"
    )
    linked = gn(api, "GET", f"/resources/{layer_id}/linked_resources")
    assert [r["title"] for r in linked["linked_by"]] == ["Map of Africa"]
    assert (
        call(api["url"], "DELETE", f"/api/v2/resources/{made['id']}/delete", headers=api["ada"]).status_code
        == 204
    )
    assert gn(api, "GET", "/maps")["total"] == 0


def test_delete_a_dataset(api):
    body = {
        "name": "Doomed",
        "title": "Doomed",
        "source": {"type": "pg", "src": "africa"},
        "collection": "doomed",
    }
    layer = ok(call(api["url"], "POST", "/rest/1/layers", json=body, headers=api["ada"]), 201)
    assert pk_of(api, "doomed") == layer["id"]
    assert (
        call(api["url"], "DELETE", f"/api/v2/datasets/{layer['id']}").status_code == 404
    )  # private: not found
    assert (
        call(api["url"], "DELETE", f"/api/v2/datasets/{layer['id']}/", headers=api["ada"]).status_code == 204
    )
    assert call(api["url"], "GET", "/collections/doomed", params={"f": "json"}).status_code == 404
    assert gn(api, "GET", "/resources", params={"filter{alternate}": "doomed"})["total"] == 0
    world = pk_of(api, "world")
    assert (
        call(api["url"], "DELETE", f"/api/v2/resources/{world}/delete", headers=api["admin"]).status_code
        == 409
    )
