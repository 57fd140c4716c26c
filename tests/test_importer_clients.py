"""The importer as its real clients use it, and who may use it.

gn-gsimporter (GeoNode's importer client, on PyPI) runs in a virtual environment of its
own (it needs urllib3 < 2) against a server with API keys: HTTP Basic on every call, a
zip PUT as a task, a Shapefile's parts in one multipart POST, the layer renamed, a
transform chain saved by PUTting the task back, a synchronous commit expecting 204,
progress, deletion expecting 204. The same server shows the access rules: owners only,
admins for server-side paths, 401/403 in the importer's error format.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import Server, free_port, server_config
from sample_files import sample_files

from providers.store import SQLiteStore
from server.auth import key_digest, new_key

TIMEOUT = 120

CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from gsimporter import Client

    base, user, key, archive, shapefile, name = sys.argv[1:7]
    client = Client(base, user, key)
    out = {}

    session = client.upload(archive)                 # POST /imports, PUT /imports/{id}/tasks/france.zip
    task = session.tasks[0]
    out["uploaded"] = [task.state, task.data.format, task.layer.srs, task.layer.bbox.maxy]
    task.layer.set_target_layer_name(name)           # PUT .../layer
    task.set_update_mode("CREATE")                   # PUT .../tasks/{id} {"task": {...}}
    session = client.get_session(session.id)
    task = session.tasks[0]
    task.add_transforms([{"type": "CreateIndexTransform", "field": "name"}])  # PUT the whole chain
    session = client.get_session(session.id)
    out["chain"] = [t["type"] for t in session.tasks[0].transforms]
    session.commit()                                 # POST /imports/{id}, expects 204
    session = client.get_session(session.id)
    out["committed"] = [session.state, session.tasks[0].state, session.tasks[0].layer.name]
    out["progress"] = session.tasks[0].get_progress()
    out["listed"] = [s.id for s in client.get_sessions()]
    session.delete()                                 # DELETE, expects 204

    parts = client.upload(shapefile)                 # one multipart POST with every part
    out["parts"] = [len(parts.tasks), parts.tasks[0].data.file, parts.tasks[0].state]
    parts.tasks[0].delete()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with gn-gsimporter and the urllib3 it needs."""
    venv = tmp_path_factory.mktemp("gsimporter") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "gn-gsimporter", "urllib3<2", "six"],
        check=True,
        capture_output=True,
    )
    return venv / "bin" / "python"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return sample_files(tmp_path_factory.mktemp("client-files"))


@pytest.fixture(scope="module")
def protected(
    pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A server with keys: alice and bob may write, reader may read, the master key is an admin's."""
    workdir = tmp_path_factory.mktemp("importer-protected")
    state = workdir / "state.sqlite"
    store = SQLiteStore(state)
    keys = {}
    for name, scopes in (("alice", ["read", "write"]), ("bob", ["read", "write"]), ("reader", ["read"])):
        user = store.insert("user", {"username": name, "active": True, "admin": False, "roles": []}, key=name)
        keys[name] = new_key()
        body = {"user_id": user.id, "scopes": scopes, "active": True, "expires": None, "key_trunc": ""}
        store.insert("key", body, key=key_digest(keys[name]))
    store.close()
    roots = workdir / "shared"
    roots.mkdir()
    config = server_config(pg_url, gpkg_path, free_port())
    config["store"] = {"path": str(state), "tables": "pg"}
    config["auth"] = {"api_key": (master := new_key())}
    config["imports"] = {"roots": [str(roots)], "path": str(workdir / "imports")}
    config["datasets"] = {"path": str(workdir / "datasets"), "max_unpacked_mb": 2}
    server = Server(config, workdir)
    try:
        yield {"url": server.url, "keys": {**keys, "admin": master}, "roots": roots, "workdir": workdir}
    finally:
        server.stop()


def call(world: dict[str, Any], method: str, path: str, who: str | None, **kwargs: Any) -> requests.Response:
    auth = (who, world["keys"][who]) if who else None
    return requests.request(method, world["url"] + path, auth=auth, timeout=TIMEOUT, **kwargs)


def test_gn_gsimporter_runs_a_whole_import(protected, client_python, files):
    name = "client_france"
    shapefile = files["shp_dir"] / "france.shp"
    done = subprocess.run(
        [
            str(client_python),
            "-c",
            CLIENT_SCRIPT,
            protected["url"],
            "alice",
            protected["keys"]["alice"],
            str(files["shp"]),
            str(shapefile),
            name,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["uploaded"][:3] == ["READY", "Shapefile", "EPSG:2154"]
    assert out["uploaded"][3] > 6_000_000
    assert out["chain"] == ["CreateIndexTransform"]
    assert out["committed"] == ["COMPLETE", "COMPLETE", name]
    assert out["progress"]["state"] == "COMPLETE" and out["progress"]["progress"] == out["progress"]["total"]
    assert out["listed"]
    assert out["parts"] == [1, "france.shp", "READY"]
    items = call(protected, "GET", f"/collections/{name}/items", "alice", params={"limit": 1})
    assert items.status_code == 200 and items.json()["numberMatched"] == int(files["france_count"].name)


def test_imports_belong_to_their_owner(protected):
    created = call(protected, "POST", "/imports", "alice", json={"import": {}})
    assert created.status_code == 201, created.text
    iid = created.json()["import"]["id"]
    assert call(protected, "GET", f"/imports/{iid}", "alice").status_code == 200
    hidden = call(protected, "GET", f"/imports/{iid}", "bob")
    assert hidden.status_code == 404 and hidden.json() == {"errors": [f"import {iid} not found"]}
    assert iid not in [i["id"] for i in call(protected, "GET", "/imports", "bob").json()["imports"]]
    assert call(protected, "DELETE", f"/imports/{iid}", "bob").status_code == 404
    assert call(protected, "GET", f"/imports/{iid}", "admin").status_code == 200
    anonymous = call(protected, "POST", "/imports", None, json={"import": {}})
    assert anonymous.status_code == 401 and anonymous.json()["errors"]
    reader = call(protected, "POST", "/imports", "reader", json={"import": {}})
    assert reader.status_code == 403 and "write" in reader.json()["errors"][0]
    assert call(protected, "DELETE", f"/imports/{iid}", "alice").status_code == 204


def test_server_side_data_needs_an_admin(protected, files):
    path = protected["roots"] / "points.geojson"
    path.write_bytes(files["geojson"].read_bytes())
    body = {"import": {"data": {"type": "file", "file": str(path)}}}
    refused = call(protected, "POST", "/imports", "alice", json=body)
    assert refused.status_code == 403, refused.text
    database = {"import": {"data": {"type": "database", "source": "gpkg", "table": "countries"}}}
    assert call(protected, "POST", "/imports", "alice", json=database).status_code == 403
    allowed = call(protected, "POST", "/imports", "admin", json=body)
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["import"]["tasks"][0]["state"] == "READY"


def test_a_zip_bomb_past_the_limit_is_413_and_leaves_no_file(protected):
    """A 1 MB archive that inflates past the 2 MB limit stops there, and its directory goes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("huge.geojson", b" " * (64 << 20))
    created = call(protected, "POST", "/imports", "alice", json={"import": {}})
    iid = created.json()["import"]["id"]
    bomb = call(protected, "PUT", f"/imports/{iid}/tasks/bomb.zip", "alice", data=buffer.getvalue())
    assert bomb.status_code == 413, bomb.text
    assert bomb.json() == {"errors": ["the zip unpacks to more than the configured limit"]}
    assert call(protected, "GET", f"/imports/{iid}", "alice").json()["import"]["tasks"] == []
    left = [p for p in (protected["workdir"] / "imports" / str(iid)).rglob("*") if p.is_file()]
    assert left == []
