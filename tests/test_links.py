"""Links follow the address the client used, a configured public URL, or the proxy."""

from __future__ import annotations

import pytest

from server.app import create_app


def app_for(pg_url: str, **server) -> object:
    return create_app(
        {
            "server": {"log_level": "WARNING", **server},
            "sources": {"pg": {"type": "postgis", "url": pg_url}},
            "collections": {"countries": {"source": "pg", "table": "countries"}},
        }
    )


def hrefs(body: dict) -> list[str]:
    return [link["href"] for link in body["links"]]


@pytest.fixture(scope="module")
def direct(pg_url):
    return app_for(pg_url).test_client()


def test_links_use_the_host_the_client_asked(direct):
    body = direct.get("/collections/countries/items?limit=5", base_url="http://maps.example:8080").get_json()
    assert all(h.startswith("http://maps.example:8080/collections/countries") for h in hrefs(body))
    landing = direct.get("/", base_url="http://other.example").get_json()
    assert all(h.startswith("http://other.example") for h in hrefs(landing))


def test_configured_public_url_wins(pg_url):
    client = app_for(pg_url, url="https://geo.example.org/ogc").test_client()
    body = client.get("/collections/countries/items?limit=5", base_url="http://10.0.0.5:5000").get_json()
    nxt = next(link for link in body["links"] if link["rel"] == "next")
    assert nxt["href"].startswith("https://geo.example.org/ogc/collections/countries/items?")
    landing = client.get("/").get_json()
    assert any(h.startswith("https://geo.example.org/ogc/openapi") for h in hrefs(landing))


def test_forwarded_headers_when_trusted(pg_url):
    client = app_for(pg_url, trust_proxy_headers=True).test_client()
    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "maps.example.org",
        "X-Forwarded-Prefix": "/geoharbor",
    }
    body = client.get("/collections/countries/items?limit=5", headers=headers).get_json()
    assert all(h.startswith("https://maps.example.org/geoharbor/") for h in hrefs(body))
    item = client.get("/collections/countries/items/1", headers=headers)
    assert "https://maps.example.org/geoharbor/collections/countries/items/1" in item.headers["Link"]


def test_forwarded_headers_ignored_by_default(direct):
    body = direct.get(
        "/collections/countries/items?limit=5", headers={"X-Forwarded-Host": "evil.example"}
    ).get_json()
    assert not any("evil.example" in h for h in hrefs(body))
