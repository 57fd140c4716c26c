"""The map viewer: MapLibre styles over our tiles, and the page drawing them in a real browser."""

from __future__ import annotations

import fcntl
import html
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pygeoapi
import pytest
import requests
from flask import Flask

from providers.base import CollectionSchema
from providers.crs import CRS84
from providers.errors import NotFound
from server import errors, viewer
from server.tiles import MAX_COMPOSITE
from server.viewer import PALETTE, bbox_of, colours, geometry_kind

#: Headless Chromium has no GPU here: WebGL runs on SwiftShader through ANGLE, which
#: recent Chromium only allows with --enable-unsafe-swiftshader (--use-gl=swiftshader
#: gives no WebGL at all). Name resolution is disabled for every host but the test
#: server's, so the page must work offline.
FLAGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1024,768",
]
WINDOW = {"width": 1024, "height": 768, "deviceScaleFactor": 1, "mobile": False}
#: Wall-clock seconds a map may take to become idle (about one second on a quiet machine).
IDLE_TIMEOUT = 60
TMS = "WebMercatorQuad"


def get_json(url: str, status: int = 200) -> dict:
    response = requests.get(url, timeout=30)
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


def data_layers(style: dict) -> list[dict]:
    return [layer for layer in style["layers"] if layer["type"] != "background"]


# -- pure parts ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("declared", "kind"),
    [
        ("MULTIPOLYGON", "polygon"),
        ("MultiPolygon", "polygon"),
        ("POLYGONZ", "polygon"),
        ("POINT", "point"),
        ("POINTM", "point"),
        ("MULTIPOINT ZM", "point"),
        ("LINESTRING", "line"),
        ("MULTICURVE", "line"),
        ("GEOMETRY", "mixed"),
        ("GEOMETRYCOLLECTION", "mixed"),
        (None, "mixed"),
    ],
)
def test_geometry_kind(declared, kind):
    assert geometry_kind(declared) == kind


def test_colours_stay_distinct_past_the_palette():
    fills = [colours(i).fill for i in range(40)]
    assert fills[: len(PALETTE)] == [fill for fill, _ in PALETTE]
    assert len(set(fills)) == len(fills)
    assert all(re.fullmatch(r"#[0-9a-f]{6}", fill) for fill in fills)


class _Coll:
    """Just enough of a registry Collection for ``bbox_of``."""

    def __init__(self, bbox):
        self.provider = type("P", (), {"schema": type("S", (), {"bbox": bbox})()})()


def test_bbox_union_is_clamped_to_web_mercator():
    assert bbox_of([_Coll((-10, -90, 5, 10)), _Coll((0, 0, 20, 90)), _Coll(None)]) == [
        -10,
        -85.051129,
        20,
        85.051129,
    ]
    assert bbox_of([_Coll(None)]) is None
    # across the antimeridian: every longitude rather than the wrong side of the world
    assert bbox_of([_Coll((170, -20, -170, -10))]) == [-180.0, -20, 180.0, -10]


# -- the page, without a server: hostile titles and ids -------------------------------------
class _Registry:
    def __init__(self, *collections) -> None:
        self.collections = {c.id: c for c in collections}

    def get(self, cid: str):
        if cid not in self.collections:
            raise NotFound(cid)
        return self.collections[cid]


class _OpenAuth:
    """Access as in community mode: every collection readable (the page is what is tested here)."""

    def collection_rights(self, identity, coll) -> frozenset[str]:
        return frozenset({"read"})

    def allowed(self, identity, action, rights) -> bool:
        return True


def offline_app(*collections) -> Flask:
    """The viewer blueprint alone over stand-in collections: no database, no tiles."""
    app = Flask(__name__)
    app.config["GEOHARBOR"] = {"server": {"url": None}}
    app.extensions["geoharbor"] = SimpleNamespace(registry=_Registry(*collections), auth=_OpenAuth())
    errors.install(app)
    app.register_blueprint(viewer.blueprint)
    return app


def stand_in(
    cid: str, title: str, geometry_type: str | None = "POINT", geometry_field: str | None = "geom"
) -> SimpleNamespace:
    schema = CollectionSchema("id", geometry_field, geometry_type, CRS84, {}, bbox=(1.0, 2.0, 3.0, 4.0))
    return SimpleNamespace(id=cid, title=title, provider=SimpleNamespace(schema=schema))


HOSTILE = """</script><script>alert(1)</script>"><img src=x onerror=alert(2)>"""


def test_page_escapes_titles_and_ids():
    client = offline_app(stand_in("a b&c", HOSTILE), stand_in("other", HOSTILE, "MULTIPOLYGON")).test_client()
    response = client.get("/collections/a%20b%26c/map")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<img" not in page and "alert(1)</script>" not in page
    assert page.count("<script") == 3  # the JSON settings, MapLibre, the viewer
    settings = json.loads(re.search(r'id="gh-map-config">(.*?)</script>', page, re.S).group(1))
    assert settings["collections"]["a b&c"]["title"] == HOSTILE
    assert settings["style"] == "http://localhost/collections/a%20b%26c/style.json"
    assert settings["bounds"] == [1.0, 2.0, 3.0, 4.0]
    style = client.get("/collections/a%20b%26c/style.json").get_json()
    assert style["sources"]["geoharbor"]["url"] == (
        "http://localhost/collections/a%20b%26c/tiles/WebMercatorQuad/tilejson.json"
    )
    assert style["layers"][1]["source-layer"] == "a b&c"  # the MVT layer name is the id itself
    # the same title twice: the legend tells them apart by id
    both = client.get("/map").get_data(as_text=True)
    assert "(a b&amp;c)" in both and "(other)" in both


def test_many_collections_split_into_composite_sources():
    """A composite tile holds at most MAX_COMPOSITE layers: more collections, more sources."""
    many = [
        stand_in(f"c{i}", f"C {i}", "MULTIPOLYGON" if i % 2 else "POINT") for i in range(MAX_COMPOSITE + 5)
    ]
    style = offline_app(*many).test_client().get("/style.json").get_json()
    assert list(style["sources"]) == ["geoharbor", "geoharbor-2"]
    in_source = {
        name: parse_qs(urlsplit(source["url"]).query)["collections"][0].split(",")
        for name, source in style["sources"].items()
    }
    assert in_source == {
        "geoharbor": [f"c{i}" for i in range(MAX_COMPOSITE)],
        "geoharbor-2": [f"c{i}" for i in range(MAX_COMPOSITE, MAX_COMPOSITE + 5)],
    }
    for layer in data_layers(style):
        assert layer["source-layer"] in in_source[layer["source"]]
    fills = [layer["paint"]["fill-color"] for layer in data_layers(style) if layer["type"] == "fill"]
    assert len(set(fills)) == len(fills)


def test_collection_without_geometry_has_no_map():
    client = offline_app(stand_in("table", "A table", None)).test_client()
    client.application.extensions["geoharbor"].registry.collections[
        "table"
    ].provider.schema.geometry_field = None
    assert client.get("/collections/table/style.json").status_code == 404
    assert client.get("/map").status_code == 404


# -- styles -------------------------------------------------------------------------------
def test_polygon_collection_style(base, backend):
    cid = f"{backend}-countries"
    style = get_json(f"{base}/collections/{cid}/style.json")
    assert style["version"] == 8
    assert "glyphs" not in style and "sprite" not in style
    (source_id, source), *others = style["sources"].items()
    assert not others
    assert source == {"type": "vector", "url": f"{base}/collections/{cid}/tiles/{TMS}/tilejson.json"}
    assert style["layers"][0]["type"] == "background"
    layers = data_layers(style)
    assert [layer["type"] for layer in layers] == ["fill", "line"]
    for layer in layers:
        assert layer["source"] == source_id and layer["source-layer"] == cid
        assert "filter" not in layer  # the whole MVT layer is polygons
    assert len({layer["id"] for layer in style["layers"]}) == len(style["layers"])
    west, south, east, north = style["metadata"]["geoharbor:bounds"]
    assert -180 <= west < east <= 180 and -85.06 < south < north < 85.06


def test_point_collection_style(base, backend):
    cid = f"{backend}.points"
    style = get_json(f"{base}/collections/{cid}/style.json")
    layers = data_layers(style)
    assert [layer["type"] for layer in layers] == ["circle"]
    assert layers[0]["source-layer"] == cid


def test_mixed_collection_style_filters_on_type(base):
    style = get_json(f"{base}/collections/pg_3857/style.json")  # geometry(Geometry, 3857)
    filters = {
        layer["type"] + ":" + layer["id"].rsplit("/", 1)[1]: layer["filter"] for layer in data_layers(style)
    }
    assert filters == {
        "fill:fill": ["==", "$type", "Polygon"],
        "line:outline": ["==", "$type", "Polygon"],
        "line:line": ["==", "$type", "LineString"],
        "circle:circle": ["==", "$type", "Point"],
    }


def test_composite_style(base):
    ids = ["pg-countries", "gpkg.points", "pg_3857"]
    style = get_json(f"{base}/style.json?collections={','.join(ids)}")
    (source,) = style["sources"].values()
    parts = urlsplit(source["url"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{base}/tiles/{TMS}/tilejson.json"
    assert parse_qs(parts.query) == {"collections": [",".join(ids)]}
    layers = data_layers(style)
    assert {layer["source-layer"] for layer in layers} == set(ids)
    # polygons under lines under points, whatever the collection
    order = [layer["type"] for layer in layers if not layer["id"].endswith("/outline")]
    assert order == sorted(order, key=["fill", "line", "circle"].index)
    colour_of = {}
    for layer in layers:
        paint = layer["paint"]
        colour = paint.get("fill-color") or paint.get("circle-color")
        if colour:
            colour_of.setdefault(layer["source-layer"], colour)
    assert len(set(colour_of.values())) == len(ids)
    assert style["metadata"]["geoharbor:collections"] == ids


def test_style_of_every_collection_by_default(base):
    style = get_json(f"{base}/style.json")
    collections = get_json(f"{base}/collections?f=json")["collections"]
    # Every feature collection has a layer; the catalogue's records have none.
    listed = {c["id"] for c in collections if c.get("itemType", "feature") == "feature"}
    assert "catalogue" in {c["id"] for c in collections} - listed
    assert set(style["metadata"]["geoharbor:collections"]) == listed


@pytest.mark.parametrize(
    "path",
    [
        "/collections/nope/style.json",
        "/collections/nope/map",
        "/style.json?collections=pg-countries,nope",
        "/map?collections=nope",
    ],
)
def test_unknown_collection_is_404(base, path):
    body = get_json(base + path, 404)
    assert body["code"] == "NotFound"


def test_empty_collection_list_is_400(base):
    assert get_json(f"{base}/style.json?collections=", 400)["code"] == "InvalidParameterValue"


# -- the page -----------------------------------------------------------------------------
ATTRIBUTE = re.compile(r"""\b(?:src|href|action|poster)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


def foreign_urls(page: str, base: str) -> list[str]:
    """Every URL a page references that is not on ``base`` (fragments and data: are local)."""
    out = []
    for raw in ATTRIBUTE.findall(page):
        value = html.unescape(raw)
        if value.startswith(("#", "data:", "blob:")) or value.startswith(base + "/"):
            continue
        if "//" not in value and ":" not in value.split("/")[0]:
            continue  # relative: same origin
        out.append(value)
    out += [u for u in re.findall(r"url\(\s*['\"]?(https?:[^)'\"]+)", page) if not u.startswith(base + "/")]
    return out


def test_map_page(base, backend):
    cid = f"{backend}-countries"
    response = requests.get(f"{base}/collections/{cid}/map", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    page = response.text
    assert f'href="{base}/collections/{cid}"' in page
    assert f"{base}/collections/{cid}/style.json" in page
    assert foreign_urls(page, base) == []
    assets = re.findall(r'(?:src|href)="([^"]*/assets/geoharbor/[^"]*)"', page)
    assert len(assets) == 4
    for asset in assets:
        got = requests.get(html.unescape(asset), timeout=30)
        assert got.status_code == 200, asset
        assert got.headers["Content-Type"].split(";")[0] in (
            "text/css",
            "text/javascript",
            "application/javascript",
        )
        assert b"https://" not in got.content or "maplibre-gl.js" in asset  # only MapLibre's own doc links


def test_map_of_several_collections(base):
    response = requests.get(f"{base}/map?collections=pg-countries,gpkg.points", timeout=30)
    assert response.status_code == 200
    page = response.text
    assert f"{base}/style.json?collections=pg-countries%2Cgpkg.points" in page
    assert (
        f'href="{base}/collections/pg-countries"' in page and f'href="{base}/collections/gpkg.points"' in page
    )
    assert foreign_urls(page, base) == []


def test_pygeoapi_static_files_still_served(base):
    """server/static exists now; Flask's automatic /static route must not hide pygeoapi's files."""
    css = Path(pygeoapi.__file__).parent / "static" / "css" / "default.css"
    response = requests.get(f"{base}/static/css/default.css", timeout=30)
    assert response.status_code == 200
    assert response.content == css.read_bytes()


# -- in a browser -------------------------------------------------------------------------
class Page:
    """One tab: what it logged, threw and requested, and JavaScript evaluated in it."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.requests: list[str] = []
        self.errors: list[str] = []

    def evaluate(self, expression: str) -> Any:
        result = self.browser.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        if "exceptionDetails" in result:
            raise AssertionError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = IDLE_TIMEOUT) -> Any:
        """The first truthy value of ``expression``, polled in real time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}; errors: {self.errors}")

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.browser.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                self.session,
            )


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe, with the stdlib only.

    ``--dump-dom --virtual-time-budget`` cannot show a MapLibre map: under virtual
    time this Chromium never runs dedicated workers, where MapLibre parses tiles, so
    the map never gets idle. In real time it is idle in about a second; the DevTools
    pipe (JSON messages ending in NUL, on the browser's fds 3 and 4) waits for that.
    """

    def __init__(self, chromium: list[str], profile: Path) -> None:
        to_chrome, self._out = os.pipe()
        self._in, from_chrome = os.pipe()

        def fds() -> None:  # in the child: the pipe ends at fds 3 and 4, inheritable
            low = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome)]
            for target, fd in zip((3, 4), low, strict=True):
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        self.process = subprocess.Popen(
            [*chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # our other fds are not inheritable; 3 and 4 are made so above
            preexec_fn=fds,  # dup2 in the child: pass_fds cannot renumber fds
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next_id = 0
        self._pages: dict[str, Page] = {}

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        call_id = self._next_id  # events read while waiting may send calls of their own
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == call_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]
            self._event(reply)

    def _read(self, timeout: float = 60) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], timeout)
            assert ready, "chromium stopped answering"
            chunk = os.read(self._in, 1 << 20)
            assert chunk, "chromium exited"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def _event(self, event: dict) -> None:
        page = self._pages.get(event.get("sessionId", ""))
        params = event.get("params", {})
        method = event.get("method")
        if method == "Target.attachedToTarget" and page is not None:
            # a dedicated worker of the page (MapLibre's): its requests count as the page's
            worker = params["sessionId"]
            self._pages[worker] = page
            for call in ("Network.enable", "Runtime.runIfWaitingForDebugger"):
                self._send_only(call, worker)
        elif page is None:
            return
        elif method == "Network.requestWillBeSent":
            page.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            page.errors.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            page.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            page.errors.append(params["entry"]["text"] + " " + params["entry"].get("url", ""))

    def _send_only(self, method: str, session: str) -> None:
        """A call whose answer is not waited for (made while reading another answer)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": {}, "sessionId": session}
        os.write(self._out, json.dumps(message).encode() + b"\0")

    def open(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = self._pages[session] = Page(self, session)
        for method in ("Runtime.enable", "Log.enable", "Network.enable", "Page.enable"):
            self.call(method, session=session)
        self.call(
            "Target.setAutoAttach",
            {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True},
            session,
        )
        self.call("Emulation.setDeviceMetricsOverride", WINDOW, session)
        self.call("Page.navigate", {"url": url}, session)
        return page

    def close(self) -> None:
        try:
            self._send_only("Browser.close", "")
            self.process.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(20)
        finally:
            os.close(self._out)
            os.close(self._in)


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory) -> Iterator[Browser]:
    chrome = Browser(chromium, tmp_path_factory.mktemp("chromium-viewer"))
    yield chrome
    chrome.close()


def assert_same_origin(page: Page, base: str) -> None:
    """Neither the DOM nor any request of the page or its workers leaves the server."""
    assert page.requests, "no request was seen"
    foreign = [u for u in page.requests if not u.startswith((base + "/", "data:", "blob:"))]
    assert foreign == []
    assert foreign_urls(page.evaluate("document.documentElement.outerHTML"), base) == []


def rendered(page: Page) -> int:
    """How many features the map draws once idle; fails on any map or script error."""
    data = page.wait_for(
        "(d => d.renderedFeatures !== undefined || d.mapError ? Object.assign({}, d) : null)"
        "(document.body ? document.body.dataset : {})"
    )
    assert "mapError" not in data, data["mapError"]
    assert page.errors == []
    return int(data["renderedFeatures"])


@pytest.mark.parametrize("kind", ["countries", "points"])
def test_map_renders_features_in_a_browser(base, backend, browser, kind):
    cid = f"{backend}-countries" if kind == "countries" else f"{backend}.points"
    page = browser.open(f"{base}/collections/{cid}/map")
    assert rendered(page) > 0
    assert page.evaluate("!!document.querySelector('canvas.maplibregl-canvas')")
    assert any(
        f"/collections/{cid}/tiles/{TMS}/" in u and u.endswith(tuple("0123456789")) for u in page.requests
    )
    assert_same_origin(page, base)


def test_click_shows_the_feature_properties(base, backend, browser):
    page = browser.open(f"{base}/collections/{backend}-countries/map")
    assert rendered(page) > 0
    # Brazil's middle, in page pixels
    x, y = page.evaluate(
        "(() => { const p = geoharborMap.project([-51.9, -10.8]);"
        " const r = geoharborMap.getCanvas().getBoundingClientRect();"
        " return [p.x + r.left, p.y + r.top]; })()"
    )
    page.click(x, y)
    popup = page.wait_for(
        "(p => p && p.innerText)(document.querySelector('.maplibregl-popup .gh-popup'))", 10
    )
    assert "Countries" in popup and "Brazil" in popup and "continent" in popup
    link = page.evaluate("document.querySelector('.gh-popup h2 a').href")
    assert re.fullmatch(rf"{re.escape(base)}/collections/{backend}-countries/items/\d+", link)


def test_composite_map_renders_in_a_browser(base, browser):
    page = browser.open(f"{base}/map?collections=pg-countries,gpkg.points")
    assert rendered(page) > 0
    assert any(f"/tiles/{TMS}/" in u and not u.startswith(f"{base}/collections/") for u in page.requests)
    assert_same_origin(page, base)
