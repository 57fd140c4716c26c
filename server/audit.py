"""The audit log: who changed what, and when, through any of the APIs.

Every successful write (``POST``, ``PUT``, ``PATCH``, ``DELETE`` answered below 400)
on any route leaves one ``audit`` record in the state store, whichever worker or
host served it: the caller's user and key ids (never the key), the method, the path
without its query string (a key may travel in ``api_key``), the status, the
collection and the resource the URL named, what a creation's ``Location`` points to,
the client address and the time.

The record is written once the response's status is known, before it is sent. A
write that has already committed is not undone nor turned into an error when the
audit record cannot be stored: that failure is logged for the operator instead.
``auth.audit: false`` turns the log off (then no hook is installed).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, g, request

from server.auth import current_identity

LOGGER = logging.getLogger(__name__)

#: The kind of the audit records in the store (not a registry kind: writing one moves nothing).
KIND = "audit"

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: URL variables naming a collection (OGC ``cid``, MapFish and REST buffer ``layer``).
COLLECTION_ARGS = ("cid", "layer")


def _target() -> tuple[str | None, dict[str, str] | None]:
    """The collection and the resource a write's URL names, read before the route runs
    (a deleted layer's collection is gone from the registry afterwards)."""
    args = dict(request.view_args or {})
    if not args:
        return None, None
    collections = current_app.extensions["geoharbor"].registry.collections
    by_layer = {c.layer_id: c.id for c in collections.values() if c.layer_id is not None}
    collection = None
    if isinstance(args.get("layer_id"), int):
        collection = by_layer.get(args["layer_id"])
    ref = next((str(args[a]) for a in COLLECTION_ARGS if a in args), None)
    if ref is not None:
        if request.blueprint == "mapfish":
            ref = ref.removesuffix(".json") or ref  # as MapFish reads "{layer}.json"
        # A REST layer reference is a layer id first, else a collection id (as rest_export reads it).
        layer_id = int(ref) if ref.isascii() and ref.isdigit() else None
        collection = by_layer.get(layer_id, ref) if layer_id is not None else ref
    return collection, {name: str(value) for name, value in args.items()}


def entry(response: Response) -> dict[str, Any]:
    """The audit record of the write this response answers."""
    identity = current_identity()
    collection, resource = g.get("audit_target", (None, None))
    location = response.headers.get("Location")
    return {
        "user_id": identity.user_id,
        "username": identity.username,
        "key_id": identity.key_id,
        "master": identity.admin and identity.key_id is None,
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "collection": collection,
        "resource": resource,
        "location": urlsplit(location).path if location else None,
        "address": request.remote_addr,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def install(app: Flask) -> None:
    """Record successful writes, unless ``auth.audit`` is false."""
    if not app.config["GEOHARBOR"]["auth"].get("audit", True):
        return

    @app.before_request
    def note_target() -> None:
        if request.method in WRITE_METHODS:
            try:
                g.audit_target = _target()
            except Exception:  # noqa: BLE001 - naming the target is a nicety; the write goes on
                LOGGER.exception("audit: cannot name the target of %s %s", request.method, request.path)

    @app.after_request
    def record_write(response: Response) -> Response:
        if request.method not in WRITE_METHODS or response.status_code >= 400:
            return response
        try:
            record = entry(response)
            current_app.extensions["geoharbor"].registry.store.insert(KIND, record)
        except Exception:  # noqa: BLE001 - the write is done; a lost audit record must not fail it
            LOGGER.exception("audit record lost for %s %s", request.method, request.path)
        return response
