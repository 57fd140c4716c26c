"""The real ``geonodectl`` client (PyPI) against geoharbor's GeoNode API v2, on both stores.

geonodectl is run as a subprocess with its own environment (``GEONODE_API_URL`` ending
in ``api/v2/``, ``GEONODE_API_BASIC_AUTH`` = base64 ``user:password``; geoharbor takes
the API key as the password). It lists resources, datasets, documents and users,
searches and filters, describes by pk and by uuid, PATCHes metadata, uploads a
document, fetches a resource's ISO metadata, and deletes; each answer is checked
against what the API itself says afterwards.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from catalogue_site import TIMEOUT, add_user, call, continent_database, ok, site_config
from conftest import Server, drop_database

MASTER = "geonodectl-master-key-0123456789"
DB = os.environ.get("GEOHARBOR_TEST_DB", "gh_cat_d") + "_ctl"
PDF = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")
GEONODECTL = shutil.which("geonodectl", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(
    GEONODECTL is None, reason="geonodectl is not installed (pip install geonodectl)"
)


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    yield continent_database(DB, {"africa": "Africa", "asia": "Asia", "europe": "Europe"})
    drop_database(DB)


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def site(
    request: pytest.FixtureRequest, db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    workdir = tmp_path_factory.mktemp(f"geonodectl-{request.param}")
    world = {
        "source": "pg",
        "table": "countries",
        "title": "Countries of the world",
        "description": "Natural Earth admin 0 boundaries",
        "keywords": ["boundaries"],
    }
    server = Server(site_config(request.param, workdir, db_url, MASTER, {"world": world}), workdir)
    try:
        users = {}
        keys = {}
        for name, is_admin in (("ada", True), ("bob", False)):
            users[name], keys[name] = add_user(server.url, MASTER, name, is_admin)
        layers = {}
        for table, title in (
            ("africa", "African countries"),
            ("asia", "Asian countries"),
            ("europe", "Europe"),
        ):
            body = {"name": table, "title": title, "source": {"type": "pg", "src": table}}
            headers = {"X-API-Key": keys["ada"]}
            layers[table] = ok(call(server.url, "POST", "/rest/1/layers", json=body, headers=headers), 201)[
                "id"
            ]
        yield {
            "url": server.url,
            "keys": keys,
            "users": users,
            "layers": layers,
            "workdir": workdir,
            "server": server,
        }
    finally:
        server.stop()


def ctl(site: dict, *args: str, who: str = "ada", expect: int = 0) -> str:
    """Run geonodectl as ``who`` (HTTP Basic: user name and API key); its stdout."""
    basic = base64.b64encode(f"{who}:{site['keys'][who]}".encode()).decode()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(site["workdir"]),
        "GEONODE_API_URL": f"{site['url']}/api/v2/",
        "GEONODE_API_BASIC_AUTH": basic,
    }
    done = subprocess.run(
        [GEONODECTL, *args], env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == expect, (
        f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}\nserver:\n{site['server'].output()}"
    )
    return done.stdout


def ctl_json(site: dict, *args: str, who: str = "ada") -> Any:
    return orjson.loads(ctl(site, "--json", *args, who=who))


def api(site: dict, path: str, who: str = "ada", **params: Any) -> Any:
    return ok(
        requests.get(
            f"{site['url']}/api/v2{path}",
            params=params,
            headers={"X-API-Key": site["keys"][who]},
            timeout=TIMEOUT,
        )
    )


def test_lists_and_search(site):
    resources = ctl_json(site, "resources", "list")
    assert sorted(r["title"] for r in resources) == [
        "African countries",
        "Asian countries",
        "Countries of the world",
        "Europe",
    ]
    assert {r["resource_type"] for r in resources} == {"dataset"}
    found = ctl_json(site, "resources", "list", "--search", "asian")
    assert [r["title"] for r in found] == ["Asian countries"]
    by_owner = ctl_json(site, "dataset", "list", "--filter", "owner.username=ada", "--ordering", "title")
    assert [d["title"] for d in by_owner] == ["African countries", "Asian countries", "Europe"]
    newest = ctl_json(site, "dataset", "list", "--ordering=-title", "--search", "countries")
    assert [d["title"] for d in newest] == ["Countries of the world", "Asian countries", "African countries"]
    users = ctl_json(site, "users", "list")
    assert {"ada", "bob"} <= {u["username"] for u in users}
    # The table form (what a person reads) names them too.
    table = ctl(site, "dataset", "list", "--search", "african")
    assert "African countries" in table and "ada" in table
    # bob sees only what is shared with him: the configured, public collection.
    assert [r["title"] for r in ctl_json(site, "resources", "list", who="bob")] == ["Countries of the world"]


def test_describe_patch_and_metadata(site):
    africa = site["layers"]["africa"]
    described = ctl_json(site, "dataset", "describe", str(africa))
    assert described["title"] == "African countries" and described["alternate"] == "africa"
    by_uuid = ctl_json(site, "dataset", "describe", described["uuid"])
    assert by_uuid["pk"] == described["pk"]
    patch = orjson.dumps(
        {"title": "Africa", "abstract": "Countries of Africa", "category": {"identifier": "boundaries"}}
    ).decode()
    ctl(site, "dataset", "patch", str(africa), "--set", patch)
    after = api(site, f"/datasets/{africa}")["dataset"]
    assert after["title"] == "Africa" and after["category"]["identifier"] == "boundaries"
    collection = ok(
        requests.get(
            f"{site['url']}/collections/africa",
            params={"f": "json"},
            timeout=TIMEOUT,
            headers={"X-API-Key": site["keys"]["ada"]},
        )
    )
    assert collection["title"] == "Africa"  # written through to the layer
    assert [
        d["title"] for d in ctl_json(site, "dataset", "list", "--filter", "category.identifier=boundaries")
    ] == ["Africa"]
    # bob may not patch ada's layer: geonodectl reports the failure.
    ctl(site, "dataset", "patch", str(africa), "--set", '{"title": "mine"}', who="bob", expect=1)
    assert api(site, f"/datasets/{africa}")["dataset"]["title"] == "Africa"
    iso = ctl(site, "resources", "metadata", str(africa))
    assert "gmd:MD_Metadata" in iso and "Africa" in iso


def test_documents_upload_describe_delete(site):
    ctl(site, "documents", "upload", "-f", str(PDF))
    listed = ctl_json(site, "documents", "list")
    assert [d["title"] for d in listed] == [PDF.name]
    pk = listed[0]["pk"]
    described = ctl_json(site, "documents", "describe", pk)
    assert described["extension"] == "pdf" and described["mime_type"] == "application/pdf"
    got = requests.get(described["download_url"], headers={"X-API-Key": site["keys"]["ada"]}, timeout=TIMEOUT)
    assert got.status_code == 200 and got.content == PDF.read_bytes()
    ctl(site, "documents", "patch", pk, "--set", '{"title": "ASN.1 library manual"}')
    assert [r["title"] for r in ctl_json(site, "resources", "list", "--search", "manual")] == [
        "ASN.1 library manual"
    ]
    ctl(site, "documents", "delete", pk)
    assert ctl_json(site, "documents", "list") == []
    assert (
        requests.get(
            described["download_url"], headers={"X-API-Key": site["keys"]["ada"]}, timeout=TIMEOUT
        ).status_code
        == 404
    )


def test_delete(site):
    asia, europe = site["layers"]["asia"], site["layers"]["europe"]
    ctl(site, "dataset", "delete", str(asia), who="bob", expect=1)  # not his
    ctl(site, "dataset", "delete", str(asia))
    ctl(site, "resources", "delete", str(europe))
    remaining = [r["title"] for r in ctl_json(site, "resources", "list")]
    assert "Asian countries" not in remaining and "Europe" not in remaining
    assert (
        requests.get(
            f"{site['url']}/collections/asia", timeout=TIMEOUT, headers={"X-API-Key": site["keys"]["ada"]}
        ).status_code
        == 404
    )
