"""Distances in metres whatever the CRS: one rule, written once in SQL and once in numpy.

Capabilities that measure along the ground (``buffer``, ``spatial_join`` with ``dwithin``)
take metres. How a metre becomes coordinates depends on the data's CRS:

* **projected CRS**: the distance is converted to the CRS's linear unit (metres for
  nearly all; feet for a US State Plane in feet) and the operation runs in the CRS's
  plane, as GEOS and PostGIS do it.
* **geographic CRS** (lon/lat): each feature is moved to a projection made for it, the
  operation runs there in metres, and the result comes back. The projection is the
  UTM zone (WGS 84) of the centre of the feature's bounding box when the box is at most
  6 degrees wide and between 80 S and 84 N, which is nearly every feature and keeps
  the scale within 0.1 %; anything else (a country that spans zones, polar data) gets
  an azimuthal equidistant projection centred on its box, true along every line through
  that centre. PostGIS's own ``geography`` buffer picks a UTM zone the same way, but
  from a geocentric box no Python library computes, so the rule is ours, in both engines.

Both engines pick the same projection for a feature from the same box, so they agree to
the rounding of PROJ and GEOS. A null or empty geometry has no place to measure from:
the result is null.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import shapely
from psycopg import sql
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError, ProjError

from providers.errors import InvalidData

#: A feature fits a UTM zone when its box is at most this wide (degrees) and within UTM's latitudes.
UTM_WIDTH = 6.0
UTM_SOUTH = -80.0
UTM_NORTH = 84.0
UTM_NORTH_BASE = 32601  # EPSG of WGS 84 / UTM zone 1N; 32701 is 1S
UTM_SOUTH_BASE = 32701
AEQD = "+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs"
#: Metres in a degree of latitude at least (at the equator), and of longitude on the equator.
METRES_PER_DEGREE_LAT = 110_574.0
METRES_PER_DEGREE_LON = 111_320.0
#: The search box around a feature is this much larger than the distance (projection scale).
SEARCH_MARGIN = 1.05
_MAX_LAT = 89.9


@lru_cache(maxsize=256)
def geographic(srid: int) -> bool:
    try:
        return bool(ProjCRS.from_epsg(srid).is_geographic)
    except CRSError as exc:
        raise InvalidData(f"EPSG:{srid} is not a CRS known to PROJ") from exc


@lru_cache(maxsize=256)
def metres_per_unit(srid: int) -> float:
    """Metres in one unit of a projected CRS's first axis."""
    axes = ProjCRS.from_epsg(srid).axis_info
    factor = axes[0].unit_conversion_factor if axes else 1.0
    return float(factor or 1.0)


def in_crs_units(srid: int, metres: float) -> float:
    """``metres`` in the units of the projected CRS ``srid``."""
    return metres / metres_per_unit(srid)


# -- Python ----------------------------------------------------------------------------------
def local_keys(geoms: np.ndarray) -> np.ndarray:
    """The projection each lon/lat geometry is measured in: ``EPSG:326nn``/``EPSG:327nn`` or an
    azimuthal equidistant PROJ string; None for a null or empty geometry."""
    keys = np.full(len(geoms), None, dtype=object)
    if not len(geoms):
        return keys
    bounds = shapely.bounds(geoms)
    for i, (minx, miny, maxx, maxy) in enumerate(bounds.tolist()):
        if minx != minx:  # NaN: null or empty
            continue
        cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
        if maxx - minx <= UTM_WIDTH and miny >= UTM_SOUTH and maxy <= UTM_NORTH:
            zone = min(59, max(0, math.floor((cx + 180.0) / 6.0)))
            keys[i] = f"EPSG:{(UTM_SOUTH_BASE if cy < 0 else UTM_NORTH_BASE) + zone}"
        else:
            keys[i] = AEQD.format(lat=repr(float(cy)), lon=repr(float(cx)))
    return keys


@lru_cache(maxsize=256)
def _transformers(srid: int, key: str) -> tuple[Transformer, Transformer]:
    try:
        local = ProjCRS.from_user_input(key)
        crs = ProjCRS.from_epsg(srid)
        return (
            Transformer.from_crs(crs, local, always_xy=True),
            Transformer.from_crs(local, crs, always_xy=True),
        )
    except (CRSError, ProjError) as exc:
        raise InvalidData(f"no local projection for a geometry of EPSG:{srid}: {exc}") from exc


def _move(transformer: Transformer, geoms: np.ndarray) -> np.ndarray:
    def apply(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(geoms, apply)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise InvalidData("a geometry cannot be moved to its local projection (outside the CRS's area)")
    return out


def _by_projection(
    geoms: np.ndarray, srid: int, work: Callable[[np.ndarray, Transformer, Transformer], np.ndarray]
) -> np.ndarray:
    """``work(rows, to_local, back)`` for each group of rows measured in the same projection."""
    keys = local_keys(geoms)
    out = np.full(len(geoms), None, dtype=object)
    present = np.flatnonzero(keys != None)  # noqa: E711 - elementwise on an object array
    if not len(present):
        return out
    unique, inverse = np.unique(keys[present].astype(str), return_inverse=True)
    for n, key in enumerate(unique):
        rows = present[inverse == n]
        forward, back = _transformers(srid, str(key))
        out[rows] = work(rows, forward, back)
    return out


def buffer(geoms: np.ndarray, srid: int, metres: float, quad_segs: int) -> np.ndarray:
    """Each geometry buffered by ``metres`` (null for a null or empty one)."""
    try:
        if not geographic(srid):
            out = shapely.buffer(geoms, in_crs_units(srid, metres), quad_segs=quad_segs)
            out[shapely.is_empty(geoms) | shapely.is_missing(geoms)] = None
            return out

        def work(rows: np.ndarray, forward: Transformer, back: Transformer) -> np.ndarray:
            local = shapely.buffer(_move(forward, geoms[rows]), metres, quad_segs=quad_segs)
            return _move(back, local)

        return _by_projection(geoms, srid, work)
    except (ProjError, shapely.errors.GEOSException) as exc:
        raise InvalidData(f"cannot buffer a geometry: {str(exc)[:200]}") from exc


def within(a: np.ndarray, b: np.ndarray, srid: int, metres: float) -> np.ndarray:
    """For each pair (a[i], b[i]): whether they are at most ``metres`` apart, in a[i]'s projection."""
    if not geographic(srid):
        return np.asarray(shapely.dwithin(a, b, in_crs_units(srid, metres)), dtype=bool)

    def work(rows: np.ndarray, forward: Transformer, _back: Transformer) -> np.ndarray:
        return shapely.dwithin(_move(forward, a[rows]), _move(forward, b[rows]), metres)

    return np.asarray(_by_projection(a, srid, work) == True, dtype=bool)  # noqa: E712 - None is False


def search_boxes(geoms: np.ndarray, srid: int, metres: float) -> np.ndarray:
    """Boxes around each geometry holding everything within ``metres`` of it (for an index query)."""
    bounds = shapely.bounds(geoms)
    if not geographic(srid):
        grow = in_crs_units(srid, metres) * SEARCH_MARGIN
        return shapely.box(bounds[:, 0] - grow, bounds[:, 1] - grow, bounds[:, 2] + grow, bounds[:, 3] + grow)
    dy = metres * SEARCH_MARGIN / METRES_PER_DEGREE_LAT
    with np.errstate(invalid="ignore"):
        lat = np.minimum(np.maximum(np.abs(bounds[:, 1]), np.abs(bounds[:, 3])) + dy, _MAX_LAT)
    dx = metres * SEARCH_MARGIN / (METRES_PER_DEGREE_LON * np.cos(np.radians(lat)))
    return shapely.box(bounds[:, 0] - dx, bounds[:, 1] - dy, bounds[:, 2] + dx, bounds[:, 3] + dy)


# -- SQL -------------------------------------------------------------------------------------
def _f(template: str, *parts: sql.Composable) -> sql.Composable:
    return sql.SQL(template).format(*parts)


def sql_projection(geom: sql.Composable) -> sql.Composable:
    """A LATERAL subquery giving ``utm`` (EPSG code) and ``aeqd`` (PROJ text) of the feature ``geom``;
    one of them is null, both when the geometry is null or empty."""
    utm = sql.SQL(
        "CASE WHEN ST_XMax({g}) - ST_XMin({g}) <= {w} AND ST_YMin({g}) >= {s} AND ST_YMax({g}) <= {n} "
        "THEN CASE WHEN (ST_YMin({g}) + ST_YMax({g})) / 2 < 0 THEN {sb} ELSE {nb} END "
        "+ least(59, greatest(0, floor(((ST_XMin({g}) + ST_XMax({g})) / 2 + 180.0) / 6.0)::integer)) END"
    ).format(
        g=geom,
        w=sql.Literal(UTM_WIDTH),
        s=sql.Literal(UTM_SOUTH),
        n=sql.Literal(UTM_NORTH),
        sb=sql.Literal(UTM_SOUTH_BASE),
        nb=sql.Literal(UTM_NORTH_BASE),
    )
    head, middle = AEQD.split("{lat}")
    middle, tail = middle.split("{lon}")
    aeqd = sql.SQL(
        "CASE WHEN u.utm IS NULL AND ST_XMin({g}) IS NOT NULL "
        "THEN {head} || ((ST_YMin({g}) + ST_YMax({g})) / 2)::text "
        "|| {middle} || ((ST_XMin({g}) + ST_XMax({g})) / 2)::text || {tail} END"
    ).format(g=geom, head=sql.Literal(head), middle=sql.Literal(middle), tail=sql.Literal(tail))
    # OFFSET 0 keeps the planner from inlining the subquery into every use of its columns (each
    # evaluated again for every candidate pair of a join).
    return _f("LATERAL (SELECT u.utm, {} AS aeqd FROM (SELECT {} AS utm OFFSET 0) AS u OFFSET 0)", aeqd, utm)


def sql_local(
    projection: sql.Identifier, work: Callable[[Callable[[sql.Composable], sql.Composable]], sql.Composable]
) -> sql.Composable:
    """``work(to_local)`` in the UTM branch and in the aeqd branch of ``projection`` (a
    :func:`sql_projection` alias); ``to_local(g)`` moves a geometry of the data's CRS there."""
    utm = sql.SQL("{}.utm").format(projection)
    aeqd = sql.SQL("{}.aeqd").format(projection)
    return _f(
        "CASE WHEN {} IS NOT NULL THEN {} WHEN {} IS NOT NULL THEN {} END",
        utm,
        work(lambda g: _f("ST_Transform({}, {})", g, utm)),
        aeqd,
        work(lambda g: _f("ST_Transform({}, {})", g, aeqd)),
    )


def sql_buffer(
    geom: sql.Composable, projection: sql.Identifier, srid: int, metres: float, quad_segs: int
) -> sql.Composable:
    """``geom`` buffered by ``metres``; ``projection`` is the alias of its :func:`sql_projection`
    (geographic CRS only)."""
    style = sql.Literal(f"quad_segs={int(quad_segs)}")
    if not geographic(srid):
        return sql.SQL("CASE WHEN NOT ST_IsEmpty({g}) THEN ST_Buffer({g}, {d}, {s}) END").format(
            g=geom, d=sql.Literal(in_crs_units(srid, metres)), s=style
        )
    utm = sql.SQL("{}.utm").format(projection)
    aeqd = sql.SQL("{}.aeqd").format(projection)
    return sql.SQL(
        "CASE WHEN {u} IS NOT NULL THEN ST_Transform(ST_Buffer(ST_Transform({g}, {u}), {d}, {s}), {srid}) "
        "WHEN {a} IS NOT NULL THEN ST_Transform(ST_Buffer(ST_Transform({g}, {a}), {d}, {s}), {a}, {srid}) END"
    ).format(u=utm, a=aeqd, g=geom, d=sql.Literal(float(metres)), s=style, srid=sql.Literal(int(srid)))


def sql_within(
    a: sql.Composable, b: sql.Composable, projection: sql.Identifier, srid: int, metres: float
) -> sql.Composable:
    """Whether ``a`` and ``b`` are at most ``metres`` apart, measured in ``a``'s projection (the
    alias of ``a``'s :func:`sql_projection`, geographic CRS only)."""
    if not geographic(srid):
        return _f("ST_DWithin({}, {}, {})", a, b, sql.Literal(in_crs_units(srid, metres)))
    d = sql.Literal(float(metres))
    return _f(
        "COALESCE({}, false)",
        sql_local(projection, lambda local: _f("ST_DWithin({}, {}, {})", local(a), local(b), d)),
    )


def sql_search_box(geom: sql.Composable, srid: int, metres: float) -> sql.Composable:
    """A box around ``geom`` holding everything within ``metres`` of it (index-usable with ``&&``)."""
    if not geographic(srid):
        return _f("ST_Expand({}, {})", geom, sql.Literal(in_crs_units(srid, metres) * SEARCH_MARGIN))
    dy = metres * SEARCH_MARGIN / METRES_PER_DEGREE_LAT
    return sql.SQL(
        "ST_Expand({g}, {m} / ({lon} * cos(radians(least(greatest(abs(ST_YMin({g})), abs(ST_YMax({g}))) "
        "+ {dy}, {top})))), {dy})"
    ).format(
        g=geom,
        m=sql.Literal(metres * SEARCH_MARGIN),
        lon=sql.Literal(METRES_PER_DEGREE_LON),
        dy=sql.Literal(dy),
        top=sql.Literal(_MAX_LAT),
    )
