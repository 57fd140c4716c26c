"""Move arrays of shapely geometries between CRSs, in one vectorised pass over their coordinates.

The providers that build GeoJSON and vector tiles in Python (GeoPackage, WFS) reproject
whole pages at once: pyproj transforms the coordinate arrays, axis order is swapped on
the way in or out (EPSG:4326 and other latitude-first CRSs), and latitudes a
projection cannot reach (the poles in web mercator) are brought to the edge of its
area of use instead of failing the page. Coordinates are x/y (east, north) inside.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from pyproj.exceptions import CRSError, ProjError

from providers.errors import InvalidQuery


@lru_cache(maxsize=256)
def transformer(src: int, dst: int) -> Transformer:
    """x/y (lon/lat) order on both sides, whatever the authority says: axis swaps are explicit."""
    try:
        return Transformer.from_crs(f"EPSG:{src}", f"EPSG:{dst}", always_xy=True)
    except (CRSError, ProjError) as exc:
        raise InvalidQuery(f"cannot transform from EPSG:{src} to EPSG:{dst}") from exc


@lru_cache(maxsize=256)
def is_geographic(srid: int) -> bool:
    try:
        return ProjCRS.from_epsg(srid).is_geographic
    except CRSError:
        return False


@lru_cache(maxsize=256)
def latitude_range(srid: int) -> tuple[float, float] | None:
    """The latitudes where a CRS is defined (e.g. +-85.06 for web mercator)."""
    try:
        area = ProjCRS.from_epsg(srid).area_of_use
    except CRSError:
        return None
    return (area.south, area.north) if area else None


def coordinate_function(
    src: int, dst: int, swap_in: bool, swap_out: bool, decimals: int | None
) -> Callable[[np.ndarray], np.ndarray] | None:
    """One pass over a coordinate array: axis swap in, reprojection, axis swap out, rounding."""
    move = transformer(src, dst) if src != dst else None
    if move is None and not swap_in and not swap_out and decimals is None:
        return None
    clamp = latitude_range(dst) if move is not None and is_geographic(src) else None

    def apply(coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=float)
        if swap_in:
            coords[:, [0, 1]] = coords[:, [1, 0]]
        if move is not None:
            out = np.column_stack(move.transform(*(coords[:, i] for i in range(coords.shape[1]))))
            bad = ~np.isfinite(out).all(axis=1) & np.isfinite(coords).all(axis=1)
            if bad.any() and clamp is not None:
                fixed = coords[bad]
                fixed[:, 1] = np.clip(fixed[:, 1], clamp[0], clamp[1])
                out[bad] = np.column_stack(move.transform(*(fixed[:, i] for i in range(fixed.shape[1]))))
            if not np.isfinite(out[np.isfinite(coords).all(axis=1)]).all():
                raise InvalidQuery(f"coordinates cannot be transformed from EPSG:{src} to EPSG:{dst}")
            coords = out
        if swap_out:
            coords[:, [0, 1]] = coords[:, [1, 0]]
        if decimals is not None:
            coords = np.round(coords, decimals)
        return coords

    return apply


def geometries(
    geoms: np.ndarray | shapely.Geometry,
    src: int,
    dst: int,
    *,
    swap_in: bool = False,
    swap_out: bool = False,
    decimals: int | None = None,
) -> Any:
    """``geoms`` (an array or one geometry) from EPSG ``src`` to ``dst``; InvalidQuery when PROJ cannot."""
    func = coordinate_function(src, dst, swap_in, swap_out, decimals)
    if func is None:
        return geoms
    try:
        return shapely.transform(geoms, func, include_z=None)
    except (ProjError, shapely.errors.GEOSException, ValueError) as exc:
        raise InvalidQuery(f"coordinates cannot be transformed from EPSG:{src} to EPSG:{dst}") from exc
