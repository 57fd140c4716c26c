"""Capabilities that make features out of groups of features: dissolve, square grid and
hexagon aggregation, Voronoi polygons, dedupe.

Groups are ordered the same way in both engines (keys ascending, nulls last, text by code
point), so the new ids (1, 2 ...) match. Grid cells are PostGIS's own tilings
(``ST_Square``/``ST_Hexagon`` of size ``s``: squares ``[i s, (i+1) s] x [j s, (j+1) s]``,
flat-topped hexagons of edge ``s`` centred on ``(1.5 s i, sqrt(3) s (j + (i mod 2) / 2))``),
computed in Python from the same formulas. A point belongs to the one cell that holds it
(the lower-left one on an edge: the nearest centre, lower column first, for hexagons);
another geometry to every cell whose interior its interior meets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from psycopg import sql

from providers.capabilities import aggregation
from providers.capabilities.model import Attribute, Layout, multi_type
from providers.capabilities.operation import Operation, columns_property, schema
from providers.capabilities.sql import SqlStep, f, text_order
from providers.capabilities.vector import Frame, VectorStep, gather, take
from providers.errors import InvalidData

#: Cells one feature may fall in at most (a finer grid is refused while it runs).
MAX_CELLS_PER_FEATURE = 1_000_000


def _sorted(frame: Frame) -> Frame:
    return frame.take(np.argsort(frame.ids, kind="stable"))


def _group_numbers(table: pa.Table, keys: list[str]) -> tuple[np.ndarray, pa.Table]:
    """(group number of each row, the groups' keys) with groups numbered in key order
    (ascending, nulls last; text by code point)."""
    indexed = table.select(keys).append_column("__row", pa.array(np.arange(table.num_rows), pa.int64()))
    grouped = indexed.group_by(keys, use_threads=False).aggregate([("__row", "list")])
    ordered = grouped.sort_by([(k, "ascending", "at_end") for k in keys])
    numbers = np.empty(table.num_rows, dtype=np.int64)
    for n, rows in enumerate(ordered.column("__row_list").to_pylist()):
        numbers[rows] = n
    return numbers, ordered.select(keys)


class Dissolve(Operation):
    name = "dissolve"
    description = "Merge features by attribute values"
    rowwise = False
    schema = schema(
        "One feature per distinct combination of the 'by' attributes (all features when none): the "
        "union of their geometries, with those attributes and aggregates of the others. New ids, in the "
        "order of the 'by' values (ascending, empty values last).",
        {
            "by": columns_property("the attributes whose values make a group"),
            "aggregates": aggregation.aggregates_property("the merged features"),
        },
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.by = [layout.attribute(n, f"config.by[{i}]") for i, n in enumerate(self.config.get("by", []))]
        self.aggregates = aggregation.plan(self.config["aggregates"], layout, "config.aggregates")
        return layout.with_attributes(
            [*self.by, *aggregation.outputs(self.aggregates)],
            geometry_type=multi_type(layout.geometry_type),
            keeps_ids=False,
        )

    def sql(self, step: SqlStep) -> sql.Composable:
        keys = [f("r.{}", sql.Identifier(a.name)) for a in self.by]
        order = [text_order(a, k) for a, k in zip(self.by, keys, strict=True)]
        columns = [
            f("row_number() OVER (ORDER BY {})", sql.SQL(", ").join(order)) if order else sql.SQL("1"),
            *keys,
            *aggregation.sql_columns(self.aggregates, lambda a: f("r.{}", sql.Identifier(a.name))),
            sql.SQL("ST_Union(r.geom) AS geom"),
        ]
        group = f(" GROUP BY {}", sql.SQL(", ").join(keys)) if keys else sql.SQL("")
        return f(
            "SELECT {} AS id, {} FROM {} AS r{} HAVING count(*) > 0",
            columns[0],
            sql.SQL(", ").join(columns[1:]),
            step.rel,
            group,
        )

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = _sorted(gather(frames, step.inp))
        if not len(whole):
            return
        names = [a.name for a in self.by]
        if names:
            numbers, keys = _group_numbers(whole.table, names)
        else:
            numbers, keys = np.zeros(len(whole), dtype=np.int64), pa.table({})
        count = int(numbers.max()) + 1
        geoms = np.full(count, None, dtype=object)
        order = np.argsort(numbers, kind="stable")
        bounds = np.searchsorted(numbers[order], np.arange(count + 1))
        for n in range(count):
            members = whole.geoms[order[bounds[n] : bounds[n + 1]]]
            members = members[~shapely.is_missing(members)]
            if len(members):
                geoms[n] = shapely.union_all(members)
        computed = aggregation.arrow(self.aggregates, whole.table, numbers, count)
        columns = {name: keys.column(name) for name in names} | computed
        table = pa.table(
            {a.name: columns[a.name] for a in step.out.attributes}, schema=step.out.arrow_schema()
        )
        yield Frame(np.arange(1, count + 1, dtype=np.int64), geoms, table)


class _Grid(Operation):
    """Aggregation of features into the cells of a regular tiling."""

    rowwise = False
    cell_function: str

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.aggregates = aggregation.plan(self.config["aggregates"], layout, "config.aggregates")
        cells = [Attribute("i", "integer"), Attribute("j", "integer")]
        return layout.with_attributes(
            [*cells, *aggregation.outputs(self.aggregates)], geometry_type="POLYGON", keeps_ids=False
        )

    @property
    def size(self) -> float:
        return float(self.config["size"])

    # -- SQL ------------------------------------------------------------------------------------
    def point_cell_sql(self) -> sql.Composable:
        """A LATERAL subquery giving the cell (i, j) of the point ``r.geom``."""
        raise NotImplementedError

    def sql(self, step: SqlStep) -> sql.Composable:
        size = sql.Literal(self.size)
        present = sql.SQL("r.geom IS NOT NULL AND NOT ST_IsEmpty(r.geom)")
        if step.inp.geometry_type == "POINT":
            pairs = f(
                "SELECT r.*, cell.i AS __ci, cell.j AS __cj FROM {} AS r, {} AS cell WHERE {}",
                step.rel,
                self.point_cell_sql(),
                present,
            )
        else:
            grid = sql.SQL("ST_SquareGrid" if self.cell_function == "ST_Square" else "ST_HexagonGrid")
            pairs = f(
                "SELECT r.*, cell.i AS __ci, cell.j AS __cj "
                "FROM {} AS r, {}({}::double precision, r.geom) AS cell "
                "WHERE {} AND ST_Relate(cell.geom, r.geom, 'T********')",
                step.rel,
                grid,
                size,
                present,
            )
        columns = [
            sql.SQL("row_number() OVER (ORDER BY c.__ci, c.__cj) AS id"),
            sql.SQL("c.__ci::integer AS i"),
            sql.SQL("c.__cj::integer AS j"),
            *aggregation.sql_columns(self.aggregates, lambda a: f("c.{}", sql.Identifier(a.name))),
            f(
                "ST_SetSRID({}({}::double precision, c.__ci::integer, c.__cj::integer), {}) AS geom",
                sql.SQL(self.cell_function),
                size,
                sql.Literal(step.inp.srid),
            ),
        ]
        return f("SELECT {} FROM ({}) AS c GROUP BY c.__ci, c.__cj", sql.SQL(", ").join(columns), pairs)

    # -- Python ---------------------------------------------------------------------------------
    def point_cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def cell_ranges(self, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(first i, last i, first j, last j) of cells that may meet each box."""
        raise NotImplementedError

    def cells(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = _sorted(gather(frames, step.inp))
        whole = whole.take(np.flatnonzero(~shapely.is_missing(whole.geoms) & ~shapely.is_empty(whole.geoms)))
        if step.inp.geometry_type == "POINT":
            coords = shapely.get_coordinates(whole.geoms)
            ci, cj = self.point_cells(coords[:, 0], coords[:, 1])
            rows = np.arange(len(whole))
        else:
            rows, ci, cj = self.meeting_cells(whole.geoms)
        if not len(rows):
            return
        pairs = np.rec.fromarrays([ci, cj], names="i,j")
        unique, numbers = np.unique(pairs, return_inverse=True)
        computed = aggregation.arrow(self.aggregates, take(whole.table, rows), numbers, len(unique))
        columns = {"i": pa.array(unique["i"], pa.int32()), "j": pa.array(unique["j"], pa.int32())} | computed
        table = pa.table(
            {a.name: columns[a.name] for a in step.out.attributes}, schema=step.out.arrow_schema()
        )
        ids = np.arange(1, len(unique) + 1, dtype=np.int64)
        yield Frame(ids, self.cells(unique["i"].astype(np.int64), unique["j"].astype(np.int64)), table)

    def meeting_cells(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, i, j) of every cell whose interior meets the interior of each geometry."""
        i0, i1, j0, j1 = self.cell_ranges(shapely.bounds(geoms))
        counts = (i1 - i0 + 1) * (j1 - j0 + 1)
        if counts.max(initial=0) > MAX_CELLS_PER_FEATURE:
            raise InvalidData(f"config.size: {self.size} makes too many cells for one feature")
        rows = np.repeat(np.arange(len(geoms)), counts)
        offset = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
        width = np.repeat(j1 - j0 + 1, counts)
        ci = np.repeat(i0, counts) + offset // width
        cj = np.repeat(j0, counts) + offset % width
        meets = shapely.relate_pattern(self.cells(ci, cj), geoms[rows], "T********")
        return rows[meets], ci[meets], cj[meets]


def _grid_schema(what: str) -> dict[str, Any]:
    return schema(
        what,
        {
            "size": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "the cell size (a hexagon's edge), in the units of the data's CRS",
            },
            "aggregates": aggregation.aggregates_property("the features in a cell"),
        },
        ["size"],
    )


class SquareGrid(_Grid):
    name = "grid"
    description = "Aggregate features into square grid cells"
    schema = _grid_schema(
        "One square cell per non-empty cell of a grid aligned on the CRS's origin, with its column and "
        "row (i, j) and aggregates (count, sum ...) of the features in it. New ids by i then j."
    )
    cell_function = "ST_Square"

    def point_cell_sql(self) -> sql.Composable:
        size = sql.Literal(self.size)
        return f(
            "LATERAL (SELECT floor(ST_X(r.geom) / {0})::bigint AS i, floor(ST_Y(r.geom) / {0})::bigint AS j)",
            size,
        )

    def point_cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.floor(x / self.size).astype(np.int64), np.floor(y / self.size).astype(np.int64)

    def cell_ranges(self, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cells = np.floor(bounds / self.size).astype(np.int64)
        return cells[:, 0], cells[:, 2], cells[:, 1], cells[:, 3]

    def cells(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        s = self.size
        x0, y0, x1, y1 = i * s, j * s, (i + 1) * s, (j + 1) * s
        ring = np.stack(
            [np.stack(p, axis=-1) for p in ((x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0))], axis=1
        )
        return shapely.polygons(ring)


class HexagonGrid(_Grid):
    name = "hexagon"
    description = "Aggregate features into hexagonal grid cells"
    schema = _grid_schema(
        "One hexagon per non-empty cell of a flat-topped hexagonal tiling (PostGIS's ST_HexagonGrid), "
        "with its column and row (i, j) and aggregates (count, sum ...) of the features in it. New ids "
        "by i then j."
    )
    cell_function = "ST_Hexagon"

    @property
    def half_height(self) -> float:
        return self.size * math.sqrt(3) / 2

    def point_cell_sql(self) -> sql.Composable:
        w, h = sql.Literal(1.5 * self.size), sql.Literal(self.half_height)
        # The nearest of the two candidate columns' nearest centres (lower column on a tie).
        return f(
            "LATERAL (SELECT q.i, q.j FROM (SELECT t.i, t.j, "
            "(ST_X(r.geom) - {w} * t.i) * (ST_X(r.geom) - {w} * t.i) "
            "+ (ST_Y(r.geom) - {h} * (2 * t.j + t.o)) * (ST_Y(r.geom) - {h} * (2 * t.j + t.o)) AS d2 "
            "FROM (SELECT v.i, v.o, floor((ST_Y(r.geom) / {h} - v.o) / 2 + 0.5)::bigint AS j FROM "
            "(SELECT c.i, mod(mod(c.i, 2) + 2, 2) AS o FROM "
            "(SELECT floor(ST_X(r.geom) / {w})::bigint + k.n AS i "
            "FROM (VALUES (0), (1)) AS k(n)) AS c) AS v) AS t) AS q ORDER BY q.d2, q.i LIMIT 1)",
            w=w,
            h=h,
        )

    def point_cells(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, h = 1.5 * self.size, self.half_height
        base = np.floor(x / w).astype(np.int64)
        best_i = best_j = best_d = None
        for n in (0, 1):
            i = base + n
            o = np.mod(i, 2)
            j = np.floor((y / h - o) / 2 + 0.5).astype(np.int64)
            dx = x - w * i
            dy = y - h * (2 * j + o)
            d2 = dx * dx + dy * dy
            if best_d is None:
                best_i, best_j, best_d = i, j, d2
            else:
                closer = d2 < best_d
                best_i = np.where(closer, i, best_i)
                best_j = np.where(closer, j, best_j)
                best_d = np.where(closer, d2, best_d)
        return best_i, best_j  # type: ignore[return-value]

    def cell_ranges(self, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        s, w, h = self.size, 1.5 * self.size, self.half_height
        i0 = np.floor((bounds[:, 0] - s) / w).astype(np.int64)
        i1 = np.ceil((bounds[:, 2] + s) / w).astype(np.int64)
        j0 = np.floor((bounds[:, 1] - 2 * h) / (2 * h)).astype(np.int64)
        j1 = np.ceil((bounds[:, 3] + h) / (2 * h)).astype(np.int64)
        return i0, i1, j0, j1

    def cells(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        s, h = self.size, self.half_height
        cx = 1.5 * s * i
        cy = h * (2 * j + np.mod(i, 2))
        corners = ((-s, 0.0), (-s / 2, -h), (s / 2, -h), (s, 0.0), (s / 2, h), (-s / 2, h), (-s, 0.0))
        ring = np.stack([np.stack((cx + dx, cy + dy), axis=-1) for dx, dy in corners], axis=1)
        return shapely.polygons(ring)


class Voronoi(Operation):
    name = "voronoi"
    description = "Voronoi polygons of points"
    rowwise = False
    schema = schema(
        "Each point replaced by its Voronoi cell (the area nearer to it than to any other point), with "
        "its id and attributes; cells extend past the points' box as GEOS makes them. Points only: "
        "apply centroid or point_on_surface first.",
        {
            "tolerance": {
                "type": "number",
                "minimum": 0,
                "default": 0,
                "description": "snapping tolerance, in the units of the data's CRS",
            }
        },
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        if layout.geometry_type != "POINT":
            raise InvalidData(
                f"config: voronoi needs points, the features are {layout.geometry_type}: "
                "apply centroid or point_on_surface first"
            )
        return layout.with_attributes(layout.attributes, geometry_type="POLYGON")

    def sql(self, step: SqlStep) -> sql.Composable:
        cells = f(
            "SELECT (ST_Dump(ST_VoronoiPolygons(ST_Collect(p.geom ORDER BY p.id), {}))).geom AS geom "
            "FROM {} AS p WHERE p.geom IS NOT NULL AND NOT ST_IsEmpty(p.geom)",
            sql.Literal(float(self.config["tolerance"])),
            step.rel,
        )
        return step.select(
            sql.SQL("v.geom"),
            tail=f("JOIN ({}) AS v ON v.geom && r.geom AND ST_Intersects(v.geom, r.geom)", cells),
        )

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = _sorted(gather(frames, step.inp))
        present = np.flatnonzero(~shapely.is_missing(whole.geoms) & ~shapely.is_empty(whole.geoms))
        whole = whole.take(present)
        if not len(whole):
            return
        diagram = shapely.voronoi_polygons(
            shapely.multipoints(whole.geoms), tolerance=float(self.config["tolerance"])
        )
        cells = shapely.get_parts(diagram)
        rows, found = shapely.STRtree(cells).query(whole.geoms, predicate="intersects")
        order = np.argsort(rows, kind="stable")
        rows, found = rows[order], found[order]
        yield whole.take(rows).replace(geoms=cells[found])


class Dedupe(Operation):
    name = "dedupe"
    description = "Drop duplicate features"
    rowwise = False
    schema = schema(
        "Features whose geometry (equal after normalisation) and/or 'by' attributes repeat an earlier "
        "one's are dropped; the one with the lowest id of each group stays, with its id.",
        {
            "by": columns_property("attributes that must be equal"),
            "geometry": {"type": "boolean", "default": True, "description": "geometries must be equal"},
        },
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        if not config.get("by") and config.get("geometry") is False:
            raise InvalidData("config.by: name attributes, or compare geometries (geometry: true)")

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        self.by = [layout.attribute(n, f"config.by[{i}]") for i, n in enumerate(self.config.get("by", []))]
        return layout.with_attributes(layout.attributes)

    def sql(self, step: SqlStep) -> sql.Composable:
        keys = [f("r.{}", sql.Identifier(a.name)) for a in self.by]
        if self.config["geometry"]:
            keys.append(sql.SQL("ST_AsBinary(ST_Normalize(r.geom))"))
        columns = [sql.SQL("r.id"), *step.attributes(), sql.SQL("r.geom")]
        return f(
            "SELECT DISTINCT ON ({k}) {c} FROM {rel} AS r ORDER BY {k}, r.id",
            k=sql.SQL(", ").join(keys),
            c=sql.SQL(", ").join(columns),
            rel=step.rel,
        )

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = _sorted(gather(frames, step.inp))
        keys = whole.table.select([a.name for a in self.by])
        if self.config["geometry"]:
            wkb = shapely.to_wkb(shapely.normalize(whole.geoms))
            keys = keys.append_column("__geometry", pa.array(list(wkb), pa.binary()))
        keys = keys.append_column("__row", pa.array(np.arange(len(whole)), pa.int64()))
        first = keys.group_by([n for n in keys.column_names if n != "__row"], use_threads=False).aggregate(
            [("__row", "min")]
        )
        rows = np.sort(pc.cast(first.column("__row_min"), pa.int64()).to_numpy())
        yield whole.take(rows)
