"""The published collections: built from the configuration, discovery and stored layers.

A collection is declared in ``collections:``, published automatically from a
PostGIS schema (every table/view with a geometry column) or from every layer of a
GeoPackage, or created at run time as a *layer* record in the store (REST, MapFish,
imports, ``POST /datasets/ogc``). Either way its extent, storage CRS, fields and
queryables are read from the source. One handle per database, file or remote WFS is
shared by its collections.

A remote WFS layer registered at run time keeps in its record what the remote said
about it (:class:`~providers.wfs_capabilities.RemoteLayer`): every process publishes
it from the record, without asking the remote, and goes on publishing it while the
remote is down (its reads then answer 502/504). A WFS declared in the configuration
is described when the server starts.

Layers live in the store, not in a process: :meth:`Registry.sync` compares the
store's generation with the one this process built from and republishes when it
moved, so every worker and host publishes the same layers without a restart.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from providers.base import FeatureProvider
from providers.crs import CRS84_URI, crs_uri, epsg_uri, parse_crs
from providers.errors import Conflict, InvalidData, NotFound, ProviderError
from providers.postgis import PostGISDatabase, PostGISProvider, TableRef
from providers.store import GENERATION_KEY, PostgresStore, Record, SQLiteStore, Store
from providers.wfs import WFSProvider
from providers.wfs import describe as describe_wfs
from providers.wfs_capabilities import RemoteLayer
from providers.wfs_http import RemoteOptions, RemoteService, check_url
from server.config import COLLECTION_TILE_DEFAULTS

LOGGER = logging.getLogger(__name__)

#: Advertised for every collection besides its storage CRS (Part 2 ``crs`` list).
DEFAULT_CRS = [CRS84_URI, epsg_uri(4326), epsg_uri(3857)]

#: Configuration keys of a collection (or its source) that say who may read and edit it.
ACCESS_KEYS = ("public", "readers", "editors")

#: Seconds between attempts to reach a state store that did not answer.
STORE_RETRY_S = 10.0

#: A collection id a layer may take: safe in a URL path segment and as an MVT layer name.
COLLECTION_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,62}$")

#: Layer record members that ``Registry._build`` reads; the rest (name, style ...) is metadata.
LAYER_OPTIONS = (
    "table",
    "layer",
    "title",
    "description",
    "keywords",
    "id_column",
    "geometry_column",
    "time_column",
    "properties",
    "editable",
    "count",
    "crs",
    "tiles",
)

#: Layer record members of a remote WFS layer (``"service": "wfs"``), besides the metadata.
REMOTE_LAYER_OPTIONS = ("url", "layer", "version", "remote", "title", "description", "keywords", "tiles")


@dataclass(slots=True)
class Collection:
    id: str
    title: str
    description: str
    keywords: list[str]
    provider: FeatureProvider
    source: str
    source_type: str
    crs: list[str] = field(default_factory=list)
    #: Vector tile options (zoom range, extent, buffer, feature cap, simplification).
    tiles: dict[str, Any] = field(default_factory=lambda: dict(COLLECTION_TILE_DEFAULTS))

    #: The store record behind a run-time layer; None for configured and discovered ones.
    layer_id: int | None = None
    #: The user who created the layer (its record's ``owner``), for access checks.
    owner: int | None = None
    #: Who may read and edit a configured collection: ``public``, ``readers``, ``editors``.
    access: dict[str, Any] = field(default_factory=dict)

    @property
    def editable(self) -> bool:
        return self.provider.editable

    @property
    def storage_crs(self) -> str:
        return crs_uri(self.provider.schema.storage_crs.srid)


class Registry:
    """Collections by id, and the sources behind them."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.sources: dict[str, Any] = {}  # PostGISDatabase, GeoPackage or RemoteService, by source name
        #: Remote WFS services of run-time layers, by URL: their caches and circuit breakers
        #: outlive the rebuilds of the collections.
        self.remotes: dict[str, RemoteService] = {}
        self._remotes_lock = threading.Lock()
        self.source_errors: dict[str, str] = {}
        self.collections: dict[str, Collection] = {}
        #: Layers whose source or table is gone, by layer id: reported, not published.
        self.layer_errors: dict[int, str] = {}
        #: Moves whenever this process's collections change; the pygeoapi core and caches follow it.
        self.version = 0
        self._generation: int | None = None
        self._sync_lock = threading.Lock()
        self.store_error: str | None = None
        self._store_retry_at = 0.0
        #: Called after this process's collections changed (pygeoapi's view, tile caches).
        self.listeners: list[Callable[[], None]] = []
        self._open_sources()
        self._publish_declared()
        self._publish_discovered()
        self._static = dict(self.collections)
        self.store = self._open_store()
        store_source = config.get("store", {}).get("source")
        if store_source in self.source_errors:
            self.store_error = self.source_errors[store_source]
            self._store_retry_at = time.monotonic() + STORE_RETRY_S

    # -- building ------------------------------------------------------------------------
    def _open_sources(self) -> None:
        for name, spec in self.config["sources"].items():
            if spec["type"] == "postgis":
                self.sources[name] = PostGISDatabase(
                    spec["url"],
                    name=name,
                    read_url=spec.get("read_url"),
                    direct_url=spec.get("direct_url"),
                    pool_min=spec.get("pool_min", 1),
                    pool_max=spec.get("pool_max", 10),
                    prepare_threshold=spec.get("prepare_threshold", 5),
                    statement_timeout_ms=spec.get("statement_timeout_ms", 30_000),
                )
                if not self.sources[name].ping():
                    # Reported on /health; its collections are not published rather than
                    # each start-up step waiting for a database that does not answer.
                    self.source_errors[name] = "database unreachable at start-up"
            elif spec["type"] == "wfs":
                self.sources[name] = RemoteService(
                    spec["url"], RemoteOptions.from_config(self.config.get("wfs"), spec)
                )
            else:
                from providers.geopackage import GeoPackage

                self.sources[name] = GeoPackage(spec["path"])

    def _crs_list(self, storage_srid: int, extra: list[Any]) -> list[str]:
        names = [*DEFAULT_CRS, crs_uri(storage_srid)]
        for item in [*self.config["server"].get("crs", []), *extra]:
            names.append(parse_crs(str(item)).uri)
        return list(dict.fromkeys(names))

    def _add(self, cid: str, source_name: str, options: dict[str, Any]) -> None:
        self.collections[cid] = self._build(cid, source_name, options)

    def _build(self, cid: str, source_name: str, options: dict[str, Any]) -> Collection:
        """A collection over ``options['table']`` / ``options['layer']``, described from the source."""
        spec = self.config["sources"][source_name]
        source = self.sources[source_name]
        editable = options.get("editable", spec.get("editable", False))
        count = options.get("count", spec.get("count", "auto" if spec["type"] == "postgis" else "exact"))
        describe = {
            "id_column": options.get("id_column"),
            "time_column": options.get("time_column"),
            "properties": options.get("properties"),
        }
        provider: FeatureProvider
        if isinstance(source, RemoteService):
            layer = describe_wfs(source, options["layer"], spec.get("version"))
            return self._remote_collection(cid, source, layer, options, spec, source_name)
        if isinstance(source, PostGISDatabase):
            schema_name, _, table = options["table"].rpartition(".")
            ref = TableRef(schema_name or "public", table, options.get("geometry_column"))
            if ref.geometry_column is None:
                found = [r for r in source.discover([ref.schema]) if r.table == ref.table]
                ref = found[0] if found else ref
            schema = source.describe(ref, **describe)
            source.compute_extents(ref, schema)
            provider = PostGISProvider(
                source,
                ref,
                schema,
                editable=editable,
                count_mode=count,
                exact_count_below=spec.get("exact_count_below", 100_000),
            )
        else:
            from providers.geopackage import GeoPackageProvider

            layer = options["layer"]
            schema = source.describe(layer, **describe)
            source.compute_extents(layer, schema)
            provider = GeoPackageProvider(source, layer, schema, editable=editable, count_mode=count)
        return Collection(
            id=cid,
            title=options.get("title", cid),
            description=options.get("description", f"{cid} ({spec['type']})"),
            keywords=options.get("keywords", []),
            provider=provider,
            source=source_name,
            source_type=spec["type"],
            crs=self._crs_list(schema.storage_crs.srid, options.get("crs", [])),
            tiles={**COLLECTION_TILE_DEFAULTS, **options.get("tiles", {})},
            access={
                k: options.get(k, spec.get(k)) for k in ACCESS_KEYS if options.get(k, spec.get(k)) is not None
            },
        )

    # -- remote WFS layers -------------------------------------------------------------------
    def remote_service(self, url: str) -> RemoteService:
        """The shared service of a remote WFS (``wfs:`` options), made on first use."""
        url = check_url(url)
        with self._remotes_lock:
            found = self.remotes.get(url)
            if found is None:
                found = RemoteService(url, RemoteOptions.from_config(self.config.get("wfs")))
                self.remotes[url] = found
            return found

    def describe_remote(self, url: str, layer_name: str, version: str | None = None) -> RemoteLayer:
        """Ask a remote WFS what one of its feature types is (GetCapabilities, DescribeFeatureType)."""
        return describe_wfs(self.remote_service(url), layer_name, version)

    def _remote_collection(
        self,
        cid: str,
        service: RemoteService,
        layer: RemoteLayer,
        options: dict[str, Any],
        spec: dict[str, Any],
        source_name: str,
    ) -> Collection:
        wfs = self.config.get("wfs") or {}
        provider = WFSProvider(
            service,
            layer,
            count_mode=options.get("count", spec.get("count", wfs.get("count", "exact"))),
            max_features=int(spec.get("max_features", wfs.get("max_features", 10_000))),
            name=cid,
        )
        return Collection(
            id=cid,
            title=options.get("title") or layer.title or cid,
            description=options.get("description")
            or layer.abstract
            or f"{cid} (remote WFS {layer.type_name})",
            keywords=options.get("keywords", []),
            provider=provider,
            source=source_name,
            source_type="wfs",
            crs=self._crs_list(layer.default_srid, [*layer.crs[1:], *options.get("crs", [])]),
            tiles={**COLLECTION_TILE_DEFAULTS, **options.get("tiles", {})},
            access={
                k: options.get(k, spec.get(k)) for k in ACCESS_KEYS if options.get(k, spec.get(k)) is not None
            },
        )

    def _build_remote_layer(self, cid: str, body: dict[str, Any]) -> Collection:
        """A run-time WFS layer's collection, from its record alone (no request to the remote)."""
        layer = RemoteLayer.from_json(body.get("remote"))
        url = check_url(body.get("url"))
        if layer.url != url:
            raise InvalidData("a remote layer record's url and description disagree")
        options = {k: body[k] for k in REMOTE_LAYER_OPTIONS if k in body}
        return self._remote_collection(cid, self.remote_service(url), layer, options, {}, f"wfs:{url}")

    def _build_layer(self, cid: str, body: dict[str, Any]) -> Collection:
        if body.get("service") == "wfs":
            return self._build_remote_layer(cid, body)
        return self._build(cid, body["source"], self._layer_options(body))

    def _publish_declared(self) -> None:
        for cid, options in self.config["collections"].items():
            if options["source"] in self.source_errors:
                LOGGER.error("collection %s not published: source %s is down", cid, options["source"])
                continue
            try:
                self._add(cid, options["source"], options)
            except Exception as exc:  # noqa: BLE001 - one bad source must not stop the rest
                self.source_errors[options["source"]] = str(exc)
                LOGGER.error("collection %s not published: %s", cid, exc)

    def _publish_discovered(self) -> None:
        declared = {
            (c.get("source"), c.get("table") or c.get("layer")) for c in self.config["collections"].values()
        }
        for name, spec in self.config["sources"].items():
            if name in self.source_errors:
                continue
            source = self.sources[name]
            exclude = set(spec.get("exclude", []))
            try:
                if isinstance(source, PostGISDatabase):
                    schemas = spec.get("publish_schemas") or []
                    found = [
                        (
                            r.table if r.schema == "public" else f"{r.schema}.{r.table}",
                            f"{r.schema}.{r.table}",
                        )
                        for r in (source.discover(schemas) if schemas else [])
                    ]
                    for cid, table in found:
                        if table in exclude or cid in exclude or (name, table) in declared:
                            continue
                        if (name, table.removeprefix("public.")) in declared:
                            continue
                        self._publish_one(cid, name, {"table": table})
                elif spec.get("publish", False):
                    for layer in source.discover():
                        if layer in exclude or (name, layer) in declared:
                            continue
                        self._publish_one(layer, name, {"layer": layer})
            except Exception as exc:  # noqa: BLE001
                self.source_errors[name] = str(exc)
                LOGGER.error("source %s: discovery failed: %s", name, exc)

    def _publish_one(self, cid: str, source: str, options: dict[str, Any]) -> None:
        if cid in self.collections:
            cid = f"{source}.{cid}"
        try:
            self._add(cid, source, options)
        except Exception as exc:  # noqa: BLE001
            LOGGER.error("collection %s not published: %s", cid, exc)

    def _open_store(self) -> Store:
        spec = self.config.get("store") or {}
        if "source" in spec:
            return PostgresStore(self.sources[spec["source"]])
        return SQLiteStore(spec["path"])

    # -- run-time layers -------------------------------------------------------------------
    @property
    def published_generation(self) -> int | None:
        """The store generation this process's collections were built from (None before the first sync)."""
        return self._generation

    def sync(self) -> bool:
        """Publish the store's layers as they are now; True when the collections changed.

        One cheap read (the store's generation) when nothing changed, which is what
        lets every request see layers created or deleted through any process.
        """
        if time.monotonic() < self._store_retry_at:
            return False
        try:
            generation = self.store.generation()
        except ProviderError as exc:
            # Keep serving what is published; try the store again in a while rather
            # than making every request wait for a database that does not answer.
            self.store_error = exc.message
            self._store_retry_at = time.monotonic() + STORE_RETRY_S
            LOGGER.error("state store unavailable, layers not refreshed: %s", exc.message)
            return False
        self.store_error = None
        return self._rebuild(generation)

    def _rebuild(self, generation: int) -> bool:
        """Publish the store's layers if ``generation`` is not the one this process built from."""
        if generation == self._generation:
            return False
        with self._sync_lock:
            if generation == self._generation:
                return False
            collections = dict(self._static)
            errors: dict[int, str] = {}
            for record in self.store.list("layer"):
                cid = record.key or f"layer-{record.id}"
                if cid in self._static:
                    errors[record.id] = f"collection id {cid!r} is taken by the configuration"
                    continue
                try:
                    coll = self._build_layer(cid, record.body)
                except Exception as exc:  # noqa: BLE001 - one broken layer must not hide the others
                    errors[record.id] = str(exc)
                    LOGGER.error("layer %s (%s) not published: %s", record.id, cid, exc)
                    continue
                coll.layer_id = record.id
                coll.owner = record.body.get("owner")
                collections[cid] = coll
            self.collections = collections
            self.layer_errors = errors
            self._generation = generation
            self.version += 1
        for listener in self.listeners:
            listener()
        return True

    def tile_state(self, cids: list[str]) -> list[tuple[Collection, int | None]]:
        """The collections of a tile request with their revisions, as current as a write allows.

        When the store and the collections live in one PostgreSQL database, the
        registry generation and every revision come from one query: a warm tile then
        costs one round trip, not one to check the layers and one per revision.
        """
        for _ in range(2):
            found = [self.collections.get(cid) for cid in cids]
            if any(c is None for c in found):
                self.sync()  # perhaps a layer created a moment ago through another process
                found = [self.get(cid) for cid in cids]
            colls: list[Collection] = found  # type: ignore[assignment]
            keys = self.revision_keys(colls)
            revisions = None
            if keys is not None:
                # Where the request reads (the replica, when it may): the tile is read there too.
                revisions = colls[0].provider.db.read_revisions(keys)  # type: ignore[attr-defined]
            if revisions is None:
                if self.sync():
                    continue
                return [(c, c.provider.revision()) for c in colls]
            if self.current(revisions):
                return [(c, revisions[c.provider.revision_key]) for c in colls]  # type: ignore[attr-defined]
        return [(self.get(cid), None) for cid in cids]  # layers changing under us: no caching

    def revision_keys(self, colls: list[Collection]) -> tuple[str, ...] | None:
        """What to read to serve tiles of ``colls`` from a cache: the generation, then their revisions.

        None unless the store and every collection share one PostgreSQL database with
        its revision table (and the store answers), where one statement reads them all,
        and a tile that is not cached can be built in the same round trip
        (:meth:`PostGISProvider.tile_with_revisions`).
        """
        if time.monotonic() < self._store_retry_at:
            return None
        db = self._shared_database(colls)
        if db is None or not db.ensure_revisions():
            return None
        return (GENERATION_KEY, *(c.provider.revision_key for c in colls))  # type: ignore[attr-defined]

    def current(self, revisions: dict[str, int]) -> bool:
        """Whether this process's collections are the store's as of ``revisions`` (read with
        :meth:`revision_keys`); when they are not, they are rebuilt and this says False.

        An older generation than this process's (read on a replica that has not replayed
        the latest layer change) is not current either, and rebuilds nothing.
        """
        generation = revisions[GENERATION_KEY]
        if self._generation is not None and generation < self._generation:
            return False
        return not self._rebuild(generation)

    def _shared_database(self, colls: list[Collection]) -> PostGISDatabase | None:
        """The store's database when every collection lives in it too, else None."""
        store_source = self.config.get("store", {}).get("source")
        if store_source is None:
            return None
        db = self.sources.get(store_source)
        if all(isinstance(c.provider, PostGISProvider) and c.provider.db is db for c in colls):
            return db
        return None

    @staticmethod
    def _layer_options(body: dict[str, Any]) -> dict[str, Any]:
        return {k: body[k] for k in LAYER_OPTIONS if k in body}

    def check_layer(self, body: dict[str, Any], layer_id: int | None = None) -> str:
        """Check that a layer record can be published; returns its collection id.

        Raises InvalidData (unknown source, table or option) or Conflict (id taken)
        before anything is stored, so a failed create leaves no half-made layer.
        """
        cid = body.get("collection")
        if not isinstance(cid, str) or not COLLECTION_ID.match(cid):
            raise InvalidData("a layer's collection id must be 1-63 letters, digits, '_', '-' or '.'")
        if body.get("service") == "wfs":
            self._check_free(cid, layer_id)
            self._build_remote_layer(cid, body)
            return cid
        source = body.get("source")
        if source not in self.sources or source in self.source_errors:
            raise InvalidData(f"no usable source named {str(source)[:100]!r}")
        key = "table" if self.config["sources"][source]["type"] == "postgis" else "layer"
        if not isinstance(body.get(key), str) or not body[key]:
            raise InvalidData(f"a layer on source {source!r} needs '{key}'")
        self._check_free(cid, layer_id)
        try:
            self._build(cid, source, self._layer_options(body))
        except ProviderError:
            raise
        except Exception as exc:  # noqa: BLE001 - describe() failures: missing table, no key ...
            raise InvalidData(f"cannot publish {body[key]!r}: {exc}") from exc
        return cid

    def _check_free(self, cid: str, layer_id: int | None) -> None:
        """Conflict unless ``cid`` is free, or is the collection of layer ``layer_id`` itself."""
        taken = self.collections.get(cid)
        if taken is not None and (taken.layer_id is None or taken.layer_id != layer_id):
            raise Conflict(f"collection {cid!r} already exists")

    def create_layer(self, body: dict[str, Any]) -> Record:
        """Store and publish a layer; every process publishes it on its next request."""
        self.sync()
        cid = self.check_layer(body)
        record = self.store.insert("layer", body, key=cid)
        self.sync()
        return record

    def update_layer(self, layer_id: int, body: dict[str, Any]) -> Record:
        """Replace a layer record (it may move to another table or collection id)."""
        self.sync()
        self.store.get("layer", layer_id)
        cid = self.check_layer(body, layer_id)
        record = self.store.update("layer", layer_id, body, key=cid)
        self.sync()
        return record

    def delete_layer(self, layer_id: int) -> Record:
        """Unpublish a layer everywhere (its table stays)."""
        record = self.store.delete("layer", layer_id)
        self.sync()
        return record

    def layer_collection(self, layer_id: int) -> Collection:
        """The published collection of a layer record; NotFound when it is not published."""
        self.sync()
        for coll in self.collections.values():
            if coll.layer_id == layer_id:
                return coll
        if layer_id in self.layer_errors:
            raise NotFound(f"layer {layer_id} is not published: {self.layer_errors[layer_id]}")
        raise NotFound(f"layer {layer_id} not found")

    # -- use -------------------------------------------------------------------------
    def get(self, cid: str) -> Collection:
        try:
            return self.collections[cid]
        except KeyError:
            raise NotFound(f"collection {cid[:100]!r} not found") from None

    def health(self) -> dict[str, Any]:
        """Each source with its type and whether it answers now.

        A remote WFS is ``up`` for geoharbor whatever the remote does: its collections
        answer (502/504 quickly while the remote fails), and a load balancer must not
        take this server out because a third party's service is down. ``remote_up``
        says whether the remote itself is considered up (its circuit is closed).
        """
        out = {}
        for name, source in self.sources.items():
            kind = self.config["sources"][name]["type"]
            entry: dict[str, Any] = {"type": kind}
            if isinstance(source, RemoteService):
                entry.update({"up": True, "remote_up": source.ping(), "circuit": source.state})
            else:
                entry["up"] = source.ping()
            if isinstance(source, PostGISDatabase) and source.replica is not None:
                # Reads fall back to the primary while it is down: reported, not a failure.
                entry["replica"] = source.replica_status()
            if name in self.source_errors:
                entry["error"] = self.source_errors[name]
            entry["collections"] = sorted(c.id for c in self.collections.values() if c.source == name)
            out[name] = entry
        for url, service in list(self.remotes.items()):
            name = f"wfs:{url}"
            out[name] = {
                "type": "wfs",
                "up": True,
                "remote_up": service.ping(),
                "circuit": service.state,
                "collections": sorted(c.id for c in self.collections.values() if c.source == name),
            }
        return out

    def close(self) -> None:
        self.store.close()
        for source in [*self.sources.values(), *self.remotes.values()]:
            source.close()
