"""Collections published automatically from a PostGIS schema and from a GeoPackage."""

from __future__ import annotations

import time

from server.app import create_app


def test_postgis_schemas_and_geopackage_layers_are_published(pg_url, gpkg_path):
    app = create_app(
        {
            "server": {"log_level": "WARNING"},
            "sources": {
                "db": {
                    "type": "postgis",
                    "url": pg_url,
                    "publish_schemas": ["public", "Mixed Schema"],
                    "exclude": ["public.two_geoms"],
                },
                "files": {
                    "type": "geopackage",
                    "path": str(gpkg_path),
                    "publish": True,
                    "exclude": ["countries_3857"],
                },
            },
            "collections": {
                "declared": {"source": "db", "table": "countries", "title": "Declared countries"}
            },
        }
    )
    client = app.test_client()
    ids = {c["id"] for c in client.get("/collections").get_json()["collections"]}
    # Tables and views with a geometry column, other schemas qualified, the declared one not twice.
    assert {
        "country_points",
        "countries_l93",
        "countries_3857",
        "uuid_points",
        "big_countries",
        "Mixed Schema.Country Codes",
    } <= ids
    assert "declared" in ids and "two_geoms" not in ids
    # The declared table is not published a second time: "countries" is the GeoPackage layer,
    # and GeoPackage layers whose names clash with PostGIS collections carry their source's name.
    assert "geopackage" in client.get("/collections/countries").get_json()["description"]
    assert {"files.country_points", "files.countries_l93"} <= ids
    assert "files.countries_3857" not in ids and "countries_3857" in ids
    body = client.get("/collections/Mixed Schema.Country Codes/items?limit=1").get_json()
    assert body["features"][0]["geometry"]["type"] == "Point"
    health = client.get("/health").get_json()
    assert health["providers"]["db"]["up"] and health["providers"]["files"]["up"]
    assert health["postgis"] is True and health["postgis_sources"] == {"configured": True, "reachable": True}


def test_unreachable_database_is_reported_not_fatal(gpkg_path):
    app = create_app(
        {
            "server": {"log_level": "ERROR"},
            "sources": {
                "down": {
                    "type": "postgis",
                    "url": "postgresql://nobody@127.0.0.1:1/none",
                    "publish_schemas": ["public"],
                },
                "files": {"type": "geopackage", "path": str(gpkg_path), "publish": True},
            },
        }
    )
    client = app.test_client()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert (
        body["status"] == "degraded"
        and body["postgis"] is False
        and body["postgis_sources"]["reachable"] is False
    )
    assert body["providers"]["down"]["up"] is False and "error" in body["providers"]["down"]
    # The GeoPackage is fine, but who may read it cannot be known without the store (grants
    # set through the catalogue may hide it): its items fail closed, at once, with a 503.
    started = time.monotonic()
    items = client.get("/collections/countries/items?limit=1")
    assert items.status_code == 503 and "store" in items.get_json()["description"]
    assert time.monotonic() - started < 5
