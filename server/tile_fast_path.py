"""Cached tiles answered before Flask: the lean path of a warm tile request.

A map client asks for the same tiles again and again, and most of them are in the
worker's cache. For those, what a request costs is mostly Flask's (request context,
routing, the request hooks, the response object), not the tile's. :class:`CachedTiles`
sits in front of the Flask application and answers a tile request itself when all of
these hold:

* ``GET /collections/{id}/tiles/{tms}/{z}/{y}/{x}`` with no query string, or
  ``GET /tiles/{tms}/{z}/{y}/{x}?collections=...`` (composite) with no other parameter;
* the caller presents no key and may read the collections anonymously (every caller
  may in community mode);
* the tile is in this process's cache under the collection's current revision, read
  for this request with ``Registry.tile_state`` exactly as the Flask route reads it
  (the registry generation too, so a layer deleted or re-pointed elsewhere is seen).

Anything else (a miss, a key, a collection not readable anonymously, parameters, an
error) goes to Flask unchanged, which then does everything it always does; so does
every request when rate limits are configured, since each request must be counted.
The tile, the status and the headers come from the functions the Flask routes use
(server/tiles.py, server/cors.py): both paths give the same answer, byte for byte.

Flask's request hooks do not run for these answers. What must see every request
(request metrics) registers a callable in ``app.extensions[ANSWERED]``: it is told
the route, the status, the seconds taken and the number of cached layers served.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.wrappers import Request, Response

from providers.errors import ProviderError
from providers.tiles import TILE_MATRIX_SETS
from server.auth import ANONYMOUS, Auth, presented_key
from server.cors import Cors
from server.registry import Collection, Registry
from server.tiles import (
    NO_ARGS,
    CachedTile,
    TileCache,
    cached_layer,
    composite_ids,
    composite_layers,
    probably_cached,
    tile_answer,
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: The tile routes of server/tiles.py, as paths (werkzeug matches ``<cid>`` as any text without "/").
COLLECTION_TILE = re.compile(r"/collections/([^/]+)/tiles/([^/]+)/([0-9]+)/([0-9]+)/([0-9]+)")
COMPOSITE_TILE = re.compile(r"/tiles/([^/]+)/([0-9]+)/([0-9]+)/([0-9]+)")
#: The URL rules of those routes, as Flask names them (for request metrics).
COLLECTION_RULE = "/collections/<cid>/tiles/<tms_id>/<z>/<y>/<x>"
COMPOSITE_RULE = "/tiles/<tms_id>/<z>/<y>/<x>"
#: Status lines as werkzeug writes them, so that both paths send the same bytes.
STATUS = {code: Response(status=code).status for code in (200, 204, 304)}
#: ``app.extensions`` key of the callables told of each answer: (rule, status, seconds, layers).
ANSWERED = "geoharbor.tile_fast_path.answered"

Observer = Callable[[str, int, float, int], None]


class CachedTiles:
    """WSGI middleware: tile requests this process can answer from its cache, else ``app``."""

    def __init__(self, app: WSGIApp, flask_app: Flask, cors: Cors) -> None:
        self.app = app
        state = flask_app.extensions["geoharbor"]
        self.registry: Registry = state.registry
        self.auth: Auth = state.auth
        self.cache: TileCache = state.tile_cache
        self.settings: dict[str, Any] = flask_app.config["GEOHARBOR"]["server"]["tiles"]
        self.cors = cors
        self.observers: list[Observer] = flask_app.extensions.setdefault(ANSWERED, [])

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "GET":
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            found = self._tile(environ)
        except ProviderError:
            found = None  # the route meets it again and answers it in its format
        if found is None:
            return self.app(environ, start_response)
        rule, layers, tile, key = found
        status, headers, body = tile_answer(self.cache, self.settings, tile, key, environ)
        headers += self.cors.headers(environ.get("HTTP_ORIGIN"), "GET", None)
        start_response(STATUS[status], headers)
        for observer in self.observers:
            observer(rule, status, time.perf_counter() - started, layers)
        return [body]

    def _tile(self, environ: dict[str, Any]) -> tuple[str, int, CachedTile, tuple | None] | None:
        """The route, the number of layers, the cached tile and its cache key answering this
        request; None for Flask."""
        path = environ.get("PATH_INFO", "")
        if not path.isascii():  # werkzeug's decoding of a WSGI path, for ids beyond ASCII
            path = path.encode("latin-1").decode("utf-8", "replace")
        if not environ.get("QUERY_STRING"):
            found = COLLECTION_TILE.fullmatch(path)
            layer = self._collection_tile(environ, *found.groups()) if found else None
            return None if layer is None else (COLLECTION_RULE, 1, *layer)
        found = COMPOSITE_TILE.fullmatch(path)
        layers = self._composite_tile(environ, *found.groups()) if found else None
        return None if layers is None else (COMPOSITE_RULE, len(layers), composite_layers(layers), None)

    def _collection_tile(
        self, environ: dict[str, Any], cid: str, tms_id: str, z: str, y: str, x: str
    ) -> tuple[CachedTile, tuple | None] | None:
        coordinates = self._coordinates(tms_id, z, y, x)
        if coordinates is None or presented_key(Request(environ)) is not None:
            return None
        zi, yi, xi = coordinates
        if not probably_cached(self.cache, cid, tms_id, zi, yi, xi, NO_ARGS):
            return None  # to be built: the route does it in the round trip of the revision read
        [(coll, revision)] = self.registry.tile_state([cid])
        if not self._readable([coll]):
            return None
        return cached_layer(self.cache, coll, revision, TILE_MATRIX_SETS[tms_id], zi, yi, xi, NO_ARGS)

    def _composite_tile(
        self, environ: dict[str, Any], tms_id: str, z: str, y: str, x: str
    ) -> list[CachedTile] | None:
        coordinates = self._coordinates(tms_id, z, y, x)
        request = Request(environ)
        if coordinates is None or presented_key(request) is not None:
            return None
        ids = composite_ids(request.args)
        zi, yi, xi = coordinates
        if not all(probably_cached(self.cache, cid, tms_id, zi, yi, xi, NO_ARGS) for cid in ids):
            return None  # some layer to build, or outside a collection's zooms: the route's work
        colls = self.registry.tile_state(ids)
        if not self._readable([coll for coll, _ in colls]):
            return None
        tms = TILE_MATRIX_SETS[tms_id]
        layers = [cached_layer(self.cache, c, revision, tms, zi, yi, xi, NO_ARGS) for c, revision in colls]
        if any(layer is None for layer in layers):
            return None
        return [layer[0] for layer in layers if layer is not None]

    @staticmethod
    def _coordinates(tms_id: str, z: str, y: str, x: str) -> tuple[int, int, int] | None:
        """The tile's matrix, row and column; None when the route must answer (unknown set, outside it)."""
        tms = TILE_MATRIX_SETS.get(tms_id)
        if tms is None:
            return None
        try:
            zi, yi, xi = int(z), int(y), int(x)  # digits, but perhaps more than int() takes
            tms.check(zi, xi, yi)
        except (ValueError, ProviderError):
            return None
        return zi, yi, xi

    def _readable(self, colls: list[Collection]) -> bool:
        """Whether an anonymous caller may read every collection (checked once the registry is current)."""
        try:
            for coll in colls:
                self.auth.require_collection(ANONYMOUS, coll, "read")
        except ProviderError:
            return False
        return True


def install(app: Flask, cors: Cors) -> None:
    """Put :class:`CachedTiles` in front of the app, unless tiles are not cached or requests
    are rate limited (every request must then reach the limiter)."""
    rates = app.config["GEOHARBOR"]["auth"].get("rate_limit") or {}
    if app.extensions["geoharbor"].tile_cache.enabled and not (rates.get("anonymous") or rates.get("key")):
        app.wsgi_app = CachedTiles(app.wsgi_app, app, cors)  # type: ignore[method-assign]
