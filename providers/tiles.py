"""Tile matrix sets and tile maths for OGC API - Tiles: which tile is where, and nothing else.

The two tile matrix sets every client knows are defined here as OGC Two Dimensional
Tile Matrix Set 2.0 (OGC 17-083r4) and its registry define them:

* ``WebMercatorQuad``: EPSG:3857, one tile at zoom 0, zooms 0 to 24 (what MapLibre,
  OpenLayers and Leaflet ask for by default);
* ``WorldCRS84Quad``: OGC CRS84 (longitude first), two tiles side by side at zoom 0,
  zooms 0 to 23.

Both are quad trees with square 256-pixel tiles whose row 0 is at the top (north), so
a tile's edges are an affine function of (z, x, y). Providers never do this maths
themselves: the server turns z/x/y into a :class:`~providers.base.TileRequest` with the
tile's bounds computed here. The module is pure (no I/O, no database): mercantile does
the spherical mercator projection of longitudes and latitudes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import mercantile

from providers.crs import CRS, CRS84, parse_crs
from providers.errors import NotFound

#: The size OGC TMS 2.0 gives a rendering pixel when it turns a cell size into a scale.
PIXEL_SIZE_M = 0.00028
TILE_SIZE = 256
#: Half the width of the spherical mercator world: pi times the WGS 84 semi-major axis.
MERCATOR_HALF_WORLD = math.pi * 6378137.0
#: The latitude where web mercator's square world ends (its y equals its half width).
MERCATOR_MAX_LAT = 85.0511287798066
#: Metres per degree on the equator of the WGS 84 ellipsoid's sphere, as OGC TMS uses it
#: to give degree-based tile matrices a scale denominator.
METRES_PER_DEGREE = 2 * math.pi * 6378137.0 / 360.0

_TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/{}"


def _is_index(value: Any) -> bool:
    """An integer (numpy's too) that is not a bool: what a tile matrix, row or column can be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class TileMatrixSet:
    """A quad-tree tile matrix set: square tiles, top-left origin, each zoom halving the cell size.

    ``bounds`` (minx, miny, maxx, maxy in ``crs``, x = easting or longitude) is the area
    the zoom 0 matrix covers; it is ``matrix_width_at_0`` tiles wide and one tile high.
    """

    id: str
    title: str
    uri: str
    crs: CRS
    bounds: tuple[float, float, float, float]
    matrix_width_at_0: int
    max_zoom: int
    ordered_axes: tuple[str, str]
    well_known_scale_set: str | None = None
    tile_size: int = TILE_SIZE

    # -- the grid ------------------------------------------------------------------------
    def _check_zoom(self, z: Any) -> int:
        if not _is_index(z) or not 0 <= z <= self.max_zoom:
            raise NotFound(f"{self.id} has tile matrices 0 to {self.max_zoom}, not {str(z)[:20]!r}")
        return int(z)

    def matrix_size(self, z: int) -> tuple[int, int]:
        """(columns, rows) of the tile matrix at zoom ``z``; NotFound for a zoom the set lacks."""
        z = self._check_zoom(z)
        return self.matrix_width_at_0 << z, 1 << z

    def tile_span(self, z: int) -> float:
        """The width (and height) of one tile at zoom ``z``, in CRS units."""
        self._check_zoom(z)
        return (self.bounds[3] - self.bounds[1]) / (1 << z)

    def resolution(self, z: int) -> float:
        """CRS units per pixel of a 256-pixel tile at zoom ``z`` (the TMS ``cellSize``)."""
        return self.tile_span(z) / self.tile_size

    def scale_denominator(self, z: int) -> float:
        """The TMS scale denominator: cell size in metres over a 0.28 mm pixel."""
        metres = self.resolution(z) * (METRES_PER_DEGREE if self.crs.srid == 4326 else 1.0)
        return metres / PIXEL_SIZE_M

    def check(self, z: int, x: int, y: int) -> None:
        """Raise NotFound unless (z, x, y) is a tile of this set, so the server answers 404."""
        cols, rows = self.matrix_size(z)
        for name, value, size in (("column", x, cols), ("row", y, rows)):
            if not _is_index(value) or not 0 <= value < size:
                raise NotFound(
                    f"tile matrix {z} of {self.id} has {name}s 0 to {size - 1}, not {str(value)[:20]!r}"
                )

    def tile_bounds(self, z: int, x: int, y: int) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of a tile in the set's CRS; row 0 is the northernmost."""
        self.check(z, x, y)
        if self.id == "WebMercatorQuad":
            box = mercantile.xy_bounds(x, y, z)
            return (box.left, box.bottom, box.right, box.top)
        span = self.tile_span(z)
        left, top = self.bounds[0], self.bounds[3]
        return (left + x * span, top - (y + 1) * span, left + (x + 1) * span, top - y * span)

    def tile_containing(self, z: int, x: float, y: float) -> tuple[int, int]:
        """(column, row) of the tile holding the point (x, y), given in the set's CRS.

        A point on a shared edge belongs to the tile east / south of it, as for the
        half-open cells of a raster; points outside the set's bounds are clamped to its
        edge tiles.
        """
        cols, rows = self.matrix_size(z)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ValueError("a tile is asked for a point with non-finite coordinates")
        span = self.tile_span(z)
        col = math.floor((x - self.bounds[0]) / span)
        row = math.floor((self.bounds[3] - y) / span)
        return min(max(col, 0), cols - 1), min(max(row, 0), rows - 1)

    def _project(self, lon: float, lat: float) -> tuple[float, float]:
        """A CRS84 position in the set's CRS (latitude clamped where web mercator ends)."""
        if self.crs.srid == 4326:
            return lon, lat
        lat = min(max(lat, -MERCATOR_MAX_LAT), MERCATOR_MAX_LAT)
        return mercantile.xy(lon, lat)

    def tile_limits(self, z: int, bbox_crs84: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """(min_col, max_col, min_row, max_row) of the tiles at zoom ``z`` that cover a CRS84 bbox.

        These are the ``tileMatrixSetLimits`` of a tileset. A tile that merely touches the
        bbox's east or south edge is left out; a bbox crossing the antimeridian (minx >
        maxx) cannot be one column range and is given the full width.
        """
        cols, rows = self.matrix_size(z)
        minx, miny, maxx, maxy = (float(v) for v in bbox_crs84)
        if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)) or miny > maxy:
            raise ValueError("bbox must be finite minx, miny, maxx, maxy with miny <= maxy")
        minx, maxx = min(max(minx, -180.0), 180.0), min(max(maxx, -180.0), 180.0)
        miny, maxy = min(max(miny, -90.0), 90.0), min(max(maxy, -90.0), 90.0)
        west, south = self._project(minx, miny)
        east, north = self._project(maxx, maxy)
        span = self.tile_span(z)
        left, top = self.bounds[0], self.bounds[3]

        def first(offset: float, size: int) -> int:
            return min(max(math.floor(offset / span), 0), size - 1)

        def last(offset: float, size: int) -> int:
            return min(max(math.ceil(offset / span) - 1, 0), size - 1)

        if minx > maxx:
            min_col, max_col = 0, cols - 1
        else:
            min_col = first(west - left, cols)
            max_col = max(last(east - left, cols), min_col)
        min_row = first(top - north, rows)
        max_row = max(last(top - south, rows), min_row)
        return min_col, max_col, min_row, max_row

    # -- the OGC document ----------------------------------------------------------------
    def document(self) -> dict[str, Any]:
        """The set as OGC Two Dimensional Tile Matrix Set 2.0 JSON (``/tileMatrixSets/{id}``)."""
        left, top = self.bounds[0], self.bounds[3]
        matrices = []
        for z in range(self.max_zoom + 1):
            cols, rows = self.matrix_size(z)
            matrices.append(
                {
                    "id": str(z),
                    "scaleDenominator": self.scale_denominator(z),
                    "cellSize": self.resolution(z),
                    "cornerOfOrigin": "topLeft",
                    "pointOfOrigin": [left, top],
                    "tileWidth": self.tile_size,
                    "tileHeight": self.tile_size,
                    "matrixWidth": cols,
                    "matrixHeight": rows,
                }
            )
        doc: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "uri": self.uri,
            "crs": self.crs.uri,
            "orderedAxes": list(self.ordered_axes),
        }
        if self.well_known_scale_set:
            doc["wellKnownScaleSet"] = self.well_known_scale_set
        doc["boundingBox"] = {
            "lowerLeft": [self.bounds[0], self.bounds[1]],
            "upperRight": [self.bounds[2], self.bounds[3]],
            "crs": self.crs.uri,
            "orderedAxes": list(self.ordered_axes),
        }
        doc["tileMatrices"] = matrices
        return doc


WEB_MERCATOR_QUAD = TileMatrixSet(
    id="WebMercatorQuad",
    title="Google Maps Compatible for the World",
    uri=_TMS_URI.format("WebMercatorQuad"),
    crs=parse_crs("EPSG:3857"),
    bounds=(-MERCATOR_HALF_WORLD, -MERCATOR_HALF_WORLD, MERCATOR_HALF_WORLD, MERCATOR_HALF_WORLD),
    matrix_width_at_0=1,
    max_zoom=24,
    ordered_axes=("X", "Y"),
    well_known_scale_set="http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible",
)
WORLD_CRS84_QUAD = TileMatrixSet(
    id="WorldCRS84Quad",
    title="CRS84 for the World",
    uri=_TMS_URI.format("WorldCRS84Quad"),
    crs=CRS84,
    bounds=(-180.0, -90.0, 180.0, 90.0),
    matrix_width_at_0=2,
    max_zoom=23,
    # Longitude first, as CRS84 says: OpenLayers reads the axis order from here.
    ordered_axes=("Lon", "Lat"),
    well_known_scale_set="http://www.opengis.net/def/wkss/OGC/1.0/GoogleCRS84Quad",
)

TILE_MATRIX_SETS: dict[str, TileMatrixSet] = {tms.id: tms for tms in (WEB_MERCATOR_QUAD, WORLD_CRS84_QUAD)}


def get_tms(tms_id: str) -> TileMatrixSet:
    """The tile matrix set called ``tms_id`` (its id or its OGC URI); NotFound otherwise."""
    found = TILE_MATRIX_SETS.get(tms_id)
    if found is None:
        found = next((t for t in TILE_MATRIX_SETS.values() if t.uri == tms_id), None)
    if found is None:
        raise NotFound(f"unknown tile matrix set {str(tms_id)[:100]!r}; known: {', '.join(TILE_MATRIX_SETS)}")
    return found
