"""Mapbox Vector Tiles encoded in Python, from shapely geometries, for the providers without SQL tiles.

PostGIS builds its tiles in SQL (``ST_AsMVT``); the GeoPackage and WFS providers read
their features' geometries as shapely arrays and come here. For all the features of a
tile at once: one pass over every coordinate reprojects them (pyproj, as arrays) and
scales them into tile space; GEOS then clips, simplifies and snaps the whole array to
the integer grid, repairs and orients polygons as MVT 2.1 (4.3.4.4) wants. Only the
encoding itself (``mapbox-vector-tile``) walks vertices in Python.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Any

import mapbox_vector_tile
import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError, ProjError
from shapely.geometry.polygon import orient as orient_polygon

from providers import reproject
from providers.base import TileRequest
from providers.crs import CRS
from providers.errors import InvalidQuery, Unavailable

LOGGER = logging.getLogger(__name__)

#: shapely type ids of the three MVT geometry families.
_POINTS, _LINES, _POLYGONS = (0, 4), (1, 2, 5), (3, 6)
_COLLECTION = 7

#: How every tile is encoded: geometries arrive already in integer tile coordinates with
#: y pointing down and exteriors oriented (see :func:`tile_geometries`), so the encoder
#: neither rescales, flips nor re-orients them vertex by vertex in Python.
_OPTIONS: dict[str, Any] = {
    "quantize_bounds": None,
    "y_coord_down": True,
    "check_winding_order": False,
}


@lru_cache(maxsize=256)
def area_of_use(srid: int, target: int) -> tuple[float, float, float, float] | None:
    """Where CRS ``srid`` is meant to be used, as a box in CRS ``target``'s x/y units.

    None when PROJ does not know it, or the area crosses the antimeridian (its box would
    then be the whole world, and clamping to it would achieve nothing).
    """
    try:
        area = ProjCRS.from_epsg(srid).area_of_use
    except CRSError:
        return None
    if area is None or area.west >= area.east:
        return None
    try:
        box = reproject.transformer(4326, target).transform_bounds(
            area.west, area.south, area.east, area.north, densify_pts=21
        )
    except (ProjError, InvalidQuery):
        return None
    return box if all(math.isfinite(v) for v in box) and box[0] < box[2] else None


def intersect_box(
    box: tuple[float, float, float, float], other: tuple[float, float, float, float] | None
) -> tuple[float, float, float, float] | None:
    """The overlap of two boxes (``box`` itself when ``other`` is None); None when they are apart."""
    if other is None:
        return box
    minx, miny = max(box[0], other[0]), max(box[1], other[1])
    maxx, maxy = min(box[2], other[2]), min(box[3], other[3])
    return (minx, miny, maxx, maxy) if minx < maxx and miny < maxy else None


def search_box(request: TileRequest, storage_srid: int) -> tuple[float, float, float, float] | None:
    """The tile's box grown by its buffer, in the tile CRS, cut to where a storage-CRS query makes sense.

    The buffer of an edge tile reaches past the CRS's world, where PROJ wraps web
    mercator's x around the antimeridian and makes a nonsense box. And a low-zoom tile
    reaches far beyond the area a projected storage CRS is made for, where the tile's
    edges project to finite but meaningless places (round the antipode of a Lambert
    azimuthal projection, say); such a tile selects what lies in that area, and shows
    those features whole. Geographic storage CRSs work everywhere. None: the tile cannot
    hold features of this layer. Raises InvalidQuery for bounds or options that make no tile.
    """
    minx, miny, maxx, maxy = (float(v) for v in request.bounds)
    extent, buffer = int(request.extent), int(request.buffer)
    if not (all(math.isfinite(v) for v in (minx, miny, maxx, maxy)) and minx < maxx and miny < maxy):
        raise InvalidQuery("a tile needs finite bounds minx < maxx, miny < maxy")
    if extent <= 0 or buffer < 0:
        raise InvalidQuery("a tile needs a positive extent and a buffer of 0 or more")
    if request.max_features <= 0:
        return None
    pad_x, pad_y = (maxx - minx) * buffer / extent, (maxy - miny) * buffer / extent
    box = (minx - pad_x, miny - pad_y, maxx + pad_x, maxy + pad_y)
    crs: CRS = request.crs
    found = intersect_box(box, area_of_use(crs.srid, crs.srid))
    if found is None or crs.srid == storage_srid or reproject.is_geographic(storage_srid):
        return found
    usable = area_of_use(storage_srid, crs.srid)
    if usable is not None and not (
        usable[0] <= found[0] and usable[1] <= found[1] and found[2] <= usable[2] and found[3] <= usable[3]
    ):
        found = intersect_box(found, usable)
    return found


def check_client(request: TileRequest) -> None:
    """Stop making a tile nobody waits for any more (between the costly steps)."""
    if request.client_gone is not None and request.client_gone():
        raise Unavailable("the client went away; its tile was abandoned")


def _flatten_collection(geom: shapely.Geometry) -> shapely.Geometry | None:
    """A GeometryCollection as one MVT feature: its parts of the highest dimension, as a multi.

    An MVT feature has a single geometry type; collections are rare (GEOMETRY layers,
    clipping artefacts), so a Python loop over their parts costs nothing that matters.
    """
    parts = shapely.get_parts(geom)
    while parts.size and (shapely.get_type_id(parts) == _COLLECTION).any():
        parts = shapely.get_parts(parts)
    parts = parts[~shapely.is_empty(parts)]
    if not parts.size:
        return None
    types = shapely.get_type_id(parts)
    polygons = parts[np.isin(types, _POLYGONS)]
    if polygons.size:
        return shapely.union_all(polygons)  # overlapping parts would make an invalid multipolygon
    lines = parts[np.isin(types, _LINES)]
    if lines.size:
        return shapely.multilinestrings(shapely.get_parts(lines))
    return shapely.multipoints(shapely.get_parts(parts))


def _single_typed(geoms: np.ndarray) -> np.ndarray:
    """``geoms`` with every GeometryCollection replaced by :func:`_flatten_collection`'s multi."""
    collections = np.flatnonzero(shapely.get_type_id(geoms) == _COLLECTION)
    if collections.size:
        geoms = geoms.copy()
        for i in collections:
            geoms[i] = _flatten_collection(geoms[i])
    return geoms


def _snap_to_grid(geoms: np.ndarray) -> np.ndarray:
    """Geometries on the integer tile grid, with polygons valid as MVT 4.3.4.4 wants them.

    Rounding every vertex is cheap but may leave a ring touching itself or collapsed;
    GEOS snap-rounding repairs that but costs ten times more. So all are rounded, and
    only the polygons that rounding made invalid are snap-rounded again from their
    unrounded form (made valid first when GEOS gives up on them as they are).
    """
    rounded = shapely.set_precision(geoms, 1.0, mode="pointwise")
    broken = np.flatnonzero(np.isin(shapely.get_type_id(rounded), _POLYGONS) & ~shapely.is_valid(rounded))
    for i in broken:
        try:
            rounded[i] = shapely.set_precision(geoms[i], 1.0)
        except shapely.errors.GEOSException:
            try:
                rounded[i] = shapely.set_precision(shapely.make_valid(geoms[i]), 1.0)
            except shapely.errors.GEOSException:
                LOGGER.info("a polygon stays invalid in a vector tile: GEOS cannot repair it")
    return rounded


def _orient_for_mvt(geoms: np.ndarray) -> np.ndarray:
    """Exterior rings with a positive area in tile coordinates (y down), holes negative.

    That is clockwise as drawn on screen, which the MVT 2.1 spec (4.3.4.4) requires so
    that a renderer can tell exteriors from holes.
    """
    orient_polygons = getattr(shapely, "orient_polygons", None)  # shapely >= 2.1
    if orient_polygons is not None:
        return orient_polygons(geoms, exterior_cw=False)
    out = geoms.copy()
    for i in np.flatnonzero(np.isin(shapely.get_type_id(geoms), _POLYGONS)):
        geom = geoms[i]
        if geom.geom_type == "Polygon":
            out[i] = orient_polygon(geom, 1.0)
        else:
            out[i] = shapely.multipolygons([orient_polygon(p, 1.0) for p in geom.geoms])
    return out


def tile_geometries(geoms: np.ndarray, storage_srid: int, request: TileRequest) -> np.ndarray:
    """Geometries (x/y in ``storage_srid``) ready for MVT: integer tile coordinates, y down,
    clipped, valid. What cannot be drawn (no geometry, out of the CRS, collapsed below a
    tile unit) is None.
    """
    geoms = shapely.force_2d(np.asarray(geoms, dtype=object))
    coords, index = shapely.get_coordinates(geoms, return_index=True)
    if not len(coords):
        return np.full(len(geoms), None, dtype=object)
    x, y = coords[:, 0], coords[:, 1]
    if request.crs.srid != storage_srid:
        move = reproject.transformer(storage_srid, request.crs.srid)
        x, y = (np.asarray(a, dtype=float) for a in move.transform(x, y))
        bad = ~(np.isfinite(x) & np.isfinite(y)) & np.isfinite(coords).all(axis=1)
        clamp = reproject.latitude_range(request.crs.srid) if reproject.is_geographic(storage_srid) else None
        if bad.any() and clamp is not None:
            # The poles in web mercator: drawn at the edge of its world, as in GeoJSON output.
            x[bad], y[bad] = move.transform(coords[bad, 0], np.clip(coords[bad, 1], *clamp))
    minx, miny, maxx, maxy = (float(v) for v in request.bounds)
    extent = int(request.extent)
    tile = np.column_stack(((x - minx) * (extent / (maxx - minx)), (maxy - y) * (extent / (maxy - miny))))
    geoms = shapely.set_coordinates(geoms, tile)
    unusable = np.unique(index[~np.isfinite(tile).all(axis=1)])
    geoms[unusable] = None
    edge = float(request.buffer)
    geoms = shapely.clip_by_rect(geoms, -edge, -edge, extent + edge, extent + edge)
    types = shapely.get_type_id(geoms)
    if request.simplify:
        # One tile unit: finer detail cannot be drawn. Polygons keep their topology
        # (no ring may cross another); lines may take the faster plain Douglas-Peucker.
        polygonal = np.isin(types, (*_POLYGONS, _COLLECTION))
        lines = np.isin(types, _LINES)
        geoms[polygonal] = shapely.simplify(geoms[polygonal], 1.0, preserve_topology=True)
        geoms[lines] = shapely.simplify(geoms[lines], 1.0, preserve_topology=False)
    # An MVT feature has one geometry type; then the integer grid, valid and oriented.
    geoms = _orient_for_mvt(_snap_to_grid(_single_typed(geoms)))
    left = shapely.get_type_id(geoms) == _COLLECTION  # what repairing an invalid polygon made
    if left.any():
        geoms[left] = _orient_for_mvt(_single_typed(geoms[left]))
    geoms[shapely.is_empty(geoms)] = None
    return geoms


def scalar(value: Any) -> Any:
    """A value as an MVT scalar (string, number, boolean); None when it has none."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, bytes):
        return "\\x" + value.hex()  # as PostgreSQL writes bytea
    return str(value)


def encode(layer: str, features: list[dict[str, Any]], extent: int) -> bytes:
    """One MVT layer of ``features`` (``geometry`` from :func:`tile_geometries`, ``properties``,
    ``id``); empty bytes when there are none."""
    if not features:
        return b""
    return mapbox_vector_tile.encode(
        {"name": layer, "features": features},
        default_options={**_OPTIONS, "extents": int(extent)},
    )
