"""GeoNode's documents: any file (PDF, image, spreadsheet ...) or link, attached to resources.

``POST /api/v2/documents`` takes GeoNode's multipart form (``doc_file`` + ``title``,
``abstract``, ``linked_resources`` or ``resource`` naming datasets or maps it is
attached to) or a link-only document (``doc_url``, as a form field or JSON). The
document is a store record (kind ``document``: who owns it, its name, type and links)
and its bytes go to :mod:`providers.documents`, in the same database: every worker
and host serves it. It is a catalogue resource at once (``resource_type``
``document``, searchable, shared with ``perm_spec`` like any resource), listed, read,
patched and deleted by :mod:`server.geonode`'s routes.

The file is served where GeoNode's serializer points: ``href`` is
``/documents/{pk}/link`` (shown in the browser for images and PDFs), ``download_url``
``/documents/{pk}/download`` (an attachment); ``/api/v2/documents/{pk}/download``
answers too. A link-only document redirects to its URL.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Flask, Response, current_app, redirect, request

from providers.documents import DocumentFiles
from providers.errors import InvalidData, InvalidQuery, NotFound
from providers.files import TooLarge
from providers.store import Record
from server import catalogue_sync, datasets, errors
from server.auth import current_auth, current_identity
from server.geonode import (
    _require,
    _row,
    _state,
    blueprint,
    json_object,
    metadata_changes,
    resource_doc,
)
from server.responses import json_response

#: Files served at the site root, where GeoNode serves them (``href``, ``download_url``).
files_blueprint = Blueprint("geonode_document_files", __name__)
KIND = "document"
#: Extensions a document may have, by GeoNode's document type (its DOCUMENT_TYPE_MAP groups).
#: Nothing a browser would run (html, svg, js) is accepted.
DOCUMENT_TYPES: dict[str, str] = {
    **dict.fromkeys(("txt", "log", "csv", "doc", "docx", "ods", "odt", "sld", "qml", "xls", "xlsx"), "text"),
    **dict.fromkeys(("xml", "json", "geojson", "md", "rtf"), "text"),
    **dict.fromkeys(("bmp", "gif", "jpg", "jpeg", "png", "tif", "tiff", "webp"), "image"),
    **dict.fromkeys(("pdf", "odp", "ppt", "pptx"), "presentation"),
    **dict.fromkeys(("zip", "gz", "tgz", "tar", "7z", "gpkg", "kml", "kmz", "dwg", "dxf"), "archive"),
    **dict.fromkeys(("mp3", "ogg", "wav", "flac"), "audio"),
    **dict.fromkeys(("mp4", "webm", "avi", "mpg"), "video"),
    **dict.fromkeys(("glb", "gltf", "ifc"), "model"),
}
#: Types a browser may show in place (``href``); everything else is an attachment.
INLINE = frozenset({"pdf", "png", "jpg", "jpeg", "gif", "webp", "bmp", "txt", "csv", "json", "geojson"})
#: Media types not every platform's table knows.
MEDIA_TYPES = {
    "geojson": "application/geo+json",
    "gpkg": "application/geopackage+sqlite3",
    "md": "text/markdown",
}
#: Slack for the multipart envelope and form fields around the file.
FORM_SLACK = 256 * 1024


def install(app: Flask) -> None:
    """Register the file routes at the root and their error format (``{"detail"}``)."""
    app.register_blueprint(files_blueprint)
    errors.use_format(app, "/documents", datasets.detail_error)


def max_bytes() -> int:
    """The largest document (``catalogue.document_max_mb``; GeoNode's ``document_upload_size``)."""
    catalogue = current_app.config["GEOHARBOR"]["catalogue"]
    return int(float(catalogue["document_max_mb"]) * (1 << 20))


def _files() -> DocumentFiles:
    """This app's document files (one per process: it holds the table-made flag)."""
    files = current_app.extensions.get("geoharbor_document_files")
    if files is None:
        files = current_app.extensions["geoharbor_document_files"] = DocumentFiles(_state().registry.store)
    return files


def extension_of(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).suffix.lstrip(".").lower()


def media_type(extension: str) -> str:
    return (
        MEDIA_TYPES.get(extension) or mimetypes.types_map.get(f".{extension}") or "application/octet-stream"
    )


def _checked_extension(extension: str) -> str:
    if extension not in DOCUMENT_TYPES:
        raise InvalidQuery(
            f"The file provided is not in the supported extensions list ({extension[:20] or 'none'!r})"
        )
    return extension


def _checked_url(url: Any) -> str:
    if not isinstance(url, str) or len(url) > 2000:
        raise InvalidData("doc_url must be a URL of at most 2000 characters")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidData("doc_url must be an http or https URL")
    return url.strip()


# -- creating ---------------------------------------------------------------------------------
def _fields() -> dict[str, Any]:
    """The form's fields, or a JSON body (``{"document": {...}}`` or flat) for a link-only document."""
    if request.mimetype == "application/json":
        body = json_object()
        inner = body.get("document", body)
        return inner if isinstance(inner, dict) else {}
    out: dict[str, Any] = {}
    for name in request.form:
        values = request.form.getlist(name)
        out[name.removesuffix("[]")] = values if len(values) > 1 or name.endswith("[]") else values[0]
    return out


def _linked(fields: dict[str, Any]) -> list[int]:
    """Pks of the resources the document is attached to, each one the caller may read."""
    raw: list[Any] = []
    for name in ("linked_resources", "resource", "resources"):
        value = fields.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, str):
            value = orjson.loads(value) if value.strip().startswith("[") else re.split(r"[,\s]+", value)
        raw.extend(value if isinstance(value, list) else [value])
    pks: list[int] = []
    for item in raw:
        ident = item.get("pk", item.get("id")) if isinstance(item, dict) else item
        if isinstance(ident, bool) or not str(ident).strip().isdigit():
            raise InvalidData(f"linked_resources: {str(ident)[:40]!r} is not a resource pk")
        pk = int(str(ident).strip())
        try:
            row = _row(pk)
        except NotFound:
            raise InvalidData(f"linked_resources: no resource {pk}") from None
        if row["resource_type"] == KIND:
            raise InvalidData(f"linked_resources: {pk} is a document; attach documents to datasets or maps")
        if pk not in pks:
            pks.append(pk)
    if len(pks) > 100:
        raise InvalidData("a document is attached to at most 100 resources")
    return pks


def _upload() -> tuple[str, bytes] | None:
    """(file name, bytes) of the ``doc_file`` part, within the size limit; None when there is none."""
    limit = max_bytes()
    part = request.files.get("doc_file") or request.files.get("file")
    if part is None or not part.filename:
        return None
    content = part.stream.read(limit + 1)
    if len(content) > limit:
        raise TooLarge(f"the document is larger than {limit >> 20} MB")
    if not content:
        raise InvalidData("the document file is empty")
    return part.filename, content


@blueprint.route("/documents", methods=["POST"])
def create_document() -> Response:
    """GeoNode's document upload: a file (``doc_file``) or a link (``doc_url``), owned by the caller."""
    identity = current_identity()
    current_auth().require_create(identity, "a document")
    limit = max_bytes()
    if request.content_length is not None and request.content_length > limit + FORM_SLACK:
        raise TooLarge(f"the document is larger than {limit >> 20} MB")
    request.max_content_length = limit + FORM_SLACK
    fields = _fields()
    if "file_path" in fields:
        raise InvalidData("file_path (a path on the server) is not accepted: send the file as doc_file")
    upload = _upload()
    doc_url = fields.get("doc_url") or None
    if upload is None and doc_url is None:
        raise InvalidQuery("A file or a URL must be specified: doc_file or doc_url")
    if upload is not None and doc_url is not None:
        raise InvalidQuery("Either a file or a URL must be specified, not both")
    name = upload[0] if upload is not None else urlsplit(_checked_url(doc_url)).path.rsplit("/", 1)[-1]
    extension = str(fields.get("extension") or extension_of(name)).lower().lstrip(".")
    if upload is not None or extension:
        _checked_extension(extension)
    described = metadata_changes(
        {k: fields[k] for k in ("title", "abstract", "keywords") if fields.get(k) not in (None, "")}
    )
    file_name = PurePosixPath(name.replace("\\", "/")).name[:200] or "document"
    body: dict[str, Any] = {
        "title": described.get("title") or file_name,
        "abstract": described.get("abstract", ""),
        "keywords": described.get("keywords", []),
        "file_name": file_name,
        "extension": extension or None,
        "mime_type": media_type(extension) if extension else None,
        "doc_url": _checked_url(doc_url) if doc_url is not None else None,
        "links": _linked(fields),
    }
    if identity.user_id is not None:
        body["owner"] = identity.user_id
    store = _state().registry.store
    if upload is not None:
        body["size"] = len(upload[1])
    record = store.insert(KIND, body)
    if upload is not None:
        try:
            stored = _files().put(record.id, upload[1])
        except BaseException:
            store.delete(KIND, record.id)  # no record without its bytes
            raise
        record = store.update(KIND, record.id, {**body, "sha256": stored.sha256})
    follower = catalogue_sync.follower()
    row = follower.current().get(record.id)
    others = {k: v for k, v in metadata_changes(fields).items() if k not in ("title", "abstract", "keywords")}
    if others:  # category, regions, flags ...: the catalogue's own
        row = follower.catalogue.patch(record.id, others)
    rights = current_auth().record_rights(identity, record)
    return json_response({"document": resource_doc(row, rights)}, status=201)


# -- the file -------------------------------------------------------------------------------------
def document_record(pk: int) -> Record:
    """The document record of a resource the caller may read (404 otherwise)."""
    row = _row(pk)
    if row["resource_type"] != KIND:
        raise NotFound(f"document {pk} not found")
    _require(row, "read")
    return _state().registry.store.get(KIND, pk)


def _serve(pk: int, attachment: bool) -> Response:
    record = document_record(pk)
    body = record.body
    if body.get("doc_url"):
        return redirect(body["doc_url"], code=302)
    stored = _files().get(pk)
    extension = body.get("extension") or ""
    inline = not attachment and extension in INLINE
    response = Response(stored.content, mimetype=body.get("mime_type") or media_type(extension))
    name = body.get("file_name") or f"document-{pk}.{extension}"
    safe = re.sub(r"[^A-Za-z0-9._ -]", "_", name)
    response.headers["Content-Disposition"] = f'{"inline" if inline else "attachment"}; filename="{safe}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    response.headers["ETag"] = f'"{stored.sha256}"'
    response.headers["Cache-Control"] = "private, no-cache"
    return response


@files_blueprint.route("/documents/<int:pk>/download", methods=["GET"])
def download(pk: int) -> Response:
    return _serve(pk, attachment=True)


@files_blueprint.route("/documents/<int:pk>/link", methods=["GET"])
def link(pk: int) -> Response:
    return _serve(pk, attachment=False)


@blueprint.route("/documents/<int:pk>/download", methods=["GET"])
def document_download(pk: int) -> Response:
    return _serve(pk, attachment=True)


@blueprint.route("/documents/<int:pk>/linked_resources", methods=["GET"])
def document_linked_resources(pk: int) -> Response:
    """The resources a document is attached to (GeoNode answers them as a page of ``resources``)."""
    from server.geonode import _envelope

    record = document_record(pk)
    rows = []
    for other in record.body.get("links") or []:
        try:
            rows.append(_row(int(other)))
        except NotFound:
            continue  # deleted since, or not the caller's to see
    try:
        page = max(1, int(request.args.get("page", 1)))
        size = max(1, min(1000, int(request.args.get("page_size", 10))))
    except ValueError:
        raise InvalidQuery("page and page_size must be positive integers") from None
    docs = [resource_doc(r) for r in rows[(page - 1) * size : page * size]]
    return _envelope("resources", docs, len(rows), page, size)


# -- what the serializer adds -------------------------------------------------------------------------
def document_members(row: dict[str, Any], base: str) -> dict[str, Any]:
    """GeoNode's document serializer members of a catalogue row (``href``, ``download_url`` ...)."""
    pk, extension, doc_url = row["pk"], row.get("extension"), row.get("doc_url")
    download_url = doc_url or f"{base}/documents/{pk}/download"
    return {
        "extension": extension,
        "mime_type": row.get("mime_type"),
        "doc_type": DOCUMENT_TYPES.get(extension or "", "other"),
        "doc_url": doc_url,
        "href": doc_url or f"{base}/documents/{pk}/link",
        "download_url": download_url,
        "download_urls": [{"url": download_url, "ajax_safe": not doc_url, "default": True}],
        "file_size": row.get("size"),
        "linked_resources": [{"pk": str(p)} for p in row.get("links") or []],
        "is_local": not doc_url,
    }


def document_links(row: dict[str, Any], base: str) -> list[dict[str, Any]]:
    """The original file in the ``links`` list (GeoNode's ``original`` link)."""
    members = document_members(row, base)
    return [
        {
            "extension": members["extension"] or "html",
            "link_type": "original",
            "name": "Original",
            "mime": members["mime_type"] or "text/html",
            "url": members["download_url"],
        }
    ]


def delete_files(pk: int) -> None:
    """A deleted document's bytes go with it."""
    _files().delete(pk)
