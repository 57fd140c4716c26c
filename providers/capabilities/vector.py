"""The Python engine's data: features as a :class:`Frame` (ids, shapely geometries, Arrow
attributes), read from any provider in batches, and geometries made to fit a declared type.

GeoPackage collections (and a mix of sources and targets) run their chains here, with
shapely 2's vectorised functions over whole batches and pyarrow for attributes. A frame
holds one batch; row-wise steps map frames one by one, so memory stays at about a batch
until a step needs every feature (a dissolve, a grid).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import shapely

from providers import reproject
from providers.base import FeatureProvider, Query
from providers.capabilities.model import ARROW_TYPES, GENERIC, MULTI, Layout, dimension
from providers.crs import CRS, epsg_uri
from providers.errors import InvalidData

#: Features per frame read from a provider.
BATCH = 10_000
#: More ids than this are selected by reading everything and keeping theirs.
MAX_ID_FILTER = 10_000


@dataclass(slots=True)
class Frame:
    """A batch of features: ``ids`` (int64), ``geoms`` (shapely or None), ``table`` (attributes)."""

    ids: np.ndarray
    geoms: np.ndarray
    table: pa.Table

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray | Sequence[int]) -> Frame:
        index = np.asarray(rows, dtype=np.int64)
        return Frame(self.ids[index], self.geoms[index], take(self.table, index))

    def replace(
        self, geoms: np.ndarray | None = None, table: pa.Table | None = None, ids: np.ndarray | None = None
    ) -> Frame:
        return Frame(
            self.ids if ids is None else ids,
            self.geoms if geoms is None else geoms,
            self.table if table is None else table,
        )

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)


def take(table: pa.Table, rows: np.ndarray | Sequence[int]) -> pa.Table:
    """``table``'s rows at ``rows``; a table without columns keeps its row count (Arrow's take drops it)."""
    index = np.asarray(rows, dtype=np.int64)
    if table.num_columns == 0:
        return pa.table({"__rows": pa.nulls(len(index))}).drop_columns(["__rows"])
    return table.take(pa.array(index, pa.int64()))


def empty_frame(layout: Layout) -> Frame:
    return Frame(np.empty(0, np.int64), np.empty(0, object), layout.arrow_schema().empty_table())


def concat(frames: Sequence[Frame], layout: Layout) -> Frame:
    """One frame of all ``frames`` (of ``layout``)."""
    if not frames:
        return empty_frame(layout)
    if len(frames) == 1:
        return frames[0]
    ids = np.concatenate([f.ids for f in frames])
    if not layout.attributes:  # Arrow drops the row count of tables without columns
        table = take(pa.table({}), np.zeros(len(ids), dtype=np.int64))
    else:
        table = pa.concat_tables([f.table for f in frames]).combine_chunks()
    return Frame(ids, np.concatenate([f.geoms for f in frames]), table)


def gather(frames: Iterator[Frame], layout: Layout) -> Frame:
    return concat(list(frames), layout)


def table_of(columns: dict[str, pa.Array | pa.ChunkedArray], layout: Layout, length: int) -> pa.Table:
    """An attribute table of ``layout`` from arrays by name (cast to each attribute's kind)."""
    arrays = []
    for attribute in layout.attributes:
        values = columns[attribute.name]
        wanted = ARROW_TYPES[attribute.kind]
        if values.type != wanted:
            values = values.cast(wanted)
        arrays.append(values)
    if not arrays:
        return take(pa.table({}), np.zeros(length, dtype=np.int64))
    return pa.table(arrays, schema=layout.arrow_schema())


def arrow_values(values: list[Any], kind: str) -> pa.Array:
    """Values as a provider returns them (psycopg or GeoPackage types) as an Arrow array of ``kind``."""
    target = ARROW_TYPES[kind]
    if kind in ("real", "double"):
        values = [None if v is None else float(v) for v in values]
    elif kind == "text":
        values = [None if v is None else _text(v) for v in values]
    elif kind == "boolean":
        values = [None if v is None else bool(v) for v in values]
    elif kind == "binary":
        values = [None if v is None else bytes(v) for v in values]
    elif kind in ("timestamp", "timestamptz", "date"):
        values = [_instant(v, kind) if isinstance(v, str) else v for v in values]
    try:
        return pa.array(values, type=target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise InvalidData(f"a {kind} attribute holds a value that is not one: {str(exc)[:200]}") from exc


_SIXTY = re.compile(r"^(.*T\d\d:\d\d:)60((?:\.0*)?(?:Z|[+-]\d\d:?\d\d)?)$")


def _instant(text: str, kind: str) -> date | datetime:
    """A date or time a provider left as text (it did not parse it), parsed here.

    GDAL writes a time that rounds up to the next minute as second 60
    (``12:50:60.000Z``); that is the next minute's second 0.
    """
    value = text.strip()
    extra = timedelta(0)
    sixty = _SIXTY.match(value)
    if sixty:
        value, extra = f"{sixty.group(1)}59{sixty.group(2)}", timedelta(seconds=1)
    try:
        if kind == "date":
            return date.fromisoformat(value[:10])
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise InvalidData(f"{text[:40]!r} is not a {kind}") from exc
    if kind == "timestamptz" and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed + extra


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


# -- reading a provider ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Source:
    """A provider's collection as a chain reads it: its layout and each attribute's field name."""

    provider: FeatureProvider
    layout: Layout

    @property
    def fields(self) -> list[str]:
        return [a.source for a in self.layout.attributes]


def read(source: Source, ids: Sequence[int] | None = None, batch: int = BATCH) -> Iterator[Frame]:
    """The collection's features in frames of ``batch``, in id order, in the storage CRS.

    ``ids``: only those features (an IN filter the provider compiles, or, for a long
    list, every feature read and theirs kept).
    """
    layout = source.layout
    schema = source.provider.schema
    query = Query(limit=2**62, count="none", properties=source.fields, crs=storage_order(layout.srid))
    keep: np.ndarray | None = None
    if ids is not None:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return
        if len(wanted) <= MAX_ID_FILTER:
            query.filter = {"op": "in", "args": [{"property": schema.id_field}, wanted]}
        else:
            keep = np.asarray(wanted, dtype=np.int64)
    _header, rows = source.provider.records(query, geometry="wkb")
    chunk: list[tuple] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= batch:
            yield _frame(chunk, layout, keep)
            chunk = []
    if chunk:
        yield _frame(chunk, layout, keep)


def storage_order(srid: int) -> CRS:
    """The storage CRS with x/y axis order: what providers return without any transformation."""
    return CRS(srid, epsg_uri(srid), False)


def _frame(rows: list[tuple], layout: Layout, keep: np.ndarray | None) -> Frame:
    columns = list(zip(*rows, strict=True))
    ids = np.asarray([int(v) for v in columns[0]], dtype=np.int64)
    geoms = shapely.force_2d(shapely.from_wkb(np.asarray(columns[1], dtype=object), on_invalid="fix"))
    arrays = {a.name: arrow_values(list(columns[2 + i]), a.kind) for i, a in enumerate(layout.attributes)}
    frame = Frame(ids, geoms, table_of(arrays, layout, len(ids)))
    if keep is not None:
        frame = frame.take(np.flatnonzero(np.isin(frame.ids, keep)))
    return frame


# -- output geometries -------------------------------------------------------------------------
_EMPTY_MULTI = {name: shapely.from_wkt(f"{name} EMPTY") for name in MULTI}
#: shapely type id of the single type of each dimension (Point, LineString, Polygon).
_SINGLE_TYPE_ID = {0: 0, 1: 1, 2: 3}


def fit(geoms: np.ndarray, geometry_type: str) -> np.ndarray:
    """2D geometries that fit a column of ``geometry_type``: singles wrapped in a one-part multi,
    empties as that multi's EMPTY (as PostGIS's ST_Multi makes them)."""
    out = np.asarray(shapely.force_2d(geoms), dtype=object)
    if geometry_type == GENERIC or geometry_type not in MULTI:
        return out
    dim = dimension(geometry_type)
    types = shapely.get_type_id(out)
    empty = shapely.is_empty(out)
    if empty.any():
        out[empty] = _EMPTY_MULTI[geometry_type]
    single = (types == _SINGLE_TYPE_ID[dim]) & ~empty
    if single.any():
        make = {0: shapely.multipoints, 1: shapely.multilinestrings, 2: shapely.multipolygons}[dim]
        rows = np.flatnonzero(single)
        out[rows] = make(out[rows], indices=np.arange(len(rows)))
    return out


# -- steps -----------------------------------------------------------------------------------
class Other:
    """Another collection a step reads (``clip``, ``spatial_join`` ...): read once, whole, on first use."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._frames: dict[int, Frame] = {}
        self._trees: dict[int, shapely.STRtree] = {}

    @property
    def layout(self) -> Layout:
        return self.source.layout

    def frame(self, srid: int) -> Frame:
        """Every feature with a geometry, in EPSG:``srid``."""
        found = self._frames.get(srid)
        if found is None:
            whole = gather(read(self.source), self.layout)
            whole = whole.take(
                np.flatnonzero(~shapely.is_missing(whole.geoms) & ~shapely.is_empty(whole.geoms))
            )
            if srid != self.layout.srid:
                whole = whole.replace(geoms=reproject.geometries(whole.geoms, self.layout.srid, srid))
            found = self._frames[srid] = whole
        return found

    def tree(self, srid: int) -> shapely.STRtree:
        """A spatial index of :meth:`frame` (built once: every batch of the source queries it)."""
        found = self._trees.get(srid)
        if found is None:
            found = self._trees[srid] = shapely.STRtree(self.frame(srid).geoms)
        return found


@dataclass(slots=True)
class VectorStep:
    """What a capability's Python side gets: its input and output layouts and the other collections."""

    inp: Layout
    out: Layout
    others: dict[str, Other]

    def other(self, collection: str) -> tuple[Layout, Frame]:
        """The other collection's layout and features, in this step's CRS."""
        other = self.others[collection]
        return other.layout, other.frame(self.inp.srid)

    def other_tree(self, collection: str) -> shapely.STRtree:
        """A spatial index of the other collection's features (as :meth:`other` orders them)."""
        return self.others[collection].tree(self.inp.srid)
