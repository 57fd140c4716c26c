"""The OGC API also under ``/ogc/`` (the GISPulse text's address), and its ``.mvt`` tile URL.

:class:`OgcMount` moves ``/ogc`` from the request path into the WSGI mount prefix
(``SCRIPT_NAME``) for the OGC API paths only, so the same routes answer with the
same checks, and every link they build (``server.links.base_url`` adds the mount
prefix, as does pygeoapi's base URL taken from it) points back under ``/ogc``. Paths
of the other APIs (REST, MapFish, datasets ...) are not mirrored: ``/ogc/rest/...``
stays a 404.

``/collections/{id}/tiles/{z}/{x}/{y}.mvt`` is the collection's WebMercatorQuad tile,
with x before y as the text writes it (OGC API - Tiles orders them ``{z}/{y}/{x}``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Response

from server import tiles

blueprint = Blueprint("ogc_mount", __name__)

PREFIX = "/ogc"
#: The first segments of the OGC API paths mirrored under the prefix ("" is the landing page), with
#: the map viewer's pages and the files their HTML links to (pygeoapi's /static, our /assets).
OGC_PATHS = frozenset(
    {
        "",
        "conformance",
        "openapi",
        "collections",
        "tileMatrixSets",
        "tiles",
        "map",
        "style.json",
        "static",
        "assets",
    }
)
#: The tile matrix set of the ``.mvt`` tile URL.
MVT_TILE_MATRIX_SET = "WebMercatorQuad"


class OgcMount:
    """WSGI middleware serving the OGC API paths under :data:`PREFIX` as well as at the root."""

    def __init__(self, app: Callable[..., Iterable[bytes]], prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == self.prefix or path.startswith(self.prefix + "/"):
            rest = path[len(self.prefix) :]
            if rest.lstrip("/").split("/", 1)[0] in OGC_PATHS:
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "").rstrip("/") + self.prefix
                environ["PATH_INFO"] = rest or "/"
        return self.app(environ, start_response)


@blueprint.route("/collections/<cid>/tiles/<int:z>/<int:x>/<int:y>.mvt")
def mvt_tile(cid: str, z: int, x: int, y: int) -> Response:
    """The collection's WebMercatorQuad tile at column ``x``, row ``y`` (same cache and checks)."""
    return tiles.collection_tile(cid, MVT_TILE_MATRIX_SET, str(z), str(y), str(x))
