"""OGC API - Tiles: tile matrix sets, tilesets, vector tiles, TileJSON, composite tiles.

A tile is cached in this process under the collection's revision, which every write
through geoharbor bumps in the data's own store, in the write's transaction. Each
request reads the revision first, so no worker ever serves a tile older than the
last write, whichever worker made it. ETags are hashes of the tile's bytes: a tile
that an edit did not change keeps its ETag and still answers 304.
"""

from __future__ import annotations

import gzip
import hashlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import orjson
from cachetools import LRUCache
from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import MultiDict

from providers.base import TileRequest
from providers.errors import InvalidQuery, NotFound
from providers.tiles import TILE_MATRIX_SETS, TileMatrixSet, get_tms
from server.auth import current_identity
from server.links import url
from server.params import tile_query
from server.registry import Collection

blueprint = Blueprint("tiles", __name__)

MVT = "application/vnd.mapbox-vector-tile"
REL = "http://www.opengis.net/def/rel/ogc/1.0/"
#: Endpoints that bring the registry up to date themselves (``Registry.tile_state``).
SYNCS_ITSELF = frozenset({"tiles.collection_tile", "tiles.composite_tile"})

#: The largest number of collections one composite tile may hold.
MAX_COMPOSITE = 32


class TileCache:
    """An LRU of encoded tiles bounded in bytes, shared by the threads of one process."""

    def __init__(self, max_bytes: int) -> None:
        self._cache: LRUCache = LRUCache(maxsize=max(1, max_bytes), getsizeof=lambda tile: len(tile) + 64)
        self._lock = threading.Lock()
        self.enabled = max_bytes > 0

    def get(self, key: tuple) -> bytes | None:
        if not self.enabled:
            return None
        with self._lock:
            return self._cache.get(key)

    def put(self, key: tuple, tile: bytes) -> None:
        if self.enabled:
            with self._lock:
                self._cache[key] = tile

    def clear(self) -> None:
        """Forget every tile: a collection id may now name another table."""
        with self._lock:
            self._cache.clear()


def _state():
    return current_app.extensions["geoharbor"]


def _cache() -> TileCache:
    return _state().tile_cache


def _coordinates(tms: TileMatrixSet, z: str, y: str, x: str) -> tuple[int, int, int]:
    try:
        zi, yi, xi = int(z), int(y), int(x)
    except ValueError:
        raise NotFound("tile coordinates are integers") from None
    tms.check(zi, xi, yi)
    return zi, yi, xi


def _layer_tile(
    coll: Collection, revision: int | None, tms: TileMatrixSet, z: int, y: int, x: int, args
) -> bytes:
    """One collection's MVT layer, from the cache when its revision has not moved."""
    options = coll.tiles
    if not options["minzoom"] <= z <= options["maxzoom"]:
        return b""
    query = tile_query(args, coll.provider.schema)
    key = (coll.id, revision, tms.id, z, y, x, tuple(sorted(args.items(multi=True))))
    if revision is not None:
        found = _cache().get(key)
        if found is not None:
            return found
    tile = coll.provider.tile(
        TileRequest(
            layer=coll.id,
            crs=tms.crs,
            bounds=tms.tile_bounds(z, x, y),
            zoom=z,
            extent=options["extent"],
            buffer=options["buffer"],
            max_features=options["max_features"],
            simplify=options["simplify"],
            client_gone=_client_gone(),
        ),
        query,
    )
    if revision is not None:
        _cache().put(key, tile)
    return tile


def _require_read(colls: list[Collection]) -> None:
    """Access to the tiles' collections, checked once the registry is current (auth.SELF_CHECKED)."""
    state = _state()
    for coll in colls:
        state.auth.require_collection(current_identity(), coll, "read")


def _client_gone() -> Callable[[], bool] | None:
    """Whether the client closed its connection (gunicorn hands us its socket), or None."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone


def _tile_response(tile: bytes) -> Response:
    """Empty tiles are 204 (or an empty MVT); gzip only for clients that ask for it."""
    settings = current_app.config["GEOHARBOR"]["server"]["tiles"]
    etag = '"' + hashlib.blake2b(tile, digest_size=12).hexdigest() + '"'
    # Without a max-age clients revalidate every tile: a cheap 304 unless an edit changed it.
    max_age = settings["max_age"]
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={max_age}" if max_age else "public, no-cache",
        "Vary": "Accept-Encoding",
    }
    if request.if_none_match and request.if_none_match.contains(etag.strip('"')):
        return Response(status=304, headers=headers)
    if not tile and settings["empty"] == "204":
        return Response(status=204, headers=headers)
    body = tile
    if len(tile) >= settings["gzip_min_bytes"] and "gzip" in (request.headers.get("Accept-Encoding") or ""):
        body = gzip.compress(tile, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return Response(body, mimetype=MVT, headers=headers)


# -- tile matrix sets -----------------------------------------------------------------
@blueprint.route("/tileMatrixSets")
def tile_matrix_sets() -> Response:
    return _json(
        {
            "tileMatrixSets": [
                {
                    "id": t.id,
                    "title": t.id,
                    "uri": t.uri,
                    "links": [
                        {"rel": "self", "type": "application/json", "href": url(f"/tileMatrixSets/{t.id}")}
                    ],
                }
                for t in TILE_MATRIX_SETS.values()
            ]
        }
    )


@blueprint.route("/tileMatrixSets/<tms_id>")
def tile_matrix_set(tms_id: str) -> Response:
    return _json(get_tms(tms_id).document())


# -- one collection's tilesets ------------------------------------------------------------
def _tiling_scheme_link(tms: TileMatrixSet) -> dict[str, str]:
    return {
        "rel": REL + "tiling-scheme",
        "type": "application/json",
        "href": url(f"/tileMatrixSets/{tms.id}"),
    }


def _tileset_summary(base: str, tms: TileMatrixSet) -> dict[str, Any]:
    return {
        "title": tms.id,
        "dataType": "vector",
        "crs": tms.crs.uri,
        "tileMatrixSetURI": tms.uri,
        "links": [
            {"rel": "self", "type": "application/json", "href": f"{base}/{tms.id}"},
            _tiling_scheme_link(tms),
        ],
    }


@blueprint.route("/collections/<cid>/tiles")
def collection_tilesets(cid: str) -> Response:
    coll = _state().registry.get(cid)
    base = url(f"/collections/{cid}/tiles")
    return _json(
        {
            "links": [
                {"rel": "self", "type": "application/json", "href": base},
                {"rel": "collection", "type": "application/json", "href": url(f"/collections/{cid}")},
            ],
            "tilesets": [_tileset_summary(base, t) for t in TILE_MATRIX_SETS.values()],
            "title": coll.title,
        }
    )


def _layer_description(coll: Collection) -> dict[str, Any]:
    schema = coll.provider.schema
    kind = (schema.geometry_type or "GEOMETRY").upper().removeprefix("MULTI")
    dimension = {"POINT": 0, "LINESTRING": 1, "POLYGON": 2}.get(kind)
    layer: dict[str, Any] = {
        "id": coll.id,
        "title": coll.title,
        "dataType": "vector",
        "minTileMatrix": str(coll.tiles["minzoom"]),
        "maxTileMatrix": str(coll.tiles["maxzoom"]),
        "propertiesSchema": {
            "type": "object",
            "properties": {name: f.json_schema() for name, f in schema.fields.items()},
        },
    }
    if dimension is not None:
        layer["geometryDimension"] = dimension
    return layer


@blueprint.route("/collections/<cid>/tiles/<tms_id>")
def collection_tileset(cid: str, tms_id: str) -> Response:
    coll = _state().registry.get(cid)
    tms = get_tms(tms_id)
    bbox = coll.provider.schema.bbox or (-180.0, -90.0, 180.0, 90.0)
    base = url(f"/collections/{cid}/tiles/{tms.id}")
    limits = []
    for z in range(coll.tiles["minzoom"], min(coll.tiles["maxzoom"], tms.max_zoom) + 1):
        min_col, max_col, min_row, max_row = tms.tile_limits(z, bbox)
        limits.append(
            {
                "tileMatrix": str(z),
                "minTileRow": min_row,
                "maxTileRow": max_row,
                "minTileCol": min_col,
                "maxTileCol": max_col,
            }
        )
    return _json(
        {
            "title": f"{coll.title} ({tms.id})",
            "dataType": "vector",
            "crs": tms.crs.uri,
            "tileMatrixSetURI": tms.uri,
            "tileMatrixSetLimits": limits,
            "layers": [_layer_description(coll)],
            "boundingBox": {
                "lowerLeft": list(bbox[:2]),
                "upperRight": list(bbox[2:]),
                "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84",
            },
            "links": [
                {"rel": "self", "type": "application/json", "href": base},
                _tiling_scheme_link(tms),
                {"rel": REL + "geodata", "type": "application/json", "href": url(f"/collections/{cid}")},
                {
                    "rel": "item",
                    "type": MVT,
                    "templated": True,
                    "href": base + "/{tileMatrix}/{tileRow}/{tileCol}",
                },
                {
                    "rel": "describedby",
                    "type": "application/json",
                    "title": "TileJSON",
                    "href": base + "/tilejson.json",
                },
            ],
        }
    )


def _tilejson(colls: list[Collection], tms: TileMatrixSet, template: str, name: str) -> dict[str, Any]:
    west, south, east, north = -180.0, -90.0, 180.0, 90.0
    boxes = [c.provider.schema.bbox for c in colls if c.provider.schema.bbox]
    if boxes:
        west, south = min(b[0] for b in boxes), min(b[1] for b in boxes)
        east, north = max(b[2] for b in boxes), max(b[3] for b in boxes)
    minzoom = min(c.tiles["minzoom"] for c in colls)
    maxzoom = min(max(c.tiles["maxzoom"] for c in colls), tms.max_zoom)
    return {
        "tilejson": "3.0.0",
        "name": name,
        "scheme": "xyz",
        # MapLibre reads {z}/{x}/{y}; OGC paths are z/row/col, so y comes before x here.
        "tiles": [template],
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": [west, south, east, north],
        "center": [(west + east) / 2, (south + north) / 2, minzoom],
        "vector_layers": [
            {
                "id": c.id,
                "description": c.description,
                "minzoom": c.tiles["minzoom"],
                "maxzoom": min(c.tiles["maxzoom"], tms.max_zoom),
                "fields": {n: f.type for n, f in c.provider.schema.fields.items()},
            }
            for c in colls
        ],
    }


@blueprint.route("/collections/<cid>/tiles/<tms_id>/tilejson.json")
def collection_tilejson(cid: str, tms_id: str) -> Response:
    coll = _state().registry.get(cid)
    tms = get_tms(tms_id)
    query = f"?{request.query_string.decode()}" if request.query_string else ""
    template = url(f"/collections/{cid}/tiles/{tms.id}") + "/{z}/{y}/{x}" + query
    return _json(_tilejson([coll], tms, template, coll.title))


@blueprint.route("/collections/<cid>/tiles/<tms_id>/<z>/<y>/<x>")
def collection_tile(cid: str, tms_id: str, z: str, y: str, x: str) -> Response:
    tms = get_tms(tms_id)
    zi, yi, xi = _coordinates(tms, z, y, x)
    [(coll, revision)] = _state().registry.tile_state([cid])
    _require_read([coll])
    args = request.args.copy()
    args.pop("f", None)
    return _tile_response(_layer_tile(coll, revision, tms, zi, yi, xi, args))


# -- composite tiles: several collections, one layer each ---------------------------------------
def _composite_ids() -> list[str]:
    raw = request.args.get("collections", "")
    ids = [c.strip() for c in raw.split(",") if c.strip()]
    if not ids:
        raise InvalidQuery("collections: name one or more collections, comma-separated")
    if len(ids) > MAX_COMPOSITE:
        raise InvalidQuery(f"collections: at most {MAX_COMPOSITE} collections in one tile")
    unknown = [k for k in request.args if k not in ("collections", "f")]
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:60]!r}")
    return list(dict.fromkeys(ids))


@blueprint.route("/tiles/<tms_id>/tilejson.json")
def composite_tilejson(tms_id: str) -> Response:
    registry = _state().registry
    colls = [registry.get(cid) for cid in _composite_ids()]
    tms = get_tms(tms_id)
    names = ",".join(c.id for c in colls)
    template = url(f"/tiles/{tms.id}") + "/{z}/{y}/{x}?collections=" + names
    return _json(_tilejson(colls, tms, template, names))


@blueprint.route("/tiles/<tms_id>/<z>/<y>/<x>")
def composite_tile(tms_id: str, z: str, y: str, x: str) -> Response:
    ids = _composite_ids()
    tms = get_tms(tms_id)
    zi, yi, xi = _coordinates(tms, z, y, x)
    colls = _state().registry.tile_state(ids)
    _require_read([c for c, _ in colls])
    # A tile is a sequence of layers: concatenated single-layer tiles are one valid tile.
    tile = b"".join(_layer_tile(c, rev, tms, zi, yi, xi, MultiDict()) for c, rev in colls)
    return _tile_response(tile)


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), mimetype="application/json")
