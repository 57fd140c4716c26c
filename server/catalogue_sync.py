"""Keeps the catalogue index equal to what geoharbor publishes, on every worker.

Every collection is a *dataset* (configured, discovered, a REST layer, an import's or
a job's result: they all end up in the registry), every REST map a *map* and every
uploaded file or link (:mod:`server.geonode_documents`) a *document*. The
index is shared by all workers (it lives next to the store's records), so each worker
only has to bring it up to date before it reads it:

* datasets when this process's registry was rebuilt (``Registry.version`` moved: a
  layer, user, role or permission changed anywhere — the store generation moved);
* maps and documents on each catalogue read (they do not move the generation; one
  query lists each kind).

Rows are compared by a hash of what the registry says about them, so a worker that
finds the index current writes nothing. What only the catalogue holds (category,
regions, flags, extra metadata, thumbnail ...) is kept across updates.

A dataset's pk is its layer record's id, or, for a configured or discovered
collection, the id of a store record (kind ``catalogue_collection``, keyed by the
collection id) made the first time the collection is indexed. Record ids are unique
across kinds, so pks never collide, and grants on that id are the permission
records :func:`server.auth.Auth.collection_rights` reads for the collection.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, current_app
from pyproj import Transformer

from providers.catalogue import Catalogue
from providers.errors import Conflict, NotFound, ProviderError
from providers.store import Record, Store
from server.auth import ANONYMOUS_PRINCIPAL, COLLECTION_KIND, Auth
from server.registry import Collection, Registry

LOGGER = logging.getLogger(__name__)

#: A stable namespace for resource uuids (uuid5 of it and the record's id and creation time).
UUID_NAMESPACE = uuid.UUID("6f0f7d4e-5b7a-4c8e-9a53-0c2b7e1d9f10")
#: Permissions of a grant that let its principal read.
READING = frozenset({"READ", "EDIT", "OWNER"})


def resource_uuid(record: Record) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, f"{record.kind}:{record.id}:{record.created!r}"))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _hash(derived: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(derived, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class CatalogueSync:
    """One process's follower of the registry, writing the shared index when it is behind."""

    def __init__(self, registry: Registry, auth: Auth) -> None:
        self.registry = registry
        self.auth = auth
        self._catalogue: Catalogue | None = None
        self._version: int | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self.registry.store

    @property
    def catalogue(self) -> Catalogue:
        if self._catalogue is None:
            self._catalogue = Catalogue(self.store)
        return self._catalogue

    def current(self) -> Catalogue:
        """The index, brought up to date with the registry and the maps first."""
        self.registry.sync()
        with self._lock:
            if self._version != self.registry.version:
                version = self.registry.version
                self.sync_datasets()
                self._version = version
            self.sync_maps()
            self.sync_documents()
        return self.catalogue

    def forget(self) -> None:
        """Make the next read reconcile the datasets again (after a write of ours)."""
        self._version = None

    # -- who may read ---------------------------------------------------------------------------
    def _grants(self) -> dict[int, list[tuple[str, str]]]:
        grants: dict[int, list[tuple[str, str]]] = {}
        for record in self.store.list("permission"):
            body = record.body
            grants.setdefault(int(body["resource_id"]), []).append((body["principal"], body["permission"]))
        return grants

    @staticmethod
    def _readers(grants: list[tuple[str, str]] | None, owner: int | None) -> list[str]:
        """The principals a record's grants let read, as :meth:`Auth.resource_rights` decides."""
        readers = {principal for principal, permission in grants or [] if permission in READING}
        if owner is not None:
            readers.add(f"user:{owner}")
        elif not grants:
            readers.add(ANONYMOUS_PRINCIPAL)  # made before anyone owned things: public
        return sorted(readers)

    def _configured_readers(self, coll: Collection, grants: list[tuple[str, str]] | None) -> list[str]:
        if grants:
            return self._readers(grants, None)
        readers: set[str] = set()
        access = coll.access
        if access.get("public", True):
            readers.add(ANONYMOUS_PRINCIPAL)
        names = [*access.get("readers", []), *access.get("editors", [])]
        readers.update(f"role:{rid}" for rid in self.auth.role_ids(names))
        return sorted(readers)

    # -- datasets ----------------------------------------------------------------------------------
    def collection_record(self, cid: str) -> Record:
        """The record giving configured collection ``cid`` its pk, made on first use."""
        found = self.store.find(COLLECTION_KIND, cid)
        if found is not None:
            return found
        try:
            return self.store.insert(COLLECTION_KIND, {"collection": cid, "metadata": {}}, key=cid)
        except Conflict:  # another worker made it a moment ago
            found = self.store.find(COLLECTION_KIND, cid)
            if found is None:
                raise
            return found

    def dataset_resource(
        self,
        coll: Collection,
        record: Record,
        grants: dict[int, list[tuple[str, str]]],
        users: dict[int, str],
    ) -> dict[str, Any]:
        """What the registry says about one collection, as catalogue members."""
        schema = coll.provider.schema
        if coll.layer_id is not None:
            owner = record.body.get("owner")
            readers = self._readers(grants.get(record.id), owner)
            metadata: dict[str, Any] = {}
        else:
            owner = None
            readers = self._configured_readers(coll, grants.get(record.id))
            metadata = record.body.get("metadata") or {}
        bbox = list(schema.bbox) if schema.bbox is not None else None
        if bbox is not None and not all(math.isfinite(v) for v in bbox):
            bbox = None
        return {
            "pk": record.id,
            "uuid": resource_uuid(record),
            "resource_type": "dataset",
            "subtype": "remote" if coll.source_type == "wfs" else "vector",
            "title": metadata.get("title", coll.title),
            "abstract": metadata.get("abstract", coll.description),
            "keywords": list(metadata.get("keywords", coll.keywords)),
            "owner": {"pk": owner, "username": users.get(owner) if owner is not None else None},
            "created": _iso(record.created),
            "last_updated": _iso(record.modified),
            "bbox": bbox,
            "srid": f"EPSG:{schema.storage_crs.srid}",
            "alternate": coll.id,
            "readers": readers,
            "store": coll.source,
        }

    def sync_datasets(self) -> None:
        """Index every published collection; drop the rows of collections that are gone."""
        catalogue = self.catalogue
        grants = self._grants()
        users = {u.id: str(u.body.get("username")) for u in self.store.list("user")}
        layers = {r.id: r for r in self.store.list("layer")}
        configured = {r.key: r for r in self.store.list(COLLECTION_KIND)}
        stored = catalogue.hashes("dataset")
        seen: set[int] = set()
        for coll in list(self.registry.collections.values()):
            try:
                if coll.layer_id is not None:
                    record = layers.get(coll.layer_id)
                    if record is None:
                        continue  # deleted since this process published it
                else:
                    record = configured.get(coll.id) or self.collection_record(coll.id)
                derived = self.dataset_resource(coll, record, grants, users)
                self._write(catalogue, derived, stored)
                seen.add(derived["pk"])
            except ProviderError as exc:
                LOGGER.error("catalogue: collection %s not indexed: %s", coll.id, exc.message)
        for pk in set(stored) - seen:
            self._drop(catalogue, pk)

    # -- maps and documents: store records of their own -------------------------------------------
    def _owned_record(
        self, record: Record, kind: str, grants: dict[int, list[tuple[str, str]]], users: dict[int, str]
    ) -> dict[str, Any]:
        """The members every resource kept as a store record of its owner's has alike."""
        owner = record.body.get("owner")
        return {
            "pk": record.id,
            "uuid": resource_uuid(record),
            "resource_type": kind,
            "subtype": None,
            "owner": {"pk": owner, "username": users.get(owner) if owner is not None else None},
            "created": _iso(record.created),
            "last_updated": _iso(record.modified),
            "alternate": None,
            "readers": self._readers(grants.get(record.id), owner),
        }

    def map_resource(
        self, record: Record, grants: dict[int, list[tuple[str, str]]], users: dict[int, str]
    ) -> dict[str, Any]:
        body = record.body
        return {
            **self._owned_record(record, "map", grants, users),
            "title": str(body.get("name") or f"map {record.id}"),
            "abstract": body.get("description") or "",
            "keywords": [],
            "bbox": _lonlat(body.get("bounds"), body.get("epsg", 4326)),
            "srid": f"EPSG:{body.get('epsg', 4326)}",
            "maplayers": [entry.get("layer_id") for entry in body.get("layers", [])],
        }

    def sync_maps(self) -> None:
        self._sync_records("map", self.map_resource)

    # -- documents -------------------------------------------------------------------------------
    def document_resource(
        self, record: Record, grants: dict[int, list[tuple[str, str]]], users: dict[int, str]
    ) -> dict[str, Any]:
        """What a document record says (its bytes are elsewhere), as catalogue members."""
        body = record.body
        return {
            **self._owned_record(record, "document", grants, users),
            "title": str(body.get("title") or body.get("file_name") or f"document {record.id}"),
            "abstract": body.get("abstract") or "",
            "keywords": list(body.get("keywords") or []),
            "bbox": None,
            "srid": "EPSG:4326",
            "extension": body.get("extension"),
            "mime_type": body.get("mime_type"),
            "doc_url": body.get("doc_url"),
            "size": body.get("size"),
            "file_name": body.get("file_name"),
            "links": [int(p) for p in body.get("links") or []],
        }

    def sync_documents(self) -> None:
        self._sync_records("document", self.document_resource)

    def _sync_records(
        self,
        kind: str,
        resource: Callable[[Record, dict[int, list[tuple[str, str]]], dict[int, str]], dict[str, Any]],
    ) -> None:
        """Make the catalogue's rows of ``kind`` (a store record kind that is also the
        resource type) equal to the records: changed rows rewritten, gone ones dropped."""
        catalogue = self.catalogue
        records = self.store.list(kind)
        stored = catalogue.hashes(kind)
        if not records and not stored:
            return
        grants = self._grants()
        users = {u.id: str(u.body.get("username")) for u in self.store.list("user")}
        for record in records:
            self._write(catalogue, resource(record, grants, users), stored)
        for pk in set(stored) - {r.id for r in records}:
            self._drop(catalogue, pk)

    # -- writing -----------------------------------------------------------------------------------
    @staticmethod
    def _write(catalogue: Catalogue, derived: dict[str, Any], stored: dict[int, str | None]) -> None:
        digest = _hash(derived)
        if stored.get(derived["pk"]) == digest:
            return
        try:
            current = catalogue.get(derived["pk"]) if derived["pk"] in stored else {}
        except NotFound:
            current = {}
        catalogue.upsert({**current, **derived, "sync_hash": digest})

    @staticmethod
    def _drop(catalogue: Catalogue, pk: int) -> None:
        try:
            catalogue.delete(pk)
        except NotFound:
            pass  # another worker dropped it first


def _lonlat(box: Any, srid: Any) -> list[float] | None:
    """A map's bounds in lon/lat (the index keeps EPSG:4326 boxes)."""
    if not box or len(box) != 4:
        return None
    try:
        if int(srid) != 4326:
            box = list(
                Transformer.from_crs(int(srid), 4326, always_xy=True).transform_bounds(*box, densify_pts=21)
            )
    except Exception:  # noqa: BLE001 - a box PROJ cannot move has no lon/lat extent
        return None
    return [float(v) for v in box] if all(math.isfinite(float(v)) for v in box) else None


def install(app: Flask, registry: Registry, auth: Auth) -> CatalogueSync:
    """Give the app its catalogue follower (read with :func:`current`)."""
    sync = CatalogueSync(registry, auth)
    app.extensions["geoharbor_catalogue"] = sync
    return sync


def follower() -> CatalogueSync:
    return current_app.extensions["geoharbor_catalogue"]


def current() -> Catalogue:
    """The catalogue of the app serving the request, up to date with the registry."""
    return follower().current()
