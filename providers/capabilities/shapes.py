"""Capabilities that change each feature's geometry on its own: buffer, reproject, simplify,
centroid, point on surface, convex hull, envelope, make valid, snap to grid, explode.

In PostGIS each is the ST_ function of the same name; in Python the shapely function that
calls the same GEOS algorithm (``ST_Buffer``/``shapely.buffer``,
``ST_SimplifyPreserveTopology``/``shapely.simplify(preserve_topology=True)``,
``ST_ReducePrecision``/``shapely.set_precision`` ...). Where PostGIS has its own
implementation (``ST_Envelope``'s degenerate boxes, ``ST_CollectionExtract``), the Python
side follows PostGIS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from psycopg import sql

from providers import reproject
from providers.capabilities import metric
from providers.capabilities.model import (
    GENERIC,
    MULTI,
    SINGLE,
    Attribute,
    Layout,
    dimension,
    multi_type,
    new_name,
    single_type,
)
from providers.capabilities.operation import Operation, schema
from providers.capabilities.sql import SqlStep, f
from providers.capabilities.vector import Frame, VectorStep, gather
from providers.crs import UnknownCRS, parse_crs
from providers.errors import InvalidData

_GEOM = sql.SQL("r.geom")


def _with_geometry(layout: Layout, geometry_type: str, **changes: Any) -> Layout:
    return dataclasses.replace(layout, geometry_type=geometry_type, **changes)


def _hull_type(geometry_type: str) -> str:
    """A point's hull or box is a point, a polygon's a polygon; of anything else it may be either."""
    if geometry_type == "POINT":
        return "POINT"
    if dimension(geometry_type) == 2:
        return "POLYGON"
    return GENERIC


class Buffer(Operation):
    name = "buffer"
    description = "Buffer geometries by a fixed distance (metres)"
    schema = schema(
        "Each geometry grown by a distance. Metres whatever the data's CRS: in a projected CRS "
        "its own plane; in lon/lat each feature is buffered in its UTM zone (an azimuthal "
        "equidistant projection centred on it when it spans more than a zone).",
        {
            "distance": {
                "type": "number",
                "minimum": 0,
                "maximum": 10_000_000,
                "description": "the buffer distance in metres",
            },
            "quad_segs": {
                "type": "integer",
                "minimum": 1,
                "maximum": 64,
                "default": 8,
                "description": "segments per quarter circle",
            },
        },
        ["distance"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        single = layout.geometry_type in ("POINT", "LINESTRING")
        return _with_geometry(layout, "POLYGON" if single else "MULTIPOLYGON")

    def sql(self, step: SqlStep) -> sql.Composable:
        distance, segs = float(self.config["distance"]), int(self.config["quad_segs"])
        m = sql.Identifier("m")
        geom = metric.sql_buffer(_GEOM, m, step.inp.srid, distance, segs)
        if not metric.geographic(step.inp.srid):
            return step.select(geom)
        return step.select(geom, tail=f(", {} AS m", metric.sql_projection(_GEOM)))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        geoms = metric.buffer(
            frame.geoms, step.inp.srid, float(self.config["distance"]), int(self.config["quad_segs"])
        )
        return frame.replace(geoms=geoms)


class Reproject(Operation):
    name = "reproject"
    description = "Reproject geometries to another CRS"
    schema = schema(
        "Geometries transformed to another coordinate reference system (PROJ).",
        {
            "crs": {
                "type": ["string", "integer"],
                "description": "the target CRS: EPSG:n, an OGC CRS URI, or an EPSG code",
            }
        },
        ["crs"],
    )

    @classmethod
    def check(cls, config: dict[str, Any]) -> None:
        cls.srid_of(config)

    @staticmethod
    def srid_of(config: dict[str, Any]) -> int:
        try:
            return parse_crs(str(config["crs"])).srid
        except UnknownCRS as exc:
            raise InvalidData(f"config.crs: {exc.message}") from None

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return dataclasses.replace(layout, srid=self.srid_of(self.config))

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(f("ST_Transform(r.geom, {})", sql.Literal(step.out.srid)))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        move = reproject.transformer(step.inp.srid, step.out.srid)

        def apply(coords: np.ndarray) -> np.ndarray:
            x, y = move.transform(coords[:, 0], coords[:, 1])
            out = np.column_stack([x, y])
            if not np.isfinite(out).all():
                raise InvalidData(
                    f"coordinates cannot be transformed from EPSG:{step.inp.srid} to EPSG:{step.out.srid}"
                )
            return out

        return frame.replace(geoms=shapely.transform(frame.geoms, apply))


class Simplify(Operation):
    name = "simplify"
    description = "Simplify geometries, preserving topology"
    schema = schema(
        "Geometries simplified (Douglas-Peucker) without creating invalid geometries "
        "(GEOS's topology-preserving simplifier).",
        {
            "tolerance": {
                "type": "number",
                "minimum": 0,
                "description": "the distance tolerance, in the units of the data's CRS (degrees for lon/lat)",
            }
        },
        ["tolerance"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return layout

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(
            f("ST_SimplifyPreserveTopology(r.geom, {})", sql.Literal(float(self.config["tolerance"])))
        )

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        tolerance = float(self.config["tolerance"])
        return frame.replace(geoms=shapely.simplify(frame.geoms, tolerance, preserve_topology=True))


class _PointOf(Operation):
    """A capability that makes one point of each geometry."""

    function: str

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return _with_geometry(layout, "POINT")

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(f("{}(r.geom)", sql.SQL(self.function)))


class Centroid(_PointOf):
    name = "centroid"
    description = "The centroid of each geometry"
    schema = schema("Each geometry replaced by its centre of mass (a point, maybe outside it).", {})
    function = "ST_Centroid"

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(geoms=shapely.centroid(frame.geoms))


class PointOnSurface(_PointOf):
    name = "point_on_surface"
    description = "A point inside each geometry"
    schema = schema("Each geometry replaced by a point guaranteed to lie on it (GEOS's interior point).", {})
    function = "ST_PointOnSurface"

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(geoms=shapely.point_on_surface(frame.geoms))


class ConvexHull(Operation):
    name = "convex_hull"
    description = "The convex hull of each geometry"
    schema = schema("Each geometry replaced by the smallest convex polygon holding it.", {})

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return _with_geometry(layout, _hull_type(layout.geometry_type))

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(sql.SQL("ST_ConvexHull(r.geom)"))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(geoms=shapely.convex_hull(frame.geoms))


class Envelope(Operation):
    name = "envelope"
    description = "The bounding box of each geometry"
    schema = schema(
        "Each geometry replaced by its bounding box: a polygon, or a point or a line when the box is flat "
        "(as PostGIS's ST_Envelope).",
        {},
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        return _with_geometry(layout, _hull_type(layout.geometry_type))

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(sql.SQL("ST_Envelope(r.geom)"))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(geoms=envelopes(frame.geoms))


def envelopes(geoms: np.ndarray) -> np.ndarray:
    """ST_Envelope: the box as a polygon (min x min y, min x max y, max x max y, max x min y), a
    point when it has no extent, a line when it is flat; empty stays empty, null null."""
    out = np.full(len(geoms), None, dtype=object)
    bounds = shapely.bounds(geoms)
    for i, (x0, y0, x1, y1) in enumerate(bounds.tolist()):
        if geoms[i] is None:
            continue
        if x0 != x0:
            out[i] = geoms[i]
        elif x0 == x1 and y0 == y1:
            out[i] = shapely.Point(x0, y0)
        elif x0 == x1 or y0 == y1:
            out[i] = shapely.LineString([(x0, y0), (x1, y1)])
        else:
            out[i] = shapely.Polygon([(x0, y0), (x0, y1), (x1, y1), (x1, y0), (x0, y0)])
    return out


def collection_extract(geoms: np.ndarray, dim: int) -> np.ndarray:
    """ST_CollectionExtract: of a collection, the multi of its parts of dimension ``dim``; a
    geometry that is not a collection as it is if of that dimension, else its type's EMPTY."""
    out = np.full(len(geoms), None, dtype=object)
    multi_name = MULTI[dim]
    empty = shapely.from_wkt(f"{multi_name} EMPTY")
    types = shapely.get_type_id(geoms)
    present = ~shapely.is_missing(geoms)
    single_id, multi_id = {0: (0, 4), 1: (1, 5), 2: (3, 6)}[dim]
    keep = present & ((types == single_id) | (types == multi_id))
    out[keep] = geoms[keep]
    collections = np.flatnonzero(present & (types == 7))
    other = present & ~keep & (types != 7)
    out[other] = empty
    if len(collections):
        parts, index = _flat_parts(geoms[collections])
        chosen = shapely.get_type_id(parts) == single_id
        chosen &= ~shapely.is_empty(parts)
        made = np.full(len(collections), empty, dtype=object)
        if chosen.any():
            build = {0: shapely.multipoints, 1: shapely.multilinestrings, 2: shapely.multipolygons}[dim]
            build(parts[chosen], indices=index[chosen], out=made)
        out[collections] = made
    return out


def _flat_parts(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every simple part of ``geoms`` (multis and collections opened, nested ones too), in order,
    with the index of the geometry it comes from."""
    parts, index = shapely.get_parts(geoms, return_index=True)
    nested = shapely.get_type_id(parts) >= 4
    if not nested.any():
        return parts, index
    out_parts: list[Any] = []
    out_index: list[int] = []
    for part, at, opened in zip(parts, index.tolist(), nested.tolist(), strict=True):
        inner = _flat_parts(np.array([part], dtype=object))[0] if opened else [part]
        out_parts.extend(inner)
        out_index.extend([at] * len(inner))
    found = np.empty(len(out_parts), dtype=object)
    found[:] = out_parts
    return found, np.asarray(out_index, dtype=np.int64)


class MakeValid(Operation):
    name = "make_valid"
    description = "Repair invalid geometries"
    schema = schema(
        "Invalid geometries repaired (GEOS MakeValid, 'linework' method), keeping the parts of the "
        "geometry's own dimension (a polygon's collapsed edges are dropped).",
        {},
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        kind = layout.geometry_type
        if kind in ("POINT", "MULTIPOINT", GENERIC):
            return layout
        return _with_geometry(layout, multi_type(kind))

    def sql(self, step: SqlStep) -> sql.Composable:
        dim = dimension(step.inp.geometry_type)
        if step.inp.geometry_type in ("POINT", "MULTIPOINT", GENERIC) or dim is None:
            return step.select(sql.SQL("ST_MakeValid(r.geom)"))
        return step.select(f("ST_CollectionExtract(ST_MakeValid(r.geom), {})", sql.Literal(dim + 1)))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        fixed = np.asarray(shapely.make_valid(frame.geoms), dtype=object)
        dim = dimension(step.inp.geometry_type)
        if step.inp.geometry_type in ("POINT", "MULTIPOINT", GENERIC) or dim is None:
            return frame.replace(geoms=fixed)
        return frame.replace(geoms=collection_extract(fixed, dim))


class SnapToGrid(Operation):
    name = "snap_to_grid"
    description = "Snap coordinates to a grid, keeping geometries valid"
    schema = schema(
        "Coordinates rounded to a grid of the given size, then made valid again (GEOS's precision "
        "reducer, PostGIS's ST_ReducePrecision): shapes narrower than the grid collapse to empty.",
        {
            "size": {
                "type": "number",
                "exclusiveMinimum": 0,
                "description": "the grid cell size, in the units of the data's CRS (degrees for lon/lat)",
            }
        },
        ["size"],
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        kind = layout.geometry_type
        if kind in ("POINT", "MULTIPOINT", GENERIC):
            return layout
        return _with_geometry(layout, multi_type(kind))

    def sql(self, step: SqlStep) -> sql.Composable:
        return step.select(f("ST_ReducePrecision(r.geom, {})", sql.Literal(float(self.config["size"]))))

    def map(self, frame: Frame, step: VectorStep) -> Frame:
        return frame.replace(geoms=shapely.set_precision(frame.geoms, float(self.config["size"])))


class Explode(Operation):
    name = "explode"
    description = "Split multi-part geometries into one feature per part"
    rowwise = False
    schema = schema(
        "One feature per part of each geometry (multi-part geometries and collections are opened), "
        "with the attributes of its feature and the part's number. Features get new ids in the "
        "order of their feature's id, then of the part.",
        {
            "part": {
                "type": "string",
                "default": "part",
                "description": "the attribute that receives the part's number (1, 2 ...)",
            }
        },
    )

    def plan(self, layout: Layout, others: Mapping[str, Layout]) -> Layout:
        part = Attribute(new_name(self.config["part"], "config.part"), "integer")
        kind = layout.geometry_type
        out_type = single_type(kind) if kind in SINGLE or kind in MULTI else GENERIC
        return layout.with_attributes([*layout.attributes, part], geometry_type=out_type, keeps_ids=False)

    def sql(self, step: SqlStep) -> sql.Composable:
        part = sql.Identifier(step.out.attributes[-1].name)
        inner = f(
            "SELECT r.id AS __sid, {attrs}d.path AS __path, d.geom FROM {rel} AS r, ST_Dump(r.geom) AS d "
            "WHERE NOT ST_IsEmpty(d.geom)",
            attrs=sql.SQL("").join(f("{}, ", a) for a in step.attributes()),
            rel=step.rel,
        )
        names = [sql.Identifier(a.name) for a in step.inp.attributes]
        return f(
            "SELECT row_number() OVER (ORDER BY p.__sid, p.__path) AS id, {attrs}"
            "(row_number() OVER (PARTITION BY p.__sid ORDER BY p.__path))::integer AS {part}, p.geom "
            "FROM ({inner}) AS p",
            attrs=sql.SQL("").join(f("p.{}, ", n) for n in names),
            part=part,
            inner=inner,
        )

    def vector(self, frames: Iterator[Frame], step: VectorStep) -> Iterator[Frame]:
        whole = gather(frames, step.inp)
        order = np.argsort(whole.ids, kind="stable")
        whole = whole.take(order)
        present = np.flatnonzero(~shapely.is_missing(whole.geoms))
        parts, index = _flat_parts(whole.geoms[present])
        index = present[index]
        keep = ~shapely.is_empty(parts)
        parts, index = parts[keep], index[keep]
        rows = whole.take(index)
        first = np.concatenate([[True], index[1:] != index[:-1]]) if len(index) else np.empty(0, bool)
        starts = np.flatnonzero(first)
        numbers = np.arange(len(index)) - np.repeat(starts, np.diff(np.append(starts, len(index))))
        table = rows.table.append_column(step.out.attributes[-1].name, pa.array(numbers + 1, pa.int32()))
        yield Frame(np.arange(1, len(index) + 1, dtype=np.int64), parts, table)
