"""REST layer export (``/layers/{id}/export/{format}``): a layer's features as a GIS file.

The features are read through the layer's provider with the shared query model
(``where`` is CQL2 text, ``bounds`` a box in the output CRS) and written by GDAL
through pyogrio (:mod:`providers.export`) into a private temporary directory. The
finished file is opened, the directory removed at once, and the open file streamed
to the client: nothing is left on disk whatever happens to the download.

``{id}`` is a layer id; a configured collection may be exported by its collection
id too, as it has no layer id. Exporting is reading: the access hook of
:mod:`server.auth` lets only a caller who may read the layer (or collection) through.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from flask import Response, current_app, request

from providers.base import Query
from providers.errors import NotFound
from providers.export import FORMATS, export, safe_name
from server.attachments import written_attachment
from server.registry import Collection, Registry
from server.rest import blueprint, flag
from server.rest_layers import (
    attribute_filter,
    parse_bounds,
    path_parameter,
    query_parameter,
    request_crs,
)
from server.rest_tables import errors

#: An export holds at most this many features (more is a 413: narrow it with where/bounds).
MAX_FEATURES = 1_000_000


def registry() -> Registry:
    return current_app.extensions["geoharbor"].registry


def layer_or_collection(ref: str) -> tuple[Collection, str]:
    """The collection of a layer id, or of a configured collection id; and the layer's name."""
    reg = registry()
    if ref.isdigit():
        try:
            coll = reg.layer_collection(int(ref))
        except NotFound:
            if ref not in reg.collections:
                raise
        else:
            record = reg.store.get("layer", int(ref))
            return coll, str(record.body.get("name") or coll.id)
    reg.sync()
    return reg.get(ref), ref


@blueprint.route("/layers/<layer>/export/<fmt>", methods=["GET"])
def export_layer(layer: str, fmt: str) -> Response:
    coll, name = layer_or_collection(layer)
    fmt = fmt.lower()
    zipped = flag("zip")
    if fmt.endswith(".zip"):
        fmt, zipped = fmt.removesuffix(".zip"), True
    crs = request_crs()
    query = Query(crs=crs, bbox_crs=crs, filter_crs=crs)
    if request.args.get("bounds"):
        query.bbox = parse_bounds(request.args["bounds"])
    if request.args.get("where"):
        query.filter = attribute_filter(request.args["where"])

    def write(directory: Path) -> Path:
        path = export(coll.provider, query, fmt, directory, name, MAX_FEATURES)
        return _zip_one(path) if zipped and path.suffix != ".zip" else path

    return written_attachment(
        write,
        lambda path: "application/zip" if path.suffix == ".zip" else FORMATS[fmt].media_type,
        safe_name(name),
    )


def _zip_one(path: Path) -> Path:
    archive = path.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.write(path, arcname=path.name)
    return archive


# -- OpenAPI ------------------------------------------------------------------------------------
def openapi(prefix: str) -> dict[str, Any]:
    """OpenAPI paths (under ``prefix``) of the export route."""
    content = {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in sorted({f.media_type for f in FORMATS.values()} | {"application/zip"})
    }
    paths = {
        f"{prefix}/layers/{{layer_id}}/export/{{format}}": {
            "parameters": [
                path_parameter("layer_id", "Layer id (or the id of a configured collection)", "string"),
                {
                    "name": "format",
                    "in": "path",
                    "required": True,
                    "description": "File format; shp comes zipped, a '.zip' suffix zips any",
                    "schema": {"type": "string", "enum": [*FORMATS, *(f"{f}.zip" for f in FORMATS)]},
                },
            ],
            "get": {
                "summary": "Export a layer's features as a file (written by GDAL)",
                "operationId": "restExportLayer",
                "parameters": [
                    query_parameter("where", "Attribute filter in CQL2 text"),
                    query_parameter("bounds", "minx,miny,maxx,maxy in the output CRS"),
                    query_parameter("epsg", "EPSG code of the output CRS, x/y order; default lon/lat"),
                    query_parameter("proj4", "PROJ string of the output CRS, matched to an EPSG code"),
                    query_parameter("zip", "Deliver the file in a zip archive", {"type": "boolean"}),
                ],
                "responses": {
                    "200": {
                        "description": "The file, as an attachment",
                        "headers": {
                            "Content-Disposition": {
                                "description": "attachment; filename=<layer>.<ext>",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": content,
                    },
                    **errors(400, 404, 413, 422),
                },
            },
        }
    }
    return {"paths": paths, "components": {"schemas": {}}}
