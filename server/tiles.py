"""OGC API - Tiles: tile matrix sets, tilesets, vector tiles, TileJSON, composite tiles.

A tile is cached in this process under the collection's revision, which every write
through geoharbor bumps in the data's own store, in the write's transaction. Each
request reads the revision first, so no worker ever serves a tile older than the
last write, whichever worker made it. A tile this process has not cached is built
in the same round trip as that read (see :func:`_unseen_tile`). ETags are hashes of
the tile's bytes, computed once per build: a tile that an edit did not change keeps
its ETag and still answers 304.

A request for a tile this process holds under the current revision is answered before
Flask by server/tile_fast_path.py. Both paths read revisions with ``Registry.tile_state``,
find tiles with :func:`cached_layer` (named by :func:`tile_key`), join layers with
:func:`composite_layers` and answer with :func:`tile_answer`: their answers are the same.
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
from werkzeug.http import parse_etags

from providers.base import TileRequest
from providers.errors import InvalidQuery, NotFound, ProviderError
from providers.postgis import PostGISProvider
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

#: The query of a tile asked for without parameters.
NO_ARGS: MultiDict = MultiDict()


class TileCache:
    """An LRU of encoded tiles bounded in bytes, shared by the threads of one process.

    An entry is a :class:`CachedTile`; its gzip form, once a client asked for it, is
    kept beside it under the same key plus ``"gzip"``.
    """

    def __init__(self, max_bytes: int) -> None:
        self._cache: LRUCache = LRUCache(maxsize=max(1, max_bytes), getsizeof=_cached_size)
        self._lock = threading.Lock()
        self.enabled = max_bytes > 0
        #: The last revision read of each collection: a tile cached under it is probably current.
        self.revisions: dict[str, int] = {}

    def get(self, key: tuple) -> CachedTile | None:
        if not self.enabled:
            return None
        with self._lock:
            return self._cache.get(key)

    def put(self, key: tuple, tile: CachedTile) -> None:
        if self.enabled:
            with self._lock:
                self._cache[key] = tile

    def clear(self) -> None:
        """Forget every tile: a collection id may now name another table."""
        with self._lock:
            self._cache.clear()
            self.revisions.clear()


class CachedTile:
    """A tile's bytes with its ETag, hashed once when the tile was built."""

    __slots__ = ("data", "etag")

    def __init__(self, data: bytes, etag: str | None = None) -> None:
        self.data = data
        self.etag = (
            etag if etag is not None else '"' + hashlib.blake2b(data, digest_size=12).hexdigest() + '"'
        )


def _cached_size(tile: CachedTile) -> int:
    return len(tile.data) + 96


#: The tile of a collection outside its zoom range.
EMPTY = CachedTile(b"")


def _state():
    return current_app.extensions["geoharbor"]


def _cache() -> TileCache:
    return _state().tile_cache


def tile_key(cid: str, revision: int, tms_id: str, z: int, y: int, x: int, args: MultiDict) -> tuple:
    """The name of a collection's tile in the cache, for every path that serves tiles.

    The revision is part of it: a tile cached before a write is never found after it.
    """
    return (cid, revision, tms_id, z, y, x, tuple(sorted(args.items(multi=True))) if args else ())


def _coordinates(tms: TileMatrixSet, z: str, y: str, x: str) -> tuple[int, int, int]:
    try:
        zi, yi, xi = int(z), int(y), int(x)
    except ValueError:
        raise NotFound("tile coordinates are integers") from None
    tms.check(zi, xi, yi)
    return zi, yi, xi


def _tile_request(coll: Collection, tms: TileMatrixSet, z: int, y: int, x: int) -> TileRequest:
    options = coll.tiles
    return TileRequest(
        layer=coll.id,
        crs=tms.crs,
        bounds=tms.tile_bounds(z, x, y),
        zoom=z,
        extent=options["extent"],
        buffer=options["buffer"],
        max_features=options["max_features"],
        simplify=options["simplify"],
        client_gone=_client_gone(),
    )


def cached_layer(
    cache: TileCache,
    coll: Collection,
    revision: int | None,
    tms: TileMatrixSet,
    z: int,
    y: int,
    x: int,
    args: MultiDict,
) -> tuple[CachedTile, tuple | None] | None:
    """One collection's MVT layer if it need not be built: outside the collection's zooms
    (empty), or cached under ``revision``; with its cache key (None when not cached).

    ``revision`` must have been read for this request (``Registry.tile_state``).
    """
    if not coll.tiles["minzoom"] <= z <= coll.tiles["maxzoom"]:
        return EMPTY, None
    if revision is None:
        return None
    cache.revisions[coll.id] = revision
    key = tile_key(coll.id, revision, tms.id, z, y, x, args)
    found = cache.get(key)
    return None if found is None else (found, key)


def layer_tile(
    cache: TileCache,
    coll: Collection,
    revision: int | None,
    tms: TileMatrixSet,
    z: int,
    y: int,
    x: int,
    args: MultiDict,
) -> tuple[CachedTile, tuple | None]:
    """One collection's MVT layer, from the cache when its revision has not moved, else
    built (and cached when the revision is known); with its cache key (None when not cached)."""
    found = cached_layer(cache, coll, revision, tms, z, y, x, args)
    if found is not None:
        return found
    # The parameters are checked here: a cached tile's were, when it was built.
    query = tile_query(args, coll.provider.schema)
    tile = CachedTile(coll.provider.tile(_tile_request(coll, tms, z, y, x), query))
    if revision is None:
        return tile, None
    key = tile_key(coll.id, revision, tms.id, z, y, x, args)
    cache.put(key, tile)
    return tile, key


def probably_cached(cache: TileCache, cid: str, tms_id: str, z: int, y: int, x: int, args: MultiDict) -> bool:
    """Whether this process holds the tile under the last revision it read of the collection:
    then the tile is probably current, and reading the revision alone is the cheapest way
    to serve it."""
    last = cache.revisions.get(cid)
    return last is not None and cache.get(tile_key(cid, last, tms_id, z, y, x, args)) is not None


def _unseen_tile(
    coll: Collection, tms: TileMatrixSet, z: int, y: int, x: int, args: MultiDict
) -> tuple[CachedTile, tuple] | None:
    """A tile this process has not cached under the collection's last known revision,
    built in the round trip that reads the revisions; None leaves the request to the
    general path (:meth:`Registry.tile_state`, then the cache or the provider).

    The generation and the revision are read on the tile's connection just before
    its statement: when the generation shows the collections current, the revision
    read is as fresh as the general path's and the tile no older than it. Access is
    checked on what this process knows before any work and again once it is known
    current, so nothing is built for a caller refused outright.
    """
    state = _state()
    cache: TileCache = state.tile_cache
    if probably_cached(cache, coll.id, tms.id, z, y, x, args):
        return None  # reading the revisions alone is cheaper
    provider = coll.provider
    if not isinstance(provider, PostGISProvider) or not coll.tiles["minzoom"] <= z <= coll.tiles["maxzoom"]:
        return None
    keys = state.registry.revision_keys([coll])
    if keys is None:
        return None
    try:
        _require_read([coll])
    except ProviderError:
        return None  # perhaps allowed since: the general path brings the registry up to date first
    query = tile_query(args, provider.schema)
    data, revisions = provider.tile_with_revisions(_tile_request(coll, tms, z, y, x), query, keys)
    if revisions is None or not state.registry.current(revisions):
        return None
    _require_read([coll])
    revision = revisions[provider.revision_key]
    cache.revisions[coll.id] = revision
    tile, key = CachedTile(data), tile_key(coll.id, revision, tms.id, z, y, x, args)
    cache.put(key, tile)
    return tile, key


def _require_read(colls: list[Collection]) -> None:
    """Access to the tiles' collections, checked once the registry is current (auth.SELF_CHECKED)."""
    state = _state()
    for coll in colls:
        state.auth.require_collection(current_identity(), coll, "read")


def _client_gone() -> Callable[[], bool] | None:
    """Whether the client closed its connection (gunicorn hands us its socket), or None.

    Asked only about a statement still running after a while (see
    ``providers.postgis._cancel_when``), so a fast tile never pays for it.
    """
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return None

    def gone() -> bool:
        try:
            poller = select.poll()  # not select(): a threaded worker's sockets may be numbered past 1024
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0)) and sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    return gone


def tile_answer(
    cache: TileCache, settings: dict[str, Any], tile: CachedTile, key: tuple | None, environ: dict[str, Any]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The status, headers (all but CORS's) and body answering a request for ``tile``.

    Empty tiles are 204 (or an empty MVT); gzip only for clients that ask for it; 304
    when the client holds the tile (``If-None-Match``). ``key`` is the tile's cache key,
    under which its gzip form is kept too; ``settings`` are ``server.tiles``.
    """
    # Without a max-age clients revalidate every tile: a cheap 304 unless an edit changed it.
    max_age = settings["max_age"]
    headers = [
        ("ETag", tile.etag),
        ("Cache-Control", f"public, max-age={max_age}" if max_age else "public, no-cache"),
        ("Vary", "Accept-Encoding"),
    ]
    # If-None-Match compares weakly (RFC 9110 13.1.2): a proxy that gzips marks ETags weak.
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None and parse_etags(if_none_match).contains_weak(tile.etag[1:-1]):
        return 304, headers, b""
    data = tile.data
    if not data and settings["empty"] == "204":
        return 204, headers, b""
    if len(data) >= settings["gzip_min_bytes"] and "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
        data = _gzipped(cache, tile, key)
        headers.append(("Content-Encoding", "gzip"))
    headers += [("Content-Type", MVT), ("Content-Length", str(len(data)))]
    return 200, headers, data


class TileResponse(Response):
    """A response whose headers are all given: no default Content-Type on a 204 or a 304."""

    default_mimetype = None


def _tile_response(tile: CachedTile, key: tuple | None = None) -> Response:
    """:func:`tile_answer` as Flask's response (the CORS hook adds its headers after)."""
    settings = current_app.config["GEOHARBOR"]["server"]["tiles"]
    status, headers, body = tile_answer(_cache(), settings, tile, key, request.environ)
    return TileResponse(body, status=status, headers=headers)


def _gzipped(cache: TileCache, tile: CachedTile, key: tuple | None) -> bytes:
    """The tile compressed, once per cached tile rather than once per request."""
    found = cache.get((*key, "gzip")) if key is not None else None
    if found is None:
        # No time in the gzip header: every worker sends the same bytes under the tile's ETag.
        found = CachedTile(gzip.compress(tile.data, compresslevel=5, mtime=0), tile.etag)
        if key is not None:
            cache.put((*key, "gzip"), found)
    return found.data


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
    args = request.args.copy()
    args.pop("f", None)
    coll = _state().registry.collections.get(cid)
    found = _unseen_tile(coll, tms, zi, yi, xi, args) if coll is not None else None
    if found is None:
        [(coll, revision)] = _state().registry.tile_state([cid])
        _require_read([coll])
        found = layer_tile(_cache(), coll, revision, tms, zi, yi, xi, args)
    return _tile_response(*found)


# -- composite tiles: several collections, one layer each ---------------------------------------
def composite_ids(args: MultiDict) -> list[str]:
    """The collections of a composite tile (``collections=a,b``), each once, in order."""
    raw = args.get("collections", "")
    ids = [c.strip() for c in raw.split(",") if c.strip()]
    if not ids:
        raise InvalidQuery("collections: name one or more collections, comma-separated")
    if len(ids) > MAX_COMPOSITE:
        raise InvalidQuery(f"collections: at most {MAX_COMPOSITE} collections in one tile")
    unknown = [k for k in args if k not in ("collections", "f")]
    if unknown:
        raise InvalidQuery(f"unknown query parameter {unknown[0][:60]!r}")
    return list(dict.fromkeys(ids))


@blueprint.route("/tiles/<tms_id>/tilejson.json")
def composite_tilejson(tms_id: str) -> Response:
    registry = _state().registry
    colls = [registry.get(cid) for cid in composite_ids(request.args)]
    tms = get_tms(tms_id)
    names = ",".join(c.id for c in colls)
    template = url(f"/tiles/{tms.id}") + "/{z}/{y}/{x}?collections=" + names
    return _json(_tilejson(colls, tms, template, names))


def composite_layers(layers: list[CachedTile]) -> CachedTile:
    """Single-layer tiles as one tile: a tile is a sequence of layers, so their bytes
    concatenated are one valid tile."""
    return layers[0] if len(layers) == 1 else CachedTile(b"".join(layer.data for layer in layers))


@blueprint.route("/tiles/<tms_id>/<z>/<y>/<x>")
def composite_tile(tms_id: str, z: str, y: str, x: str) -> Response:
    ids = composite_ids(request.args)
    tms = get_tms(tms_id)
    zi, yi, xi = _coordinates(tms, z, y, x)
    colls = _state().registry.tile_state(ids)
    _require_read([c for c, _ in colls])
    cache = _cache()
    return _tile_response(
        composite_layers([layer_tile(cache, c, rev, tms, zi, yi, xi, NO_ARGS)[0] for c, rev in colls])
    )


def _json(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), mimetype="application/json")
