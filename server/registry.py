"""The published collections: built from the configuration and from discovery.

A collection is declared in ``collections:`` or published automatically from a
PostGIS schema (every table/view with a geometry column) or from every layer of a
GeoPackage. Either way its extent, storage CRS, fields and queryables are read from
the source. One handle per database or file is shared by its collections.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from providers.base import FeatureProvider
from providers.crs import CRS84_URI, crs_uri, epsg_uri, parse_crs
from providers.errors import NotFound
from providers.postgis import PostGISDatabase, PostGISProvider, TableRef
from server.config import COLLECTION_TILE_DEFAULTS

LOGGER = logging.getLogger(__name__)

#: Advertised for every collection besides its storage CRS (Part 2 ``crs`` list).
DEFAULT_CRS = [CRS84_URI, epsg_uri(4326), epsg_uri(3857)]


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
        self.sources: dict[str, Any] = {}  # PostGISDatabase or GeoPackage, by source name
        self.source_errors: dict[str, str] = {}
        self.collections: dict[str, Collection] = {}
        self._open_sources()
        self._publish_declared()
        self._publish_discovered()

    # -- building ------------------------------------------------------------------------
    def _open_sources(self) -> None:
        for name, spec in self.config["sources"].items():
            if spec["type"] == "postgis":
                self.sources[name] = PostGISDatabase(
                    spec["url"],
                    pool_min=spec.get("pool_min", 1),
                    pool_max=spec.get("pool_max", 10),
                    prepare_threshold=spec.get("prepare_threshold", 5),
                    statement_timeout_ms=spec.get("statement_timeout_ms", 30_000),
                )
                if not self.sources[name].ping():
                    # Reported on /health; its collections are not published rather than
                    # each start-up step waiting for a database that does not answer.
                    self.source_errors[name] = "database unreachable at start-up"
            else:
                from providers.geopackage import GeoPackage

                self.sources[name] = GeoPackage(spec["path"])

    def _crs_list(self, storage_srid: int, extra: list[Any]) -> list[str]:
        names = [*DEFAULT_CRS, crs_uri(storage_srid)]
        for item in [*self.config["server"].get("crs", []), *extra]:
            names.append(parse_crs(str(item)).uri)
        return list(dict.fromkeys(names))

    def _add(self, cid: str, source_name: str, options: dict[str, Any]) -> None:
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
        self.collections[cid] = Collection(
            id=cid,
            title=options.get("title", cid),
            description=options.get("description", f"{cid} ({spec['type']})"),
            keywords=options.get("keywords", []),
            provider=provider,
            source=source_name,
            source_type=spec["type"],
            crs=self._crs_list(schema.storage_crs.srid, options.get("crs", [])),
            tiles={**COLLECTION_TILE_DEFAULTS, **options.get("tiles", {})},
        )

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

    # -- use -------------------------------------------------------------------------
    def get(self, cid: str) -> Collection:
        try:
            return self.collections[cid]
        except KeyError:
            raise NotFound(f"collection {cid[:100]!r} not found") from None

    def health(self) -> dict[str, Any]:
        """Each source with its type and whether it answers now."""
        out = {}
        for name, source in self.sources.items():
            kind = self.config["sources"][name]["type"]
            up = source.ping()
            entry: dict[str, Any] = {"type": kind, "up": up}
            if name in self.source_errors:
                entry["error"] = self.source_errors[name]
            entry["collections"] = sorted(c.id for c in self.collections.values() if c.source == name)
            out[name] = entry
        return out

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
