"""Running a chain of steps over a collection into a new table, in PostGIS or in Python.

A chain is planned first (:class:`Plan`): every config is validated, every step bound to
the layout it receives, every attribute and collection name checked, before anything
is read or written. Then it runs in one of two engines:

* **PostGIS**, when the source, every other collection the steps read and the target
  are in the same database: the whole chain is ONE statement, ``INSERT INTO <new table>
  WITH s0 AS (<source>), s1 AS (<step 1>) ... SELECT ...``, in the transaction that
  creates the table (:mod:`providers.capabilities.write_postgis`).
* **Python** otherwise (a GeoPackage, or collections in different stores): the source is
  read in batches through its provider, each step maps the batches with shapely and
  pyarrow (a step that needs every feature gathers them), and the result streams into
  the target through a binary COPY or one SQLite transaction.

Either way the table appears whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import shapely
from psycopg import sql

from providers.base import FeatureProvider, Query
from providers.capabilities import registry, write_geopackage, write_postgis
from providers.capabilities.model import Attribute, Layout, base_type, kind_of_gpkg, kind_of_pg
from providers.capabilities.operation import Operation
from providers.capabilities.sql import CapabilityDialect, Collection, SqlStep, f, output
from providers.capabilities.vector import Frame, Other, Source, VectorStep, read
from providers.errors import InvalidData, InvalidQuery, ProviderError
from providers.geopackage import GeoPackage, GeoPackageProvider
from providers.loader import Column, LoadResult, Mode, parse_mode, safe_name
from providers.postgis import PostGISDatabase, PostGISProvider

Progress = Callable[[int, int], None]

_JSON_KINDS = {"integer": "bigint", "number": "double", "boolean": "boolean"}


def layout_of(provider: FeatureProvider, what: str = "the collection") -> Layout:
    """How a chain sees a collection: attribute names made identifiers, kinds from the store's types."""
    schema = provider.schema
    if schema.geometry_field is None:
        raise InvalidQuery(f"{what} has no geometry")
    if schema.id_type != "integer":
        raise InvalidQuery(f"{what} has a {schema.id_type} id: capabilities need an integer one")
    taken: set[str] = set()
    attributes = []
    for name, field in schema.fields.items():
        if isinstance(provider, PostGISProvider):
            kind = kind_of_pg(field.native_type)
        elif isinstance(provider, GeoPackageProvider):
            kind = kind_of_gpkg(field.native_type)
        elif field.format == "date":
            kind = "date"
        elif field.format == "date-time":
            kind = "timestamptz"
        else:
            kind = _JSON_KINDS.get(field.type, "text")
        attributes.append(Attribute(safe_name(name, taken), kind, name))
    return Layout(tuple(attributes), base_type(schema.geometry_type), schema.storage_crs.srid)


@dataclass(frozen=True, slots=True)
class Bound:
    """A step bound to its place in the chain."""

    number: int  # 1-based
    operation: Operation
    inp: Layout
    out: Layout


@contextmanager
def _step(where: str) -> Iterator[None]:
    """Errors say where they come from (``step 2 (clip)``), once: outer steps leave them."""
    try:
        yield
    except ProviderError as exc:
        if getattr(exc, "_step", False):
            raise
        prefixed = type(exc)(f"{where}: {exc.message}")
        prefixed._step = True  # type: ignore[attr-defined]
        raise prefixed from exc
    except shapely.errors.GEOSException as exc:
        prefixed = InvalidData(f"{where}: GEOS cannot process a geometry: {str(exc)[:200]}")
        prefixed._step = True  # type: ignore[attr-defined]
        raise prefixed from exc


def _guarded(frames: Iterator[Frame], where: str) -> Iterator[Frame]:
    with _step(where):
        yield from frames


class Plan:
    """A chain checked against the collections it runs on."""

    def __init__(
        self,
        steps: Sequence[registry.Step],
        source: FeatureProvider,
        others: Mapping[str, FeatureProvider],
    ) -> None:
        if not steps:
            raise InvalidData("a chain needs at least one step")
        self.source = source
        self.start = layout_of(source)
        self.other_providers: dict[str, FeatureProvider] = {}
        other_layouts: dict[str, Layout] = {}
        self.steps: list[Bound] = []
        layout = self.start
        for number, step in enumerate(steps, 1):
            with _step(f"step {number} ({str(step.capability)[:40]})"):
                kind = registry.operation(step.capability)
                operation = kind(registry.validate(step.capability, step.config))
                for key in operation.inputs:
                    name = operation.config.get(key)
                    if name is None or name in other_layouts:
                        continue
                    provider = others.get(name)
                    if provider is None:
                        raise InvalidData(f"config.{key}: no collection {str(name)[:100]!r}")
                    self.other_providers[name] = provider
                    other_layouts[name] = layout_of(provider, f"collection {name!r}")
                out = operation.plan(layout, other_layouts)
            self.steps.append(Bound(number, operation, layout, out))
            layout = out
        self.layout = layout
        self.other_layouts = other_layouts

    @property
    def rowwise(self) -> bool:
        return all(b.operation.rowwise for b in self.steps) and self.layout.keeps_ids

    def in_postgis(self, target: Any) -> bool:
        """Whether the source, the other collections and ``target`` are one PostGIS database."""
        if not isinstance(target, PostGISDatabase):
            return False
        providers = [self.source, *self.other_providers.values()]
        return all(isinstance(p, PostGISProvider) and p.db.url == target.url for p in providers)

    # -- PostGIS ---------------------------------------------------------------------------
    def statement(self, ids: Sequence[int] | None) -> tuple[sql.Composable, dict[str, Any]]:
        """The chain as one SELECT (CTEs) of ``id``, the attributes and ``geom``, and its parameters."""
        assert isinstance(self.source, PostGISProvider)
        dialect = CapabilityDialect(self.start.srid)
        collections = {
            name: Collection(provider, self.other_layouts[name])  # type: ignore[arg-type]
            for name, provider in self.other_providers.items()
        }
        ctes = [f("s0 AS ({})", Collection(self.source, self.start).select(ids))]
        for bound in self.steps:
            step = SqlStep(sql.Identifier(f"s{bound.number - 1}"), bound.inp, bound.out, dialect, collections)
            with _step(f"step {bound.number} ({bound.operation.name})"):
                body = bound.operation.sql(step)
            ctes.append(f("{} AS ({})", sql.Identifier(f"s{bound.number}"), body))
        last = sql.Identifier(f"s{len(self.steps)}")
        statement = f("WITH {} {}", sql.SQL(", ").join(ctes), output(self.layout, last))
        params = dict(dialect.params)
        if ids is not None:
            params["ids"] = [int(i) for i in ids]
        return statement, params

    # -- Python ----------------------------------------------------------------------------
    def frames(self, ids: Sequence[int] | None = None, progress: Progress | None = None) -> Iterator[Frame]:
        """The chain's output, in frames, computed in Python from the providers."""
        stream = read(Source(self.source, self.start), ids)
        if progress is not None:
            stream = _counted(stream, progress, self._total(ids))
        others = {
            name: Other(Source(p, self.other_layouts[name])) for name, p in self.other_providers.items()
        }
        stream = _guarded(stream, "reading the collection")
        for bound in self.steps:
            step = VectorStep(bound.inp, bound.out, others)
            stream = _guarded(
                bound.operation.vector(stream, step), f"step {bound.number} ({bound.operation.name})"
            )
        return stream

    def _total(self, ids: Sequence[int] | None) -> int:
        if ids is not None:
            return len(ids)
        page = self.source.query(Query(limit=0, count="exact"))
        return page.matched.value if page.matched is not None else 0


def _counted(frames: Iterator[Frame], progress: Progress, total: int) -> Iterator[Frame]:
    done = 0
    for frame in frames:
        done += len(frame)
        progress(done, max(total, done))
        yield frame


def _ids(ids: Sequence[Any] | None) -> list[int] | None:
    if ids is None:
        return None
    try:
        return [int(i) for i in ids]
    except (TypeError, ValueError) as exc:
        raise InvalidQuery("ids must be integers") from exc


def run(
    steps: Sequence[registry.Step],
    source: FeatureProvider,
    others: Mapping[str, FeatureProvider],
    target: Any,
    table: str,
    progress: Progress | None = None,
    ids: Sequence[Any] | None = None,
    mode: Mode | str = Mode.CREATE,
) -> LoadResult:
    """Apply ``steps`` to ``source`` and write the result as the new table ``table`` of ``target``.

    ``target`` is a :class:`PostGISDatabase` (``table`` may be ``schema.table``) or a
    :class:`GeoPackage`; ``others`` maps the collection ids the configs name to their
    providers; ``ids`` restricts the run to those source features. The table has the
    key ``id`` (the source's id when the chain is row-wise) and a typed ``geom``, so it
    publishes like a loaded table (``server.publish.publish_loaded``). ``mode``
    ``replace`` swaps a table of that name for the new one in the same transaction
    (ids kept, so :func:`refresh` still applies); ``create`` (the default) refuses it
    with Conflict.
    """
    chosen = parse_mode(mode)
    if chosen is Mode.APPEND:
        raise InvalidQuery(
            "a chain writes a new table (create) or replaces one (replace), it does not append"
        )
    replace = chosen is Mode.REPLACE
    plan = Plan(steps, source, others)
    wanted = _ids(ids)
    layout = plan.layout
    if plan.in_postgis(target):
        statement, params = plan.statement(wanted)
        fill = write_postgis.insert_statement(layout, statement, params)
        key, written = write_postgis.create(target, table, layout, fill, replace)
        if progress is not None:
            progress(written, written)
    elif isinstance(target, PostGISDatabase):
        fill = write_postgis.copy_frames(layout, plan.frames(wanted, progress))
        key, written = write_postgis.create(target, table, layout, fill, replace)
    elif isinstance(target, GeoPackage):
        frames = plan.frames(wanted, progress)
        key, written = write_geopackage.create(target, table, layout, frames, replace=replace)
    else:
        raise InvalidQuery("the target must be a PostGIS database or a GeoPackage")
    columns = tuple(Column(a.name, a.name, a.kind) for a in layout.attributes)
    return LoadResult(key, written, layout.srid, layout.geometry_type, columns, chosen)


def refresh(
    steps: Sequence[registry.Step],
    source: FeatureProvider,
    others: Mapping[str, FeatureProvider],
    target: Any,
    table: str,
    ids: Sequence[Any],
) -> int:
    """Recompute the rows of source features ``ids`` in the output ``table`` of a row-wise chain.

    In one transaction: the rows of ``ids`` are deleted and those the chain makes of the
    source features still there are written; the table's revision is bumped (cached
    tiles refresh). Returns the rows written. InvalidQuery if the chain is not row-wise.
    """
    plan = Plan(steps, source, others)
    if not plan.rowwise:
        names = ", ".join(b.operation.name for b in plan.steps if not b.operation.rowwise)
        raise InvalidQuery(f"the chain is not row-wise ({names}): run it whole instead")
    wanted = _ids(ids) or []
    if not wanted:
        return 0
    layout = plan.layout
    if plan.in_postgis(target):
        statement, params = plan.statement(wanted)
        return write_postgis.refresh(
            target, table, wanted, write_postgis.insert_statement(layout, statement, params)
        )
    if isinstance(target, PostGISDatabase):
        return write_postgis.refresh(
            target, table, wanted, write_postgis.copy_frames(layout, plan.frames(wanted))
        )
    if isinstance(target, GeoPackage):
        return write_geopackage.refresh(target, table, layout, wanted, plan.frames(wanted))
    raise InvalidQuery("the target must be a PostGIS database or a GeoPackage")
