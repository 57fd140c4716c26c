"""A built-in web map of the collections: MapLibre styles over our vector tiles, and a page.

``/collections/{cid}/style.json`` and ``/style.json?collections=a,b`` describe the
collections as MapLibre (style spec version 8) styles whose one vector source is
the OGC API - Tiles TileJSON of the same server, so any MapLibre, QGIS or Maputnik
client can draw them. ``/collections/{cid}/map`` and ``/map`` are an HTML page
showing such a style. The page needs no internet access: MapLibre GL JS is vendored
under ``static/vendor/maplibre-gl`` and served from ``/assets/geoharbor/``, there is
no basemap, no glyphs and no sprite.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import orjson
from flask import Blueprint, Response, current_app, render_template, request

from providers.errors import InvalidQuery, NotFound
from server import __version__
from server.auth import readable_collection
from server.links import url
from server.registry import Collection
from server.tiles import MAX_COMPOSITE

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Our own prefix: the app's ``/static/`` serves pygeoapi's files to its HTML pages.
ASSETS_URL = "/assets/geoharbor"
MAPLIBRE_VERSION = "5.24.1"  # static/vendor/maplibre-gl/README.md records where it came from

blueprint = Blueprint(
    "viewer",
    __name__,
    static_folder="static",
    static_url_path=ASSETS_URL,
    template_folder="templates",
)

#: The vector source of a style, or its first one past MAX_COMPOSITE collections.
SOURCE_ID = "geoharbor"
TILE_MATRIX_SET = "WebMercatorQuad"
#: Web Mercator stops here; a bbox reaching the poles would make fitBounds zoom out to nothing.
MAX_LATITUDE = 85.051129
BACKGROUND = "#f3f1ec"

#: Fill and darker stroke per collection, in the order the collections are asked for:
#: Tableau 10, readable on the light background and distinct from each other.
PALETTE: list[tuple[str, str]] = [
    ("#4e79a7", "#2c4a6e"),
    ("#f28e2b", "#a0560f"),
    ("#59a14f", "#34632d"),
    ("#e15759", "#962a2c"),
    ("#76b7b2", "#3d706c"),
    ("#edc948", "#8f7514"),
    ("#b07aa1", "#6b4462"),
    ("#ff9da7", "#b4505c"),
    ("#9c755f", "#5c4234"),
    ("#7f7f7f", "#474747"),
]

Kind = Literal["polygon", "line", "point", "mixed"]

#: Simple Features types (PostGIS ``geometry_columns`` and GeoPackage names, upper case,
#: without Z/M) by what a map draws them as. Anything else (GEOMETRY, GEOMETRYCOLLECTION)
#: may hold all three, so it gets all three layers, filtered.
_KINDS: dict[str, Kind] = {
    "POINT": "point",
    "MULTIPOINT": "point",
    "LINESTRING": "line",
    "MULTILINESTRING": "line",
    "CIRCULARSTRING": "line",
    "COMPOUNDCURVE": "line",
    "CURVE": "line",
    "MULTICURVE": "line",
    "POLYGON": "polygon",
    "MULTIPOLYGON": "polygon",
    "CURVEPOLYGON": "polygon",
    "SURFACE": "polygon",
    "MULTISURFACE": "polygon",
    "TRIANGLE": "polygon",
    "TIN": "polygon",
    "POLYHEDRALSURFACE": "polygon",
}


@dataclass(frozen=True, slots=True)
class Colours:
    fill: str
    stroke: str


def geometry_kind(geometry_type: str | None) -> Kind:
    """What a collection's declared geometry type draws as; ``mixed`` when it may be anything."""
    name = (geometry_type or "GEOMETRY").upper().replace(" ", "").replace("_", "")
    if name in _KINDS:
        return _KINDS[name]
    for suffix in ("ZM", "Z", "M"):  # PostGIS says POINTM, GeoPackage may say POINTZ
        if name.endswith(suffix) and name[: -len(suffix)] in _KINDS:
            return _KINDS[name[: -len(suffix)]]
    return "mixed"


def colours(index: int) -> Colours:
    """Distinct colours for the ``index``-th collection of a map.

    The palette first; past it, hues a golden angle apart so that a map of every
    collection of a large server still tells neighbours apart.
    """
    if index < len(PALETTE):
        return Colours(*PALETTE[index])
    hue = (index * 0.381966) % 1.0
    fill = colorsys.hls_to_rgb(hue, 0.52, 0.55)
    stroke = colorsys.hls_to_rgb(hue, 0.30, 0.55)
    return Colours(_hex(fill), _hex(stroke))


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(c * 255):02x}" for c in rgb)


# -- styles ------------------------------------------------------------------------------
def collection_layers(cid: str, kind: Kind, colour: Colours, source: str = SOURCE_ID) -> list[dict[str, Any]]:
    """The style layers drawing one collection, bottom to top.

    Tiles of a mixed collection hold points, lines and polygons in one MVT layer; a
    circle layer without a ``$type`` filter would draw a dot on every polygon vertex,
    so every layer of a mixed collection is filtered on the geometry it draws.
    """
    base = {"source": source, "source-layer": cid}
    mixed = kind == "mixed"

    def only(geometry: str) -> dict[str, Any]:
        return {"filter": ["==", "$type", geometry]} if mixed else {}

    layers: list[dict[str, Any]] = []
    if kind in ("polygon", "mixed"):
        layers.append(
            {
                "id": f"{cid}/fill",
                "type": "fill",
                **base,
                **only("Polygon"),
                "paint": {"fill-color": colour.fill, "fill-opacity": 0.4, "fill-antialias": True},
            }
        )
        layers.append(
            {
                "id": f"{cid}/outline",
                "type": "line",
                **base,
                **only("Polygon"),
                "layout": {"line-join": "round"},
                "paint": {
                    "line-color": colour.stroke,
                    "line-opacity": 0.9,
                    "line-width": ["interpolate", ["linear"], ["zoom"], 0, 0.5, 6, 1, 14, 2],
                },
            }
        )
    if kind in ("line", "mixed"):
        layers.append(
            {
                "id": f"{cid}/line",
                "type": "line",
                **base,
                **only("LineString"),
                "layout": {"line-join": "round", "line-cap": "round"},
                "paint": {
                    "line-color": colour.fill,
                    "line-width": ["interpolate", ["linear"], ["zoom"], 0, 1, 8, 2, 16, 4],
                },
            }
        )
    if kind in ("point", "mixed"):
        layers.append(
            {
                "id": f"{cid}/circle",
                "type": "circle",
                **base,
                **only("Point"),
                "paint": {
                    "circle-color": colour.fill,
                    "circle-opacity": 0.9,
                    "circle-radius": ["interpolate", ["linear"], ["zoom"], 0, 2.5, 6, 4, 14, 7],
                    "circle-stroke-color": "#ffffff",
                    "circle-stroke-width": ["interpolate", ["linear"], ["zoom"], 0, 0.5, 6, 1, 14, 1.5],
                },
            }
        )
    return layers


_DRAW_ORDER = {"fill": 0, "line": 1, "circle": 2}


def style(groups: list[tuple[str, list[Collection]]], name: str) -> dict[str, Any]:
    """A MapLibre style of the collections of ``groups``: (TileJSON URL, its collections).

    One vector source per group: a composite tile holds at most MAX_COMPOSITE layers.
    Polygons of every collection go under every line and lines under every point,
    whichever collection they belong to, so that no fill hides a point of another
    collection; outlines are ``line`` layers but stay with the fills they outline.
    """
    sources: dict[str, dict[str, Any]] = {}
    layers: list[dict[str, Any]] = []
    collections: list[Collection] = []
    for number, (tilejson, members) in enumerate(groups):
        source = SOURCE_ID if number == 0 else f"{SOURCE_ID}-{number + 1}"
        sources[source] = {"type": "vector", "url": tilejson}
        for coll in members:
            kind = geometry_kind(coll.provider.schema.geometry_type)
            layers.extend(collection_layers(coll.id, kind, colours(len(collections)), source))
            collections.append(coll)
    layers.sort(key=lambda layer: 0 if layer["id"].endswith("/outline") else _DRAW_ORDER[layer["type"]])
    bounds = bbox_of(collections)
    metadata: dict[str, Any] = {"geoharbor:collections": [c.id for c in collections]}
    if bounds is not None:
        metadata["geoharbor:bounds"] = bounds
    return {
        "version": 8,
        "name": name,
        "metadata": metadata,
        "sources": sources,
        "layers": [{"id": "background", "type": "background", "paint": {"background-color": BACKGROUND}}]
        + layers,
    }


def bbox_of(collections: list[Collection]) -> list[float] | None:
    """The CRS84 extent of all ``collections`` as [west, south, east, north], within Web Mercator.

    An extent crossing the antimeridian (west > east) is widened to all longitudes:
    a plain union of such boxes would be wrong and the map would fit the wrong side.
    """
    boxes = [c.provider.schema.bbox for c in collections if c.provider.schema.bbox is not None]
    if not boxes:
        return None
    west = min(b[0] for b in boxes)
    east = max(b[2] for b in boxes)
    if any(b[0] > b[2] for b in boxes):
        west, east = -180.0, 180.0
    south = max(min(b[1] for b in boxes), -MAX_LATITUDE)
    north = min(max(b[3] for b in boxes), MAX_LATITUDE)
    west, east = max(west, -180.0), min(east, 180.0)
    if south > north:  # the whole extent lies beyond Web Mercator's latitudes
        south, north = -MAX_LATITUDE, MAX_LATITUDE
    return [west, south, east, north]


# -- routes ------------------------------------------------------------------------------
def _registry():
    return current_app.extensions["geoharbor"].registry


def _mappable(coll: Collection) -> bool:
    return coll.provider.schema.geometry_field is not None


def _one(cid: str) -> Collection:
    coll = _registry().get(cid)  # NotFound (404) for an unknown id
    if not _mappable(coll):
        raise NotFound(f"collection {cid[:100]!r} has no geometry to map")
    return coll


def _many() -> list[Collection]:
    """The collections of ``?collections=a,b`` in that order, or every mappable one the caller may read.

    Named collections were checked by the access hook (each readable, else 404).
    """
    raw = request.args.get("collections")
    if raw is None:
        return [c for c in _registry().collections.values() if _mappable(c) and readable_collection(c)]
    ids = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not ids:
        raise InvalidQuery("'collections' must list at least one collection id")
    return [_one(cid) for cid in ids]


def _segment(cid: str) -> str:
    """``cid`` as one URL path segment: ids come from table and layer names, which may hold anything."""
    return quote(cid, safe="")


def _tilejson(coll: Collection) -> str:
    return url(f"/collections/{_segment(coll.id)}/tiles/{TILE_MATRIX_SET}/tilejson.json")


def _composite_groups(collections: list[Collection]) -> list[tuple[str, list[Collection]]]:
    """Composite TileJSON URLs for ``collections``, MAX_COMPOSITE at most in each."""
    groups = []
    for start in range(0, len(collections), MAX_COMPOSITE):
        members = collections[start : start + MAX_COMPOSITE]
        tilejson = url(
            f"/tiles/{TILE_MATRIX_SET}/tilejson.json", {"collections": ",".join(c.id for c in members)}
        )
        groups.append((tilejson, members))
    return groups


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), mimetype="application/json")


@blueprint.route("/collections/<cid>/style.json")
def collection_style(cid: str) -> Response:
    coll = _one(cid)
    return _json(style([(_tilejson(coll), [coll])], coll.title))


@blueprint.route("/style.json")
def collections_style() -> Response:
    collections = _many()
    if not collections:
        raise NotFound("no collection has geometry to map")
    return _json(style(_composite_groups(collections), "geoharbor"))


@blueprint.route("/collections/<cid>/map")
def collection_map(cid: str) -> Response:
    coll = _one(cid)
    path = f"/collections/{_segment(cid)}"
    return map_page([coll], url(f"{path}/style.json"), coll.title, url(path))


@blueprint.route("/map")
def collections_map() -> Response:
    collections = _many()
    if not collections:
        raise NotFound("no collection has geometry to map")
    args = {"collections": ",".join(c.id for c in collections)} if "collections" in request.args else None
    if len(collections) == 1:
        title, back = collections[0].title, url(f"/collections/{_segment(collections[0].id)}")
    else:
        title = "All collections" if args is None else f"{len(collections)} collections"
        back = url("/collections")
    return map_page(collections, url("/style.json", args), title, back)


def map_page(
    collections: list[Collection],
    style_url: str,
    title: str,
    back_url: str,
    *,
    bounds: list[float] | None = None,
    legend_ids: set[str] | None = None,
) -> Response:
    """The map page; what its script needs travels as JSON, never spliced into code.

    ``bounds`` default to the collections' extent, the legend to every collection
    (a REST map lists only its visible layers there).
    """
    titles = Counter(c.title for c in collections)

    def label(coll: Collection) -> str:
        """The title, with the id when another collection of the map has the same title."""
        return coll.title if titles[coll.title] == 1 else f"{coll.title} ({coll.id})"

    legend = [
        {
            "id": c.id,
            "title": label(c),
            "url": url(f"/collections/{_segment(c.id)}"),
            "colour": colours(i).fill,
            "kind": geometry_kind(c.provider.schema.geometry_type),
        }
        for i, c in enumerate(collections)
        if legend_ids is None or c.id in legend_ids
    ]
    config = {
        "style": style_url,
        "bounds": bounds if bounds is not None else bbox_of(collections),
        "collections": {
            c.id: {
                "title": label(c),
                "url": url(f"/collections/{_segment(c.id)}"),
                "idField": c.provider.schema.id_field,
            }
            for c in collections
        },
    }
    html = render_template(
        "viewer/map.html",
        title=title,
        back_url=back_url,
        home_url=url("/"),
        favicon=url("/static/img/favicon.ico"),  # pygeoapi's, as on the other HTML pages
        legend=legend,
        config=config,
        maplibre_js=url(f"{ASSETS_URL}/vendor/maplibre-gl/maplibre-gl.js", {"v": MAPLIBRE_VERSION}),
        maplibre_css=url(f"{ASSETS_URL}/vendor/maplibre-gl/maplibre-gl.css", {"v": MAPLIBRE_VERSION}),
        viewer_js=url(f"{ASSETS_URL}/viewer/map.js", {"v": __version__}),
        viewer_css=url(f"{ASSETS_URL}/viewer/map.css", {"v": __version__}),
    )
    return Response(html, mimetype="text/html")
