"""Capabilities that read another collection: clip, intersection, difference, spatial join,
point-in-polygon counts, nearest features.

The other collection is named by its collection id (``"other": "parcels"``) and read in
the step's CRS. In PostGIS it is joined where it lies, its spatial index doing the
search (its geometry column is compared bare, ``o.geom && <box>``, and only transformed
where the CRSs differ); in Python it is read once and put in a shapely STRtree. Pairs
are always taken in the order of the source id, then the other's id, so new ids come
out the same in both engines.

Overlay results keep the parts of the expected dimension (a polygon clipped by a
polygon stays polygons, the lines where they only touch are dropped, as
``ST_CollectionExtract`` does); a feature left empty is dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from psycopg import sql

from providers.capabilities import aggregation, metric
from providers.capabilities.model import Attribute, Layout, dimension, multi_type, new_name, type_of_dimension
from providers.capabilities.operation import Operation, columns_property, other_property, schema
from providers.capabilities.shapes import collection_extract
from providers.capabilities.sql import SqlStep, f
from providers.capabilities.vector import Frame, VectorStep, gather, take
from providers.errors import InvalidData


def _other(layout_others: Mapping[str, Layout], name: str, field: str = "config.other") -> Layout:
    found = layout_others.get(name)
    if found is None:
        raise InvalidData(f"{field}: no collection {name[:100]!r}")
    return found


def _extract_sql(geom: sql.Composable, dim: int | None) -> sql.Composable:
    if dim is None:
        return geom
    return f("ST_CollectionExtract({}, {})", geom, sql.Literal(dim + 1))


def _extract(geoms: np.ndarray, dim: int | None) -> np.ndarray:
    if dim is None:
        return geoms
    return collection_extract(geoms, dim)


def _present(geoms: np.ndarray) -> np.ndarray:
    return ~shapely.is_missing(geoms) & ~shapely.is_empty(geoms)


def _pairs(
    geoms: np.ndarray, step: VectorStep, collection: str, predicate: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """(row, other row) of every pair for which ``predicate(geoms[row], <other feature>)`` holds,
    ordered by row then the other's id (rows of the other collection as ``step.other`` has them)."""
    _, others = step.other(collection)
    if not len(geoms) or not len(others):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows, found = step.other_tree(collection).query(geoms, predicate=predicate)
    order = np.lexsort((others.ids[found], rows))
    return rows[order], found[order]


def _groups(rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(row, positions in ``rows``) for each distinct row of the sorted ``rows``."""
    if not len(rows):
        return []
    starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
    ends = np.append(starts[1:], len(rows))
    return [(int(rows[s]), np.arange(s, e)) for s, e in zip(starts, ends, strict=True)]


def _unions(geoms: np.ndarray, rows: np.ndarray, found: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each row of ``geoms``, the union of its matched ``others`` (None without any)."""
    out = np.full(len(geoms), None, dtype=object)
    for row, positions in _groups(rows):
        out[row] = shapely.union_all(others[found[positions]])
    return out


class _Overlay(Operation):
    """A capability whose output keeps the source geometry's dimension and drops emptied features."""

    inputs = ("other",)

    def plan_overlay(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        if self.config.get("other") is not None:
            _other(others, self.config["other"])
        return dataclasses.replace(layout, geometry_type=multi_type(layout.geometry_type))

    @staticmethod
    def non_empty(select: sql.Composable) -> sql.Composable:
        return f("SELECT * FROM ({}) AS c WHERE NOT ST_IsEmpty(c.geom)", select)


class Clip(_Overlay):
    name = "clip"
    description = "Clip features by a box or by another collection"
    schema = schema(
        "Each feature cut to a box, or to the features of another collection (their union where they "
        "meet it); features left empty are dropped.",
        {
            "bbox": {
                "type": "array",
                "items": {"type": "number"},
                "minItems": 4,
                "maxItems": 4,
                "description": "min x, min y, max x, max y in the data's CRS",
            },
            "other": other_property("the id of the collection to clip by"),
        },
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        if ("bbox" in config) == ("other" in config):
            raise InvalidData(
                "config.bbox: give either a bbox or another collection (other), not both or none"
            )
        if "bbox" in config:
            x0, y0, x1, y1 = config["bbox"]
            if x0 >= x1 or y0 >= y1:
                raise InvalidData("config.bbox: min x must be less than max x, min y less than max y")

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return self.plan_overlay(layout, others)

    def sql(self, step: SqlStep) -> sql.Composable:
        dim = dimension(step.inp.geometry_type)
        if "bbox" in self.config:
            box = f(
                "ST_MakeEnvelope({}, {}, {}, {}, {})",
                *(sql.Literal(float(v)) for v in self.config["bbox"]),
                sql.Literal(step.inp.srid),
            )
            clipped = _extract_sql(f("ST_Intersection(r.geom, {})", box), dim)
            return self.non_empty(step.select(clipped, tail=f("WHERE r.geom && {}", box)))
        other = step.other(self.config["other"])
        og = other.geom_in("o", step.inp.srid)
        union = f(
            "LATERAL (SELECT ST_Union({og}) AS geom FROM {t} AS o "
            "WHERE {near} AND ST_Intersects({og}, r.geom)) AS u",
            og=og,
            t=other.table,
            near=other.near("o", sql.SQL("r.geom"), step.inp.srid),
        )
        clipped = _extract_sql(sql.SQL("ST_Intersection(r.geom, u.geom)"), dim)
        return self.non_empty(step.select(clipped, tail=f(", {} WHERE u.geom IS NOT NULL", union)))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        dim = dimension(step.inp.geometry_type)
        if "bbox" in self.config:
            clipped = shapely.intersection(frame.geoms, shapely.box(*self.config["bbox"]))
        else:
            _, others = step.other(self.config["other"])
            rows, found = _pairs(frame.geoms, step, self.config["other"], "intersects")
            unions = _unions(frame.geoms, rows, found, others.geoms)
            clipped = shapely.intersection(frame.geoms, unions)
        clipped = _extract(np.asarray(clipped, dtype=object), dim)
        keep = np.flatnonzero(_present(clipped))
        return frame.replace(geoms=clipped).take(keep)


class Difference(_Overlay):
    name = "difference"
    description = "Remove from each feature what another collection covers"
    schema = schema(
        "Each feature minus the union of the other collection's features that meet it; features left "
        "empty are dropped, features nothing meets are kept whole.",
        {"other": other_property("the id of the collection to subtract")},
        ["other"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return self.plan_overlay(layout, others)

    def sql(self, step: SqlStep) -> sql.Composable:
        other = step.other(self.config["other"])
        og = other.geom_in("o", step.inp.srid)
        union = f(
            "LEFT JOIN LATERAL (SELECT ST_Union({og}) AS geom FROM {t} AS o "
            "WHERE {near} AND ST_Intersects({og}, r.geom)) AS u ON true",
            og=og,
            t=other.table,
            near=other.near("o", sql.SQL("r.geom"), step.inp.srid),
        )
        rest = _extract_sql(
            sql.SQL("CASE WHEN u.geom IS NULL THEN r.geom ELSE ST_Difference(r.geom, u.geom) END"),
            dimension(step.inp.geometry_type),
        )
        return self.non_empty(step.select(rest, tail=union))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        _, others = step.other(self.config["other"])
        rows, found = _pairs(frame.geoms, step, self.config["other"], "intersects")
        unions = _unions(frame.geoms, rows, found, others.geoms)
        rest = np.asarray(frame.geoms, dtype=object).copy()
        hit = ~shapely.is_missing(unions)
        rest[hit] = shapely.difference(frame.geoms[hit], unions[hit])
        rest = _extract(rest, dimension(step.inp.geometry_type))
        return frame.replace(geoms=rest).take(np.flatnonzero(_present(rest)))


def _carried(config: dict[str, Any], other: Layout, prefix_key: str) -> list[tuple[Attribute, Attribute]]:
    """(other's attribute, its output attribute) for the other's attributes a config copies."""
    names = config.get("columns")
    chosen = (
        list(other.attributes)
        if names is None
        else [other.attribute(n, f"config.columns[{i}]") for i, n in enumerate(names)]
    )
    prefix = config[prefix_key]
    out = []
    for attribute in chosen:
        name = new_name(f"{prefix}{attribute.name}"[:63], f"config.{prefix_key}")
        out.append((attribute, Attribute(name, attribute.kind)))
    return out


class Intersection(Operation):
    name = "intersection"
    description = "Intersect features with another collection, pair by pair"
    rowwise = False
    inputs = ("other",)
    schema = schema(
        "One feature per pair of a feature and a feature of the other collection that overlap: their "
        "common part (of the lower of their dimensions), with the attributes of both (the other's "
        "prefixed). New ids, in the order of the feature's id, then the other's.",
        {
            "other": other_property("the id of the collection to intersect with"),
            "columns": columns_property("the other collection's attributes to copy (default: all)"),
            "prefix": {
                "type": "string",
                "default": "other_",
                "description": "prefix of the copied attributes",
            },
        },
        ["other"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        other = _other(others, self.config["other"])
        self.carried = _carried(self.config, other, "prefix")
        dims = (dimension(layout.geometry_type), dimension(other.geometry_type))
        self.dim = None if None in dims else min(dims)  # type: ignore[type-var]
        attributes = [*layout.attributes, *(out for _, out in self.carried)]
        return layout.with_attributes(attributes, geometry_type=type_of_dimension(self.dim), keeps_ids=False)

    def sql(self, step: SqlStep) -> sql.Composable:
        other = step.other(self.config["other"])
        og = other.geom_in("o", step.inp.srid)
        copied = [f("{} AS {}", other.value("o", src), sql.Identifier(out.name)) for src, out in self.carried]
        inner = f(
            "SELECT r.id AS __sid, o.{oid} AS __oid, {cols}{geom} AS geom FROM {rel} AS r "
            "JOIN {t} AS o ON {near} AND ST_Intersects(r.geom, {og})",
            oid=other.id,
            cols=sql.SQL("").join(f("{}, ", c) for c in [*step.attributes(), *copied]),
            geom=_extract_sql(f("ST_Intersection(r.geom, {})", og), self.dim),
            rel=step.rel,
            t=other.table,
            near=other.near("o", sql.SQL("r.geom"), step.inp.srid),
            og=og,
        )
        names = sql.SQL("").join(f("c.{}, ", sql.Identifier(a.name)) for a in step.out.attributes)
        return f(
            "SELECT row_number() OVER (ORDER BY c.__sid, c.__oid) AS id, {}c.geom FROM ({}) AS c "
            "WHERE NOT ST_IsEmpty(c.geom)",
            names,
            inner,
        )

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = gather(frames, step.inp)
        whole = whole.take(np.argsort(whole.ids, kind="stable"))
        _, others = step.other(self.config["other"])
        rows, found = _pairs(whole.geoms, step, self.config["other"], "intersects")
        parts = _extract(
            np.asarray(shapely.intersection(whole.geoms[rows], others.geoms[found]), dtype=object), self.dim
        )
        keep = _present(parts)
        rows, found, parts = rows[keep], found[keep], parts[keep]
        table = take(whole.table, rows)
        copied = take(others.table, found)
        for src, out in self.carried:
            table = table.append_column(out.name, copied.column(src.name))
        yield Frame(np.arange(1, len(rows) + 1, dtype=np.int64), parts, table)


PREDICATES = ("intersects", "within", "contains", "dwithin")


class SpatialJoin(Operation):
    name = "spatial_join"
    description = "Join attributes of another collection's features that meet each feature, aggregated"
    inputs = ("other",)
    schema = schema(
        "Each feature with aggregates (count, sum, min, max, avg) of the other collection's features "
        "related to it: that it intersects, lies within, contains, or lies within a distance of "
        "(dwithin, in metres, measured as buffer measures them).",
        {
            "other": other_property("the id of the collection to join"),
            "predicate": {"enum": list(PREDICATES), "default": "intersects", "description": "the relation"},
            "distance": {
                "type": "number",
                "minimum": 0,
                "maximum": 10_000_000,
                "description": "dwithin: the distance in metres",
            },
            "aggregates": aggregation.aggregates_property("the related features"),
            "keep_unmatched": {
                "type": "boolean",
                "default": True,
                "description": "keep features no other feature relates to (count 0)",
            },
        },
        ["other"],
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        dwithin = config.get("predicate", "intersects") == "dwithin"
        if dwithin and "distance" not in config:
            raise InvalidData("config.distance: a value is required for the dwithin predicate")
        if not dwithin and "distance" in config:
            raise InvalidData("config.distance: only the dwithin predicate takes a distance")

    @property
    def predicate(self) -> str:
        return self.config["predicate"]

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        other = _other(others, self.config["other"])
        self.aggregates = aggregation.plan(self.config["aggregates"], other, "config.aggregates")
        return layout.with_attributes([*layout.attributes, *aggregation.outputs(self.aggregates)])

    def sql(self, step: SqlStep) -> sql.Composable:
        other = step.other(self.config["other"])
        og = other.geom_in("o", step.inp.srid)
        tail: list[sql.Composable] = []
        if self.predicate == "dwithin":
            distance = float(self.config["distance"])
            near = other.near(
                "o", metric.sql_search_box(sql.SQL("r.geom"), step.inp.srid, distance), step.inp.srid
            )
            test = metric.sql_within(sql.SQL("r.geom"), og, sql.Identifier("m"), step.inp.srid, distance)
            if metric.geographic(step.inp.srid):
                tail.append(f(", {} AS m", metric.sql_projection(sql.SQL("r.geom"))))
        else:
            near = other.near("o", sql.SQL("r.geom"), step.inp.srid)
            function = {"intersects": "ST_Intersects", "within": "ST_Within", "contains": "ST_Contains"}
            test = f("{}(r.geom, {})", sql.SQL(function[self.predicate]), og)
        columns = aggregation.sql_columns(self.aggregates, lambda a: other.value("o", a))
        tail.append(
            f(
                ", LATERAL (SELECT {}count(*) AS __matched FROM {} AS o WHERE {} AND {}) AS a",
                sql.SQL("").join(f("{}, ", c) for c in columns),
                other.table,
                near,
                test,
            )
        )
        if not self.config["keep_unmatched"]:
            tail.append(sql.SQL(" WHERE a.__matched > 0"))
        extra = [f("a.{}", sql.Identifier(a.output.name)) for a in self.aggregates]
        return step.select(sql.SQL("r.geom"), extra=extra, tail=sql.Composed(tail))

    def matches(self, geoms: np.ndarray, step: VectorStep) -> tuple[np.ndarray, np.ndarray]:
        collection, srid = self.config["other"], step.inp.srid
        if self.predicate != "dwithin":
            return _pairs(geoms, step, collection, self.predicate)
        _, others = step.other(collection)
        distance = float(self.config["distance"])
        boxes = np.full(len(geoms), None, dtype=object)
        present = _present(geoms)
        boxes[present] = metric.search_boxes(geoms[present], srid, distance)
        rows, found = _pairs(boxes, step, collection, None)
        if not len(rows):
            return rows, found
        close = metric.within(geoms[rows], others.geoms[found], srid, distance)
        return rows[close], found[close]

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        _, others = step.other(self.config["other"])
        rows, found = self.matches(frame.geoms, step)
        values = take(others.table, found)
        computed = aggregation.arrow(self.aggregates, values, rows, len(frame))
        table = frame.table
        for aggregate in self.aggregates:
            table = table.append_column(aggregate.output.name, computed[aggregate.output.name])
        out = frame.replace(table=table)
        if not self.config["keep_unmatched"]:
            out = out.take(np.unique(rows))
        return out


class PointInPolygon(SpatialJoin):
    name = "point_in_polygon"
    description = "Count (and aggregate) the points of another collection in each polygon"
    schema = schema(
        "Each feature (a polygon) with the number of the other collection's points that it holds "
        "(its boundary included) and aggregates of their attributes.",
        {
            "other": other_property("the id of the collection of points"),
            "aggregates": aggregation.aggregates_property("the points in the polygon"),
        },
        ["other"],
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        pass

    @property
    def predicate(self) -> str:
        return "intersects"

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.config = {**self.config, "keep_unmatched": True}
        return super().plan(layout, others)


class Nearest(Operation):
    name = "nearest"
    description = "The k nearest features of another collection"
    rowwise = False
    inputs = ("other",)
    schema = schema(
        "For each feature, its k nearest features of the other collection, one output feature each "
        "(the feature's geometry and attributes, the neighbour's rank, distance and attributes). "
        "Distances are in the units of the data's CRS (degrees for lon/lat: reproject to a metric "
        "CRS first for metres); ties go to the lower id. New ids, by feature id then rank.",
        {
            "other": other_property("the id of the collection to search"),
            "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1, "description": "neighbours"},
            "columns": columns_property("the neighbour's attributes to copy (default: all)"),
            "prefix": {
                "type": "string",
                "default": "nearest_",
                "description": "prefix of the added attributes",
            },
        },
        ["other"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        other = _other(others, self.config["other"])
        prefix = self.config["prefix"]
        self.rank = Attribute(new_name(f"{prefix}rank", "config.prefix"), "integer")
        self.distance = Attribute(new_name(f"{prefix}distance", "config.prefix"), "double")
        self.carried = _carried(self.config, other, "prefix")
        attributes = [*layout.attributes, self.rank, self.distance, *(out for _, out in self.carried)]
        return layout.with_attributes(attributes, keeps_ids=False)

    def sql(self, step: SqlStep) -> sql.Composable:
        other = step.other(self.config["other"])
        k = sql.Literal(int(self.config["k"]))
        og = other.geom_in("o", step.inp.srid)
        if other.layout.srid == step.inp.srid:
            knn = f("o.{} <-> r.geom", other.geom_column)
        else:
            knn = f("ST_Distance({}, r.geom)", og)
        copied = [f("{} AS {}", other.value("o", src), sql.Identifier(out.name)) for src, out in self.carried]
        # The k-th distance first (the index orders by distance), then every feature that close,
        # ordered by distance and id: ties at the k-th place go to the lower id.
        tail = f(
            "CROSS JOIN LATERAL (SELECT max(x.__d) AS __d FROM (SELECT {knn} AS __d FROM {t} AS o "
            "WHERE o.{g} IS NOT NULL ORDER BY {knn} LIMIT {k}) AS x) AS kth "
            "CROSS JOIN LATERAL (SELECT row_number() OVER (ORDER BY y.__d, y.__oid) AS __rank, y.* FROM ("
            "SELECT o.{oid} AS __oid, ST_Distance({og}, r.geom) AS __d{copied} FROM {t} AS o "
            "WHERE {near} AND ST_DWithin({og}, r.geom, kth.__d) ORDER BY 2, 1 LIMIT {k}) AS y) AS n",
            knn=knn,
            t=other.table,
            g=other.geom_column,
            k=k,
            oid=other.id,
            og=og,
            copied=sql.SQL("").join(f(", {}", c) for c in copied),
            near=other.near("o", sql.SQL("ST_Expand(r.geom, kth.__d)"), step.inp.srid),
        )
        columns = [
            sql.SQL("row_number() OVER (ORDER BY r.id, n.__rank) AS id"),
            *step.attributes(),
            f("n.__rank::integer AS {}", sql.Identifier(self.rank.name)),
            f("n.__d AS {}", sql.Identifier(self.distance.name)),
            *(f("n.{}", sql.Identifier(out.name)) for _, out in self.carried),
            sql.SQL("r.geom"),
        ]
        return f(
            "SELECT {} FROM {} AS r {} WHERE r.geom IS NOT NULL AND NOT ST_IsEmpty(r.geom)",
            sql.SQL(", ").join(columns),
            step.rel,
            tail,
        )

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = gather(frames, step.inp)
        whole = whole.take(np.argsort(whole.ids, kind="stable"))
        whole = whole.take(np.flatnonzero(_present(whole.geoms)))
        _, others = step.other(self.config["other"])
        rows, found, distances, ranks = nearest(whole.geoms, others.geoms, others.ids, int(self.config["k"]))
        table = take(whole.table, rows)
        table = table.append_column(self.rank.name, pa.array(ranks, pa.int32()))
        table = table.append_column(self.distance.name, pa.array(distances, pa.float64()))
        copied = take(others.table, found)
        for src, out in self.carried:
            table = table.append_column(out.name, copied.column(src.name))
        geoms = whole.geoms[rows]
        yield Frame(np.arange(1, len(rows) + 1, dtype=np.int64), geoms, table)


def nearest(
    geoms: np.ndarray, others: np.ndarray, other_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(row, other row, distance, rank) of the ``k`` nearest others of each geometry, by row then rank.

    The search radius of each geometry starts at its nearest neighbour's distance and
    doubles until it holds ``k`` others (or all of them); then every other that close is
    ranked by distance and id.
    """
    empty = np.empty(0, np.int64)
    if not len(geoms) or not len(others):
        return empty, empty, np.empty(0), empty
    tree = shapely.STRtree(others)
    want = min(k, len(others))
    (inputs, _), reach = tree.query_nearest(geoms, return_distance=True, all_matches=False)
    radius = np.zeros(len(geoms))
    radius[inputs] = reach
    todo = np.arange(len(geoms))
    picked_rows, picked_found = [], []
    step = max(float(np.nanmax(radius)) * 1e-9, 1e-12)
    while len(todo):
        rows, found = tree.query(geoms[todo], predicate="dwithin", distance=radius[todo])
        counts = np.bincount(rows, minlength=len(todo))
        enough = counts >= want
        keep = enough[rows]
        picked_rows.append(todo[rows[keep]])
        picked_found.append(found[keep])
        todo = todo[~enough]
        radius[todo] = np.maximum(radius[todo] * 2, step)
    rows = np.concatenate(picked_rows)
    found = np.concatenate(picked_found)
    distances = shapely.distance(geoms[rows], others[found])
    order = np.lexsort((other_ids[found], distances, rows))
    rows, found, distances = rows[order], found[order], distances[order]
    starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]]))
    ranks = np.arange(len(rows)) - np.repeat(starts, np.diff(np.append(starts, len(rows))))
    keep = ranks < want
    return rows[keep], found[keep], distances[keep], ranks[keep] + 1
