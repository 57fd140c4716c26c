"""``POST /api/portal/datasets/export`` with the portal's body: ``{"layers": [...], "format"}``.

The GISPulse portal asks for layers of datasets, ``{"layers": [{"datasetId", "layerName"}],
"format"}``, where the text's body is ``{"dataset_id", "format"}``. Both are answered
here: a body without ``layers`` goes to :func:`server.datasets.export_posted` unchanged.
One layer is the file itself, as the text's export gives it; several layers are one
zip holding a file per layer (a Shapefile's parts for ``shp``), named after the layers.
Access and conversion are those of the datasets API (read rights on every dataset named,
:func:`providers.convert.convert`), as are the errors, FastAPI's ``{"detail"}``.

This blueprint is registered before the datasets one, so that its route is the one
that answers the shared path.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from flask import Blueprint, Response

from providers.convert import FORMATS, convert
from providers.errors import InvalidData
from providers.export import safe_name
from server import bodies, datasets
from server.attachments import written_attachment

blueprint = Blueprint("portal_export", __name__)

#: The most layers one export may hold.
MAX_LAYERS = 50


@blueprint.route("/api/portal/datasets/export", methods=["POST"])
def export() -> Response:
    body = bodies.json_body()
    if not isinstance(body, dict) or "layers" not in body:
        return datasets.export_posted()
    fmt = body.get("format")
    if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
        raise InvalidData(f"format must be one of {', '.join(FORMATS)}")
    wanted = _layers(body["layers"])
    if len(wanted) == 1:
        return datasets.export_layer(wanted[0][0], fmt.lower(), wanted[0][1])
    return _export_several(wanted, fmt.lower())


def _layers(raw: Any) -> list[tuple[str, str | None]]:
    """(dataset id, layer name or None for its first layer) of each entry of ``layers``."""
    if not isinstance(raw, list) or not raw:
        raise InvalidData("layers must be a non-empty list of {datasetId, layerName}")
    if len(raw) > MAX_LAYERS:
        raise InvalidData(f"layers: at most {MAX_LAYERS} layers in one export")
    found = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidData(f"layers[{i}] must be an object {{datasetId, layerName}}")
        dataset_id = item.get("datasetId", item.get("dataset_id"))
        layer = item.get("layerName", item.get("layer_name"))
        if not isinstance(dataset_id, str) or not dataset_id:
            raise InvalidData(f"layers[{i}].datasetId is required (a dataset's id)")
        if layer is not None and not isinstance(layer, str):
            raise InvalidData(f"layers[{i}].layerName must be a layer name")
        found.append((dataset_id, layer or None))
    return found


def _export_several(wanted: list[tuple[str, str | None]], fmt: str) -> Response:
    """Every layer converted, then zipped; access to every dataset is checked before any work."""
    sources = [
        datasets.dataset_layer(datasets.find_dataset(dataset_id), layer) for dataset_id, layer in wanted
    ]

    def write(directory: Path) -> Path:
        archive = directory / f"export-{fmt}.zip"
        taken: set[str] = set()
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
            for n, (path, layer, driver) in enumerate(sources):
                name = _unique(safe_name(layer.name, "layer"), taken)
                work = directory / str(n)
                work.mkdir()
                result = convert(path, layer, driver, fmt, work, name)
                # A Shapefile comes zipped: its parts go into this zip instead of a zip in a zip.
                parts = [p for p in work.iterdir() if p != result] if FORMATS[fmt].zipped else [result]
                for part in sorted(parts):
                    zipped.write(part, arcname=part.name)
        return archive

    return written_attachment(write, "application/zip", f"export-{fmt}")


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate.lower() in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def openapi(prefix: str) -> dict[str, Any]:
    """The export path with both bodies; it replaces the datasets family's entry of the same path."""
    layers_body = {
        "type": "object",
        "required": ["layers", "format"],
        "properties": {
            "layers": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_LAYERS,
                "items": {
                    "type": "object",
                    "required": ["datasetId"],
                    "properties": {
                        "datasetId": {"type": "string", "format": "uuid"},
                        "layerName": {"type": "string", "description": "default: the dataset's first layer"},
                    },
                },
            },
            "format": {"type": "string", "enum": list(FORMATS)},
        },
    }
    files = {
        media: {"schema": {"type": "string", "format": "binary"}}
        for media in sorted({f.media_type for f in FORMATS.values()} | {"application/zip"})
    }
    detail = {"application/json": {"schema": {"$ref": "#/components/schemas/DatasetError"}}}
    return {
        "paths": {
            f"{prefix}/api/portal/datasets/export": {
                "post": {
                    "summary": "Layers of datasets as a file (several layers: a zip of a file each)",
                    "operationId": "portalDatasetsExport",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/PortalExport"},
                                        {"$ref": "#/components/schemas/DatasetExport"},
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {"description": "The file as an attachment", "content": files},
                        "404": {"description": "No such dataset or layer", "content": detail},
                        "422": {"description": "Invalid body", "content": detail},
                    },
                }
            }
        },
        "components": {"schemas": {"PortalExport": layers_body}},
    }
