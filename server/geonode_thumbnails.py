"""Thumbnails of catalogue resources: rendered from the data, kept in the store, fresh after edits.

``GET /api/v2/resources/{pk}/thumbnail.png`` answers a dataset's picture
(:func:`providers.thumbnails.render`). It is stored as a record (kind ``thumbnail``,
key = the resource pk) holding the PNG and the collection *revision* it was drawn at,
so every worker serves the same bytes. Rendering is lazy: a read that finds the
revision moved (a feature was written since) draws it again, so a thumbnail is never
older than the data and costs nothing until someone looks. A layer that keeps no
revision (a remote WFS) is drawn again once its picture is an hour old.

``set_thumbnail`` (PUT or POST: an uploaded image in ``file``, or a base64 ``data:``
URL in JSON) stores a picture of the client's, kept as it is; ``set_thumbnail_from_bbox``
(``{"bbox": [minx, miny, maxx, maxy], "srid": "EPSG:3857"}``) draws the data of that
box instead of the whole extent, and keeps that box for later redraws. Both need the
right to change the resource; reading needs the right to read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from PIL import Image, UnidentifiedImageError

from providers import thumbnails
from providers.errors import InvalidData, InvalidQuery, NotFound
from providers.store import Record, Store
from server import bodies, datasets, errors
from server.auth import Action, current_auth, current_identity
from server.links import base_url
from server.registry import Collection
from server.responses import json_response

blueprint = Blueprint("geonode_thumbnails", __name__)

PREFIX = "/api/v2/resources"
KIND = "thumbnail"
#: Seconds a picture of a layer without revisions is served before it is drawn again.
UNVERSIONED_TTL_S = 3600.0
#: The largest picture a client may set (bytes as sent) and its largest side once stored.
MAX_IMAGE_BYTES = 10 << 20
MAX_SIDE = 1200


def install(app: Flask) -> None:
    """Register the routes; their errors answer ``{"detail": ...}`` like the rest of /api/v2."""
    app.register_blueprint(blueprint, url_prefix=PREFIX)
    errors.use_format(app, PREFIX, datasets.detail_error)


def thumbnail_url(pk: int, base: str, version: str | None = None) -> str:
    """Where a resource's thumbnail is served (``version`` makes a changed picture a new URL)."""
    return f"{base}{PREFIX}/{pk}/thumbnail.png" + (f"?v={version}" if version else "")


def _state() -> Any:
    return current_app.extensions["geoharbor"]


def _store() -> Store:
    return _state().registry.store


def _catalogue() -> Any:
    """The catalogue index, brought up to date with the registry when the app follows it."""
    if "geoharbor_catalogue" in current_app.extensions:
        from server import catalogue_sync

        return catalogue_sync.current()
    from providers.catalogue import Catalogue

    return Catalogue(_store())


def dataset_collection(pk: int, action: Action) -> tuple[dict[str, Any], Collection]:
    """The catalogue resource ``pk`` and its collection, if the caller may ``action`` it.

    404 for what the caller may not read (its existence does not leak) and for
    resources with no data to draw (maps, documents).
    """
    resource = _catalogue().get(pk)
    registry = _state().registry
    coll = registry.collections.get(resource.get("alternate") or "")
    if resource.get("resource_type") != "dataset" or coll is None:
        raise NotFound(f"resource {pk} has no data to draw a thumbnail from")
    current_auth().require_collection(current_identity(), coll, action)
    return resource, coll


def _find(pk: int, store: Store | None = None) -> Record | None:
    return (store if store is not None else _store()).find(KIND, str(pk))


def _save(pk: int, body: dict[str, Any], store: Store | None = None) -> Record:
    store = store if store is not None else _store()
    found = _find(pk, store)
    body = {**body, "updated": time.time()}
    if found is None:
        from providers.errors import Conflict

        try:
            return store.insert(KIND, body, key=str(pk))
        except Conflict:  # another worker drew it at the same moment: ours is as good
            found = _find(pk, store)
            if found is None:
                raise
    return store.update(KIND, found.id, body, key=str(pk))


def _stale(record: Record | None, revision: int | None) -> bool:
    if record is None:
        return True
    body = record.body
    if body.get("custom"):
        return False
    if revision is None:
        return time.time() - float(body.get("updated") or 0) > UNVERSIONED_TTL_S
    return body.get("revision") != revision


def current_png(
    pk: int, coll: Collection, store: Store | None = None, force: bool = False
) -> tuple[bytes, str]:
    """The resource's PNG, drawn again first when the data moved on (or ``force``); (bytes, etag).

    ``store`` for callers outside a request (the ``update_thumbnails`` command)."""
    revision = coll.provider.revision()
    record = _find(pk, store)
    if _stale(record, revision) or (force and record is not None and not record.body.get("custom")):
        kept = record.body if record is not None else {}
        bbox = tuple(kept["bbox"]) if kept.get("bbox") else None
        srid = int(kept.get("srid") or 4326)
        png = thumbnails.render(coll.provider, bbox, srid)  # type: ignore[arg-type]
        record = _save(
            pk,
            {
                "png": base64.b64encode(png).decode(),
                "revision": revision,
                "bbox": kept.get("bbox"),
                "srid": srid,
            },
            store,
        )
    data = base64.b64decode(record.body["png"])  # type: ignore[union-attr]
    return data, f'"{hashlib.blake2b(data, digest_size=12).hexdigest()}"'


@blueprint.route("/<int:pk>/thumbnail.png", methods=["GET", "HEAD"])
def get_thumbnail(pk: int) -> Response:
    _, coll = dataset_collection(pk, "read")
    data, etag = current_png(pk, coll)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in {t.strip() for t in (request.headers.get("If-None-Match") or "").split(",")}:
        return Response(status=304, headers=headers)
    return Response(data, mimetype="image/png", headers=headers)


# -- setting them -----------------------------------------------------------------------------
def _image() -> bytes:
    """The picture a client sent: a multipart ``file`` (or any file part), or base64 in JSON."""
    if request.content_length is not None and request.content_length > MAX_IMAGE_BYTES * 2:
        raise InvalidData(f"the image is larger than {MAX_IMAGE_BYTES >> 20} MB")
    upload = request.files.get("file") or next(iter(request.files.values()), None)
    if upload is not None:
        return upload.stream.read(MAX_IMAGE_BYTES + 1)
    text = request.form.get("file") or request.form.get("thumbnail")
    if text is None:
        body = bodies.json_body()
        if not isinstance(body, dict):
            raise InvalidQuery(
                'send the image as a multipart "file", or JSON {"file": "data:image/png;base64,..."}'
            )
        text = body.get("file") or body.get("thumbnail")
    if not isinstance(text, str) or not text:
        raise InvalidQuery(
            'send the image as a multipart "file", or JSON {"file": "data:image/png;base64,..."}'
        )
    if text.startswith(("http://", "https://")):
        raise InvalidData("a thumbnail URL is not fetched: send the image itself")
    _, _, encoded = text.partition("base64,") if "base64," in text else ("", "", text)
    try:
        return base64.b64decode(encoded, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise InvalidData("the image is not valid base64") from exc


def as_png(data: bytes) -> bytes:
    """A client's picture checked by Pillow and stored as PNG (at most MAX_SIDE pixels a side)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidData(f"the image is larger than {MAX_IMAGE_BYTES >> 20} MB")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > 50_000_000:
            raise InvalidData("the image has too many pixels")
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        out = io.BytesIO()
        image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB").save(out, format="PNG")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidData("the file is not an image Pillow can read (PNG, JPEG, GIF, WebP ...)") from exc
    return out.getvalue()


def _published(pk: int, data: bytes) -> str:
    """The resource's thumbnail URL, versioned by the picture, written into its catalogue row."""
    url = thumbnail_url(pk, base_url(), hashlib.blake2b(data, digest_size=6).hexdigest())
    try:
        _catalogue().patch(pk, {"thumbnail_url": url})
    except InvalidQuery:
        pass  # a catalogue that keeps no thumbnail_url: the route still serves the picture
    return url


@blueprint.route("/<int:pk>/set_thumbnail", methods=["PUT", "POST"])
def set_thumbnail(pk: int) -> Response:
    dataset_collection(pk, "write")
    png = as_png(_image())
    _save(pk, {"png": base64.b64encode(png).decode(), "custom": True, "revision": None})
    return json_response({"thumbnail_url": _published(pk, png)})


@blueprint.route("/<int:pk>/set_thumbnail_from_bbox", methods=["POST"])
def set_thumbnail_from_bbox(pk: int) -> Response:
    _, coll = dataset_collection(pk, "write")
    body = bodies.json_body()
    if not isinstance(body, dict):
        raise InvalidQuery('the body must be {"bbox": [minx, miny, maxx, maxy], "srid": "EPSG:4326"}')
    bbox, srid = _bbox(body.get("bbox")), _srid(body.get("srid", "EPSG:4326"))
    png = thumbnails.render(coll.provider, bbox, srid)
    _save(
        pk,
        {
            "png": base64.b64encode(png).decode(),
            "revision": coll.provider.revision(),
            "bbox": list(bbox),
            "srid": srid,
        },
    )
    return json_response(
        {"message": "Thumbnail correctly created.", "success": True, "thumbnail_url": _published(pk, png)}
    )


def _bbox(value: Any) -> tuple[float, float, float, float]:
    if isinstance(value, dict):
        value = [value.get(k) for k in ("minx", "miny", "maxx", "maxy")]
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise InvalidQuery("bbox must be [minx, miny, maxx, maxy]")
    try:
        box = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidQuery("bbox must be four numbers: minx, miny, maxx, maxy") from None
    return box  # type: ignore[return-value]


def _srid(value: Any) -> int:
    text = str(value).strip().upper().removeprefix("EPSG:")
    if not text.isdigit() or not 0 < int(text) < 1_000_000:
        raise InvalidQuery(f"srid must be an EPSG code such as EPSG:4326, not {str(value)[:40]!r}")
    return int(text)
