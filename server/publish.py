"""Publishing what the loader wrote: the one place a loaded table becomes (or stays) a layer.

``geoharbor import``, background load jobs and (later) the importer all end a load
here, so a loaded table is published the same way whichever door it came through.
"""

from __future__ import annotations

from typing import Any

from providers import loader
from providers.store import Record
from providers.tables import tables_of
from server.registry import Registry


def published_layer(registry: Registry, source: str, tables: Any, table: str) -> Record | None:
    """The layer record publishing ``table`` of ``source``, if there is one."""
    for record in registry.store.list("layer"):
        if record.body.get("source") == source and tables.is_layer_of(record.body, table):
            return record
    return None


def publish_loaded(
    registry: Registry,
    source: str,
    result: loader.LoadResult,
    mode: loader.Mode,
    title: str | None = None,
    collection: str | None = None,
    owner: int | None = None,
) -> Record:
    """Publish a loaded table as a layer, or republish its layer (new columns, new extent).

    When a CREATE load cannot be published, its new table is dropped: a failed
    import leaves nothing behind.
    """
    schema, _, table = result.table.rpartition(".")
    tables = tables_of(registry.sources[source], source)
    if schema:
        tables.schema = schema  # type: ignore[misc]
    layer = published_layer(registry, source, tables, table)
    try:
        if layer is not None:
            return registry.update_layer(layer.id, layer.body)
        taken = table in registry.collections
        return registry.create_layer(
            {
                "collection": collection or (f"{table}_{source}" if taken else table),
                "source": source,
                **({"table": result.table} if schema else tables.layer_options(table)),
                "name": table,
                "title": title or table,
                "editable": False,
                **({"owner": owner} if owner is not None else {}),
            }
        )
    except BaseException:
        if mode is loader.Mode.CREATE and layer is None:
            tables.drop(table)
        raise
