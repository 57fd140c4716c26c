"""Buffers of geometries by a distance on the ground, whatever CRS the geometries are in.

Buffering in the storage CRS would be wrong twice: in degrees a metre is not a fixed
amount, and in a projected CRS (web mercator) distances are stretched away from its
standard lines. So a point's buffer is a geodesic circle (pyproj's ``Geod.fwd`` along
every azimuth), and any other geometry is projected to an azimuthal equidistant
projection centred on itself (distances from the centre are true on the ellipsoid),
buffered there with shapely, and projected back: exact near its centre and within a
fraction of a per cent over a few hundred kilometres.

``degree`` buffers are planar buffers in lon/lat degrees, as the unit says.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Geod, Transformer
from pyproj.exceptions import CRSError, ProjError

from providers.errors import InvalidData, InvalidQuery

#: Metres in one of each unit a buffer size may be given in (None: degrees, not a length).
UNITS: dict[str, float | None] = {
    "meter": 1.0,
    "kilometer": 1000.0,
    "mile": 1609.344,
    "degree": None,
}
#: Farther than this the local projection's distortion stops being negligible.
MAX_METRES = 1_000_000.0
MAX_DEGREES = 90.0
#: Segments per quarter circle: a point's buffer then has an area within 0.05 % of pi r^2.
QUAD_SEGS = 32

GEOD = Geod(ellps="WGS84")
_AEQD = "+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m +no_defs"


@lru_cache(maxsize=64)
def _to_lonlat(srid: int) -> tuple[Transformer, Transformer] | None:
    """(storage -> lon/lat, lon/lat -> storage), x/y order both ways; None for EPSG:4326 itself."""
    if srid == 4326:
        return None
    try:
        crs = ProjCRS.from_epsg(srid)
    except CRSError as exc:
        raise InvalidData(f"EPSG:{srid} is not a CRS known to PROJ") from exc
    return (
        Transformer.from_crs(crs, "EPSG:4326", always_xy=True),
        Transformer.from_crs("EPSG:4326", crs, always_xy=True),
    )


def _apply(transformer: Transformer, geom: Any) -> Any:
    """A geometry (or an array of them) with every coordinate transformed at once."""

    def move(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    out = shapely.transform(geom, move)
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise InvalidData("a geometry cannot be projected for buffering (outside the CRS's area)")
    return out


def size_in_metres(size: float, units: str) -> float | None:
    """The buffer distance in metres (None for degrees), checked for sign and range."""
    if units not in UNITS:
        raise InvalidQuery(f"units must be one of {', '.join(UNITS)}, not {str(units)[:20]!r}")
    factor = UNITS[units]
    if not np.isfinite(size) or size <= 0:
        raise InvalidQuery("size must be a positive number")
    if factor is None:
        if size > MAX_DEGREES:
            raise InvalidQuery(f"size must be at most {MAX_DEGREES} degrees")
        return None
    metres = size * factor
    if metres > MAX_METRES:
        raise InvalidQuery(f"size must be at most {MAX_METRES / 1000:.0f} km")
    return metres


def buffer(geom: shapely.Geometry, srid: int, size: float, units: str = "meter") -> shapely.Geometry:
    """``geom`` (in EPSG:``srid``, x/y order) buffered by ``size`` ``units``, in the same CRS."""
    return buffer_all([geom], srid, size, units)[0]


def buffer_all(
    geoms: Sequence[shapely.Geometry], srid: int, size: float, units: str = "meter"
) -> list[shapely.Geometry]:
    """Each of ``geoms`` (in EPSG:``srid``, x/y order) buffered by ``size`` ``units``, in the same CRS.

    Points, the usual case, are done all at once: their buffers are geodesic circles
    traced by ``Geod.fwd`` over one array of every vertex. Other geometries each get
    their own local projection.
    """
    metres = size_in_metres(size, units)
    shapes = np.empty(len(geoms), dtype=object)
    shapes[:] = list(geoms)
    if not len(shapes):
        return []
    transformers = _to_lonlat(srid)
    lonlat = shapes if transformers is None else _apply(transformers[0], shapes)
    try:
        if metres is None:
            result = shapely.buffer(lonlat, size, quad_segs=QUAD_SEGS)
        else:
            result = np.empty(len(lonlat), dtype=object)
            points = shapely.get_type_id(lonlat) == 0
            if points.any():
                result[points] = _discs(lonlat[points], metres)
            for i in np.flatnonzero(~points):
                result[i] = _local_buffer(lonlat[i], metres)
        if transformers is not None:
            result = _apply(transformers[1], result)
    except (ProjError, shapely.errors.GEOSException) as exc:
        raise InvalidData(f"cannot buffer a geometry: {str(exc)[:200]}") from exc
    invalid = ~shapely.is_valid(result)
    if invalid.any():
        result[invalid] = shapely.make_valid(result[invalid])
    return list(result)


def _discs(points: np.ndarray, metres: float) -> np.ndarray:
    """Geodesic circles of radius ``metres`` around lon/lat points, counter-clockwise."""
    count = 4 * QUAD_SEGS
    coords = shapely.get_coordinates(points)
    azimuths = np.linspace(360.0, 0.0, count, endpoint=False)  # decreasing: counter-clockwise
    lon, lat, _ = GEOD.fwd(
        np.repeat(coords[:, 0], count),
        np.repeat(coords[:, 1], count),
        np.tile(azimuths, len(coords)),
        np.full(len(coords) * count, metres),
    )
    rings = np.stack([lon, lat], axis=-1).reshape(len(coords), count, 2)
    return shapely.polygons(shapely.linearrings(rings))


def _local_buffer(geom: shapely.Geometry, metres: float) -> shapely.Geometry:
    """A lon/lat geometry buffered in an azimuthal equidistant projection centred on it."""
    minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
    local = ProjCRS.from_proj4(_AEQD.format(lon=(minx + maxx) / 2, lat=(miny + maxy) / 2))
    forward = Transformer.from_crs("EPSG:4326", local, always_xy=True)
    back = Transformer.from_crs(local, "EPSG:4326", always_xy=True)
    return _apply(back, shapely.buffer(_apply(forward, geom), metres, quad_segs=QUAD_SEGS))
